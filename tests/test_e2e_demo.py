"""End-to-end: the demo pipeline on the mock sky, through the `stronglens` runner (papermill stage notebooks).

One run per session (`demo_run`, conftest; slow, CI runs it) feeds every check, including the lens finder's test AUC (issue 8, re-set for mock sky v2)."""
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_every_stage_ran(demo_run):
    run, res, _ = demo_run
    assert [r["status"] for r in res] == ["ran"] * len(res)
    from stronglens.runs import read_marker, get_stage, PIPELINE_STAGES
    assert [r["stage"] for r in res] == PIPELINE_STAGES                # the demo grows into every stage
    for r in res:
        m = read_marker(run, get_stage(r["stage"]))
        assert m["status"] in ("done", "done_with_failures") and m["outputs"]["n_files"] > 0, (r["stage"], m["status"])
    for r in res:
        assert (run / "notebooks" / get_stage(r["stage"]).notebook).exists(), r["stage"]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["pipeline_version"] and len(prov["config_hash"]) == 16


def test_manifests_are_leakage_free(demo_run):
    run, _, _ = demo_run
    m = pd.read_parquet(run / "manifests" / "training_manifest.parquet")
    assert {"s3_key", "s3_path", "galaxy_id", "filename", "label", "cutout_type", "split", "ra", "dec"} <= set(m.columns)
    assert m.galaxy_id.is_unique and m.split.notna().all()
    assert set(m.split) == {"train", "val", "test"} and set(m.label) == {0, 1}
    from stronglens.splits import compute_healpix
    hp = compute_healpix(m.ra.values, m.dec.values, 128, nest=True)
    assert (pd.DataFrame({"hp": hp, "split": m.split}).groupby("hp").split.nunique() == 1).all()
    leak = json.loads((run / "manifests" / "leakage.json").read_text())
    assert leak["passed"] is True, {k: v for k, v in leak["checks"].items() if not v["passed"]}
    assert leak["checks"] and all(c["passed"] is True for c in leak["checks"].values())


def test_negatives_hold_the_real_sky_share_of_unlisted_lenses(demo_run):
    """The demo's 30x lens density puts no extra lenses among its negatives: the sky lists the boost's excess
    (excluded_lenses.csv) and the catalog stage keeps it out (before: 13.5 % of the matched negatives were planted
    lenses, 65 of them with arc S/N > 5, and the 1 %-FPR threshold sat among real arcs)."""
    run, _, _ = demo_run
    m = pd.read_parquet(run / "manifests" / "training_manifest.parquet")
    truth = pd.read_parquet(run / "sky" / "lens_truth.parquet")
    meta = json.loads((run / "sky" / "sky_meta.json").read_text())
    excl = pd.read_csv(run / "sky" / "excluded_lenses.csv")
    assert not excl.galaxy_id.isin(truth.galaxy_id[truth.listed]).any() and excl.galaxy_id.isin(truth.galaxy_id).all()
    scale = meta["lens_density_scale"]; n_unlisted = int((~truth.listed).sum())
    assert abs(len(excl) / n_unlisted - (1 - 1 / scale)) < 4 * np.sqrt((1 - 1 / scale) / scale / n_unlisted)
    neg = m[m.label == 0]
    assert not neg.galaxy_id.isin(excl.galaxy_id).any()
    share = neg.galaxy_id.isin(truth.galaxy_id).mean()
    print(f"planted lenses among the demo's negatives: {share:.2%}; pool-like share {meta['unlisted_lens_share_of_pool']:.2%} -> "
          f"{meta['unlisted_lens_share_of_negative_pool']:.2%} after the exclusion")
    assert share < 0.02, share
    assert meta["unlisted_lens_share_of_negative_pool"] < 2 * meta["unlisted_lens_share_of_pool"] / scale
    rep = json.loads((run / "manifests" / "catalog_report.json").read_text())
    assert rep["excluded_lenses"]["entries"] == len(excl)


def test_cutouts_cover_the_manifest(demo_run):
    run, _, _ = demo_run
    m = pd.read_parquet(run / "manifests" / "training_manifest.parquet")
    failed = pd.read_parquet(run / "cutouts" / "failed_cutouts.parquet")
    have = {p.stem for p in (run / "cutouts").glob("*.npz")}
    from stronglens.cutouts import safe_filename
    expected = {safe_filename(g) for g in m.galaxy_id} - {safe_filename(g) for g in failed.get("galaxy_id", [])}
    assert expected <= have and len(failed) <= 0.01 * len(m)


def test_lens_finder_test_auc(demo_run):
    """The demo model separates lenses from non-lenses on the test split (issue 8's bar, re-set for mock sky v2).

    Issue 8 asked for test AUC >= 0.95 on mock sky v1, whose arcs were ~1.8 mag fainter than their deflectors. Mock sky
    v2 (issue 14) draws lenses like DR10's (arc 2.9 mag fainter than a massive red deflector, many arcs barely visible,
    40 test positives): the demo's small CNN (20 epochs, cosine lr, on ~260 positives) reaches ~0.94 on Tier-A and ~0.91
    on all true lenses (0.92 and 0.86 with the earlier constant lr). The mock, like real candidate lists, also puts
    non-lenses among its Tier-B entries, which cap the manifest-label AUC. The bars below are what the demo must keep,
    not the paper's target."""
    run, _, _ = demo_run
    from sklearn.metrics import roc_auc_score
    s = pd.read_parquet(run / "model" / "scores.parquet")
    t = s[s.split == "test"].copy()
    assert len(t) > 100 and t.label.nunique() == 2
    known = pd.read_csv(run / "sky" / "known_lenses.csv")
    not_lens = set(known.loc[~known.is_lens.astype(bool), "galaxy_id"])
    tier_a = set(known.loc[known.grading == "confident", "galaxy_id"])
    t["true_lens"] = (t.label == 1) & ~t.galaxy_id.isin(not_lens)
    auc_manifest = roc_auc_score(t.label, t.p_lens)
    sub = t[(t.label == 0) | t.true_lens]
    auc_truth = roc_auc_score(sub.label, sub.p_lens)
    suba = t[(t.label == 0) | t.galaxy_id.isin(tier_a)]
    auc_tier_a = roc_auc_score(suba.label, suba.p_lens)
    print(f"demo test AUC: manifest labels {auc_manifest:.4f}, true lenses {auc_truth:.4f}, Tier-A {auc_tier_a:.4f}")
    assert auc_tier_a >= 0.90, auc_tier_a
    assert auc_truth >= 0.80, auc_truth
    assert auc_manifest >= 0.75, auc_manifest


def test_validation_report(demo_run):
    run, _, _ = demo_run
    stamps = [p for p in (run / "validation").iterdir() if p.is_dir()]
    assert len(stamps) == 1
    rep = stamps[0]
    for f in ("summary.json", "per_cutout_metrics.parquet", "shortcut_auc_by_feature.parquet", "failed_cutouts.parquet"):
        assert (rep / f).exists(), f
    summary = json.loads((rep / "summary.json").read_text())
    from stronglens.validation import SUMMARY_SCHEMA
    import jsonschema
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["total_cutouts"] == summary["positives"] + summary["negatives"]


def test_shortcut_gates(demo_run):
    """Issue 13.3: the gates in validation/gates.json are computed, consistent with their thresholds, and the radial gate
    runs on pixels where a radial shortcut is visible (never on `residual`, which subtracts the ring medians it measures)."""
    run, _, _ = demo_run
    g = json.loads((run / "validation" / "gates.json").read_text())
    assert set(g["results"]) == {"raw", "preprocessed"}
    for name, r in g["results"].items():
        assert r["n"] >= 40 and 0 < r["n_pos"] < r["n"] and r["n_failed_to_load"] == 0, (name, r)
        for auc in ("core_lr_auc", "radial_profile_auc"): assert 0.0 <= r[auc] <= 1.0, (name, auc, r[auc])
        assert r["core_passed"] is (r["core_lr_auc"] < r["core_threshold"]), (name, r)
        assert r["radial_passed"] is (r["radial_profile_auc"] < r["radial_threshold"]), (name, r)
        assert r["passed"] is (r["core_passed"] and r["radial_passed"]), (name, r)
        assert r["radial_pixels"] != "residual", (name, r["radial_pixels"])
        assert (r["core_threshold"], r["radial_threshold"]) == (0.55, 0.60)          # spec §4
    assert g["passed"] is all(r["passed"] for r in g["results"].values())
    print("gates:", {k: (round(r["core_lr_auc"], 3), round(r["radial_profile_auc"], 3), r["passed"]) for k, r in g["results"].items()})


def test_injection_and_report(demo_run):
    """Issues 15-16 done-when: the demo writes the completeness table, the closure test and the probe AUC, and report/
    holds all 8 figures (PNG and PDF), all 6 tables (CSV and LaTeX) and the page, with no broken image link."""
    run, _, _ = demo_run
    inj = run / "injection"
    table = pd.read_parquet(inj / "completeness.parquet")
    assert len(table) == 385 and (inj / "completeness.csv").exists()
    assert ((table.completeness.isna()) | table.completeness.between(0, 1)).all()
    closure = json.loads((inj / "closure.json").read_text())
    assert {"threshold", "feature_probe"} <= set(closure), sorted(closure)
    assert 0 < closure["threshold"]["value"] <= 1
    fp = closure["feature_probe"]                      # the demo's listed positives have sweep rows: hosts matched to them
    assert fp["status"] == "ok" and fp["host_matched"] and fp["grouped"] and 0.5 < fp["auc"] < 1, fp
    assert np.isfinite(fp["conditions_only"]["auc"]) and fp["median_abs_dmag_r"] < fp["conditions_only"]["median_abs_dmag_r"], fp
    rep = run / "report"
    for k, stem in enumerate(["data_schematic", "score_distributions", "selection_function", "failure_gallery",
                              "tierA_recall", "reliability", "roc_pr", "contaminant_fpr"], start=1):
        for ext in ("png", "pdf"):
            f = rep / "figures" / f"fig{k}_{stem}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
    for k in range(1, 7):
        assert len(list((rep / "tables").glob(f"table{k}_*.csv"))) == 1 and len(list((rep / "tables").glob(f"table{k}_*.tex"))) == 1, k
    html = (rep / "index.html").read_text()
    import re
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        assert src.startswith("data:") or (rep / src).exists(), src
    assert json.loads((rep / "report.json").read_text())


def test_rerun_skips_every_stage(demo_run):
    run, _, _ = demo_run
    from stronglens.cli import run_pipeline
    res = run_pipeline(str(run), str(ROOT / "configs" / "demo.yaml"), log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped"] * len(res)


def test_cli_entry_point_and_bad_config(tmp_path):
    exe = Path(sys.executable).with_name("stronglens")
    out = subprocess.run([str(exe), "stages"], capture_output=True, text=True)
    assert out.returncode == 0 and "catalogs" in out.stdout
    bad = subprocess.run([str(exe), "run", "sky", "--run-dir", str(tmp_path / "r"), "--config",
                          str(ROOT / "configs" / "demo.yaml"), "-p", "sky.no_such_key", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "sky.no_such_key" in bad.stderr

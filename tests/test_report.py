"""The report stage on small synthetic runs: tables equal their inputs, the page puts alerts first, an external finder's
scores work, the stage protocol is honoured, bad input is refused with a clear message."""
import html, io, json, re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stronglens import calibration as cal
from stronglens.report import (ReportConfig, build_report, load_report_inputs, run_report_stage, synthetic_config,
                               synthetic_run)
from stronglens.tables import COMPLETENESS_COLUMNS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic-run")
    cfg = synthetic_run(str(d), n=240, seed=5)
    return str(d), cfg


@pytest.fixture(scope="module")
def report(run):
    d, cfg = run
    res = run_report_stage(cfg, d, progress=False)
    out = Path(d) / "report"
    return out, json.loads((out / "report.json").read_text()), res


def _csv(out, rep, name):
    return pd.read_csv(out / rep["tables"][name]["csv"], keep_default_na=False, na_values=[""])


def test_all_six_tables_written_as_csv_and_tex(report):
    out, rep, _ = report
    assert len(rep["tables"]) == 6
    for name, t in rep["tables"].items():
        assert (out / t["csv"]).stat().st_size > 50 and (out / t["tex"]).read_text().lstrip().startswith("\\begin{"), name
        assert "\\toprule" in (out / t["tex"]).read_text()


def test_table1_counts_the_manifest(run, report):
    out, rep, _ = report
    man = pd.read_parquet(Path(run[0]) / "manifests/training_manifest.parquet")
    t1 = _csv(out, rep, "table1_data_summary").set_index("sample")
    assert t1.loc["all", "total"] == len(man)
    for s in ("train", "val", "test"):
        assert t1.loc["positives", s] == ((man.split == s) & (man.label == 1)).sum()
        assert t1.loc["negatives", s] == ((man.split == s) & (man.label == 0)).sum()


def test_table2_sums_to_the_manifest_rows(run, report):
    out, rep, _ = report
    man = pd.read_parquet(Path(run[0]) / "manifests/training_manifest.parquet")
    t2 = _csv(out, rep, "table2_stratification")
    cells = t2[(t2["class"] == "all") & (t2.nobs_z_bin != "total")].drop(columns=["class", "nobs_z_bin", "total"])
    assert int(cells.to_numpy().sum()) == len(man)
    pos = t2[(t2["class"] == "positive") & (t2.nobs_z_bin == "total")]["total"].item()
    assert pos == int(man.label.sum())
    # one cell against an independent count from the catalogue rows
    cat = pd.concat([pd.read_parquet(Path(run[0]) / f"manifests/{f}.parquet") for f in ("positives", "negative_pool")])
    k = int(((cat.nobs_z_bin == "3-5") & (cat.type_bin == "DEV")).sum())
    assert t2[(t2["class"] == "all") & (t2.nobs_z_bin == "3-5")]["DEV"].item() == k


def test_table6_equals_the_completeness_table(run, report):
    out, rep, _ = report
    comp = pd.read_parquet(Path(run[0]) / "injection/completeness.parquet")
    t6 = _csv(out, rep, "table6_selection_function")
    assert len(t6) == len(comp) == 385 and list(t6.columns) == COMPLETENESS_COLUMNS
    key = ["i_theta_e", "i_psf", "i_depth"]
    a = t6.set_index(key).sort_index(); b = comp.set_index(key).sort_index()
    num = [c for c in a.columns if c != "empty_reason"]
    np.testing.assert_array_equal(a[num].to_numpy(float), b[num].to_numpy(float))       # exact: CSV keeps full precision
    assert (a.empty_reason.fillna("") == b.empty_reason).all()


def test_table3_and_headline_recall_match_a_direct_count(run, report):
    out, rep, _ = report
    d = Path(run[0]); th = rep["threshold"]["value"]
    sc = pd.read_parquet(d / "model/scores_all.parquet")
    tier = pd.read_parquet(d / "manifests/positives.parquet").set_index("galaxy_id").tier
    ev = sc[sc.split == "test"]
    a = ev[ev.galaxy_id.map(tier) == "A"]
    t3 = _csv(out, rep, "table3_tierA_recall").set_index(["stratum", "bin"])
    assert t3.loc[("all", "all"), "n"] == len(a) and t3.loc[("all", "all"), "k"] == int((a.p_lens >= th).sum())
    for s in ("nobs_z_bin", "psf_bin", "depth_bin", "type_bin"):
        assert t3.loc[s, "n"].sum() == len(a)                               # every anchor in exactly one bin
    pos = ev[ev.label == 1]
    assert rep["headline"]["recall"]["value"] == pytest.approx((pos.p_lens >= th).mean(), abs=1e-12)
    assert rep["headline"]["n"] == len(ev)


def test_threshold_is_the_injection_stages_and_its_fpr_is_measured_on_test(run, report):
    out, rep, _ = report
    d = Path(run[0])
    closure = json.loads((d / "injection/closure.json").read_text())
    assert rep["threshold"]["value"] == closure["threshold"]["value"] and rep["threshold"]["source"] == "injection"
    sc = pd.read_parquet(d / "model/scores_all.parquet"); neg = sc[(sc.split == "test") & (sc.label == 0)]
    k = int((neg.p_lens >= rep["threshold"]["value"]).sum())
    assert (rep["threshold"]["n_flagged"], rep["threshold"]["n_negatives"]) == (k, len(neg))
    lo, hi = cal.wilson_interval(k, len(neg))
    assert rep["threshold"]["fpr_ci"] == pytest.approx([float(lo), float(hi)])


def test_table4_counts_every_test_negative_once(run, report):
    out, rep, _ = report
    sc = pd.read_parquet(Path(run[0]) / "model/scores_all.parquet")
    t4 = _csv(out, rep, "table4_contaminant_fpr").set_index("category")
    n_neg = int(((sc.split == "test") & (sc.label == 0)).sum())
    assert t4.loc["all negatives", "n"] == n_neg == t4.drop("all negatives").n.sum()


def test_table5_reads_the_checkpoint(run, report):
    out, rep, _ = report
    from stronglens.train import load_checkpoint
    ck = load_checkpoint(str(Path(run[0]) / "model/checkpoints/best.pt"))
    t5 = _csv(out, rep, "table5_hyperparameters").set_index("parameter")
    assert int(t5.loc["parameters (trainable)", "value"]) == ck["n_parameters"] == sum(v.numel() for k, v in ck["model"].items()
                                                                                          if "running" not in k and "num_batches" not in k)
    assert t5.loc["name", "value"] == "AdamW"


def test_page_alerts_first_and_caveats(report):
    out, rep, _ = report
    page = (out / "index.html").read_text()
    first_h2 = page.index("<h2>")
    assert 'class="alert"' in page[:first_h2]                           # the synthetic feature probe (AUC 0.93) is red
    assert "Sim-to-real gap" in page[:first_h2]
    assert page.count('<img src="data:image/png;base64,') == 8          # self-contained
    for claim in ("No survey-wide precision", "No cosmology.", "No completeness outside the injected grid."):
        assert claim in page
    # every precision number on the page sits next to the prevalence caveat
    cav = html.escape(cal.PREVALENCE_CAVEAT)
    for m in re.finditer(r"[Pp]recision at the manifest|precision \(manifest\)", page):
        assert cav in page[m.start() - 200: m.start() + 1500], page[m.start(): m.start() + 200]
    for href in re.findall(r'href="([^"#:]+)"', page):                  # links to the files beside the page
        assert (out / href).is_file(), href


def test_leakage_and_failed_gate_at_the_top_in_red(tmp_path):
    synthetic_run(str(tmp_path), n=120, seed=1, leak=True, injection=False)
    rep = build_report(load_report_inputs(str(tmp_path)), str(tmp_path / "r"), ReportConfig(), log=lambda m: None)
    red = [m for lvl, m in rep["alerts"] if lvl == "red"]
    assert any("pixel_in_multiple_splits" in m for m in red) and any("core_lr_auc = 0.620" in m for m in red)
    assert rep["alerts"][0][0] == "red"
    page = (tmp_path / "r/index.html").read_text()
    top = page[:page.index("<h2>")]
    assert "Leakage check failed: pixel_in_multiple_splits" in top and "Shortcut gate failed on raw pixels" in top
    # without injection: no figure 3 / table 6, said so (amber and in 'Not produced')
    assert "fig3_selection_function" not in rep["figures"] and "table6_selection_function" not in rep["tables"]
    assert any("No injection-recovery" in m for lvl, m in rep["alerts"] if lvl == "amber") and "Not produced" in page


def test_external_finder_scores(run, tmp_path):
    d, _ = run
    sc = pd.read_parquet(Path(d) / "model/scores_all.parquet")
    ext = sc[["galaxy_id", "split", "label"]].assign(p_lens=np.clip(sc.p_lens ** 0.5, 0, 1))   # a finder with no logits
    inp = load_report_inputs(d, scores=ext, checkpoint=None, finder="external finder X")
    rep = build_report(inp, str(tmp_path / "audit"), ReportConfig(threshold_kind="fpr", threshold_value=0.05), log=lambda m: None)
    assert rep["finder"] == "external finder X" and len(rep["figures"]) == 8
    assert "table5_hyperparameters" not in rep["tables"] and any("Table 5" in m for m in rep["missing"])
    neg = ext[(ext.split == "val") & (ext.label == 0)]
    assert (neg.p_lens >= rep["threshold"]["value"]).mean() <= 0.05 and rep["threshold"]["kind"] == "fpr"
    assert "external finder X" in (tmp_path / "audit/index.html").read_text()


def test_audit_threshold_reproduces_the_inhouse_report(run, report):
    """A scores-only audit has no closure.json; handed the run's rule as ReportInputs.threshold it reproduces the
    in-house operating point and headline exactly (without it the report falls back to its own FPR-on-val rule)."""
    d, _ = run
    out, rep, _ = report
    sc = pd.read_parquet(Path(d) / "model/scores_all.parquet")
    rule = json.loads((Path(d) / "injection/closure.json").read_text())["threshold"]
    inp = load_report_inputs(d, scores=sc, checkpoint=None, injection_dir="audits/x/injection", finder="in-house, audited")
    assert inp.closure is None
    plain = build_report(inp, str(Path(d) / "audits/x/plain"), ReportConfig(), log=lambda m: None)
    assert plain["threshold"]["source"] == "report config" and plain["threshold"]["value"] != rep["threshold"]["value"]
    inp.threshold = {**rule, "how": "the run's inherited rule applied to this finder"}
    got = build_report(inp, str(Path(d) / "audits/x/report"), ReportConfig(), log=lambda m: None)
    assert got["threshold"]["source"] == "audit" and got["threshold"]["how"].startswith("the run's inherited rule")
    for k in ("value", "fpr", "fpr_ci", "n_flagged", "n_negatives"):
        assert got["threshold"][k] == rep["threshold"][k], k
    assert json.dumps(got["headline"], sort_keys=True) == json.dumps(rep["headline"], sort_keys=True)
    assert "the run&#x27;s inherited rule applied to this finder" in (Path(d) / "audits/x/report/index.html").read_text()


def test_extra_alerts_and_sections(run, tmp_path):
    d, _ = run
    inp = load_report_inputs(d)
    sec = ("Counterfactual arc tests <&>", "<p id=cf-verdict>arc-driven</p>")
    rep = build_report(inp, str(tmp_path / "r"), ReportConfig(), log=lambda m: None,
                       extra_alerts=[("amber", "audit note"), ("red", "Shortcut-driven finder: drop 0.02")], extra_sections=[sec])
    base = build_report(inp, str(tmp_path / "b"), ReportConfig(), log=lambda m: None)
    assert [tuple(a) for a in rep["alerts"]] == sorted([tuple(a) for a in base["alerts"]] + [("amber", "audit note"), ("red", "Shortcut-driven finder: drop 0.02")],
                                                       key=lambda a: a[0] != "red")
    page = (tmp_path / "r/index.html").read_text()
    top = page[:page.index("<h2>")]
    assert "Shortcut-driven finder: drop 0.02" in top and "audit note" in top and 'class="ok"' not in top
    i = page.index("<h2>Counterfactual arc tests &lt;&amp;&gt;</h2><p id=cf-verdict>arc-driven</p>")
    assert page.index("Operating point") < i < page.index("<h2>Figures</h2>")
    assert rep["extra_sections"] == [sec[0]]
    # an all-clear page stays green without red extras; bad extras are refused, naming them
    clean = synthetic_run(str(tmp_path / "clean"), n=120, seed=2, injection=False)
    ok = build_report(load_report_inputs(str(tmp_path / "clean")), str(tmp_path / "c"), ReportConfig(), log=lambda m: None, extra_alerts=[("amber", "x")])
    assert not any(l == "red" for l, _ in ok["alerts"]) and 'class="ok"' in (tmp_path / "c/index.html").read_text()
    with pytest.raises(ValueError, match="extra_alerts.*'green'"):
        build_report(inp, str(tmp_path / "e"), ReportConfig(), extra_alerts=[("green", "fine")])
    with pytest.raises(ValueError, match="extra_sections"):
        build_report(inp, str(tmp_path / "e"), ReportConfig(), extra_sections=[("title only",)])


def test_bad_scores_are_refused_naming_the_problem(run):
    d, _ = run
    sc = pd.read_parquet(Path(d) / "model/scores_all.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['p_lens'\]"):
        load_report_inputs(d, scores=sc.drop(columns="p_lens"))
    with pytest.raises(ValueError, match="duplicated galaxy_id"):
        load_report_inputs(d, scores=pd.concat([sc, sc.head(1)]))
    with pytest.raises(ValueError, match="threshold must be set on another split"):
        from stronglens.config import from_dict
        from_dict(ReportConfig, {"threshold_split": "test", "eval_split": "test"})


def test_stage_protocol(run, report):
    d, cfg = run
    out, rep, res = report
    assert res["page"] == "report/index.html" and res["n_figures"] == 8 and res["n_tables"] == 6
    marker = json.loads((out / "_stage.json").read_text())
    assert marker["status"] == "done"
    before = (out / "index.html").stat().st_mtime_ns
    again = run_report_stage(cfg, d, progress=False)                      # nothing changed: skipped, same result
    assert again["page"] == res["page"] and (out / "index.html").stat().st_mtime_ns == before


def test_stage_refuses_without_upstream(tmp_path):
    from stronglens.runs import StageOrderError
    with pytest.raises(StageOrderError, match="needs"):
        run_report_stage(synthetic_config(str(tmp_path)), str(tmp_path), progress=False)


def test_deterministic(run, tmp_path):
    d, _ = run
    reps = [build_report(load_report_inputs(d), str(tmp_path / f"r{i}"), ReportConfig(), log=lambda m: None) for i in (0, 1)]
    for k in ("threshold", "headline", "calibration", "alerts"):
        assert json.dumps(reps[0][k], sort_keys=True, default=str) == json.dumps(reps[1][k], sort_keys=True, default=str), k
    for name in reps[0]["tables"]:
        assert (tmp_path / "r0" / reps[0]["tables"][name]["csv"]).read_bytes() == (tmp_path / "r1" / reps[1]["tables"][name]["csv"]).read_bytes()
    for name, f in reps[0]["figures"].items():
        assert (tmp_path / "r0" / f["files"]["pdf"]).read_bytes() == (tmp_path / "r1" / f["files"]["pdf"]).read_bytes(), name


@pytest.mark.slow
def test_pipeline_notebook(run, report, tmp_path):
    import papermill as pm
    d, _ = run
    nb = Path(__file__).resolve().parents[1] / "nbs/pipeline/06_report.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"run_dir": d, "config_path": ""}, kernel_name="python3",
                        progress_bar=False, cwd=str(nb.parent))
    text = (tmp_path / "out.ipynb").read_text()
    assert "fig8_contaminant_fpr" in text and "table6_selection_function" in text


def test_copied_run_report_does_not_name_the_original_folder(run, report, tmp_path):
    "report.json and the page name the run relative to the report folder: a `cp -r` of the run points at the copy."
    import subprocess
    d, _ = run
    copy = tmp_path / "copied-run"
    subprocess.run(["cp", "-r", d, str(copy)], check=True)
    text = (copy / "report" / "report.json").read_text()
    assert str(Path(d).resolve()) not in text and d not in text
    rep = json.loads(text)
    assert (copy / "report" / rep["run_dir"]).resolve() == copy.resolve()
    assert d not in (copy / "report" / "index.html").read_text()

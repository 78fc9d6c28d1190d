"Validation report (spec §5): metrics vs hand-computed values, NaN/shape handling, AUCs and CIs, schema, report folder."
import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from stronglens import validation as V
from stronglens.cutouts import write_cutout

ROOT = Path(__file__).resolve().parents[1]
SPEC_EXAMPLE = {
    "pipeline_version": "1.0.0", "timestamp": "2026-02-09T08:54:38+00:00",
    "total_cutouts": 421189, "positives": 5101, "negatives": 416088, "quality_pass_rate": 0.9987,
    "gates": {"core_brightness_ratio": {"value": 1.02, "threshold": 1.10, "passed": True},
              "nan_rejection_rate": {"value": 0.0013, "threshold": 0.05, "passed": True}},
    "shortcut_features": {"core_brightness_r": {"auc": 0.52, "ci_lower": 0.49, "flag": "green"},
                          "annulus_brightness_r": {"auc": 0.71, "ci_lower": 0.68, "flag": "yellow"},
                          "azimuthal_asymmetry": {"auc": 0.68, "ci_lower": 0.65, "flag": "expected_physics"}}}


def _meta(gid):
    return {"galaxy_id": gid, "ra": 1.0, "dec": 2.0, "type": "SER", "nobs_z": 3, "psfsize_z": 1.1, "flux_r": 5.0,
            "cutout_url": "", "download_timestamp": ""}


# ---- independent brute-force reference (plain Python over pixels) ------------------------------------------------
def _reference_metrics(img):
    "Spec §5 metrics of one (101,101,3) stamp by explicit pixel loops (independent of the vectorised code)."
    core, ann, outer, sect = [], [], [], [[] for _ in range(8)]
    allr = []
    for i in range(101):
        for j in range(101):
            v = float(img[i, j, 1])
            r = math.hypot(i - 50, j - 50)
            if not math.isfinite(v):
                continue
            allr.append(v)
            if r < 8: core.append(v)
            if 4 <= r < 16:
                ann.append(v)
                theta = math.atan2(i - 50, j - 50)
                sect[int(math.floor((theta + math.pi) / (math.pi / 4))) % 8].append(v)
            if 16 <= r < 28: outer.append(v)
    mean = lambda a: sum(a) / len(a)
    sm = [mean(s) for s in sect]
    smean = mean(sm)
    sstd = math.sqrt(sum((s - smean) ** 2 for s in sm) / 8)
    med = float(np.median(allr))
    return dict(core_brightness_r=mean(core), annulus_brightness_r=mean(ann), outer_brightness_r=mean(outer),
                azimuthal_asymmetry=sstd / abs(smean) if smean else float("nan"),
                mad_r=float(np.median([abs(v - med) for v in allr])),
                radial_gradient_r=mean(core) / mean(outer) if mean(outer) else float("nan"))


def _grid():
    i, j = np.indices((101, 101))
    return np.hypot(i - 50, j - 50), np.arctan2(i - 50, j - 50)


def _shapes():
    r, th = _grid()
    disc = np.ones((101, 101, 3), np.float32); disc[r < 8] += 3
    ring = np.zeros((101, 101, 3), np.float32); ring[(r >= 4) & (r < 16)] = 1
    grad = np.broadcast_to(np.arange(101, dtype=np.float32)[None, :, None], (101, 101, 3)).copy()
    pie = np.zeros((101, 101, 3), np.float32); pie[(r >= 4) & (r < 16) & (th >= 0) & (th < np.pi / 4)] = 1
    return dict(disc=disc, ring=ring, grad=grad, pie=pie)


def test_metrics_hand_computed():
    s = _shapes()
    m = V.cutout_metrics(np.stack([s["disc"], s["ring"], s["grad"], s["pie"]]))
    # disc: 3 nmgy inside r<8 on a 1 nmgy sky
    assert m.core_brightness_r[0] == pytest.approx(4.0)
    assert m.outer_brightness_r[0] == pytest.approx(1.0)
    assert m.radial_gradient_r[0] == pytest.approx(4.0)
    assert m.mad_r[0] == pytest.approx(0.0)
    # hand count: pixels with 4 <= r < 8 and 4 <= r < 16 on the integer grid
    n_in = sum(1 for i in range(-8, 9) for j in range(-8, 9) if 16 <= i * i + j * j < 64)
    n_ann = sum(1 for i in range(-16, 17) for j in range(-16, 17) if 16 <= i * i + j * j < 256)
    assert m.annulus_brightness_r[0] == pytest.approx(1 + 3 * n_in / n_ann)
    # ring: exactly the annulus lit
    assert m.annulus_brightness_r[1] == pytest.approx(1.0) and m.azimuthal_asymmetry[1] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(m.radial_gradient_r[1])                      # outer = 0 -> ratio undefined -> NaN (not inf)
    # gradient x = column: symmetric regions average 50; MAD of |j - 50| over 101 columns = 25
    assert m.loc[2, ["core_brightness_r", "annulus_brightness_r", "outer_brightness_r"]].tolist() == pytest.approx([50, 50, 50])
    assert m.radial_gradient_r[2] == pytest.approx(1.0) and m.mad_r[2] == pytest.approx(25.0)
    # one lit 45-degree sector: sector means (0,..,1,..,0): std sqrt(7)/8 over mean 1/8
    assert m.azimuthal_asymmetry[3] == pytest.approx(math.sqrt(7))


def test_metrics_match_bruteforce_on_random_stamps():
    rng = np.random.default_rng(5)
    x = (rng.normal(0.02, 0.01, (3, 101, 101, 3)) + _shapes()["disc"] * rng.uniform(0.5, 2, (3, 1, 1, 1))).astype(np.float32)
    x[1, 10:20, 10:90, 1] = np.nan                                  # NaNs in r: ignored by means and MAD
    m = V.cutout_metrics(x)
    for n in range(3):
        ref = _reference_metrics(x[n])
        for k, v in ref.items():
            assert m[k][n] == pytest.approx(v, rel=1e-6, abs=1e-9), (n, k)


def test_nan_and_shape_quality(tmp_path):
    s = _shapes()
    good = s["disc"]
    nanny = good.copy(); nanny[:20] = np.nan                        # 20/101 of the rows, core clean
    corenan = good.copy(); corenan[53, 50, 0] = np.nan              # one g-band NaN at r = 3 px
    small = np.ones((64, 64, 3), np.float32)
    write_cutout(str(tmp_path / "good.npz"), good, _meta("good"))
    for name, a in [("nanny", nanny), ("corenan", corenan), ("small", small)]:
        np.savez_compressed(tmp_path / f"{name}.npz", cutout=a, **{f"meta_{k}": v for k, v in _meta(name).items()})
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:500])
    urls = [str(tmp_path / f"{n}.npz") for n in ["good", "nanny", "corenan", "small", "trunc", "absent"]]
    m = V.compute_metrics(urls, labels=[1, 0, 1, 0, 1, 0], batch_size=4, progress=False)
    assert list(m.columns[:12]) == V.METRIC_COLUMNS
    assert m.galaxy_id.tolist() == ["good", "nanny", "corenan", "small", "trunc", "absent"]
    assert m.quality_ok.tolist() == [True, False, False, False, False, False]
    assert m.size_ok.tolist() == [True, True, True, False, False, False]
    assert m.total_nan_frac[1] == pytest.approx(20 / 101) and m.core_nan_frac[1] == 0
    n_core = int((_grid()[0] < 8).sum())
    assert m.core_nan_frac[2] == pytest.approx(1 / (3 * n_core)) and m.total_nan_frac[2] == pytest.approx(1 / (3 * 101 * 101))
    assert m.total_nan_frac[3] == 0 and np.isnan(m.core_brightness_r[3])
    assert m.type.tolist() == ["positive", "negative"] * 3
    f = V.failed_cutouts(m)
    assert f.galaxy_id.tolist() == ["nanny", "corenan", "small", "trunc", "absent"]
    assert "wrong shape (64, 64, 3)" in f.reason[2] and "unreadable" in f.reason[3] and "unreadable" in f.reason[4]
    # thresholds come from the config
    m2 = V.compute_metrics(urls[:3], batch_size=4, max_nan_frac=0.25, max_core_nan_frac=0.01, progress=False)
    assert m2.quality_ok.tolist() == [True, True, True]


def test_streaming_batches_bounded(tmp_path):
    rng = np.random.default_rng(0)
    urls = []
    for k in range(23):
        u = str(tmp_path / f"c{k}.npz"); write_cutout(u, rng.normal(size=(101, 101, 3)).astype(np.float32), _meta(f"c{k}"))
        urls.append(u)
    sizes = [len(df) for df in V.iter_metrics(urls, batch_size=5, progress=False)]
    assert sizes == [5, 5, 5, 5, 3]
    a = V.compute_metrics(urls, batch_size=5, progress=False)
    b = V.compute_metrics(urls, batch_size=7, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(a, b)


def test_feature_auc_ci_uses_the_one_bootstrap_and_matches_sklearn():
    "One implementation: the per-feature interval is calibration.bootstrap_ci's (class-stratified, vectorised AUC)."
    from stronglens import calibration as C
    rng = np.random.default_rng(3)
    s = np.round(np.r_[rng.normal(0, 1, 500), rng.normal(0.4, 1, 120)], 1)      # ties on purpose
    y = np.r_[np.zeros(500), np.ones(120)].astype(int)
    r = V.folded_auc_ci(s, y, 1000, seed=0)
    assert r["auc_raw"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    b = C.bootstrap_ci(C.roc_auc, y, s, n_resamples=1000, seed=0, strata=y, vectorized=True)
    assert (r["ci_lower"], r["ci_upper"]) == (b.ci_lower, b.ci_upper)
    rr = np.random.default_rng(1); pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    ref = np.array([roc_auc_score(np.r_[np.ones(120), np.zeros(500)], np.r_[s[rr.choice(pos, 120)], s[rr.choice(neg, 500)]])
                    for _ in range(500)])
    assert b.replicates.std() == pytest.approx(ref.std(), rel=0.1)
    assert r["ci_lower"] == pytest.approx(np.quantile(ref, 0.025), abs=0.01)
    assert not hasattr(V, "bootstrap_auc") and not hasattr(V, "auc_score")           # no second implementation
    with pytest.raises(ValueError, match=">= 1000"):
        V.folded_auc_ci(s, y, 500)


def test_shortcut_table_fold_direction_and_flags():
    rng = np.random.default_rng(4)
    n = 400
    df = pd.DataFrame({"type": ["negative"] * n + ["positive"] * n, "quality_ok": True,
                       "core_brightness_r": np.r_[rng.normal(0, 1, n), rng.normal(-2.0, 1, n)],   # positives LOWER: red
                       "annulus_brightness_r": np.r_[rng.normal(0, 1, n), rng.normal(0.6, 1, n)],  # ~0.66: yellow
                       "outer_brightness_r": rng.normal(0, 1, 2 * n),                               # none: green
                       "azimuthal_asymmetry": np.r_[rng.normal(0, 1, n), rng.normal(3, 1, n)],      # physics
                       "mad_r": rng.normal(0, 1, 2 * n), "radial_gradient_r": np.nan})
    t = V.shortcut_auc_by_feature(df, n_bootstrap=1000, seed=0).set_index("feature")
    raw = roc_auc_score(np.r_[np.zeros(n), np.ones(n)], df.core_brightness_r)
    assert raw < 0.2 and t.loc["core_brightness_r", "auc"] == pytest.approx(1 - raw)
    assert t.loc["core_brightness_r", "direction"] == "positives_lower"
    assert t.loc["core_brightness_r", "ci_lower"] <= t.loc["core_brightness_r", "auc"] <= t.loc["core_brightness_r", "ci_upper"]
    assert t.flag.to_dict() == {"core_brightness_r": "red", "annulus_brightness_r": "yellow", "outer_brightness_r": "green",
                                "azimuthal_asymmetry": "expected_physics", "mad_r": "green",
                                "radial_gradient_r": "insufficient_data"}
    assert t.loc["azimuthal_asymmetry", "severity"] == "red"
    assert V.severity(0.5999) == "green" and V.severity(0.60) == "yellow" and V.severity(0.80) == "red"


def test_quality_gates_values():
    df = pd.DataFrame({"type": ["positive"] * 4 + ["negative"] * 6, "quality_ok": [True] * 9 + [False],
                       "core_brightness_r": [2.0, 2.2, 2.4, 9.0, 2.0, 2.0, 2.0, 2.0, 2.0, 100.0]})
    g = V.quality_gates(df)
    assert g["core_brightness_ratio"]["value"] == pytest.approx(2.3 / 2.0) and not g["core_brightness_ratio"]["passed"]
    assert g["nan_rejection_rate"]["value"] == pytest.approx(0.1) and not g["nan_rejection_rate"]["passed"]
    assert V.quality_gates(df, 1.2, 0.2) == {"core_brightness_ratio": {"value": pytest.approx(1.15), "threshold": 1.2, "passed": True},
                                             "nan_rejection_rate": {"value": pytest.approx(0.1), "threshold": 0.2, "passed": True}}


def test_schema_accepts_spec_example_and_rejects_broken():
    V.validate_summary(SPEC_EXAMPLE)
    import copy
    for mutate in (lambda d: d.pop("shortcut_features"), lambda d: d["gates"].pop("core_brightness_ratio"),
                   lambda d: d["gates"]["nan_rejection_rate"].update(passed="yes"),
                   lambda d: d["shortcut_features"]["core_brightness_r"].pop("ci_lower"),
                   lambda d: d["shortcut_features"]["core_brightness_r"].update(auc=0.3),   # must be folded (>= 0.5)
                   lambda d: d.update(quality_pass_rate=1.5), lambda d: d.update(positives=2.5),
                   lambda d: d.update(timestamp="2026-02-09 08:54:38")):
        d = copy.deepcopy(SPEC_EXAMPLE)
        mutate(d)
        with pytest.raises(jsonschema.ValidationError):
            V.validate_summary(d)


def test_schema_written_to_file(tmp_path):
    p = V.write_summary_schema(str(tmp_path / "summary.schema.json"))
    schema = json.loads(Path(p).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(SPEC_EXAMPLE, schema)


def _dataset(tmp_path, n=60, pos_kw=None):
    from stronglens.gates import synthetic_stamps
    xs = np.concatenate([synthetic_stamps(n, seed=1), synthetic_stamps(n, seed=2, arc=True, **(pos_kw or {}))])
    gids = [f"o{k:03d}" for k in range(2 * n)]
    for g, a in zip(gids, xs): write_cutout(str(tmp_path / "cut" / f"{g}.npz"), a, _meta(g))
    return pd.DataFrame({"galaxy_id": gids, "s3_path": [str(tmp_path / "cut" / f"{g}.npz") for g in gids],
                         "label": [0] * n + [1] * n, "split": "test"})


def test_report_folder_local(tmp_path):
    man = _dataset(tmp_path)
    man.loc[len(man)] = dict(galaxy_id="lost", s3_path=str(tmp_path / "nope.npz"), label=1, split="test")
    url, summary, metrics, shortcut = V.run_validation(man, str(tmp_path / "validation"), progress=False, n_jobs=1)
    d = Path(url)
    assert d.parent == tmp_path / "validation" and len(d.name) == 15 and d.name[8] == "_"       # YYYYmmdd_HHMMSS
    assert sorted(p.name for p in d.iterdir()) == sorted(V.REPORT_FILES)
    assert [p.name for p in d.parent.iterdir()] == [d.name]                                     # nothing temporary left
    s = json.loads((d / "summary.json").read_text())
    V.validate_summary(s)
    assert list(s)[:8] == ["pipeline_version", "timestamp", "total_cutouts", "positives", "negatives",
                           "quality_pass_rate", "gates", "shortcut_features"]
    assert (s["total_cutouts"], s["positives"], s["negatives"]) == (121, 61, 60)
    assert s["quality_pass_rate"] == pytest.approx(120 / 121, abs=1e-6)
    assert set(s["shortcut_features"]) == set(V.FEATURES)
    assert list(pd.read_parquet(d / "per_cutout_metrics.parquet").columns) == V.METRIC_COLUMNS
    assert pd.read_parquet(d / "failed_cutouts.parquet").galaxy_id.tolist() == ["lost"]
    sc = pd.read_parquet(d / "shortcut_auc_by_feature.parquet")
    assert {"feature", "auc", "ci_lower", "ci_upper", "flag"} <= set(sc.columns) and len(sc) == 6
    with pytest.raises(FileExistsError):
        V.write_report(str(tmp_path / "validation"), summary, metrics, shortcut)


@pytest.mark.s3
def test_report_folder_s3(tmp_path, s3_bucket):
    from stronglens.config import get_fs
    man = _dataset(tmp_path, n=20)
    url, summary, *_ = V.run_validation(man, f"s3://{s3_bucket}/validation", progress=False, n_jobs=1)
    fs, path = get_fs(url)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path)) == sorted(V.REPORT_FILES)
    V.validate_summary(json.loads(fs.cat_file(path + "/summary.json")))


def test_planted_core_shortcut_flags(tmp_path):
    "A brighter-deflector shortcut: core_brightness_ratio gate fails and core_brightness_r is flagged; clean passes."
    out = {}
    for name, kw in [("clean", {}), ("bright", dict(brightness=1.6))]:
        (tmp_path / name).mkdir()
        man = _dataset(tmp_path / name, n=80, pos_kw=kw)
        _, s, _, _ = V.run_validation(man, str(tmp_path / name / "validation"), progress=False, n_jobs=1)
        out[name] = s
    c, b = out["clean"], out["bright"]
    assert c["gates"]["core_brightness_ratio"]["passed"] and c["gates"]["nan_rejection_rate"]["passed"]
    assert not b["gates"]["core_brightness_ratio"]["passed"]
    assert b["shortcut_features"]["core_brightness_r"]["flag"] in ("yellow", "red")
    assert b["shortcut_features"]["core_brightness_r"]["auc"] > c["shortcut_features"]["core_brightness_r"]["auc"] + 0.15
    assert c["shortcut_features"]["core_brightness_r"]["flag"] == "green"


def test_validation_config_section(tmp_path):
    from stronglens.config import load_config, ConfigError
    p = tmp_path / "run.yaml"
    p.write_text("run: {name: t, seed: 1}\nvalidation: {auc_red: 0.85, gates_n: 512, expected_physics: [azimuthal_asymmetry, annulus_brightness_r]}\n")
    cfg = load_config(p)
    assert isinstance(cfg.validation, V.ValidationConfig)
    assert cfg.validation.auc_red == 0.85 and cfg.validation.gates_n == 512 and cfg.validation.n_bootstrap == 1000
    p.write_text("run: {name: t, seed: 1}\nvalidation: {n_bootstrap: 10}\n")
    with pytest.raises(ConfigError, match="n_bootstrap"):
        load_config(p)


# ---------------------------------------------------------------- run-relative paths and the validate stage
def test_run_validation_resolves_run_relative_paths(tmp_path):
    man = _dataset(tmp_path, n=10)
    man["s3_path"] = [f"cut/{g}.npz" for g in man.galaxy_id]                     # relative to the run folder
    man.loc[len(man)] = dict(galaxy_id="lost", s3_path="cut/lost.npz", label=0, split="test")
    url, s, metrics, _ = V.run_validation(man, str(tmp_path / "validation"), progress=False, n_jobs=1, root=str(tmp_path))
    assert s["quality_pass_rate"] == pytest.approx(20 / 21, abs=1e-6)
    f = pd.read_parquet(Path(url) / "failed_cutouts.parquet")
    assert f.galaxy_id.tolist() == ["lost"] and f.path.tolist() == ["cut/lost.npz"]


def _stage_run(run: Path, n=80, halo=0.01, preprocessing="residual", missing=0, validation=None):
    "A run folder whose catalogs, cutouts and train stages are done (real markers, no mock sky)."
    import yaml
    from stronglens.config import config_from_dict, atomic_write_parquet, atomic_write_json
    from stronglens.runs import stage_run
    from stronglens.gates import synthetic_stamps
    (run / "inputs").mkdir(parents=True, exist_ok=True)
    training = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["training"]
    training["dataset"]["preprocessing"] = preprocessing
    cfg = config_from_dict({"run": {"name": "t", "seed": 0}, "catalogs": {"sweep_dir": str(run / "inputs")},
                            "cutouts": {"source": "legacysurvey"}, "training": training,
                            "validation": {"n_jobs": 1, "gates_n": 0, **(validation or {})}})
    X = np.concatenate([synthetic_stamps(n, seed=61), synthetic_stamps(n, seed=62, arc=True, halo=halo)])
    gid = [f"g{k:04d}" for k in range(2 * n)]
    quiet = lambda m: None
    with stage_run(run, "catalogs", cfg, log=quiet) as st:
        atomic_write_parquet(pd.DataFrame({"s3_path": [f"cutouts/{g}.npz" for g in gid], "galaxy_id": gid, "label": [0] * n + [1] * n,
                                           "split": np.where(np.arange(2 * n) % 5 == 0, "train", "test")}), st.path("training_manifest.parquet"))
    with stage_run(run, "cutouts", cfg, log=quiet) as st:
        for g, a in list(zip(gid, X))[missing:]: write_cutout(st.path(f"{g}.npz"), a, _meta(g))
    with stage_run(run, "train", cfg, log=quiet) as st:
        atomic_write_json(st.path("train_summary.json"), {})
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("preprocessing", ["raw_robust", "residual"])
def test_validate_stage_preprocessed_gate_fails_planted_halo(tmp_path, preprocessing):
    "gates.json's 'preprocessed' radial gate fails on a planted halo whatever the training preprocessing (13.1)."
    cfg = _stage_run(tmp_path / "run", preprocessing=preprocessing)
    res = V.run_validate_stage(cfg, str(tmp_path / "run"), progress=False)
    g = json.loads((tmp_path / "run" / "validation" / "gates.json").read_text())
    pre = g["results"]["preprocessed"]
    assert pre["core_pixels"] == preprocessing and pre["radial_pixels"] == "raw_robust"
    assert pre["radial_passed"] is False and g["passed"] is False and res["shortcut_gates_passed"] is False
    assert g["results"]["raw"]["radial_pixels"] == "raw" and g["results"]["raw"]["radial_passed"] is False
    marker = json.loads((tmp_path / "run" / "validation" / "_stage.json").read_text())
    assert marker["status"] == "done" and marker["result"]["report"] == res["report"]
    out = V.read_validation(str(tmp_path / "run"))
    assert len(out["metrics"]) == 160 and out["summary"]["total_cutouts"] == 160
    assert V.run_validate_stage(cfg, str(tmp_path / "run"), progress=False) == res          # unchanged: skipped


@pytest.mark.slow
def test_validate_stage_clean_run_passes_gates_and_records_failures(tmp_path):
    cfg = _stage_run(tmp_path / "run", halo=0.0, preprocessing="residual", missing=1)
    res = V.run_validate_stage(cfg, str(tmp_path / "run"), progress=False)
    g = json.loads((tmp_path / "run" / "validation" / "gates.json").read_text())
    assert g["results"]["preprocessed"]["radial_passed"] is True, g                    # the gate can pass, too
    marker = json.loads((tmp_path / "run" / "validation" / "_stage.json").read_text())
    assert marker["status"] == "done_with_failures"                                    # 1 of 160 files missing
    assert pd.read_parquet(tmp_path / "run" / res["report"] / "failed_cutouts.parquet").path.tolist() == ["cutouts/g0000.npz"]


def test_validate_stage_fails_loudly_past_the_failure_threshold(tmp_path):
    from stronglens.runs import StageError
    cfg = _stage_run(tmp_path / "run", n=20, missing=5)
    with pytest.raises(StageError, match="5 of 40 cutout files unreadable"):
        V.run_validate_stage(cfg, str(tmp_path / "run"), progress=False)
    assert json.loads((tmp_path / "run" / "validation" / "_stage.json").read_text())["status"] == "failed"


def test_validate_stage_refuses_missing_upstream(tmp_path):
    from stronglens.config import config_from_dict
    from stronglens.runs import StageOrderError
    (tmp_path / "inputs").mkdir()
    cfg = config_from_dict({"run": {"name": "t", "seed": 0}, "catalogs": {"sweep_dir": str(tmp_path / "inputs")},
                            "cutouts": {"source": "legacysurvey"}})
    with pytest.raises(StageOrderError):
        V.run_validate_stage(cfg, str(tmp_path), progress=False)

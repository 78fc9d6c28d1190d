"Shortcut gates (spec §4): features vs brute-force references, CV (not in-sample) AUCs, planted shortcuts, the CLI."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from stronglens import gates as G
from stronglens.cutouts import write_cutout

ROOT = Path(__file__).resolve().parents[1]


def _meta(gid):
    return {"galaxy_id": gid, "ra": 1.0, "dec": 2.0, "type": "SER", "nobs_z": 3, "psfsize_z": 1.1, "flux_r": 5.0,
            "cutout_url": "", "download_timestamp": ""}


def test_core_features_box_and_layouts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 101, 101, 3)).astype(np.float32)
    f = G.core_features(x)
    assert f.shape == (2, 16 * 16 * 3)
    # brute force: rows/cols 42..57 inclusive, bands last, C order
    ref = np.array([[x[n, i, j, b] for i in range(42, 58) for j in range(42, 58) for b in range(3)] for n in range(2)])
    np.testing.assert_array_equal(f, ref)
    np.testing.assert_array_equal(G.core_features(np.moveaxis(x, -1, 1)), f)       # (N, 3, H, W) accepted
    with pytest.raises(ValueError, match="3 bands"):
        G.core_features(np.zeros((2, 101, 101, 4)))


def test_radial_profile_matches_nanmedian_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 101, 101, 3)).astype(np.float32)
    x[1, 40:45, 40:60, 2] = np.nan
    x[2, 50, 50, :] = np.nan                                   # annulus 0 (one pixel) all-NaN -> NaN feature
    p = G.radial_profile_features(x, batch_size=2)
    assert p.shape == (3, 51 * 3)
    i, j = np.indices((101, 101))
    ring = np.floor(np.sqrt((i - 50.0) ** 2 + (j - 50.0) ** 2)).astype(int)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.array([[[np.nanmedian(x[n, :, :, b][ring == a]) for a in range(51)] for b in range(3)]
                        for n in range(3)]).reshape(3, -1)
    np.testing.assert_allclose(p, ref, rtol=1e-6, equal_nan=True)
    assert np.isnan(p[2, 0])


def test_cv_is_out_of_fold_not_in_sample():
    "Pure noise, many features: in-sample AUC ~1, the gate's CV AUC ~0.5 (the original's in-sample mistake)."
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(400, 768)), rng.integers(0, 2, 400)
    insample = roc_auc_score(y, LogisticRegression(max_iter=2000).fit(X, y).decision_function(X))
    auc, oof = G.cv_auc(X, y, k=5, seed=3, return_oof=True)
    assert insample > 0.99
    assert abs(auc - 0.5) < 0.08
    # the out-of-fold scores really are out of fold: refitting on everything reproduces none of them
    assert not np.allclose(oof, G.make_probe().fit(X, y).decision_function(X))
    assert G.cv_auc(X, y, k=5, seed=3) == auc                                         # seeded


def test_cv_auc_input_errors():
    with pytest.raises(ValueError, match="at least k=5"):
        G.cv_auc(np.zeros((8, 3)), [0, 0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="labels must be 0/1"):
        G.cv_auc(np.zeros((10, 3)), [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


@pytest.fixture(scope="module")
def planted():
    n = 200
    neg = G.synthetic_stamps(n, seed=11)
    y = np.r_[np.zeros(n), np.ones(n)]
    out = {}
    for name, kw in {"clean": {}, "bright_core": dict(brightness=1.5), "halo": dict(halo=0.01)}.items():
        out[name] = G.run_shortcut_gates(np.concatenate([neg, G.synthetic_stamps(n, seed=12, arc=True, **kw)]), y, seed=0)
    return out


def test_gates_pass_on_clean(planted):
    g = planted["clean"]
    assert g.passed, g.report()
    assert g.n == 400 and g.n_pos == 200


def test_core_gate_fails_on_bright_core_shortcut(planted):
    g, c = planted["bright_core"], planted["clean"]
    assert not g.core_passed and not g.passed
    assert g.core_lr_auc > c.core_lr_auc + 0.1


def test_radial_gate_fails_on_profile_shortcut(planted):
    g, c = planted["halo"], planted["clean"]
    assert not g.radial_passed
    assert g.radial_profile_auc > c.radial_profile_auc + 0.2


def test_gate_results_thresholds_are_strict():
    assert G.GateResults(0.5499, 0.5999).passed
    g = G.GateResults(0.55, 0.60)
    assert not g.core_passed and not g.radial_passed
    d = g.to_dict()
    assert d["core_threshold"] == 0.55 and d["radial_threshold"] == 0.60 and d["passed"] is False


def test_sample_split_balanced_and_seeded():
    man = pd.DataFrame({"galaxy_id": [f"g{i}" for i in range(2000)], "label": (np.arange(2000) % 40 == 0).astype(int),
                        "split": np.where(np.arange(2000) % 2 == 0, "test", "train")})
    s = G.sample_split(man, "test", 200, seed=1)
    assert len(s) == 200 and (s.split == "test").all() and s.galaxy_id.is_unique
    assert s.label.sum() == 50                                     # all 50 test positives (fewer than n/2)
    assert s.equals(G.sample_split(man, "test", 200, seed=1))
    assert not s.equals(G.sample_split(man, "test", 200, seed=2))
    assert G.sample_split(man, "test", 200, seed=1, balance="proportional").label.sum() == 10


def _write_dataset(root: Path, pos_kw: dict, n: int = 80, arc: bool = True):
    neg = G.synthetic_stamps(n, seed=21)
    pos = G.synthetic_stamps(n, seed=22, arc=arc, **pos_kw)
    rows = []
    for lab, xs in ((0, neg), (1, pos)):
        for k, a in enumerate(xs):
            gid = f"{'p' if lab else 'n'}{k:04d}"
            url = str(root / "cutouts" / f"{gid}.npz")
            write_cutout(url, a, _meta(gid))
            rows.append(dict(s3_key=url, s3_path=url, galaxy_id=gid, filename=f"{gid}.npz", label=lab,
                             cutout_type="positive" if lab else "negative", split="test" if k % 4 else "train"))
    (root / "manifests").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "manifests" / "m.parquet", index=False)
    spec_cfg = yaml.safe_load((ROOT / "configs" / "unpaired_matched_raw.yaml").read_text())
    spec_cfg["dataset"]["manifest_path"] = "manifests/m.parquet"          # relative to the config file's folder
    (root / "cfg.yaml").write_text(yaml.safe_dump(spec_cfg))
    return root / "cfg.yaml"


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    "The spec's command: exit 0 when both gates pass, 1 when one fails, 2 on bad input; prints PASS/FAIL."
    clean = _write_dataset(tmp_path / "clean", {}, n=200, arc=False)   # both classes one population; 300 test rows
    bright = _write_dataset(tmp_path / "bright", dict(brightness=2.0), n=80)
    run = lambda cfg, *extra: subprocess.run([sys.executable, "-m", "stronglens.gates", "--config", str(cfg), "--split",
                                              "test", "--n", "2048", *extra], capture_output=True, text=True, cwd=ROOT)
    r = run(clean, "--preprocessing", "raw", "--json", str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "core_lr_auc" in r.stdout and "radial_profile_auc" in r.stdout and "FAIL" not in r.stdout
    assert (tmp_path / "g.json").exists()
    assert run(clean).returncode == 0                     # config preprocessing (raw_robust) applied
    r = run(bright)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "raw_robust" in r.stdout
    # `stronglens run gates --run-dir DIR`: the run folder's config.yaml and manifests/training_manifest.parquet
    import shutil
    shutil.copy(clean.parent / "manifests" / "m.parquet", clean.parent / "manifests" / "training_manifest.parquet")
    shutil.copy(clean, clean.parent / "config.yaml")
    assert G.main(["--run-dir", str(clean.parent), "--preprocessing", "raw"]) == 0
    from stronglens.cli import main as cli_main
    assert cli_main(["run", "gates", "--run-dir", str(clean.parent), "--preprocessing", "raw"]) == 0
    assert G.main(["--config", str(clean), "--split", "nosuchsplit"]) == 2
    assert G.main(["--config", str(tmp_path / "missing.yaml")]) == 2


# ---------------------------------------------------------------- 13.1: the radial gate under `residual`
def _halo_run(root: Path, preprocessing: str, n: int = 120) -> Path:
    "A run folder (run-relative manifest paths) whose positives carry a planted halo, trained with `preprocessing`."
    neg, pos = G.synthetic_stamps(n, seed=41), G.synthetic_stamps(n, seed=42, arc=True, halo=0.01)
    rows = []
    for lab, xs in ((0, neg), (1, pos)):
        for k, a in enumerate(xs):
            gid = f"{'p' if lab else 'n'}{k:04d}"
            write_cutout(str(root / "cutouts" / f"{gid}.npz"), a, _meta(gid))
            rows.append(dict(s3_key=f"{gid}.npz", s3_path=f"cutouts/{gid}.npz", galaxy_id=gid, filename=f"{gid}.npz",
                             label=lab, cutout_type="positive" if lab else "negative", split="test"))
    (root / "manifests").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "manifests" / "training_manifest.parquet", index=False)
    cfg = yaml.safe_load((ROOT / "configs" / "unpaired_matched_raw.yaml").read_text())
    cfg["dataset"]["preprocessing"] = preprocessing
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def halo_stamps():
    n = 150
    X = np.concatenate([G.synthetic_stamps(n, seed=41), G.synthetic_stamps(n, seed=42, arc=True, halo=0.01)])
    return X, np.r_[np.zeros(n), np.ones(n)]


def test_residual_pixels_have_no_radial_profile_and_the_gate_refuses_them(halo_stamps):
    "The defect: on residual pixels the radial features are identically zero, so the gate 'passed' (AUC ~0.5)."
    X, y = halo_stamps
    res, _ = G.apply_preprocessing(X, mode="residual")
    f = G.radial_profile_features(res)
    assert np.nanstd(f, axis=0).max() < 1e-4 * np.nanstd(res)
    with pytest.raises(ValueError, match="no radial profile.*residual"):
        G.radial_lr_auc(res, y)
    with pytest.raises(ValueError, match="no radial profile"):
        G.run_shortcut_gates(res, y)


@pytest.mark.parametrize("mode", ["raw", "raw_robust"])
def test_planted_halo_fails_radial_gate_on_raw_and_raw_robust(halo_stamps, mode):
    X, y = halo_stamps
    px, _ = G.apply_preprocessing(X, mode=mode)
    assert G.radial_lr_auc(px, y, seed=0) >= G.RADIAL_PROFILE_AUC_THRESHOLD


def test_radial_gate_mode_and_radial_xs(halo_stamps):
    assert [G.radial_gate_mode(m) for m in ("raw", "raw_robust", "residual")] == ["raw", "raw_robust", "raw_robust"]
    X, y = halo_stamps
    res, rr = G.apply_preprocessing(X, mode="residual")[0], G.apply_preprocessing(X, mode="raw_robust")[0]
    g = G.run_shortcut_gates(res, y, seed=0, radial_xs=rr)
    assert not g.radial_passed
    assert g.core_lr_auc == G.core_lr_auc(res, y, seed=0)                 # the core gate still sees residual pixels
    with pytest.raises(ValueError, match="radial-gate images"):
        G.run_shortcut_gates(res, y, radial_xs=rr[:10])


@pytest.mark.parametrize("preprocessing", ["raw", "raw_robust", "residual"])
def test_planted_halo_is_a_failed_gate_whatever_the_training_preprocessing(tmp_path, preprocessing):
    "gates_from_config with the config's preprocessing (the 'preprocessed' gate of gates.json, the CLI default)."
    run = _halo_run(tmp_path / "run", preprocessing)
    from stronglens.config import load_config
    res, info = G.gates_from_config(load_config(str(run / "config.yaml")), n=0, seed=0, root=str(run),
                                    manifest_path=str(run / "manifests" / "training_manifest.parquet"))
    assert info["preprocessing"] == preprocessing and res.core_pixels == preprocessing
    assert res.radial_pixels == ("raw" if preprocessing == "raw" else "raw_robust")
    assert not res.radial_passed and not res.passed, res.report()
    assert info["radial_passed"] is False and info["n"] == 240


@pytest.mark.slow
def test_cli_default_fails_planted_halo_under_residual(tmp_path, capsys):
    run = _halo_run(tmp_path / "run", "residual")
    assert G.main(["--run-dir", str(run), "--n", "0", "--json", str(tmp_path / "g.json")]) == 1
    out = capsys.readouterr().out
    assert "GATES FAILED" in out and "[raw_robust pixels]" in out and "[residual pixels]" in out
    import json
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["radial_pixels"] == "raw_robust" and d["radial_passed"] is False
    from stronglens.cli import main as cli_main
    assert cli_main(["run", "gates", "--run-dir", str(run), "--n", "0"]) == 1
    # explicitly asking for the radial gate on residual pixels is refused with the reason, not passed
    assert G.main(["--run-dir", str(run), "--radial-preprocessing", "residual"]) == 2
    assert "no radial profile" in capsys.readouterr().err


def test_load_gate_sample_resolves_run_relative_paths(tmp_path):
    run = _halo_run(tmp_path / "run", "raw", n=10)
    X, y, rows, n_failed = G.load_gate_sample(str(run / "manifests" / "training_manifest.parquet"), n=0, root=str(run))
    assert X.shape == (20, 101, 101, 3) and n_failed == 0 and rows.s3_path[0] == str(run / "cutouts" / "n0000.npz")

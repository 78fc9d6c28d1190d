"""The `inject` stage on real pipelines (mock sky v2).

* On the tiny pipeline (a 2.5 x 2.5 deg sky, ~70 positives, 4 epochs): the closure test on every planted test-split lens
  of a Sérsic mock (injections and lenses alike) must hold, with the power to see a gap of 0.3.
* The completeness trends and the clumpy-mock gap need a model that sees arcs: the tiny model does not (test AUC ~0.67,
  completeness flat at ~0.1 in θE and arc S/N), the demo model does. Those tests read the session's demo run
  (`demo_run` in conftest.py, configs/demo.yaml); the clumpy gap uses a clumpy twin of its sky (a sky stage, the same
  lenses with clumpy sources) scored by its model, never a second demo-sized pipeline.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

STRONGLENS = str(Path(sys.executable).with_name("stronglens"))
STAGES = ["sky", "catalogs", "cutouts", "train", "inject"]
# the tiny config, the injection section a test needs (few injections per cell, the mock's own source prior)
OVERRIDES = ["injection.n_per_cell=12", "injection.source_prior=sky", "injection.closure_k_neighbours=12",
             "training.train.epochs=4"]


def _pipeline(run: Path, extra=()):
    for s in STAGES:
        cmd = [STRONGLENS, "run", s, "--run-dir", str(run), "--config", "tiny"]
        for o in list(OVERRIDES) + list(extra): cmd += ["-p", o]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
        if r.returncode != 0:
            pytest.fail(f"stage {s} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads((run / "injection" / "closure.json").read_text())


@pytest.fixture(scope="module")
def sersic(tmp_path_factory):
    run = tmp_path_factory.mktemp("inj-sersic") / "run"
    return run, _pipeline(run)


def cochran_armitage(k, n, x) -> tuple[float, float]:
    "Cochran–Armitage trend test of pooled binomial counts k of n along scores x: (z, two-sided p); z > 0: rising."
    k, n, x = (np.asarray(a, np.float64) for a in (k, n, x)); N = n.sum(); p = k.sum() / N
    T = np.sum(x * (k - n * p)); V = p * (1 - p) * (np.sum(n * x * x) - np.sum(n * x) ** 2 / N)
    z = T / np.sqrt(V) if V > 0 else 0.0
    return float(z), float(2 * stats.norm.sf(abs(z)))


def test_cochran_armitage_matches_the_logistic_score_test():
    "The trend statistic equals the score test of a logistic-regression slope (statsmodels-free: a direct fit)."
    rng = np.random.default_rng(0); x = np.repeat(np.arange(6.0), 80); y = rng.uniform(size=len(x)) < 0.02 + 0.08 * x
    k = np.bincount(x.astype(int), weights=y); n = np.bincount(x.astype(int))
    z, p = cochran_armitage(k, n, np.arange(6.0))
    pbar = y.mean(); score = np.sum(x * (y - pbar)); info = pbar * (1 - pbar) * np.sum((x - x.mean()) ** 2)
    assert abs(z - score / np.sqrt(info)) < 1e-9 and z > 3 and p < 1e-3
    assert cochran_armitage([5, 5, 5], [50, 50, 50], [1, 2, 3])[0] == 0.0


def _marginal(run, axis):
    m = pd.read_csv(run / "injection" / "completeness_marginals.csv")
    return m[(m.axis == axis) & (m.n_injected > 0)]


@pytest.mark.slow
def test_completeness_falls_with_psf_fwhm(demo_run):
    "Pooled counts along the PSF axis of the demo run: a falling trend (Cochran–Armitage z < 0) significant at p < 0.01."
    run, _, _ = demo_run
    ps = _marginal(run, "psf")
    assert len(ps) >= 3 and len(pd.read_parquet(run / "injection" / "completeness.parquet")) == 385
    z, p = cochran_armitage(ps.n_detected, ps.n_injected, ps.centre)
    assert z < 0 and p < 0.01, (z, p, ps[["centre", "n_injected", "n_detected"]])


@pytest.mark.slow
def test_completeness_rises_with_arc_snr(demo_run):
    """The demo finder sees arcs: completeness rises with the injected arc S/N (Cochran–Armitage over five S/N bins,
    p < 1e-4), and arcs with S/N > 10 are found at least four times as often as those with S/N < 2 (mostly invisible)."""
    run, _, _ = demo_run
    t = pd.read_parquet(run / "injection" / "injections.parquet")
    b = np.digitize(t.arc_snr, [2.0, 5.0, 10.0, 20.0])
    k, n = np.bincount(b, weights=t.detected.astype(float), minlength=5), np.bincount(b, minlength=5)
    z, p = cochran_armitage(k, n, np.arange(5.0))
    c_faint, c_bright = k[0] / n[0], k[3:].sum() / n[3:].sum()
    assert n.min() >= 20 and z > 0 and p < 1e-4, (z, p, k, n)
    assert c_bright > 4 * c_faint, (c_bright, c_faint, k, n)


@pytest.mark.slow
def test_completeness_rises_with_theta_e_over_the_whole_grid(demo_run):
    """Pooled counts along the θE axis of the demo run (spec §6 priors: μ 5-30): a rising trend (Cochran–Armitage z > 0)
    significant at p < 0.01. Measured: z +5.8 with the demo model trained on clean negatives (+4.6 and +3.8 with two
    earlier models); under the mock's own source prior (no μ cut) the marginal is a hump that follows the prior's arc
    S/N(θE) (z 0.0 on this model, -0.6 ... +0.8 on five earlier ones), see configs/demo.yaml."""
    run, _, _ = demo_run
    assert json.loads((run / "injection" / "closure.json").read_text())["priors"]["source_prior"] == "spec"
    te = _marginal(run, "theta_e")
    assert len(te) == 11
    z, p = cochran_armitage(te.n_detected, te.n_injected, te.centre)
    assert z > 0 and p < 0.01, (z, p, te[["centre", "n_injected", "n_detected"]])


@pytest.mark.slow
def test_closure_holds_on_the_sersic_mock(sersic):
    _, doc = sersic
    assert doc["source_model"] == "sersic" and doc["priors"]["source_prior"] == "sky"
    pl = doc["planted"]
    assert pl["status"] == "ok" and pl["n_supported"] >= 40, pl
    assert not pl["significant"] and pl["difference_ci"][0] < 0 < pl["difference_ci"][1], pl
    assert pl["min_detectable_gap"] < 0.3, pl


@pytest.mark.slow
def test_clumpy_twin_control_agrees_and_the_gap_is_measured(clumpy_twin):
    "The Sérsic control agrees within its interval; the clumpy twin's difference is reported with interval, p and power."
    co, tw = clumpy_twin["control"], clumpy_twin["twin"]
    assert co["source_model"] == "sersic" and tw["source_model"] == "clumpy"
    c0, c1 = co["closure"], tw["closure"]
    assert c0["status"] == c1["status"] == "ok" and c0["n_supported"] >= 100 and c1["n_supported"] >= 100, (c0, c1)
    assert not c0["significant"] and c0["difference_ci"][0] < 0 < c0["difference_ci"][1], c0        # Sérsic: agrees
    for k in ("difference", "p_value", "min_detectable_gap"): assert np.isfinite(c1[k]), (k, c1)
    assert c1["difference_ci"][0] < c1["difference"] < c1["difference_ci"][1] and 0 < c1["min_detectable_gap"] < 0.1, c1
    assert co["probe"]["status"] == tw["probe"]["status"] == "ok", (co["probe"], tw["probe"])


@pytest.mark.slow
def test_closure_flags_the_clumpy_twin(clumpy_twin):
    """Issue 15: the closure test flags the gap on the clumpy mock, with its size and significance. Measured on the demo
    model: clumpy twins of the 942 planted test lenses (601 supported) found 10.3 % vs 5.2 % predicted from Sérsic
    injections, +5.1 % [+2.4, +7.9] %, p 0.0003, smallest detectable gap 4.0 % (bluer, knottier arcs are found more
    often than smooth injections predict); the Sérsic control +1.3 % [-1.4, +3.9] %, p 0.35."""
    co, tw = clumpy_twin["control"], clumpy_twin["twin"]
    c0, c1 = co["closure"], tw["closure"]
    assert c1["significant"] and abs(c1["difference"]) > c1["min_detectable_gap"], c1
    assert not (c1["difference_ci"][0] < 0 < c1["difference_ci"][1]), c1                    # the interval excludes 0
    assert not c0["significant"], c0


@pytest.mark.slow
def test_probe_matches_hosts_and_groups_its_folds(clumpy_twin):
    """The probe's hosts are matched to the deflectors' look (r mag, g-r, SHAPE_R) and its folds grouped by host. Measured
    on the demo's Sérsic control: 0.641 [0.577, 0.708] with look-matched hosts, 0.765 [0.731, 0.796] with hosts matched
    on PSF and depth only (0.80 before grouping the folds); the matched hosts' median |delta r mag| 0.37 vs 1.44."""
    co, tw = clumpy_twin["control"]["probe"], clumpy_twin["twin"]["probe"]
    for p in (co, tw):
        c = p["conditions_only"]
        assert p["status"] == c["status"] == "ok" and p["grouped"] and c["grouped"] and p["host_matched"] and not c["host_matched"], p
        assert p["median_abs_dmag_r"] < 0.5 * c["median_abs_dmag_r"] and p["median_abs_dlog_shape_r"] < 0.5 * c["median_abs_dlog_shape_r"], p
        assert p["ci_upper"] < c["auc"], p                       # the hosts' share: matching them lowers the AUC
    assert tw["auc"] > co["auc"], (co, tw)                      # the clumpy twin reads higher (0.677 vs 0.641 measured)
    ceiling = clumpy_twin["probe_twin_vs_control"]
    assert ceiling["status"] == "ok" and ceiling["grouped"] and ceiling["n_real"] == ceiling["n_injected"] >= 500, ceiling


@pytest.mark.slow
def test_probe_is_clearly_higher_on_the_clumpy_twin(clumpy_twin, demo_run):
    """Issue 15: the feature-probe AUC is clearly higher on the clumpy mock than on the Sérsic control. Compared where arcs
    can be seen: planted lenses at least as bright as the listed ones (arc S/N >= the listed lenses' 10 % quantile, 3.03
    on the demo; the median planted arc has S/N 1.4 and shows no morphology to any probe). Measured on the demo: control
    0.610 [0.538, 0.684] (236 lenses), twin 0.719 [0.661, 0.772] (216), paired difference +0.109 [0.037, 0.176], p 0.001;
    on all 942 planted lenses 0.641 vs 0.677 (the features' ceiling twin vs control there 0.548)."""
    run, _, _ = demo_run
    truth = pd.read_parquet(run / "sky" / "lens_truth.parquet")
    d, co, tw = clumpy_twin["probe_difference"], clumpy_twin["control"]["probe_bright"], clumpy_twin["twin"]["probe_bright"]
    assert d["min_arc_snr"] == pytest.approx(np.quantile(truth.arc_snr[truth.listed.astype(bool)], 0.1)), d
    assert co["status"] == tw["status"] == "ok" and co["grouped"] and tw["host_matched"] and min(co["n_real"], tw["n_real"]) >= 100, (co, tw)
    assert d["difference"] == pytest.approx(tw["auc"] - co["auc"]), (d, co, tw)
    assert d["difference"] > 0.05 and d["difference_ci"][0] > 0 and d["p_not_higher"] < 0.01 and tw["auc_ci"][0] > 0.5, (d, co, tw)

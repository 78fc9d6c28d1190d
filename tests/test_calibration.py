"Calibration module: bootstrap and binomial intervals (coverage), ECE/Brier/reliability vs scikit-learn, temperature scaling, strata."
import math

import numpy as np
import pandas as pd
import pytest
from astropy.stats import binom_conf_interval
from scipy import stats
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from stronglens import calibration as C


def _wmean(x, weights=None):
    return x.mean() if weights is None else (weights @ x) / weights.sum(axis=1)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_matches_scipy_percentile_interval():
    x = np.random.default_rng(0).lognormal(size=300)
    r = C.bootstrap_ci(np.median, x, n_resamples=5000, seed=1)
    s = stats.bootstrap((x,), np.median, n_resamples=5000, method="percentile", random_state=1).confidence_interval
    assert r.estimate == np.median(x)
    assert abs(r.ci_lower - s.low) < 0.03 and abs(r.ci_upper - s.high) < 0.03
    assert len(r.replicates) == 5000 and r.ci == 0.95


def test_bootstrap_covers_known_mean_at_nominal_rate():
    "95% percentile intervals of a mean cover the true mean in ~95% of 400 independent experiments."
    rng = np.random.default_rng(2)
    hits = []
    for k in range(400):
        r = C.bootstrap_ci(_wmean, rng.normal(3.0, 1.5, 150), seed=k, vectorized=True)
        hits.append(r.ci_lower <= 3.0 <= r.ci_upper)
    cov = np.mean(hits)
    assert 0.915 <= cov <= 0.98, cov                   # binomial sd at 400 trials ~ 0.011


def test_bootstrap_ci_level_changes_width_and_is_seeded():
    x = np.random.default_rng(3).normal(size=200)
    r68, r95 = C.bootstrap_ci(np.mean, x, ci=0.68, seed=4), C.bootstrap_ci(np.mean, x, ci=0.95, seed=4)
    assert r68.ci_upper - r68.ci_lower < r95.ci_upper - r95.ci_lower
    np.testing.assert_array_equal(r95.replicates, C.bootstrap_ci(np.mean, x, seed=4).replicates)
    assert not np.array_equal(r95.replicates, C.bootstrap_ci(np.mean, x, seed=5).replicates)


def test_bootstrap_vectorized_equals_plain_and_blocks_do_not_matter():
    x = np.random.default_rng(5).normal(size=123)
    a = C.bootstrap_replicates(_wmean, x, n_resamples=1000, seed=9)
    b = C.bootstrap_replicates(_wmean, x, n_resamples=1000, seed=9, vectorized=True)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bootstrap_strata_keep_group_sizes():
    y = np.r_[np.zeros(95), np.ones(5)].astype(int)
    s = np.random.default_rng(6).normal(size=100) + y
    reps = C.bootstrap_replicates(lambda yy, ss: yy.sum(), y, s, n_resamples=1000, seed=0, strata=y)
    assert (reps == 5).all()                            # every replicate keeps the 5 positives
    free = C.bootstrap_replicates(lambda yy, ss: yy.sum(), y, s, n_resamples=1000, seed=0)
    assert free.min() < 5 < free.max()


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match=">= 1000"):
        C.bootstrap_ci(np.mean, np.ones(10), n_resamples=999)
    with pytest.raises(ValueError, match="unequal lengths"):
        C.bootstrap_ci(lambda a, b: 0.0, np.ones(10), np.ones(9))
    with pytest.raises(ValueError, match="ci"):
        C.bootstrap_ci(np.mean, np.ones(10), ci=95)
    r = C.bootstrap_ci(np.mean, np.zeros(0))
    assert np.isnan(r.estimate) and np.isnan(r.ci_lower)


# ---------------------------------------------------------------- binomial intervals
@pytest.mark.parametrize("method", ["wilson", "jeffreys"])
def test_binomial_intervals_match_astropy(method):
    k, n = np.array([0, 1, 2, 10, 29, 30, 4]), np.array([30, 30, 30, 30, 30, 30, 5])
    for ci in (0.68, 0.95, 0.99):
        got = np.array(C.binomial_interval(k, n, ci, method))
        np.testing.assert_allclose(got, binom_conf_interval(k, n, ci, interval=method), atol=1e-10)


@pytest.mark.parametrize("method", ["wilson", "jeffreys"])
def test_binomial_intervals_cover_at_nominal_rate_by_simulation(method):
    "Simulated experiments (not the exact formula): average coverage over p in [0.05, 0.95] is ~95%."
    rng = np.random.default_rng(7)
    covs = []
    for p in np.linspace(0.05, 0.95, 19):
        k = rng.binomial(40, p, 4000)
        lo, hi = C.binomial_interval(k, np.full(len(k), 40), 0.95, method)
        covs.append(np.mean((lo <= p) & (p <= hi)))
    assert 0.935 <= np.mean(covs) <= 0.965, np.mean(covs)
    assert min(covs) > 0.88


def test_binomial_interval_edges_and_errors():
    lo, hi = C.wilson_interval([0, 5], [5, 5])
    assert lo[0] == 0.0 and hi[1] == 1.0 and 0 < hi[0] < 1 and 0 < lo[1] < 1
    assert all(np.isnan(C.jeffreys_interval(0, 0)))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        C.wilson_interval(6, 5)
    with pytest.raises(ValueError, match="method"):
        C.binomial_interval(1, 2, method="wald")
    # vectorised over a grid (injection's 385 cells)
    k = np.random.default_rng(0).integers(0, 201, (11, 7, 5))
    lo, hi = C.wilson_interval(k, np.full(k.shape, 200))
    assert lo.shape == (11, 7, 5) and (lo <= k / 200).all() and (k / 200 <= hi).all()


def test_exact_coverage_helper_agrees_with_simulation():
    rng = np.random.default_rng(8)
    k = rng.binomial(25, 0.3, 200000)
    lo, hi = C.wilson_interval(k, np.full(len(k), 25))
    assert abs(np.mean((lo <= 0.3) & (0.3 <= hi)) - C.binomial_coverage(0.3, 25)) < 0.003


# ---------------------------------------------------------------- AUC
def test_roc_auc_against_sklearn_with_ties_nan_and_weights():
    rng = np.random.default_rng(9)
    y, s = rng.integers(0, 2, 2000), np.round(rng.normal(size=2000), 1)
    s[::97] = np.nan
    ok = np.isfinite(s)
    assert C.roc_auc(y, s) == pytest.approx(roc_auc_score(y[ok], s[ok]), abs=1e-12)
    W = rng.integers(0, 4, (5, 2000))
    np.testing.assert_allclose(C.roc_auc(y, s, W), [roc_auc_score(y[ok], s[ok], sample_weight=w[ok]) for w in W], atol=1e-12)
    w1 = rng.uniform(size=2000)
    assert C.roc_auc(y, s, w1) == pytest.approx(roc_auc_score(y[ok], s[ok], sample_weight=w1[ok]), abs=1e-12)
    assert np.isnan(C.roc_auc([0, 0], [0.1, 0.2])) and np.isnan(C.roc_auc([0, 1], [np.nan, np.nan]))


def test_auc_bootstrap_ci_covers_known_auc():
    "Binormal model with known AUC = Phi(d / sqrt(2)): class-stratified intervals cover it at ~95%."
    d, true = 1.0, stats.norm.cdf(1.0 / math.sqrt(2))
    rng = np.random.default_rng(10)
    hits = []
    for k in range(150):
        y = np.r_[np.zeros(300), np.ones(60)].astype(int)
        s = rng.normal(size=360) + d * y
        r = C.bootstrap_ci(C.roc_auc, y, s, strata=y, vectorized=True, seed=k)
        hits.append(r.ci_lower <= true <= r.ci_upper)
    assert 0.89 <= np.mean(hits) <= 0.99, np.mean(hits)


# ---------------------------------------------------------------- reliability, ECE, Brier
@pytest.fixture(scope="module")
def probs():
    rng = np.random.default_rng(11)
    p = rng.beta(0.4, 2.5, 8000)
    y = (rng.uniform(size=8000) < np.sqrt(p)).astype(int)          # miscalibrated on purpose
    return y, p


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_bins_match_sklearn(probs, strategy, n_bins):
    y, p = probs
    rc = C.reliability_curve(y, p, n_bins, strategy)
    pt, pp = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(rc.fraction_positive, pt, atol=1e-12)
    np.testing.assert_allclose(rc.mean_predicted, pp, atol=1e-12)
    assert rc.n.sum() == len(y) and rc.n_pos.sum() == y.sum()
    assert ((rc.ci_lower <= rc.fraction_positive) & (rc.fraction_positive <= rc.ci_upper)).all()


def test_reliability_equal_count_bins(probs):
    y, p = probs
    assert C.reliability_curve(y, p, 8, "quantile").n.tolist() == [1000] * 8


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_matches_definition_on_sklearn_curve(probs, strategy):
    y, p = probs
    pt, pp = calibration_curve(y, p, n_bins=10, strategy=strategy)
    edges = np.linspace(0, 1, 11) if strategy == "uniform" else np.percentile(p, np.linspace(0, 100, 11))
    ids = np.clip(np.digitize(p, edges[1:-1], right=True), 0, 9)      # (lo, hi] bins, first bin closed
    n, npos = np.bincount(ids, minlength=10), np.bincount(ids, weights=y, minlength=10)
    keep = n > 0
    n, npos = n[keep], npos[keep]
    assert C.expected_calibration_error(y, p, 10, strategy) == pytest.approx((n * np.abs(pt - pp)).sum() / n.sum(), abs=1e-12)
    ece_pos = (npos * np.abs(pt - pp)).sum() / npos.sum()
    assert C.expected_calibration_error(y, p, 10, strategy, "positive") == pytest.approx(ece_pos, abs=1e-12)


def test_ece_never_on_a_single_class():
    assert np.isnan(C.expected_calibration_error(np.ones(50), np.linspace(0, 1, 50)))
    assert np.isnan(C.expected_calibration_error(np.zeros(50), np.linspace(0, 1, 50), weight_by="negative"))
    m = C.calibration_metrics(np.ones(10), np.full(10, 0.7))
    assert np.isnan(m["ece"]) and np.isnan(m["ece_positive"]) and m["brier"] == pytest.approx(0.09)


def test_brier_matches_sklearn(probs):
    y, p = probs
    assert C.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    w = np.random.default_rng(0).uniform(size=len(y))
    assert C.brier_score(y, p, w) == pytest.approx(brier_score_loss(y, p, sample_weight=w), abs=1e-15)


def test_probability_input_errors():
    with pytest.raises(ValueError, match="outside"):
        C.brier_score([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="non-finite"):
        C.reliability_curve([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        C.expected_calibration_error([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="strategy"):
        C.reliability_curve([0, 1], [0.2, 0.8], strategy="kmeans")


# ---------------------------------------------------------------- temperature scaling
@pytest.mark.parametrize("T", [0.4, 1.0, 2.5, 6.0])
def test_temperature_scaling_recovers_known_temperature(T):
    rng = np.random.default_rng(int(T * 100))
    z = rng.normal(-2.0, 2.0, 30000)
    y = (rng.uniform(size=z.size) < expit(z)).astype(int)
    ts = C.TemperatureScaler().fit(T * z, y)
    assert ts.temperature_ == pytest.approx(T, rel=0.05)
    ref = math.exp(minimize_scalar(lambda lt: C.log_loss_logits(y, T * z / math.exp(lt)), bounds=(-6, 6),
                                   method="bounded", options={"xatol": 1e-11}).x)
    assert ts.temperature_ == pytest.approx(ref, rel=1e-5)
    assert ts.nll_after_ <= ts.nll_before_ + 1e-12 and ts.n_samples_fit_ == z.size
    np.testing.assert_allclose(ts.predict_proba(T * z[:5]), expit(T * z[:5] / ts.temperature_))
    np.testing.assert_allclose(ts.fit_transform(T * z, y), T * z / ts.temperature_)


def test_temperature_scaler_is_a_sklearn_estimator():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    ts = C.TemperatureScaler(max_iter=30)
    assert clone(ts).get_params() == {"max_iter": 30}
    with pytest.raises(NotFittedError):
        ts.transform([0.1])
    with pytest.raises(ValueError, match="both classes"):
        ts.fit([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        ts.fit([0.1, np.inf], [0, 1])
    ts.fit(np.c_[[-1.0, 1.0, 2.0, -3.0]], [0, 1, 1, 0])                 # (n, 1) accepted
    assert ts.transform(np.c_[[1.0]]).shape == (1,)


def test_temperature_scale_scores_fits_on_val_only():
    rng = np.random.default_rng(12)
    n = 9000
    z = rng.normal(-3.0, 2.0, n)
    df = pd.DataFrame({"galaxy_id": np.arange(n).astype(str), "split": np.repeat(["train", "val", "test"], n // 3),
                       "label": (rng.uniform(size=n) < expit(z)).astype(int), "logit": 2.0 * z})
    df.loc[df.split == "test", "logit"] *= 10            # test rows must not influence T
    df.loc[5, "logit"] = np.nan
    scaler, table, out = C.temperature_scale_scores(df, seed=0)
    val = df[df.split == "val"]
    assert scaler.temperature_ == pytest.approx(C.TemperatureScaler().fit(val.logit, val.label).temperature_, rel=1e-9)
    assert scaler.temperature_ == pytest.approx(2.0, rel=0.1)
    assert np.isnan(out.loc[5, "p_lens_calibrated"]) and out.p_lens_calibrated.notna().sum() == n - 1
    assert list(table.index) == ["before", "after"] and table.loc["after", "temperature"] == scaler.temperature_
    assert table.loc["before", "n"] == (df.split == "test").sum()
    for c in ("ece", "brier"):
        assert (table[f"{c}_ci_lower"] <= table[c]).all() and (table[c] <= table[f"{c}_ci_upper"]).all()
    with pytest.raises(ValueError, match="no finite scores in split 'calib'"):
        C.temperature_scale_scores(df, fit_split="calib")


# ---------------------------------------------------------------- strata
def _toy(n=4000, seed=13):
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"label": (rng.uniform(size=n) < 0.15).astype(int),
                      "nobs_z_bin": rng.choice(["1-2", "3-5", "6-10", "11+"], n)})
    d["p_lens"] = expit(rng.normal(-2, 1, n) + 2.5 * d.label)
    return d


def test_stratum_table_numbers_equal_direct_computation():
    d = _toy()
    thr = C.threshold_at_fpr(d.label, d.p_lens, 0.05)
    t = C.stratum_table(d, "nobs_z_bin", thr, seed=1).set_index("stratum")
    assert list(t.index) == ["1-2", "11+", "3-5", "6-10", "all"]
    assert t.loc[["1-2", "11+", "3-5", "6-10"], "n"].sum() == t.loc["all", "n"] == len(d)
    for s, g in [*d.groupby("nobs_z_bin"), ("all", d)]:
        r = t.loc[s]
        assert r.auc == pytest.approx(roc_auc_score(g.label, g.p_lens), abs=1e-12)
        det = g.p_lens >= thr
        assert r.recall == pytest.approx(det[g.label == 1].mean()) and r.fpr == pytest.approx(det[g.label == 0].mean())
        assert r.precision_manifest == pytest.approx((det & (g.label == 1)).sum() / det.sum())
        assert r.brier == pytest.approx(brier_score_loss(g.label, g.p_lens))
        assert r.auc_ci_lower <= r.auc <= r.auc_ci_upper and r.recall_ci_lower <= r.recall <= r.recall_ci_upper
    assert t.loc["all", "fpr"] <= 0.05
    assert "class ratio" in C.stratum_table(d, "nobs_z_bin", thr).attrs["prevalence_caveat"]


def test_stratum_table_single_class_stratum_has_no_ece_or_auc():
    d = pd.concat([_toy(), pd.DataFrame({"label": [1] * 4, "nobs_z_bin": "only-lenses", "p_lens": [0.9, 0.8, 0.2, 0.95]})])
    t = C.stratum_table(d, "nobs_z_bin", 0.5, recall_interval="jeffreys").set_index("stratum")
    r = t.loc["only-lenses"]
    assert np.isnan(r.ece) and np.isnan(r.ece_positive) and np.isnan(r.auc) and r.note == "no negatives"
    assert r.recall == 0.75 and np.isnan(r.fpr)
    lo, hi = C.jeffreys_interval(3, 4)
    assert (r.recall_ci_lower, r.recall_ci_upper) == (pytest.approx(float(lo)), pytest.approx(float(hi)))


def test_stratum_curves_area_equals_table_auc():
    d = _toy()
    cv = C.stratum_curves(d, "nobs_z_bin")
    t = C.stratum_table(d, "nobs_z_bin", 0.5).set_index("stratum")
    for s, g in cv[cv.curve == "roc"].groupby("stratum"):
        assert np.trapezoid(g.y, g.x) == pytest.approx(t.loc[s, "auc"], abs=1e-9)
    pr = cv[(cv.curve == "pr") & (cv.stratum == "all")]
    assert pr.x.max() == 1.0 and pr.y.between(0, 1).all()


def test_attach_strata_and_threshold():
    pool = pd.DataFrame({"galaxy_id": ["n1", "n2"], "nobs_z_bin": ["3-5", "11+"], "type_bin": ["REX", "SER"],
                         "psfsize_z": [1.2, 1.6], "psfdepth_z_mag": [23.6, 22.1]})
    pos = pd.DataFrame({"galaxy_id": ["p1"], "nobs_z_bin": ["6-10"], "type_bin": ["DEV"], "psfsize_z": [0.95],
                        "psfdepth_z_mag": [np.nan]})
    s = C.attach_strata(pd.DataFrame({"galaxy_id": ["p1", "n2", "n1", "zz"], "label": [1, 0, 0, 0]}), pos, pool)
    assert s.psf_bin.tolist() == ["<1.10", ">=1.50", "1.10-1.30", "unknown"]
    assert s.depth_bin.tolist() == ["unknown", "<23.00", "23.50-24.00", "unknown"]
    assert s.type_bin.tolist() == ["DEV", "SER", "REX", "unknown"]
    y, p = np.r_[np.zeros(1000), 1], np.r_[np.linspace(0, 1, 1000), 1.0]
    t = C.threshold_at_fpr(y, p, 0.01)
    assert (p[:1000] >= t).sum() == 10 and (p[:1000] >= np.nextafter(t, 0)).sum() == 11
    with pytest.raises(ValueError, match="no finite negative"):
        C.threshold_at_fpr([1, 1], [0.2, 0.3], 0.1)


def test_precision_at_prevalence():
    assert C.precision_at_prevalence(1.0, 0.0, 1e-4) == 1.0
    assert C.precision_at_prevalence(0.8, 0.01, 1e-4) == pytest.approx(0.8e-4 / (0.8e-4 + 0.01 * (1 - 1e-4)))


def test_stratum_recall_bootstrap_equals_plain_bootstrap_of_the_mean():
    "The vectorised recall interval in stratum_table is the plain bootstrap of the detected fraction (same draws)."
    d = _toy()
    thr = 0.5
    t = C.stratum_table(d, "nobs_z_bin", thr, seed=3).set_index("stratum")
    g = d[d.nobs_z_bin == "3-5"]
    hit = (g.p_lens[g.label == 1] >= thr).to_numpy(float)
    r = C.bootstrap_ci(np.mean, hit, seed=3)
    assert (t.loc["3-5", "recall_ci_lower"], t.loc["3-5", "recall_ci_upper"]) == pytest.approx((r.ci_lower, r.ci_upper), abs=1e-12)

"""Injection-recovery (stronglens.injection): grid, priors, hosts, bookkeeping, lookup, closure and probe statistics."""
import os

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import RegularGridInterpolator

from stronglens.config import ConfigError, config_from_dict, from_dict
from stronglens.cutouts import read_cutout
from stronglens.injection import (
    AXES, LENSPOP_SOURCE_COLOURS, CellContext, InjectionConfig, axis_centres, bin_index, closure_test, colour_table,
    completeness, completeness_table, completeness_vs_snr, detection_threshold, feature_probe, grid_cells, host_table,
    make_scorer, marginal_completeness, run_cell, run_cells_local, sample_lens, sample_source, snr_target_mass,
    synthetic_host_run)


# ---------------------------------------------------------------- the grid
def test_grid_has_the_spec_385_cells_and_centres():
    cells = grid_cells()
    assert len(cells) == 385 and cells.cell_id.tolist() == list(range(385))
    assert sorted(cells.theta_e.unique()) == [0.5 + 0.25 * k for k in range(11)]
    assert sorted(cells.psf_fwhm.unique()) == [0.9, 1.05, 1.2, 1.35, 1.5, 1.65, 1.8]
    assert sorted(cells.depth.unique()) == [22.5, 23.0, 23.5, 24.0, 24.5]
    assert len(cells.drop_duplicates(["i_theta_e", "i_psf", "i_depth"])) == 385
    # bin edges at the half steps, contiguous
    np.testing.assert_allclose(cells.theta_e_hi - cells.theta_e_lo, 0.25)
    np.testing.assert_allclose(cells.psf_hi - cells.psf_lo, 0.15)
    np.testing.assert_allclose(cells.depth_hi - cells.depth_lo, 0.5)
    np.testing.assert_allclose((cells.theta_e_lo + cells.theta_e_hi) / 2, cells.theta_e)


def test_bin_index_half_open_and_outside():
    c = axis_centres(22.5, 24.5, 0.5)
    got = bin_index([22.25, 22.7499, 22.75, 24.7499, 24.75, 22.2, np.nan, np.inf], c, 0.5)
    assert got.tolist() == [0, 0, 1, 4, -1, -1, -1, -1]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="injection.threshold_kind"):
        config_from_dict({"run": {}, "injection": {"threshold_kind": "auc"}})
    with pytest.raises(ConfigError, match="injection.n_per_cel"):
        config_from_dict({"run": {}, "injection": {"n_per_cel": 3}})
    assert config_from_dict({"run": {}, "injection": {"n_per_cell": 7}}).injection.n_per_cell == 7


# ---------------------------------------------------------------- priors
def test_priors_inside_the_spec_ranges():
    c = InjectionConfig(proposals_per_round=6)
    rng = np.random.default_rng(11)
    e = rng.uniform(0, 0.4, 240); a = rng.uniform(0, np.pi, 240)
    lens = sample_lens(0.875, 1.125, e * np.cos(2 * a), e * np.sin(2 * a), rng, c)
    table = np.array([[0.4, 0.1], [-0.4, 0.7]])        # rows far apart: each source's row is identifiable
    src = sample_source(lens, 12, table, c)
    assert ((lens["theta_E"] >= 0.875) & (lens["theta_E"] < 1.125)).all()
    assert ((src["mag_r"] >= 22) & (src["mag_r"] <= 26)).all()
    assert ((src["magnification"] >= 5) & (src["magnification"] <= 30)).all()
    row = np.where(src["g_minus_r"] > 0, 0, 1)
    assert (np.abs(src["g_minus_r"] - table[row, 0]) <= 0.2).all() and (np.abs(src["r_minus_z"] - table[row, 1]) <= 0.2).all()
    assert 0.3 < row.mean() < 0.7
    assert (np.hypot(src["center_x"], src["center_y"]) <= lens["theta_E"] + 1e-9).all()
    assert (np.abs(lens["gamma1"]) <= c.shear_max).all() and (np.abs(lens["gamma2"]) <= c.shear_max).all()


def test_deflector_follows_the_host_light():
    rng = np.random.default_rng(0)
    n = 3000
    lens = sample_lens(1.0, 1.0, np.full(n, 0.0), np.full(n, 0.25), rng)      # light: |e| = 0.25 at 45°
    phi = np.degrees(0.5 * np.arctan2(lens["e2"], lens["e1"]))
    q = (1 - np.hypot(lens["e1"], lens["e2"])) / (1 + np.hypot(lens["e1"], lens["e2"]))
    assert abs(np.median(phi) - 45) < 1 and 8 < np.std(phi) < 12
    assert abs(np.median(q) - 0.75 / 1.25) < 0.02


def test_colour_table_sources(tmp_path):
    assert colour_table().tolist() == LENSPOP_SOURCE_COLOURS.tolist()
    truth = pd.DataFrame({"listed": [True, False, True], "src_g_minus_r": [0.1, 9, np.nan], "src_r_minus_z": [0.2, 9, 0.3]})
    assert colour_table(truth=truth).tolist() == [[0.1, 0.2]]                   # listed and finite only
    p = tmp_path / "c.csv"; pd.DataFrame({"g_minus_r": [0.3], "r_minus_z": [0.5]}).to_csv(p, index=False)
    assert colour_table(str(p)).tolist() == [[0.3, 0.5]]
    pd.DataFrame({"gr": [0.3]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="lacks column"):
        colour_table(str(p))


# ---------------------------------------------------------------- hosts
def test_hosts_are_test_split_negatives_only(tmp_path):
    synthetic_host_run(str(tmp_path), n=12, seed=1, n_train=5)
    man = pd.read_parquet(tmp_path / "manifests/training_manifest.parquet")
    pool = pd.read_parquet(tmp_path / "manifests/negative_pool.parquet")
    man.loc[0, "label"] = 1                                                     # a test positive is not a host
    man.loc[1, "split"] = "val"                                                 # nor a validation negative
    h = host_table(man, pool, str(tmp_path), exclude_ids=[man.galaxy_id[2]])    # nor an excluded (true lens) id
    assert set(h.galaxy_id) == set(man.galaxy_id[3:12])
    assert h.path.map(os.path.isabs).all() and h.path.map(os.path.exists).all()


def _hosts(tmp_path, n=40, seed=0):
    synthetic_host_run(str(tmp_path), n=n, seed=seed)
    return host_table(pd.read_parquet(tmp_path / "manifests/training_manifest.parquet"),
                      pd.read_parquet(tmp_path / "manifests/negative_pool.parquet"), str(tmp_path))


def test_failed_hosts_are_excluded_not_scored(tmp_path):
    hosts = _hosts(tmp_path, n=40, seed=3)
    cell = grid_cells().iloc[0].to_dict()
    key = hosts.groupby(["i_psf", "i_depth"]).size().idxmax()
    cell.update(i_psf=int(key[0]), i_depth=int(key[1]), cell_id=7, i_theta_e=4, theta_e_lo=1.375, theta_e_hi=1.625)
    pool = hosts[(hosts.i_psf == key[0]) & (hosts.i_depth == key[1])]
    assert len(pool) >= 3
    bad = pool.path.iloc[:2].tolist()
    with open(bad[0], "wb") as f: f.write(b"not an npz")
    arr, meta = read_cutout(bad[1]); arr[:] = np.nan; np.savez_compressed(bad[1][:-4], cutout=arr, **{f"meta_{k}": v for k, v in meta.items()})
    ctx = CellContext(InjectionConfig(n_per_cell=12), hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle", "snr_cut": 5.0})
    r = run_cell(cell, ctx, make_scorer(ctx.scorer))
    assert sorted(r.failures.path) == sorted(bad) and (r.failures.cell_id == 7).all()
    assert len(r.injections) == 12 and not set(r.injections.galaxy_id) & set(pool.galaxy_id.iloc[:2])
    assert r.n_hosts_available == len(pool) - 2 and np.isfinite(r.injections.p_lens).all()
    # a cell whose hosts all fail is empty, with the reason
    for p in pool.path.iloc[2:]:
        with open(p, "wb") as f: f.write(b"x")
    r = run_cell(cell, ctx, make_scorer(ctx.scorer))
    assert len(r.injections) == 0 and r.reason == f"all {len(pool)} hosts of the cell failed to load"


def test_empty_cell_reason(tmp_path):
    hosts = _hosts(tmp_path, n=10, seed=4)
    cell = grid_cells().query("i_psf == 0 and i_depth == 0").iloc[0].to_dict()          # PSF 0.9", depth 22.5: no host there
    ctx = CellContext(InjectionConfig(n_per_cell=4), hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle"})
    r = run_cell(cell, ctx, make_scorer(ctx.scorer))
    assert len(r.injections) == 0 and "no test-split negative with PSFSIZE_r in [0.825, 0.975)" in r.reason


def test_sparse_cell_draws_with_replacement(tmp_path):
    hosts = _hosts(tmp_path, n=30, seed=5)
    key = hosts.groupby(["i_psf", "i_depth"]).size().idxmin()
    cell = grid_cells().query(f"i_theta_e == 2 and i_psf == {key[0]} and i_depth == {key[1]}").iloc[0].to_dict()
    n_av = int(((hosts.i_psf == key[0]) & (hosts.i_depth == key[1])).sum())
    ctx = CellContext(InjectionConfig(n_per_cell=n_av + 5), hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle"})
    r = run_cell(cell, ctx, make_scorer(ctx.scorer))
    assert len(r.injections) == n_av + 5 and r.injections.host_replaced.all() and r.n_hosts <= n_av


# ---------------------------------------------------------------- threshold and bookkeeping
def test_threshold_at_fpr_counts_valid_test_negatives_only():
    p = np.r_[np.linspace(0, 0.5, 990), np.linspace(0.9, 0.99, 10)]
    sc = pd.DataFrame({"split": "test", "label": 0, "p_lens": p})
    sc = pd.concat([sc, pd.DataFrame({"split": ["test"] * 3 + ["val", "train"], "label": [0, 0, 1, 0, 0],
                                      "p_lens": [np.nan, np.nan, 0.95, 0.999, 0.999]})], ignore_index=True)
    t = detection_threshold(sc, "fpr", 0.01, split="test")
    assert t["n_negatives"] == 1000 and t["n_invalid"] == 2 and t["fpr"] == 0.01 and t["split"] == "test"
    assert np.mean(p >= t["value"]) <= 0.01 and np.mean(p >= np.nextafter(0.5, 0)) > 0.01
    assert detection_threshold(sc, "score", 0.3, split="test")["value"] == 0.3
    with pytest.raises(ValueError, match="no valid test-split negative"):
        detection_threshold(sc[sc.split != "test"], "fpr", 0.01, split="test")


def test_threshold_is_set_on_the_val_negatives_by_default():
    """The report measures FPR on the test negatives: the threshold must come from another split (val)."""
    rng = np.random.default_rng(0)
    sc = pd.DataFrame({"split": ["test"] * 500 + ["val"] * 500, "label": 0,
                       "p_lens": np.r_[rng.uniform(0, 1, 500), rng.uniform(0, 0.5, 500)]})
    t = detection_threshold(sc, "fpr", 0.02)
    val = sc.p_lens[sc.split == "val"].to_numpy()
    assert (t["split"], t["split_requested"], t["n_negatives"]) == ("val", "val", 500)
    assert np.mean(val >= t["value"]) == 0.02 and t["value"] < 0.5                    # set by the val scores, not the test ones
    t = detection_threshold(sc[sc.split == "test"], "fpr", 0.02)                       # no val negatives: test, and it says so
    assert (t["split"], t["split_requested"], t["n_negatives"]) == ("test", "val", 500)


def _fake_injections(rows):
    cells = grid_cells()
    inj = pd.DataFrame(rows, columns=["cell_id", "galaxy_id", "p_lens", "arc_snr"])
    inj["detected"] = inj.p_lens >= 0.5
    for a in AXES: inj[f"i_{a}"] = cells.set_index("cell_id").loc[inj.cell_id, f"i_{a}"].to_numpy()
    return cells, inj


def test_marginals_pool_counts_never_average_fractions():
    rows = [(0, "a", 0.9, 2), (0, "b", 0.1, 2), (0, "c", 0.8, 3), (0, "d", 0.2, 3)]          # 2/4
    rows += [(5, f"h{k}", 0.9, 6) for k in range(9)] + [(5, "x", 0.1, 6), (5, "y", np.nan, 6)]   # 9/10 (+ one NaN score)
    cells, inj = _fake_injections(rows)
    tab = completeness_table(inj, cells)
    assert tab.loc[[0, 5], "n_injected"].tolist() == [4, 10] and tab.loc[[0, 5], "completeness"].tolist() == [0.5, 0.9]
    m = marginal_completeness(inj, cells).query("axis == 'theta_e' and index == 0").iloc[0]
    assert (m.n_injected, m.n_detected) == (14, 11) and m.completeness == pytest.approx(11 / 14)   # not (0.5 + 0.9) / 2
    assert tab.completeness.isna().sum() == 383 and (tab.empty_reason[tab.n_injected == 0] != "").all()
    snr = completeness_vs_snr(inj)
    assert snr.n_injected.sum() == 14 and snr.set_index("snr_lo").loc[6, "n_detected"] == 9


def test_snr_target_reweighting_is_post_stratification():
    # cell 0: S/N bins [0,1) .. [4,5) detected fractions 0, 1/4, 2/4, 3/4, 1 (4 rows each), and 30 undetected rows at S/N 40
    rows = [(0, f"b{b}_{k}", 0.9 if k < b else 0.1, b + 0.5) for b in range(5) for k in range(4)]
    rows += [(0, f"h{k}", 0.1, 40.0) for k in range(30)] + [(5, f"x{k}", 0.9, 13.0) for k in range(20)]
    cells, inj = _fake_injections(rows)
    tab = completeness_table(inj, cells).set_index("cell_id")
    m = snr_target_mass(); w = np.r_[m[:5], m[13]]; w = w / w.sum()
    assert tab.loc[0, "completeness"] == pytest.approx(10 / 50)                          # the priors' mix
    assert tab.loc[0, "completeness_snr_target"] == pytest.approx(np.dot(w, [0, .25, .5, .75, 1, 0]))
    assert tab.loc[0, "n_eff_snr_target"] == pytest.approx(1 / np.sum(w ** 2 / np.array([4, 4, 4, 4, 4, 30])))
    assert tab.loc[0, "ci_lower_snr_target"] < tab.loc[0, "completeness_snr_target"] < tab.loc[0, "ci_upper_snr_target"]
    assert np.isnan(tab.loc[5, "completeness_snr_target"]) and tab.loc[5, "snr_target_coverage"] < 0.5   # S/N 13 only: no target support


# ---------------------------------------------------------------- lookup table
def test_lookup_interpolates_like_scipy_and_never_extrapolates(tmp_path):
    t = grid_cells()
    t["completeness"] = 0.1 + 0.2 * t.theta_e - 0.3 * (t.psf_fwhm - 0.9) + 0.05 * (t.depth - 22.5)
    rgi = RegularGridInterpolator([axis_centres(0.5, 3, .25), axis_centres(0.9, 1.8, .15), axis_centres(22.5, 24.5, .5)],
                                  t.completeness.to_numpy().reshape(11, 7, 5))
    pts = np.random.default_rng(0).uniform([0.5, 0.9, 22.5], [3.0, 1.8, 24.5], (300, 3))
    np.testing.assert_allclose(completeness(*pts.T, t), rgi(pts), atol=1e-12)
    t.to_csv(tmp_path / "c.csv", index=False); t.to_parquet(tmp_path / "c.parquet")
    for src in (str(tmp_path / "c.csv"), str(tmp_path / "c.parquet")):
        np.testing.assert_allclose(completeness(*pts[:5].T, src), rgi(pts[:5]), atol=1e-12)
    out = completeness([0.3, 3.2, 1.0, 1.0, 1.0], [1.2, 1.2, 0.8, 1.9, 1.2], [23, 23, 23, 23, 24.8], t)
    assert np.isnan(out).all()
    assert completeness(3.1, 1.85, 24.7, t) == pytest.approx(t.completeness.iloc[-1])      # outer half-cell: the edge cell
    t.loc[(t.i_theta_e == 4) & (t.i_psf == 2) & (t.i_depth == 1), "completeness"] = np.nan  # an empty cell
    assert np.isnan(completeness(1.6, 1.25, 23.2, t)) and np.isfinite(completeness(1.0, 1.25, 23.2, t))


# ---------------------------------------------------------------- closure and probe statistics
def _closure_world(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({"theta_e": rng.uniform(0.5, 3.0, n), "psf_fwhm": rng.uniform(0.9, 1.8, n),
                      "depth": rng.uniform(22.5, 24.5, n), "arc_snr": 10 ** rng.uniform(0, 2, n), "p_lens": 0.5})
    d["detected"] = d.arc_snr * d.theta_e / d.psf_fwhm > 12
    return d


def test_closure_agrees_when_real_lenses_are_like_injections():
    w = _closure_world()
    tg = w.sample(600, random_state=3); r = closure_test(w.drop(tg.index), tg)
    assert r["status"] == "ok" and not r["significant"] and r["difference_ci"][0] < 0 < r["difference_ci"][1]
    assert abs(r["predicted_recall"] - r["measured_recall"]) < 0.05


def test_closure_flags_a_gap_and_conditioning_matters():
    w = _closure_world()
    tg = w.sample(600, random_state=3).copy()
    tg["detected"] = tg.arc_snr / 1.6 * tg.theta_e / tg.psf_fwhm > 12          # real lenses harder to find at equal S/N
    r = closure_test(w.drop(tg.index), tg)
    assert r["significant"] and r["difference"] < 0 and r["difference_ci"][1] < 0
    assert 0 < r["min_detectable_gap"] < abs(r["difference"])
    # a selected population (bright arcs only): conditioning on S/N predicts it, the priors alone do not
    sel = w.sample(3000, random_state=4); sel = sel[sel.arc_snr > 30]
    r2 = closure_test(w.drop(sel.index), sel)
    assert not r2["significant"] and r2["predicted_recall"] > r2["predicted_recall_without_snr"] + 0.2


def test_closure_support_is_reported():
    w = _closure_world(4000)
    tg = pd.DataFrame({"theta_e": [1.0, 9.0], "psf_fwhm": [1.2, 1.2], "depth": [23.5, 23.5], "arc_snr": [10.0, 10.0], "detected": [True, True]})
    r = closure_test(w, tg)
    assert (r["n_supported"], r["n_unsupported"]) == (1, 1)


def test_feature_probe_separates_only_different_populations():
    rng = np.random.default_rng(1)
    same = feature_probe(rng.normal(0, 1, (100, 12)), rng.normal(0, 1, (100, 12)))
    diff = feature_probe(rng.normal(0.7, 1, (100, 12)), rng.normal(0, 1, (100, 12)))
    assert same["auc_ci"][0] < 0.5 < same["auc_ci"][1] + 0.1 and diff["auc"] > 0.9 and diff["auc_ci"][0] > same["auc_ci"][1]
    assert feature_probe(rng.normal(0, 1, (1, 4)), rng.normal(0, 1, (5, 4)))["status"].startswith("too few")


# ---------------------------------------------------------------- the oracle model (slow: real rendering)
@pytest.fixture(scope="module")
def synth_hosts(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracle")
    return _hosts(d, n=80, seed=7)


@pytest.mark.slow
def test_oracle_completeness_equals_fraction_above_the_cut(synth_hosts):
    cfg = InjectionConfig(n_per_cell=40)
    ctx = CellContext(cfg, synth_hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle", "snr_cut": 8.0})
    cells = grid_cells(cfg)
    keys = synth_hosts.groupby(["i_psf", "i_depth"]).size().sort_values().index[-2:]
    sel = cells[np.array([(p, d) in set(keys) for p, d in zip(cells.i_psf, cells.i_depth)]) & cells.i_theta_e.isin([0, 5, 10]).to_numpy()]
    res = run_cells_local(sel, ctx, n_workers=1, progress=False)
    inj = pd.concat([r.injections for r in res], ignore_index=True)
    inj["detected"] = inj.p_lens >= 0.5
    tab = completeness_table(inj, cells).set_index("cell_id").loc[sel.cell_id]
    frac = inj.assign(above=inj.arc_snr > 8.0).groupby("cell_id").above.mean().loc[sel.cell_id]
    np.testing.assert_array_equal(tab.completeness.to_numpy(), frac.to_numpy())
    assert (tab.n_injected == 40).all() and 0 < frac.mean() < 1            # the cut is inside the S/N range


@pytest.mark.slow
def test_oracle_interval_coverage_near_nominal_over_seeds(synth_hosts):
    cells = grid_cells()
    key = synth_hosts.groupby(["i_psf", "i_depth"]).size().idxmax()
    cell = cells.query(f"i_theta_e == 3 and i_psf == {key[0]} and i_depth == {key[1]}").iloc[0].to_dict()
    n, seeds = 20, range(60)
    runs = []
    for s in seeds:
        ctx = CellContext(InjectionConfig(n_per_cell=n, seed=s), synth_hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle", "snr_cut": 10.0})
        r = run_cell(cell, ctx, make_scorer(ctx.scorer)).injections.assign(detected=lambda d: d.p_lens >= 0.5)
        runs.append(completeness_table(r, cells).loc[cell["cell_id"]])
    truth = np.mean([t.completeness for t in runs])            # the cell's completeness: mean over all 1,200 injections
    assert 0.15 < truth < 0.85
    cover = np.mean([(t.ci_lower <= truth <= t.ci_upper) for t in runs])
    assert 0.86 <= cover <= 1.0, cover                          # nominal 0.95 (Wilson at n = 20 is 0.93-0.97); 60 seeds: 2.5 sigma


def test_sources_verified_by_the_render_give_the_cell_of_the_exact_sampler(tmp_path, monkeypatch):
    """`run_cell` accepts sources on their screened μ and lets the render's exact μ verify them (falling back to the
    sampler's own exact check when one is out of range): the cell must equal the cell whose sampler verified every
    accepted μ itself (the fallback, forced here), row for row; μ to float32 rounding (another batch computes it)."""
    import stronglens.injection as I
    hosts = _hosts(tmp_path, n=40, seed=5)
    key = hosts.groupby(["i_psf", "i_depth"]).size().idxmax()
    cell = grid_cells().iloc[0].to_dict()
    cell.update(i_psf=int(key[0]), i_depth=int(key[1]), cell_id=3, i_theta_e=6, theta_e_lo=1.875, theta_e_hi=2.125)
    ctx = CellContext(InjectionConfig(n_per_cell=40), hosts, LENSPOP_SOURCE_COLOURS, {"kind": "oracle", "snr_cut": 5.0})
    fast = run_cell(cell, ctx, make_scorer(ctx.scorer)).injections
    calls = []
    monkeypatch.setattr(I, "_mu_out_of_range", lambda *a: calls.append(1) or True)
    exact = run_cell(cell, ctx, make_scorer(ctx.scorer)).injections
    assert calls and (fast.n_draws > 1).any()
    pd.testing.assert_frame_equal(fast.drop(columns="magnification"), exact.drop(columns="magnification"))
    np.testing.assert_allclose(fast.magnification, exact.magnification, rtol=1e-6)
    assert ((fast.magnification >= 5) & (fast.magnification <= 30)).all()


def test_fast_cpu_scorer_gives_the_checkpoints_logits(tmp_path):
    """`CheckpointScorer` on a CPU scores with `cpu_inference_model` (conv + batch norm folded, channels_last): its logits
    must equal the checkpoint's own `LensScorer.predict` (the unfused model) to float32 rounding, on real DR10 cutouts,
    with batch-norm statistics far from the identity so that the folding matters, and in batches of any size."""
    import torch
    from stronglens.injection import CheckpointScorer
    from stronglens.model import build_model, model_config
    from stronglens.train import CHECKPOINT_FORMAT, LensScorer, save_checkpoint
    torch.manual_seed(1)
    m = build_model("small")
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3); mod.running_var.uniform_(0.3, 3.0); mod.weight.data.normal_(1, 0.5); mod.bias.data.normal_(0, 0.3)
    pre = {"mode": "residual", "annulus_r_in_px": 32.5, "annulus_r_out_px": 45.0, "clip": 10.0}
    ck = str(tmp_path / "m.pt")
    save_checkpoint(dict(format=CHECKPOINT_FORMAT, epoch=0, model=m.state_dict(), model_config=model_config("small"), preprocessing=pre), ck)
    from astropy.io import fits
    from pathlib import Path
    d = Path(__file__).resolve().parents[2] / "shared" / "data" / "cutout_service_fits"
    if not d.is_dir(): pytest.skip(f"{d} not present")
    X = np.stack([np.asarray(fits.getdata(f), np.float32).transpose(1, 2, 0)[i:i + 101, j:j + 101]
                  for f in sorted(d.glob("*.fits")) for i in (0, 150, 300) for j in (0, 150, 300)])
    ref = LensScorer.from_checkpoint(ck).predict(X)
    for bs in (256, 7):
        fast = CheckpointScorer(ck, batch_size=bs)
        assert fast.fast is not None and not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.fast.modules())
        got = fast(X)
        assert got.dtype == np.float32 and got.shape == ref.shape and np.ptp(ref) > 0.1
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(CheckpointScorer(ck, fast_cpu=False)(X), ref)

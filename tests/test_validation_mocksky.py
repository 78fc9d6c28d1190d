"""Gates and shortcut flags on the mock sky (`stronglens.mocksky`, v2) with and without a planted shortcut.

Mock sky v2 draws lens deflectors like real ones (massive red early types, r ≈ 19.3, g−r ≈ 1.65), unlike the pool's
average galaxy, and keeps lenses fainter than the catalog's pool cuts (z > 20, < 3 exposures, masked). So the
sample is built the way the pipeline builds its training set:
* positives: planted lenses that pass the pool cuts (issue 13.2: the same cuts as the negatives);
* negatives: pool galaxies (SER/DEV/REX, z < 20, >= 3 exposures per band, MASKBITS 1,5,6,7,11,12,13 clear, not a
  lens, not a confuser) matched in r magnitude and g−r to the realistic deflectors (the clean mock's positives),
  as the demo's catalog stage matches them (`negatives.stratification.match_*_bins`).
The same matching (to the realistic population) is used for every mock: a shortcut planted in the positives is then
a difference between the classes, which the gates must see. A control with nothing to find: "twins", the positives'
own deflectors rendered without their arcs under another noise seed. Two plants:
* the mock's own `shortcut: bright_core` (v2: Faber-Jackson zero point −1 mag). With the size-luminosity relation
  the deflectors also grow, so the plant is ~1.9× in total flux but only ~1.3× in the central r < 8 px mean;
* a pure bright core planted here: the same clean deflectors at 2.5× their flux (shape unchanged), against the twins."""
import glob

import numpy as np
import pandas as pd
import pytest

mocksky = pytest.importorskip("stronglens.mocksky")
from stronglens import gates as G
from stronglens import validation as V

N_LENSES = 250              # planted lenses on the 1 deg² sky (~80 pass the pool cuts)
REJECT_BITS = sum(1 << b for b in (1, 5, 6, 7, 11, 12, 13))
CORE_PX = 8.0               # spec §5: core_brightness_r is the mean r flux within r < 8 px


def _catalog(sky, sky_dir):
    "The sweep rows with galaxy_id, r, g−r, the pool cuts (`cut`), and lens / confuser flags."
    from stronglens.legacysurvey import read_sweep
    cols = ["BRICKNAME", "OBJID", "RA", "DEC", "TYPE", "FLUX_G", "FLUX_R", "FLUX_Z", "NOBS_G", "NOBS_R", "NOBS_Z", "MASKBITS"]
    sw = pd.concat([read_sweep(u, columns=cols) for u in sorted(glob.glob(f"{sky_dir}/sweep-*.fits"))], ignore_index=True)
    sw.columns = [c.lower() for c in sw.columns]
    gid = sw.brickname.astype(str).str.strip() + "_" + sw.objid.astype(str)
    fg, fr = (np.clip(sw[c].to_numpy(np.float64), 1e-6, None) for c in ("flux_g", "flux_r"))
    cut = (sw.type.astype(str).str.strip().isin(["SER", "DEV", "REX"]) & (sw.flux_z > 10 ** (-0.4 * (20 - 22.5)))
           & (sw.nobs_g >= 3) & (sw.nobs_r >= 3) & (sw.nobs_z >= 3) & ((sw.maskbits.astype(np.int64) & REJECT_BITS) == 0))
    return sw.assign(galaxy_id=gid, mag_r=22.5 - 2.5 * np.log10(fr), g_minus_r=-2.5 * np.log10(fg / fr), cut=cut,
                     lens=gid.isin(set(sky.lens_truth.galaxy_id)),
                     confuser=gid.isin(set(pd.read_csv(f"{sky_dir}/confusers.csv").galaxy_id)))


def _matched(pool, ref, n, seed=0, n_bins=4):
    "n pool rows drawn in the r × g−r cells (quantile bins of `ref`) in proportion to ref's counts."
    edges = [np.quantile(ref[c], np.linspace(0, 1, n_bins + 1))[1:-1] for c in ("mag_r", "g_minus_r")]
    cell = lambda d: np.digitize(d.mag_r, edges[0]) * n_bins + np.digitize(d.g_minus_r, edges[1])
    want, pc, rng = np.bincount(cell(ref), minlength=n_bins ** 2) * n / len(ref), cell(pool), np.random.default_rng(seed)
    take = [rng.choice(np.flatnonzero(pc == k), min(int(round(want[k])), int((pc == k).sum())), replace=False) for k in range(n_bins ** 2)]
    return pool.iloc[np.sort(np.concatenate(take))]


def _evaluate(Xn, Xp):
    "Gates, quality gates and shortcut features of negatives Xn against positives Xp."
    X, y = np.concatenate([Xn, Xp]), np.r_[np.zeros(len(Xn)), np.ones(len(Xp))]
    m = V.metrics_from_array(X, labels=y)
    return dict(y=y, gates=G.run_shortcut_gates(X, y, seed=0), quality=V.quality_gates(m),
                features=V.shortcut_auc_by_feature(m, n_bootstrap=1000, seed=0).set_index("feature"))


def _core_mean(X):
    "Mean r flux within r < 8 px (noise-free renders: the planted core brightness, independent of the gates)."
    i, j = np.indices(X.shape[1:3]); c = (X.shape[1] - 1) / 2
    return X[..., 1][:, np.hypot(i - c, j - c) < CORE_PX].mean(axis=1)


def _sky(tmp_path_factory, shortcut):
    d = str(tmp_path_factory.mktemp(f"sky_{shortcut}"))
    cfg = mocksky.SkyConfig(ra_min_deg=150.0, ra_max_deg=151.0, dec_min_deg=0.0, dec_max_deg=1.0, n_lenses=N_LENSES,
                            shortcut=shortcut, seed=7)
    mocksky.build_sky(cfg, d, progress=False)
    sky = mocksky.MockSky.open(d)
    noarc = mocksky.MockSky(sky.sky_dir, sky.meta, sky.sources, sky.bricks,
                            sky.comps[sky.comps.kind != mocksky.KIND_LENSED].reset_index(drop=True), sky.lens_truth, sky.known)
    return sky, noarc, _catalog(sky, d)


def _mock(tmp_path_factory, shortcut, ref=None):
    "Positives (pool-cut lenses) and matched negatives of one mock: stamps, gates, and noise-free core means."
    sky, noarc, cat = _sky(tmp_path_factory, shortcut)
    pos = cat[cat.lens & cat.cut]
    neg = _matched(cat[cat.cut & ~cat.lens & ~cat.confuser], pos if ref is None else ref, len(pos))
    ra, dec = pos.ra.to_numpy(), pos.dec.to_numpy()
    Xp, _ = sky.render(ra, dec, seed=1)
    Xn, _ = sky.render(neg.ra.to_numpy(), neg.dec.to_numpy(), seed=1)
    X1, _ = sky.render(ra, dec, noise=False, sky_offset=False)
    X0, _ = noarc.render(ra, dec, noise=False, sky_offset=False)
    return dict(sky=sky, noarc=noarc, cat=cat, pos=pos, neg=neg, Xp=Xp, Xn=Xn, core1=_core_mean(X1), core0=_core_mean(X0),
                **_evaluate(Xn, Xp))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    c = _mock(tmp_path_factory, "none")
    ra, dec = c["pos"].ra.to_numpy(), c["pos"].dec.to_numpy()
    c["Xp0"], _ = c["noarc"].render(ra, dec, seed=1)            # the positives without their arcs
    c["Xt"], _ = c["noarc"].render(ra, dec, seed=2)             # ... and their twins: another noise draw
    return c


@pytest.fixture(scope="module")
def bright(tmp_path_factory, clean):
    return _mock(tmp_path_factory, "bright_core", ref=clean["pos"])


def _ratio(e):
    return e["quality"]["core_brightness_ratio"]["value"]


@pytest.mark.slow
def test_sample_is_built_like_the_pipeline(clean, bright):
    "Enough positives pass the pool cuts, the negatives follow them in r and g−r, and the v2 plant is there."
    c, b = clean, bright
    assert len(c["pos"]) >= 60 and abs(len(c["neg"]) - len(c["pos"])) <= 3
    assert abs(c["pos"].mag_r.median() - c["neg"].mag_r.median()) < 0.2
    assert abs(c["pos"].g_minus_r.median() - c["neg"].g_minus_r.median()) < 0.1
    assert b["pos"].mag_r.median() < b["neg"].mag_r.median() - 0.4            # the plant: brighter deflectors (catalog)
    assert np.median(b["core0"]) > 1.15 * np.median(c["core0"])                # ... and brighter cores (pixels)


@pytest.mark.slow
def test_gates_pass_when_only_the_noise_differs(clean):
    "The positives' deflectors without arcs against their twins: nothing to find, every gate passes, no feature flagged."
    c = clean
    e = _evaluate(c["Xt"], c["Xp0"])
    assert e["gates"].passed, e["gates"].report()
    assert e["quality"]["core_brightness_ratio"]["passed"], e["quality"]
    assert (e["features"].flag.isin(["green", "expected_physics"])).all(), e["features"]


@pytest.mark.slow
def test_arc_light_alone_and_the_ratio_gate_measures_it(clean):
    """Positives against their twins (the same deflectors without arcs): only arc light differs. The core gate stays
    near random and the core brightness ratio equals the arcs' share of the core light in noise-free renders."""
    c = clean
    e = _evaluate(c["Xt"], c["Xp"])
    assert e["gates"].core_lr_auc < 0.6, e["gates"].report()
    planted = np.median(c["core1"]) / np.median(c["core0"])
    assert planted > 1.03 and abs(_ratio(e) - planted) < 0.05, (_ratio(e), planted)


@pytest.mark.slow
def test_core_gate_catches_deflectors_unmatched_in_size(clean):
    """With negatives matched in r and g−r only (the demo's matching), the realistic deflectors are still ~3× larger
    than the pool galaxies of the same magnitude and colour: the core gate fails with or without arcs — a shortcut a
    classifier could use ("big galaxy → lens"), which the gate must report, not arc light."""
    c, S = clean, clean["sky"].sources
    size = pd.Series(S.shape_r.to_numpy(), index=S.brickname.astype(str).str.strip() + "_" + S.objid.astype(str))
    assert size[c["pos"].galaxy_id].median() > 2 * size[c["neg"].galaxy_id].median()
    g0 = G.run_shortcut_gates(np.concatenate([c["Xn"], c["Xp0"]]), c["y"], seed=0)
    assert not g0.core_passed and not c["gates"].core_passed, (g0.report(), c["gates"].report())
    assert (c["features"].loc[["core_brightness_r", "outer_brightness_r"], "flag"] != "red").all(), c["features"]


@pytest.mark.slow
def test_mock_bright_core_shortcut_fails_the_gates(clean, bright):
    """The mock's `bright_core` plant against the same negatives' selection: the core gate (16×16 pixels) fails clearly
    above the clean mock, the radial gate rises, and the core brightness ratio moves by the planted core factor
    (noise-free renders without arcs: an independent measure)."""
    b, c = bright, clean
    assert not b["gates"].core_passed and b["gates"].core_lr_auc > c["gates"].core_lr_auc + 0.08, (b["gates"].report(), c["gates"].report())
    assert not b["gates"].radial_passed and b["gates"].radial_profile_auc > c["gates"].radial_profile_auc + 0.05
    planted = np.median(b["core0"]) / np.median(c["core0"])
    assert abs(_ratio(b) / _ratio(c) / planted - 1) < 0.15, (_ratio(b), _ratio(c), planted)
    assert b["features"].loc["outer_brightness_r", "auc"] > c["features"].loc["outer_brightness_r", "auc"] + 0.05


@pytest.mark.slow
def test_planted_bright_core_fails_ratio_gate_and_flags(clean):
    """A pure bright core (the clean deflectors at 2.5× flux, arcs kept, nothing else changed) against the twins: the
    ratio gate fails with the ratio near 2.5 × the arcs' own factor, the core and radial gates fail, and
    core_brightness_r leaves green."""
    c, sky = clean, clean["sky"]
    S, flux = sky.sources, ["flux_g", "flux_r", "flux_z"]
    lens_row = (S.brickname.astype(str).str.strip() + "_" + S.objid.astype(str)).isin(set(c["pos"].galaxy_id)).to_numpy()
    S2 = S.copy(); S2.loc[lens_row, flux] = S2.loc[lens_row, flux].to_numpy() * 2.5
    planted = mocksky.MockSky(sky.sky_dir, sky.meta, S2, sky.bricks, sky.comps, sky.lens_truth, sky.known)
    Xb, _ = planted.render(c["pos"].ra.to_numpy(), c["pos"].dec.to_numpy(), seed=1)
    b, null = _evaluate(c["Xt"], Xb), _evaluate(c["Xt"], c["Xp0"])
    arcs = np.median(c["core1"]) / np.median(c["core0"])
    assert not b["quality"]["core_brightness_ratio"]["passed"] and abs(_ratio(b) / (2.5 * arcs) - 1) < 0.15, (_ratio(b), arcs)
    assert not b["gates"].core_passed and b["gates"].core_lr_auc > null["gates"].core_lr_auc + 0.2, b["gates"].report()
    assert not b["gates"].radial_passed
    assert b["features"].loc["core_brightness_r", "flag"] in ("yellow", "red")
    assert b["features"].loc["core_brightness_r", "auc"] > null["features"].loc["core_brightness_r", "auc"] + 0.15

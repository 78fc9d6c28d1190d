"""Gates and shortcut flags on the mock sky (helper D's `stronglens.mocksky`) with and without a planted shortcut.

The `bright_core` mock draws lens deflectors with weight flux_z² (brighter deflectors than the negatives'); the clean
mock draws them from the negative pool's own population. Negatives follow the pool cuts (SER/DEV/REX, z < 20, >= 3
exposures per band, MASKBITS 1,5,6,7,11,12,13 clear, not a lens, not a confuser)."""
import glob

import numpy as np
import pandas as pd
import pytest

mocksky = pytest.importorskip("stronglens.mocksky")
from stronglens import gates as G
from stronglens import validation as V

N = 100                     # positives and negatives per mock
REJECT_BITS = sum(1 << b for b in (1, 5, 6, 7, 11, 12, 13))


def _pool_negatives(sky, sky_dir, n, seed=0):
    from stronglens.legacysurvey import read_sweep
    cols = ["BRICKNAME", "OBJID", "RA", "DEC", "TYPE", "FLUX_Z", "NOBS_G", "NOBS_R", "NOBS_Z", "MASKBITS"]
    sw = pd.concat([read_sweep(u, columns=cols) for u in sorted(glob.glob(f"{sky_dir}/sweep-*.fits"))], ignore_index=True)
    sw.columns = [c.lower() for c in sw.columns]
    gid = sw.brickname.astype(str).str.strip() + "_" + sw.objid.astype(str)
    ok = (sw.type.astype(str).str.strip().isin(["SER", "DEV", "REX"]) & (sw.flux_z > 10 ** (-0.4 * (20 - 22.5)))
          & (sw.nobs_g >= 3) & (sw.nobs_r >= 3) & (sw.nobs_z >= 3) & ((sw.maskbits.astype(np.int64) & REJECT_BITS) == 0)
          & ~gid.isin(set(sky.lens_truth.galaxy_id)) & ~gid.isin(set(pd.read_csv(f"{sky_dir}/confusers.csv").galaxy_id)))
    return sw[ok].sample(n, random_state=seed)


def _mock(tmp_path_factory, shortcut):
    d = str(tmp_path_factory.mktemp(f"sky_{shortcut}"))
    cfg = mocksky.SkyConfig(ra_min_deg=150.0, ra_max_deg=151.0, dec_min_deg=0.0, dec_max_deg=1.0, n_lenses=N,
                            shortcut=shortcut, seed=7)
    mocksky.build_sky(cfg, d, progress=False)
    sky = mocksky.MockSky.open(d)
    neg = _pool_negatives(sky, d, N)
    lt = sky.lens_truth
    Xp, _ = sky.render(lt.ra.to_numpy(), lt.dec.to_numpy(), seed=1)
    Xn, _ = sky.render(neg.ra.to_numpy(), neg.dec.to_numpy(), seed=1)
    X, y = np.concatenate([Xn, Xp]), np.r_[np.zeros(len(Xn)), np.ones(len(Xp))]
    m = V.metrics_from_array(X, labels=y)
    return dict(sky=sky, X=X, y=y, Xn=Xn, lt=lt, gates=G.run_shortcut_gates(X, y, seed=0), quality=V.quality_gates(m),
                features=V.shortcut_auc_by_feature(m, n_bootstrap=1000, seed=0).set_index("feature"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _mock(tmp_path_factory, "none")


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    return _mock(tmp_path_factory, "bright_core")


@pytest.mark.slow
def test_bright_core_shortcut_fails_gates_and_flags(clean, bright):
    b, c = bright, clean
    assert not b["quality"]["core_brightness_ratio"]["passed"] and b["quality"]["core_brightness_ratio"]["value"] > 2
    assert b["features"].loc["core_brightness_r", "flag"] == "red"
    assert b["features"].loc["core_brightness_r", "auc"] > c["features"].loc["core_brightness_r", "auc"] + 0.2
    assert not b["gates"].core_passed and b["gates"].core_lr_auc > c["gates"].core_lr_auc + 0.15
    assert not b["gates"].radial_passed and b["gates"].radial_profile_auc > c["gates"].radial_profile_auc + 0.15


@pytest.mark.slow
def test_clean_mock_core_gate_excess_is_arc_light(clean):
    """On the clean mock no deflector feature is red, and what the gates find is the arcs: rendering the same
    deflectors without their lensed components brings both gates back near 0.5. (Median θE ≈ 1.3″ ≈ 5 px: most arc
    light falls inside the 16×16 core box and moves the azimuthal medians of the inner rings — physics, not a shortcut.)"""
    c = clean
    assert (c["features"].flag != "red").all(), c["features"]
    sky = c["sky"]
    noarc = mocksky.MockSky(sky.sky_dir, sky.meta, sky.sources, sky.bricks,
                            sky.comps[sky.comps.kind != mocksky.KIND_LENSED].reset_index(drop=True), sky.lens_truth, sky.known)
    Xp0, _ = noarc.render(c["lt"].ra.to_numpy(), c["lt"].dec.to_numpy(), seed=1)
    g0 = G.run_shortcut_gates(np.concatenate([c["Xn"], Xp0]), c["y"], seed=0)
    assert g0.core_lr_auc < 0.6 and g0.radial_profile_auc < 0.6, g0.report()
    assert g0.core_lr_auc < c["gates"].core_lr_auc

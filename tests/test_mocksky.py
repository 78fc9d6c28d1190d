"""Mock DR10 sky (stronglens.mocksky): sweep format vs the real DR9 row, DR10 distributions, photometry, noise, PSF,
determinism, lens / confuser truth. References are independent: the real DR9 Tractor row and PSFEx models in
../shared/data, the DR10 formulas of DR10_FACTS.md, scipy fits, and stronglens.lensing."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy import optimize, stats
from scipy.spatial import cKDTree

from stronglens import mocksky as M
from stronglens import lensing

SWEEP_COLS = ["RELEASE", "BRICKNAME", "OBJID", "TYPE", "RA", "DEC", "EBV", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1",
              "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "FLUX_IVAR_W1", "NOBS_G", "NOBS_R", "NOBS_Z",
              "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z", "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z",
              "GALDEPTH_G", "GALDEPTH_R", "GALDEPTH_Z", "MASKBITS", "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC",
              "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z"]
REJECT = sum(1 << b for b in (1, 5, 6, 7, 11, 12, 13))
# 1 deg x 1 deg across the RA = 155 sweep boundary: two sweep files
CFG = dict(ra_min_deg=154.5, ra_max_deg=155.5, dec_min_deg=0.0, dec_max_deg=1.0, n_lenses=60, seed=7)


@pytest.fixture(scope="module")
def sky_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mocksky") / "sky"
    M.build_sky(M.SkyConfig(**CFG), str(d), progress=False)
    return d


@pytest.fixture(scope="module")
def sky(sky_dir):
    return M.MockSky.open(sky_dir)


@pytest.fixture(scope="module")
def catalog(sky_dir):
    parts = []
    for f in sorted(sky_dir.glob("sweep-*.fits")):
        with fits.open(f) as h:
            d = h[1].data
            parts.append(pd.DataFrame({c: (np.char.strip(d[c].astype(str)) if d[c].dtype.kind in "SU" else d[c].astype(d[c].dtype.newbyteorder("=")))
                                       for c in d.dtype.names}).assign(file=f.name))
    return pd.concat(parts, ignore_index=True)


def _isolated(cat, sky, min_sep_arcsec=40.0, margin_deg=0.02):
    xyz = M._unit(cat.RA.to_numpy(), cat.DEC.to_numpy())
    d, _ = cKDTree(xyz).query(xyz, k=2)
    sep = np.rad2deg(2 * np.arcsin(d[:, 1] / 2)) * 3600
    gid = cat.BRICKNAME + "_" + cat.OBJID.astype(str)
    inside = ((cat.RA > CFG["ra_min_deg"] + margin_deg) & (cat.RA < CFG["ra_max_deg"] - margin_deg)
              & (cat.DEC > CFG["dec_min_deg"] + margin_deg) & (cat.DEC < CFG["dec_max_deg"] - margin_deg))
    return (sep > min_sep_arcsec) & inside & ~gid.isin(set(sky.comps.host_galaxy_id))


# ---------------------------------------------------------------- files and schema
def test_sweeps_open_with_astropy_and_match_real_dr9_dtypes(sky_dir, shared_data):
    with fits.open(shared_data / "dr9_tractor_fastspecfit" / "tractor-1054p567.fits") as h:
        real = h[1].data.dtype
    files = sorted(sky_dir.glob("sweep-*.fits"))
    assert [f.name for f in files] == ["sweep-150p000-155p005.fits", "sweep-155p000-160p005.fits"]
    for f in files:
        with fits.open(f) as h:
            got = h[1].data.dtype
            assert len(h[1].data) > 100
        shared = [c for c in got.names if c in real.names]
        assert set(SWEEP_COLS) <= set(shared), set(SWEEP_COLS) - set(shared)
        for c in shared:
            assert got[c] == real[c], (f.name, c, got[c], real[c])


def test_sweep_boxes_bricks_and_ids(catalog, sky_dir):
    for f, g in catalog.groupby("file"):
        ra1, dec1 = int(f[6:9]), int(f[10:13]) * (1 if f[9] == "p" else -1)
        assert ((g.RA >= ra1) & (g.RA < ra1 + 5) & (g.DEC >= dec1) & (g.DEC < dec1 + 5)).all()
    b = pd.read_parquet(sky_dir / "bricks.parquet")
    j = catalog.merge(b[["brickname", "ra1", "ra2", "dec1", "dec2"]], left_on="BRICKNAME", right_on="brickname", how="left")
    assert j.ra1.notna().all()
    bad = ~((j.RA >= j.ra1) & (j.RA < j.ra2) & (j.DEC >= j.dec1) & (j.DEC < j.dec2))
    assert not bad.any(), j[bad][["RA", "DEC", "BRICKNAME"]].head()
    # DR10 brick-name rule (DR10_FACTS §1) applied to the brick centre
    assert (b.brickname == [f"{int(r * 10):04d}{'p' if d >= 0 else 'm'}{int(abs(d) * 10):03d}" for r, d in zip(b.ra, b.dec)]).all()
    assert not catalog.duplicated(["BRICKNAME", "OBJID"]).any()
    assert (catalog.RELEASE == 10000).all()
    assert set(catalog.TYPE) == {"PSF", "REX", "EXP", "DEV", "SER"}


def test_catalog_units_and_dr10_relations(catalog):
    # MW_TRANSMISSION = 10^(-0.4 R EBV), R = 3.214, 2.165, 1.211 (DR10_FACTS §1)
    for b, R in zip("GRZ", (3.214, 2.165, 1.211)):
        np.testing.assert_allclose(catalog[f"MW_TRANSMISSION_{b}"], 10 ** (-0.4 * R * catalog.EBV), rtol=1e-5)
    # PSFDEPTH is an inverse variance: 5-sigma depths near the DECaLS peaks (§2) at >= 3 exposures
    deep = catalog[(catalog.NOBS_G >= 3) & (catalog.NOBS_R >= 3) & (catalog.NOBS_Z >= 3)]
    for b, lo, hi in (("G", 24.2, 25.6), ("R", 23.7, 25.0), ("Z", 22.9, 24.1)):
        m5 = 22.5 - 2.5 * np.log10(5 / np.sqrt(deep[f"PSFDEPTH_{b}"]))
        assert lo < np.median(m5) < hi, (b, np.median(m5))
        assert (catalog[f"GALDEPTH_{b}"] < catalog[f"PSFDEPTH_{b}"]).all()
    assert (catalog[catalog.TYPE == "REX"].SERSIC == 1).all() and (catalog[catalog.TYPE == "DEV"].SERSIC == 4).all()
    assert (catalog[catalog.TYPE == "REX"][["SHAPE_E1", "SHAPE_E2"]] == 0).all().all()
    ser = catalog[catalog.TYPE == "SER"].SERSIC
    assert ser.between(0.3, 6.0).all()
    psf = catalog[catalog.TYPE != "PSF"]
    assert psf.SHAPE_R.gt(0).all() and np.hypot(psf.SHAPE_E1, psf.SHAPE_E2).lt(1).all()


def test_catalog_distributions_resemble_dr10(catalog, sky_dir):
    area = (CFG["ra_max_deg"] - CFG["ra_min_deg"]) * (CFG["dec_max_deg"] - CFG["dec_min_deg"])
    mz = 22.5 - 2.5 * np.log10(catalog.FLUX_Z.clip(lower=1e-6))
    gal = catalog[catalog.TYPE != "PSF"]
    n212 = (22.5 - 2.5 * np.log10(gal.FLUX_Z) < 21.0).sum() / area
    assert 3000 < n212 < 5500            # 4,960/deg² at z < 21.2 (§2) -> ~4,300 at z < 21
    # nobs_z bins 1-2 / 3-5 / 6-10 / 11+ = 19 / 56 / 20 / 5 % (§2 [EST]); per-source jitter blurs the bin edges
    frac = pd.cut(catalog.NOBS_Z, [0, 2, 5, 10, 999]).value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(frac, [0.19, 0.56, 0.20, 0.05], atol=0.1)
    b = pd.read_parquet(sky_dir / "bricks.parquet")
    q = b.psfsize_r.quantile([0.05, 0.5, 0.95]).to_numpy()
    np.testing.assert_allclose(q, [1.13, 1.35, 1.75], atol=0.08)   # §2 PSFSIZE r
    # bright galaxies are mostly DEV/SER, faint ones mostly REX (§1-2)
    bright = gal[mz[gal.index] < 19].TYPE.value_counts(normalize=True)
    faint = gal[mz[gal.index] > 20.5].TYPE.value_counts(normalize=True)
    assert bright.get("DEV", 0) + bright.get("SER", 0) > 0.45 and faint.get("REX", 0) > 0.4
    masked = ((catalog.MASKBITS.astype(int) & REJECT) != 0).mean()
    assert 0.01 < masked < 0.12, masked


# ---------------------------------------------------------------- photometry, noise, PSF
def test_aperture_flux_of_isolated_galaxies_matches_catalog(sky, catalog):
    iso = catalog[_isolated(catalog, sky) & (catalog.TYPE != "PSF") & (catalog.SHAPE_R < 0.8)].head(40)
    assert len(iso) >= 20
    X, _ = sky.render(iso.RA.to_numpy(), iso.DEC.to_numpy(), noise=False, sky_offset=False)
    yy, xx = np.mgrid[:101, :101]
    ap = np.hypot(yy - 50, xx - 50) <= 45
    for k, b in enumerate("GRZ"):
        ratio = X[:, ap, k].sum(1) / iso[f"FLUX_{b}"].to_numpy()
        assert np.all(np.abs(ratio - 1) < 0.05), (b, ratio.min(), ratio.max())
    # with noise and a local background (outer annulus), bright galaxies still within 5% on average
    br = iso.nlargest(15, "FLUX_R")
    Xn, _ = sky.render(br.RA.to_numpy(), br.DEC.to_numpy(), seed=3)
    ring = (np.hypot(yy - 50, xx - 50) > 46) & (np.hypot(yy - 50, xx - 50) < 50)
    for k, b in enumerate("GRZ"):
        f = (Xn[:, ap, k] - np.median(Xn[:, ring, k], 1)[:, None]).sum(1)
        assert abs(np.median(f / br[f"FLUX_{b}"].to_numpy()) - 1) < 0.05, b


def test_background_noise_matches_depth(sky, catalog):
    rng = np.random.default_rng(0)
    ra = rng.uniform(CFG["ra_min_deg"] + 0.02, CFG["ra_max_deg"] - 0.02, 120)
    dec = rng.uniform(0.02, 0.98, 120)
    X, meta = sky.render(ra, dec, seed=5)
    b = pd.read_parquet(Path(sky.sky_dir) / "bricks.parquet").iloc[sky.brick_index(ra, dec)]
    for k, band in enumerate("grz"):
        # DR10: 1/sigma² = PSFDEPTH · 4π (PSFSIZE/2.3548/0.262)² (DR10_FACTS §1), from the brick table, computed here
        sig = 1 / np.sqrt(b[f"psfdepth_{band}"].to_numpy() * 4 * np.pi * (b[f"psfsize_{band}"].to_numpy() / 2.3548 / 0.262) ** 2)
        x = X[..., k].reshape(len(ra), -1)
        mad = 1.4826 * np.median(np.abs(x - np.median(x, 1)[:, None]), 1)
        assert abs(np.median(mad / sig) - 1) < 0.10, (band, np.median(mad / sig))
        np.testing.assert_allclose(meta[f"sigma_pix_{band}"], sig, rtol=1e-3)
        off = np.median(x, 1)
        assert (np.median(off) > 0) and np.median(off) < 0.5 * np.median(sig)   # small positive sky offset (§2)


def test_psfsize_equals_nea_fwhm_of_rendered_stars(sky, catalog):
    st = catalog[_isolated(catalog, sky) & (catalog.TYPE == "PSF") & (catalog.MASKBITS == 0)].head(20)
    assert len(st) >= 5
    X, _ = sky.render(st.RA.to_numpy(), st.DEC.to_numpy(), noise=False, sky_offset=False)
    for k, b in enumerate("GRZ"):
        p = X[..., k] / X[..., k].sum((1, 2), keepdims=True)
        nea_fwhm = 2.3548 * np.sqrt(1 / (p ** 2).sum((1, 2)) / (4 * np.pi)) * 0.262     # DR10 PSFSIZE definition
        np.testing.assert_allclose(nea_fwhm, st[f"PSFSIZE_{b}"].to_numpy(), rtol=0.05)
        # and the Moffat FWHM is ~PSFSIZE/1.3 (DR10_FACTS §5)
        yy, xx = np.mgrid[:101, :101]; r = np.hypot(yy - 50, xx - 50).ravel(); o = np.argsort(r)
        fwhm = []
        for img in X[..., k]:
            prof = img.ravel()[o] / img.max()
            fwhm.append(2 * np.interp(0.5, prof[::-1][-60:], r[o][::-1][-60:]) * 0.262)   # half-max radius from the inner profile
        ratio = st[f"PSFSIZE_{b}"].to_numpy() / np.array(fwhm)
        assert np.all((ratio > 1.15) & (ratio < 1.5)), ratio


def _moffat_pix(params, n):
    a, beta, amp, x0, y0 = params
    s = 5
    u = (np.arange(n * s) + 0.5) / s - 0.5
    X, Y = np.meshgrid(u - x0, u - y0)
    I = (1 + (X ** 2 + Y ** 2) / a ** 2) ** (-beta)
    return amp * I.reshape(n, s, n, s).mean((1, 3))


def test_moffat_parameters_vs_real_psfex(shared_data):
    "Sanity check of the rendered Moffat against the 8 real DECam PSFEx models (pixel-integrated Moffat fits)."
    files = sorted((shared_data / "psfex_legacypipe").glob("*-psfex.fits"))
    assert len(files) == 8
    betas, ratios = [], []
    for f in files:
        with fits.open(f) as h:
            d = h[1].data
            assert float(d["psf_samp"][0]) == 1.0          # sampled at the 0.262" image pixels
            psf = np.asarray(d["psf_mask"][0][0], float)   # polynomial component 0 = the PSF at the CCD centre
        psf = psf / psf.sum(); n = psf.shape[0]; c = (n - 1) / 2
        core = psf[int(c) - 15:int(c) + 16, int(c) - 15:int(c) + 16]
        res = optimize.least_squares(lambda p: (_moffat_pix([p[0], p[1], p[2], 15 + p[3], 15 + p[4]], 31) - core).ravel(),
                                     [3.0, 3.0, core.max(), 0, 0], bounds=([0.5, 1.2, 0, -2, -2], [20, 10, 1, 2, 2]))
        a, beta = res.x[:2]
        fwhm = 2 * a * np.sqrt(2 ** (1 / beta) - 1) * 0.262
        nea_fwhm = 2.3548 * np.sqrt(1 / (psf ** 2).sum() / (4 * np.pi)) * 0.262
        betas.append(beta); ratios.append(nea_fwhm / fwhm)
    betas, ratios = np.array(betas), np.array(ratios)
    assert 2.5 < np.median(betas) < 3.7, betas          # DR10_FACTS §5: median 3.1
    assert np.all((ratios > 1.15) & (ratios < 1.8)), ratios
    beta = M.SkyConfig().moffat_beta
    assert betas.min() <= beta <= betas.max()
    # the mock's rendered PSF: NEA-FWHM / Moffat FWHM within the range of the real PSFs
    ps = np.array([1.2, 1.35, 1.6])
    w = M.psf_width_for_psfsize(ps, "moffat", beta)
    mock_ratio = ps / M.moffat_fwhm_from_alpha(w * 0.262, beta)
    assert np.all((mock_ratio >= ratios.min() - 0.02) & (mock_ratio <= ratios.max())), (mock_ratio, ratios)
    # the rendered kernels have NEA-FWHM == PSFSIZE by lensing's independent NEA code
    k = M.kernel_from_ft(M.psf_kernel_ft(w, 65, "moffat", beta), 65)
    np.testing.assert_allclose(lensing.psfsize_from_kernel(k), ps, rtol=2e-3)


def test_render_is_deterministic_per_position_and_seed(sky, catalog):
    g = catalog[catalog.TYPE != "PSF"].sample(6, random_state=2)
    X1, m1 = sky.render(g.RA.to_numpy(), g.DEC.to_numpy(), seed=11)
    X2, m2 = sky.render(g.RA.to_numpy(), g.DEC.to_numpy(), seed=11)
    assert X1.dtype == np.float32 and X1.shape == (6, 101, 101, 3)
    assert X1.tobytes() == X2.tobytes()
    X3, _ = sky.render(g.RA.to_numpy()[[3, 1]], g.DEC.to_numpy()[[3, 1]], seed=11)   # other batch, other order
    assert X3[0].tobytes() == X1[3].tobytes() and X3[1].tobytes() == X1[1].tobytes()
    X4, _ = sky.render(g.RA.to_numpy(), g.DEC.to_numpy(), seed=12)
    assert not np.array_equal(X1, X4)
    assert list(m1.galaxy_id) == list(g.BRICKNAME + "_" + g.OBJID.astype(str))
    for c in ("galaxy_id", "ra", "dec", "type", "nobs_z", "psfsize_z", "flux_r", "cutout_url", "download_timestamp"):
        assert c in m1.columns
    np.testing.assert_allclose(m1.flux_r.to_numpy(float), g.FLUX_R.to_numpy(), rtol=1e-6)


def test_render_outside_footprint_raises(sky):
    with pytest.raises(ValueError, match="outside the mock sky footprint"):
        sky.render([10.0], [50.0])


# ---------------------------------------------------------------- lenses and confusers
def test_known_lenses_catalog_and_truth(sky_dir, catalog):
    kl = pd.read_csv(sky_dir / "known_lenses.csv")
    lt = pd.read_parquet(sky_dir / "lens_truth.parquet")
    cfg = M.SkyConfig(**CFG)
    assert {"name", "RA", "DEC", "zlens", "type", "grading"} <= set(kl.columns)      # lenscat's columns
    assert set(kl.grading) <= {"confident", "probable"} and (kl.type == "galaxy").all()
    assert kl[kl.grading == "confident"].is_lens.all()
    tb = kl[kl.grading == "probable"]
    assert 0 < (~tb.is_lens).sum() and abs((~tb.is_lens).mean() - cfg.tier_b_contamination) < 0.12
    assert len(lt) == cfg.n_lenses and 0 < lt.listed.sum() < len(lt)               # unlisted lenses exist
    assert set(kl[kl.is_lens].galaxy_id) == set(lt[lt.listed].galaxy_id)
    assert lt.theta_e_arcsec.between(0.5, 3.0).all()
    assert lt.magnification.between(4.0, 32.0).mean() > 0.97
    assert lt.src_mag_r.between(22, 26).all()
    # listed lenses are the more detectable ones; Tier-A above Tier-B
    assert lt[lt.listed].arc_snr.median() > lt[~lt.listed].arc_snr.median()
    assert lt[lt.grading == "confident"].arc_snr.min() >= cfg.tier_a_snr
    # deflectors come from the negative-pool population: SER/DEV/REX, z < 20, >= 3 exposures, clean maskbits
    gid = catalog.BRICKNAME + "_" + catalog.OBJID.astype(str)
    d = catalog.set_index(gid).loc[lt.galaxy_id]
    assert d.TYPE.isin(["SER", "DEV", "REX"]).all() and (22.5 - 2.5 * np.log10(d.FLUX_Z) < 20).all()
    assert (d[["NOBS_G", "NOBS_R", "NOBS_Z"]] >= 3).all().all() and ((d.MASKBITS.astype(int) & REJECT) == 0).all()


def test_arc_snr_and_magnification_reproduced_independently(sky):
    "Stored arc_snr equals lensing.arc_snr on (render with arcs - render without); μ agrees with lensing.render_lensed."
    lt = sky.lens_truth.head(8)
    X1, _ = sky.render(lt.ra.to_numpy(), lt.dec.to_numpy(), noise=False, sky_offset=False)
    no_arcs = M.MockSky(sky.sky_dir, sky.meta, sky.sources, sky.bricks, sky.comps[sky.comps.kind != M.KIND_LENSED].reset_index(drop=True),
                        sky.lens_truth, sky.known)
    X0, _ = no_arcs.render(lt.ra.to_numpy(), lt.dec.to_numpy(), noise=False, sky_offset=False)
    cat = sky.sources.set_index(sky.sources.brickname + "_" + sky.sources.objid.astype(str)).loc[lt.galaxy_id]
    sig = lensing.sigma_pix_from_psfdepth(cat.psfdepth_r.to_numpy(), cat.psfsize_r.to_numpy())
    np.testing.assert_allclose(lensing.arc_snr(X1[..., 1] - X0[..., 1], sig), lt.arc_snr, rtol=0.02)
    ref = lensing.render_lensed(
        dict(theta_E=lt.theta_e_arcsec, e1=lt.lens_e1, e2=lt.lens_e2, center_x=np.zeros(8), center_y=np.zeros(8), gamma1=lt.gamma1, gamma2=lt.gamma2),
        dict(mag_r=lt.src_mag_r, g_minus_r=lt.src_g_minus_r, r_minus_z=lt.src_r_minus_z, R_sersic=lt.src_r_e_arcsec, n_sersic=lt.src_n,
             e1=lt.src_e1, e2=lt.src_e2, center_x=lt.src_x_arcsec, center_y=lt.src_y_arcsec), np.ones((8, 3)), supersample=8)
    np.testing.assert_allclose(lt.magnification, ref.magnification, rtol=0.05)


def test_confusers_are_catalog_galaxies_with_arc_like_light(sky, sky_dir, catalog):
    conf = pd.read_csv(sky_dir / "confusers.csv")
    assert set(conf.category) == set(M.CONFUSER_CATEGORIES) and {"ra", "dec", "category"} <= set(conf.columns)
    gid = catalog.BRICKNAME + "_" + catalog.OBJID.astype(str)
    host = catalog.set_index(gid).loc[conf.galaxy_id]
    assert (22.5 - 2.5 * np.log10(host.FLUX_Z) < 20).all() and host.TYPE.isin(["SER", "DEV", "REX"]).all()
    sub = conf.groupby("category").head(3)
    X1, _ = sky.render(sub.ra.to_numpy(), sub.dec.to_numpy(), noise=False, sky_offset=False)
    plain = M.MockSky(sky.sky_dir, sky.meta, sky.sources, sky.bricks, sky.comps.iloc[:0], sky.lens_truth, sky.known)
    X0, _ = plain.render(sub.ra.to_numpy(), sub.dec.to_numpy(), noise=False, sky_offset=False)
    yy, xx = np.mgrid[:101, :101]; r = np.hypot(yy - 50, xx - 50)
    ann = (r >= 4) & (r <= 16)
    extra = (X1 - X0)[:, ann, 0].sum(1)            # g band: the rings, arms and tails are blue
    for cat, e in zip(sub.category, extra):
        assert e > 0.05, (cat, e)
    ec = host.loc[conf[conf.category == "edge_on"].galaxy_id]
    assert (np.hypot(ec.SHAPE_E1, ec.SHAPE_E2) >= 0.5).all() and (ec.SHAPE_R >= 0.6).all()   # the N2 edge-on proxy


@pytest.mark.slow
def test_deflectors_match_pool_unless_shortcut(tmp_path, catalog, sky_dir):
    "No shortcut: deflector brightness is a draw from the pool; bright_core: much brighter; psf: sharper lens cores."
    lt = pd.read_parquet(sky_dir / "lens_truth.parquet")
    mz = 22.5 - 2.5 * np.log10(catalog.FLUX_Z.clip(lower=1e-6))
    pool = catalog[catalog.TYPE.isin(["SER", "DEV", "REX"]) & (mz < 20) & (catalog[["NOBS_G", "NOBS_R", "NOBS_Z"]].min(axis=1) >= 3)
                   & ((catalog.MASKBITS.astype(int) & REJECT) == 0)]
    assert stats.ks_2samp(lt.deflector_flux_r, pool.FLUX_R).pvalue > 1e-3
    M.build_sky(M.SkyConfig(**{**CFG, "shortcut": "bright_core"}), str(tmp_path / "bc"), progress=False)
    lb = pd.read_parquet(tmp_path / "bc" / "lens_truth.parquet")
    assert stats.ks_2samp(lb.deflector_flux_r, pool.FLUX_R).pvalue < 1e-6
    assert lb.deflector_flux_r.median() > 2 * pool.FLUX_R.median()
    sky = M.MockSky.open(sky_dir)
    kl = sky.known[sky.known.is_lens.astype(bool)].head(5)
    X0, _ = sky.render(kl.RA.to_numpy(), kl.DEC.to_numpy(), noise=False, sky_offset=False)
    sky.shortcut = "psf"
    X1, _ = sky.render(kl.RA.to_numpy(), kl.DEC.to_numpy(), noise=False, sky_offset=False)
    assert np.all(X1[:, 48:53, 48:53, 1].sum((1, 2)) > 1.1 * X0[:, 48:53, 48:53, 1].sum((1, 2)))


def test_config_validation():
    M.SkyConfig().validate()
    with pytest.raises(ValueError, match="multiple of 0.25"):
        M.SkyConfig(ra_min_deg=150.1).validate()
    with pytest.raises(ValueError, match="shortcut"):
        M.SkyConfig(shortcut="nope").validate()
    with pytest.raises(ValueError, match="eligible deflectors"):
        M.build_sky(M.SkyConfig(ra_min_deg=150, ra_max_deg=150.25, dec_min_deg=0, dec_max_deg=0.25, n_lenses=500), str(Path("/tmp") / "never-written-mocksky"), progress=False)


@pytest.mark.s3
def test_build_and_render_on_s3(s3_bucket):
    "The sky folder can live on an object store: build_sky writes there, MockSky.open/render read from there."
    url = f"s3://{s3_bucket}/run/sky"
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=150.5, dec_min_deg=0, dec_max_deg=0.5, density_scale=0.3, n_lenses=5)
    files = M.build_sky(cfg, url, progress=False)
    assert files["sweeps"] == [f"{url}/sweep-150p000-155p005.fits"]
    sky = M.MockSky.open(url)
    X, meta = sky.render(sky.lens_truth.ra.to_numpy(), sky.lens_truth.dec.to_numpy(), seed=1)
    assert X.shape == (5, 101, 101, 3) and meta.is_lens.all()
    assert M.run_sky_stage(cfg, f"s3://{s3_bucket}/run", progress=False)["skipped"]

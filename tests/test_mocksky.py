"""Mock DR10 sky (stronglens.mocksky): sweep format vs the real DR9 row, DR10 distributions, photometry, noise, PSF,
determinism, the lens population against DR10_FACTS §2-3, discovery, lens / confuser truth. References are independent:
the real DR9 Tractor row in ../shared/data, the DR10 formulas and numbers of DR10_FACTS.md, scipy, and stronglens.lensing
(the mock's arcs must be the lensing engine's, through the same PSF)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy import stats
from scipy.spatial import cKDTree

from stronglens import mocksky as M
from stronglens import lensing, physics

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
    xyz = physics.unit_vectors(cat.RA.to_numpy(), cat.DEC.to_numpy())
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
    # with noise (and the cutout's known sky offset removed) the summed aperture flux of the bright ones is within 5%:
    # the noise is zero-mean (a local-annulus background would add ~1 nmgy of error: the coadd noise is correlated)
    br = iso.nlargest(15, "FLUX_R")
    Xn, mn = sky.render(br.RA.to_numpy(), br.DEC.to_numpy(), seed=3)
    for k, b in enumerate("GRZ"):
        f = (Xn[:, ap, k] - mn[f"sky_offset_{b.lower()}"].to_numpy()[:, None]).sum(1)
        assert abs(f.sum() / br[f"FLUX_{b}"].sum() - 1) < 0.05, b


def test_background_noise_is_resampled_coadd_noise(sky, catalog):
    """Blank sky: σ per pixel = 0.83 × the inverse-variance σ of DR10's formula (Lanczos-3 resampling, physics notebook),
    adjacent pixels correlated by 0.19, a PSF-weighted flux keeps the PSFDEPTH variance, small positive sky offset."""
    rng = np.random.default_rng(0)
    ra = rng.uniform(CFG["ra_min_deg"] + 0.02, CFG["ra_max_deg"] - 0.02, 600)
    dec = rng.uniform(0.02, 0.98, 600)
    d, _ = cKDTree(physics.unit_vectors(catalog.RA.to_numpy(), catalog.DEC.to_numpy())).query(physics.unit_vectors(ra, dec))
    blank = np.rad2deg(2 * np.arcsin(d / 2)) * 3600 > 25
    ra, dec = ra[blank][:120], dec[blank][:120]
    X, meta = sky.render(ra, dec, seed=5)
    b = pd.read_parquet(Path(sky.sky_dir) / "bricks.parquet").iloc[sky.brick_index(ra, dec)]
    for k, band in enumerate("grz"):
        # DR10: 1/sigma² = PSFDEPTH · 4π (PSFSIZE/2.3548/0.262)² (DR10_FACTS §1), from the brick table, computed here
        sig = 1 / np.sqrt(b[f"psfdepth_{band}"].to_numpy() * 4 * np.pi * (b[f"psfsize_{band}"].to_numpy() / 2.3548 / 0.262) ** 2)
        x = X[:, 15:86, 15:86, k]
        x = x - np.median(x, axis=(1, 2), keepdims=True)
        mad = 1.4826 * np.median(np.abs(x).reshape(len(x), -1), 1)
        assert abs(np.median(mad / sig) - 0.83) < 0.05, (band, np.median(mad / sig))
        c1 = np.mean(x[:, :, 1:] * x[:, :, :-1]) / np.mean(x * x)
        assert 0.14 < c1 < 0.25, (band, c1)
        np.testing.assert_allclose(meta[f"sigma_pix_{band}"], sig, rtol=1e-3)
        # PSF-weighted (optimal) point-source flux on blank sky: its scatter is 1/sqrt(PSFDEPTH) (noise power kept on PSF scales)
        kern = physics.psf_kernels(b[f"psfsize_{band}"].to_numpy(), size_px=31).numpy().astype(float)
        f = ((X[:, 35:66, 35:66, k] - meta[f"sky_offset_{band}"].to_numpy()[:, None, None]) * kern).sum((1, 2)) / (kern ** 2).sum((1, 2))
        assert abs(np.std(f * np.sqrt(b[f"psfdepth_{band}"].to_numpy())) - 1) < 0.2, (band, np.std(f * np.sqrt(b[f"psfdepth_{band}"].to_numpy())))
        off = np.median(X[..., k].reshape(len(ra), -1), 1)
        assert (np.median(off) > 0) and np.median(off) < 0.5 * np.median(sig)   # small positive sky offset (§2)


def test_blank_sky_sigma_at_median_depth_inside_real_range(sky):
    "DR10_FACTS §2 measured sky σ of real cutouts: g 0.0012-0.0025, r 0.0024-0.0046, z 0.0055-0.0105 nmgy/pix (the old mock's r was 1.5× that)."
    nz = M.blank_sky_noise(sky, n=120).set_index("band")
    for b, lo, hi in (("g", 0.0012, 0.0025), ("r", 0.0024, 0.0046), ("z", 0.0055, 0.0105)):
        assert lo < nz.sigma_nmgy_at_median_depth[b] < hi, (b, nz.sigma_nmgy_at_median_depth[b])


def test_sources_add_their_own_poisson_noise(tmp_path):
    "A bright galaxy's core is noisier than the sky around it: variance = σ_ivar² + flux/(NOBS × gain), resampled."
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=150.5, dec_min_deg=0, dec_max_deg=0.5, density_scale=0.3, n_lenses=0, seed=3)
    M.build_sky(cfg, str(tmp_path / "s"), progress=False)
    sk = M.MockSky.open(tmp_path / "s")
    g = sk.sources[(sk.sources.type != "PSF")].nlargest(3, "flux_r")
    reps = np.stack([sk.render(g.ra.to_numpy(), g.dec.to_numpy(), seed=s)[0] for s in range(12)])
    core, quiet = reps[:, :, 49:52, 49:52, 1].std(0).mean((1, 2)), reps[:, :, 5:15, 5:15, 1].std(0).mean((1, 2))
    assert np.all(core > 1.5 * quiet), (core, quiet)
    M.build_sky(M.SkyConfig(**{**cfg.__dict__, "source_poisson": False}), str(tmp_path / "s2"), progress=False)
    reps2 = np.stack([M.MockSky.open(tmp_path / "s2").render(g.ra.to_numpy(), g.dec.to_numpy(), seed=s)[0] for s in range(12)])
    assert np.all(reps2[:, :, 49:52, 49:52, 1].std(0).mean((1, 2)) < 1.3 * reps2[:, :, 5:15, 5:15, 1].std(0).mean((1, 2)))


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


def test_mock_psf_is_the_physics_psf(sky):
    "One PSF code path: the mock's grid kernels are physics.psf_kernels of the same PSFSIZE (the lensing engine convolves with them too)."
    ps = sky.bricks[["psfsize_g", "psfsize_r", "psfsize_z"]].to_numpy()[:5]
    ft = M.psf_ft_on_grid(ps, sky.psf, M.GRID_SIZE)
    G = M.GRID_SIZE
    k = np.fft.fftshift(np.fft.irfft2(ft.numpy(), s=(G, G)), axes=(-2, -1))[..., G // 2 - 31:G // 2 + 32, G // 2 - 31:G // 2 + 32]
    K = lensing.psf_kernels(ps, sky.psf).numpy()
    o = np.arange(63) - 31; r = np.hypot(o[None, :], o[:, None])
    np.testing.assert_allclose(k[..., r <= 23], K[..., r <= 23], atol=2e-7)      # the kernel itself inside the fade zone
    np.testing.assert_allclose(k[..., r >= 31], 0, atol=2e-7)                    # ... faded to 0 at 31 px (the wing is drawn apart)
    k0 = np.fft.fftshift(np.fft.irfft2(M.psf_ft_on_grid(ps, sky.psf, G, taper_px=None).numpy(), s=(G, G)), axes=(-2, -1))
    np.testing.assert_allclose(k0[..., G // 2 - 31:G // 2 + 32, G // 2 - 31:G // 2 + 32], K, atol=2e-7)
    assert sky.psf == physics.PSF_DR10 and lensing.psf_kernels is physics.psf_kernels


def test_render_is_deterministic_per_position_and_seed(sky, catalog):
    g = catalog[catalog.TYPE != "PSF"].sample(6, random_state=2)
    X1, m1 = sky.render(g.RA.to_numpy(), g.DEC.to_numpy(), seed=11)
    X2, m2 = sky.render(g.RA.to_numpy(), g.DEC.to_numpy(), seed=11)
    assert X1.dtype == np.float32 and X1.shape == (6, 101, 101, 3)
    assert X1.tobytes() == X2.tobytes()
    X3, _ = sky.render(g.RA.to_numpy()[[3, 1]], g.DEC.to_numpy()[[3, 1]], seed=11)   # other batch, other order
    assert X3[0].tobytes() == X1[3].tobytes() and X3[1].tobytes() == X1[1].tobytes()
    X5, _ = sky.render(g.RA.to_numpy()[2:3], g.DEC.to_numpy()[2:3], seed=11)                  # alone (a failed batch's fallback)
    assert X5[0].tobytes() == X1[2].tobytes()
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
    assert len(lt) == cfg.n_lenses and 0 < lt.listed.sum() < len(lt)               # unlisted lenses exist
    assert set(kl[kl.is_lens].galaxy_id) == set(lt[lt.listed].galaxy_id)
    if len(tb) >= 5: assert (~tb.is_lens).sum() > 0
    assert lt.theta_e_arcsec.between(0.5, 3.0).all() and lt.src_mag_r.between(22, 26).all()
    assert (lt.zsource > lt.zlens).all() and lt.sigma_v_kms.between(60, 500).all()
    # the truth is honest: μ before the PSF (priors are on it) and the in-stamp value; S/N, resolution, P(listed)
    assert (lt.magnification > 1).all() and (lt.magnification_in_stamp <= lt.magnification * 1.01).all()
    np.testing.assert_allclose(lt.resolution, lt.theta_e_arcsec / physics.core_fwhm_from_psfsize(lt.psfsize_r.to_numpy()), rtol=1e-9)
    np.testing.assert_allclose(lt.p_listed, M.listing_probability(cfg, lt.arc_snr, lt.resolution), rtol=1e-9)
    np.testing.assert_allclose(lt.arc_mag_r, physics.nmgy_to_mag(lt.arc_flux_r), rtol=1e-9)
    assert lt[lt.listed].arc_snr.median() > lt[~lt.listed].arc_snr.median()       # listed lenses are the more detectable ones
    conf = lt[lt.grading == "confident"]
    assert (conf.arc_snr >= cfg.tier_a_snr).all() and (conf.resolution >= cfg.tier_a_resolution).all()
    # a lens is an ordinary catalog row (a galaxy), with the deflector's photometry
    gid = catalog.BRICKNAME + "_" + catalog.OBJID.astype(str)
    d = catalog.set_index(gid).loc[lt.galaxy_id]
    assert (d.TYPE != "PSF").all()
    np.testing.assert_allclose(d.FLUX_R.to_numpy(), lt.deflector_flux_r.to_numpy(), rtol=1e-6)


def test_arc_snr_and_magnification_reproduced_independently(sky):
    "The mock's arcs are lensing.render_lensed's through the brick PSF: same pixels, same arc_snr, same μ."
    lt = sky.lens_truth.head(8)
    X1, _ = sky.render(lt.ra.to_numpy(), lt.dec.to_numpy(), noise=False, sky_offset=False)
    no_arcs = M.MockSky(sky.sky_dir, sky.meta, sky.sources, sky.bricks, sky.comps[sky.comps.kind != M.KIND_LENSED].reset_index(drop=True),
                        sky.lens_truth, sky.known)
    X0, _ = no_arcs.render(lt.ra.to_numpy(), lt.dec.to_numpy(), noise=False, sky_offset=False)
    cat = sky.sources.set_index(sky.sources.brickname + "_" + sky.sources.objid.astype(str)).loc[lt.galaxy_id]
    sig = lensing.sigma_pix_from_psfdepth(cat.psfdepth_r.to_numpy(), cat.psfsize_r.to_numpy())
    np.testing.assert_allclose(lensing.arc_snr(X1[..., 1] - X0[..., 1], sig), lt.arc_snr, rtol=0.01)
    lens = dict(theta_E=lt.theta_e_arcsec, e1=lt.lens_e1, e2=lt.lens_e2, center_x=np.zeros(8), center_y=np.zeros(8), gamma1=lt.gamma1, gamma2=lt.gamma2)
    src = dict(mag_r=lt.src_mag_r, g_minus_r=lt.src_g_minus_r, r_minus_z=lt.src_r_minus_z, R_sersic=lt.src_r_e_arcsec, n_sersic=lt.src_n,
               e1=lt.src_e1, e2=lt.src_e2, center_x=lt.src_x_arcsec, center_y=lt.src_y_arcsec)
    ref = lensing.render_lensed(lens, src, cat[["psfsize_g", "psfsize_r", "psfsize_z"]].to_numpy(), supersample=8, refine_c=0.5)
    np.testing.assert_allclose(lt.magnification, ref.magnification, rtol=1e-3)
    err = np.sqrt(((X1 - X0 - ref.images) ** 2).sum((1, 2, 3)) / (ref.images ** 2).sum((1, 2, 3)))
    assert err.max() < 3e-3, err                  # identical up to float32 and the sub-pixel position of the cutout centre


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


@pytest.fixture(scope="module")
def realistic():
    "The realistic defaults on 3°×3° with lens_density_scale=100 (more lenses, the same per-lens distributions)."
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=153, dec_min_deg=0, dec_max_deg=3, lens_density_scale=100, seed=11)
    return cfg, M.make_sky(cfg)


@pytest.fixture(scope="module")
def listed_stats(realistic):
    return M.lens_population_stats(realistic[1].lens_truth, realistic[1].sources, realistic[1].meta["area_deg2"], "listed")


@pytest.mark.slow
def test_lens_population_like_dr10(realistic, listed_stats):
    "Listed lenses vs DR10_FACTS §2-3: deflector r 19.2 ± 0.4, arc − deflector 2.9 ± 0.5 mag, SER/DEV/REX 60/20/15 ± 10, θE 1.3 ± 0.2″, red."
    cfg, st = realistic[0], listed_stats
    assert st["n"] >= 150, st
    assert abs(st["deflector_r_median"] - 19.2) < 0.4, st
    assert abs(st["arc_minus_deflector_median"] - 2.9) < 0.5, st
    for ty, v in (("SER", 60), ("DEV", 20), ("REX", 15)):
        assert abs(st["type_mix_percent"][ty] - v) <= 10, st
    assert abs(st["theta_e_median"] - 1.3) < 0.2, st
    assert 1.4 < st["deflector_g_minus_r_median"] < 1.9, st                      # the red sample (§2: median 1.65)
    # the realistic default density lists ≈ 0.3 lenses per deg² (§3: 0.28)
    assert 0.15 < st["listed_density_per_deg2"] / cfg.lens_density_scale < 0.5, st


@pytest.mark.slow
def test_listing_follows_seeing_and_resolution(realistic, listed_stats):
    "Listed vs all lenses: PSFSIZE_R AUC >= 0.58 towards better seeing; the listed fraction rises over 4 bins of θE/FWHM."
    t, st = realistic[1], listed_stats
    assert st["auc_listed_vs_all_psfsize_r"] >= 0.58, st
    assert st["auc_listed_vs_all_psfdepth_r"] > 0.52, st
    f = t.lens_truth.listed.groupby(pd.qcut(t.lens_truth.resolution, 4), observed=True).mean().to_numpy()
    assert np.all(np.diff(f) > 0), f
    # Tier-B still holds non-lenses; unlisted true lenses stay in the catalog, most of them among the pool-like galaxies
    assert (~t.known.is_lens.astype(bool)).sum() > 0 and t.meta["n_unlisted_lenses_in_pool"] > 0


@pytest.mark.slow
def test_deflectors_brighter_and_redder_than_pool_and_shortcuts(realistic, tmp_path):
    "Realistic deflectors differ from the pool (the real sky's risk); bright_core makes them brighter still; psf sharpens lens cores."
    cfg, t = realistic
    S = t.sources
    pool = S[M._pool_like(cfg, S) & (S.role == "").to_numpy()]
    lt = t.lens_truth[t.lens_truth.listed]                                        # the positives of a training set
    assert stats.ks_2samp(lt.deflector_flux_r, pool.flux_r).pvalue < 1e-6
    assert lt.deflector_flux_r.median() > 1.5 * pool.flux_r.median()
    assert lt.deflector_g_minus_r.median() > pool.g_minus_r.median() + 0.15
    small = dict(ra_min_deg=150, ra_max_deg=151, dec_min_deg=0, dec_max_deg=1, n_lenses=80, seed=7)
    a, b = M.make_sky(M.SkyConfig(**small)), M.make_sky(M.SkyConfig(**small, shortcut="bright_core"))
    assert b.lens_truth.deflector_flux_r.median() > 1.8 * a.lens_truth.deflector_flux_r.median()
    M.write_sky(a, str(tmp_path / "a")); sky = M.MockSky.open(tmp_path / "a")
    kl = sky.known[sky.known.is_lens.astype(bool)].head(5)
    X0, _ = sky.render(kl.RA.to_numpy(), kl.DEC.to_numpy(), noise=False, sky_offset=False)
    sky.shortcut = "psf"
    X1, _ = sky.render(kl.RA.to_numpy(), kl.DEC.to_numpy(), noise=False, sky_offset=False)
    assert np.all(X1[:, 48:53, 48:53, 1].sum((1, 2)) > 1.04 * X0[:, 48:53, 48:53, 1].sum((1, 2)))   # (extended deflectors: modest)


def test_clumpy_source_model(tmp_path):
    "source_model clumpy: several components per source, same unlensed flux, knottier arcs than the Sérsic sky of the same seed."
    base = dict(ra_min_deg=150, ra_max_deg=150.5, dec_min_deg=0, dec_max_deg=0.5, density_scale=0.3, n_lenses=12, seed=5)
    s, c = M.make_sky(M.SkyConfig(**base)), M.make_sky(M.SkyConfig(**base, source_model="clumpy"))
    pd.testing.assert_series_equal(s.lens_truth.src_mag_r, c.lens_truth.src_mag_r)       # same sources, only their structure differs
    assert (c.lens_truth.n_source_components >= 3).all() and (s.lens_truth.n_source_components == 1).all()
    nc = (c.components.kind == M.KIND_LENSED).sum()
    assert nc == c.lens_truth.n_source_components.sum() and (s.components.kind == M.KIND_LENSED).sum() == 12
    assert c.meta["source_prior"]["source_model"] == "clumpy"


def test_make_sky_is_pure_and_deterministic(tmp_path, monkeypatch):
    "make_sky writes nothing and gives equal tables for equal configs; write_sky + MockSky.open round-trip them."
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=150.5, dec_min_deg=0, dec_max_deg=0.5, density_scale=0.2, n_lenses=4)
    monkeypatch.chdir(tmp_path)
    t1, t2 = M.make_sky(cfg), M.make_sky(cfg)
    assert list(tmp_path.iterdir()) == []
    for a in ("sources", "bricks", "components", "lens_truth", "known", "confusers"):
        pd.testing.assert_frame_equal(getattr(t1, a), getattr(t2, a))
    M.write_sky(t1, str(tmp_path / "sky"))
    sk = M.MockSky.open(tmp_path / "sky")
    pd.testing.assert_frame_equal(sk.lens_truth, t1.lens_truth)
    assert json.loads((tmp_path / "sky" / "sky_meta.json").read_text())["n_lenses_planted"] == 4


def test_run_sky_stage_protocol_and_summary(tmp_path):
    "run_sky_stage: done marker with the summary (densities, scale, unlisted-lens share), skip on rerun, rerun on a config change."
    from stronglens.runs import read_marker, get_stage
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=150.5, dec_min_deg=0, dec_max_deg=0.5, density_scale=0.2, lens_density_scale=20)
    r = M.run_sky_stage(cfg, str(tmp_path), progress=False)
    m = read_marker(str(tmp_path), get_stage("sky"))
    assert m["status"] == "done" and m["result"]["lens_density_scale"] == 20 and "unlisted_lens_share_of_pool" in m["result"]
    assert r["n_lenses_planted"] == M._n_lenses(cfg) == round(4.0 * 20 * 0.25, 0)
    assert M.run_sky_stage(cfg, str(tmp_path), progress=False) == r
    prov = json.loads((tmp_path / "sky" / "provenance.json").read_text())          # audit 17.3: the sky records its provenance
    assert {"pipeline_version", "git_commit", "config_hash", "inputs"} <= set(prov) and prov["seeds"] == {"sky.seed": cfg.seed}
    from stronglens.audit import provenance_check, PROVENANCE_KEYS
    meta = json.loads((tmp_path / "sky" / "sky_meta.json").read_text())                # 17.3: every JSON output carries it
    assert meta["provenance"] == prov and set(PROVENANCE_KEYS) <= set(meta["provenance"])
    row = provenance_check(str(tmp_path)).set_index("stage").loc["sky"]
    assert row.json_outputs == row.json_with_provenance == 2 and row.missing == [], row
    r2 = M.run_sky_stage(M.SkyConfig(**{**cfg.__dict__, "seed": 99}), str(tmp_path), progress=False)
    assert r2["n_sources"] != r["n_sources"] and read_marker(str(tmp_path), get_stage("sky"))["result"] == r2


def test_config_validation():
    M.SkyConfig().validate()
    with pytest.raises(ValueError, match="multiple of 0.25"):
        M.SkyConfig(ra_min_deg=150.1).validate()
    with pytest.raises(ValueError, match="shortcut"):
        M.SkyConfig(shortcut="nope").validate()
    with pytest.raises(ValueError, match="fewer free galaxies"):
        M.make_sky(M.SkyConfig(ra_min_deg=150, ra_max_deg=150.25, dec_min_deg=0, dec_max_deg=0.25, n_lenses=50000))
    with pytest.raises(ValueError, match="sky.source_model"):
        M.SkyConfig(source_model="knotty").validate()
    with pytest.raises(ValueError, match="sky.psf_model"):
        M.SkyConfig(psf_model="airy").validate()


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
    r1 = M.run_sky_stage(cfg, f"s3://{s3_bucket}/run2", progress=False)
    r2 = M.run_sky_stage(cfg, f"s3://{s3_bucket}/run2", progress=False)
    assert r1 == r2 and r1["n_lenses_planted"] == 5


def test_a_crowded_small_sky_builds():
    "From audit (11:15): 1,200 lenses on 1 deg² (tiny.yaml's n_lenses on a 1°×1° footprint) raised 'adopt_rows: 4 targets found no free candidate'."
    cfg = M.SkyConfig(ra_min_deg=150, ra_max_deg=151, dec_min_deg=0, dec_max_deg=1, seed=20260, n_lenses=1200)
    t = M.make_sky(cfg)
    assert len(t.lens_truth) == 1200 and t.lens_truth.galaxy_id.is_unique
    assert (t.sources.role == "lens").sum() == 1200


def _double_moffat_per_pix(r_arcsec, core_fwhm_arcsec, psf):
    "Independent re-statement of the DR10 double-Moffat PSF (unit flux) per 0.262″ pixel at radius r."
    a = core_fwhm_arcsec / (2 * np.sqrt(2 ** (1 / psf.core_beta) - 1)); aw = a * psf.wing_scale
    m = lambda al, b: (b - 1) / (np.pi * al ** 2) * (1 + (r_arcsec / al) ** 2) ** (-b)
    return ((1 - psf.wing_frac) * m(a, psf.core_beta) + psf.wing_frac * m(aw, psf.wing_beta)) * 0.262 ** 2


def test_bright_star_light_follows_the_psf_wing_past_the_kernel_edge(sky, catalog):
    "The 1501p006_139 defect: a bright star's light stopped at a hard square 31 px from its centre (the 63 px kernel's edge)."
    st = catalog[(catalog.TYPE == "PSF")].nlargest(3, "FLUX_R")
    X, m = sky.render(st.RA.to_numpy(), st.DEC.to_numpy(), noise=False, sky_offset=False)
    yy, xx = np.mgrid[:101, :101]; r_px = np.hypot(xx - 50, yy - 50)
    ring = (r_px > 34) & (r_px < 48)                               # beyond the old kernel's square along the axes
    inner = (r_px > 26) & (r_px < 30)
    for i in range(len(st)):
        fw = physics.core_fwhm_from_psfsize(m.psfsize_r.iloc[i], sky.psf)
        for sel in (ring, inner):
            want = st.FLUX_R.iloc[i] * _double_moffat_per_pix(r_px[sel] * 0.262, fw, sky.psf)
            ratio = np.median(X[i, ..., 1][sel] / want)                  # median: robust to a neighbour in the ring
            assert 0.9 < ratio < 1.15, (i, ratio)
        row = X[i, 50, 50 + 24:50 + 45, 1]                             # no step along the row: falls smoothly as r^-4
        steps = row[:-1] / row[1:]
        assert steps.max() < 1.25 and steps.min() > 1.0, steps


def test_bright_disc_light_continues_past_tractors_4_re(sky, catalog):
    "A bright exponential galaxy was cut by a cosine taper at 3-4 r_e (Tractor's truncation) while still several σ above the sky."
    from astropy.modeling.models import Sersic2D
    from scipy.signal import fftconvolve
    rex = catalog[_isolated(catalog, sky) & (catalog.TYPE == "REX") & (catalog.SHAPE_R.between(1.0, 3.0)) & (catalog.MASKBITS == 0)]
    rex = rex.nlargest(3, "FLUX_R")
    assert len(rex) >= 2
    X, m = sky.render(rex.RA.to_numpy(), rex.DEC.to_numpy(), noise=False, sky_offset=False)
    yy, xx = np.mgrid[:101, :101]; r_arcsec = np.hypot(xx - 50, yy - 50) * 0.262
    for i in range(len(rex)):
        re = rex.SHAPE_R.iloc[i]
        ref = Sersic2D(amplitude=1.0, r_eff=re / 0.262, n=1.0, x_0=50, y_0=50)(xx, yy)       # astropy: the untruncated profile
        ref = fftconvolve(ref, lensing.psf_kernels(m.psfsize_r.iloc[i], sky.psf, size_px=101).numpy(), mode="same")
        inner, outer = (r_arcsec > 1.0 * re) & (r_arcsec < 2.0 * re), (r_arcsec > 3.5 * re) & (r_arcsec < 4.8 * re) & (r_arcsec < 13)
        got = np.median(X[i, ..., 1][outer]) / np.median(X[i, ..., 1][inner]); want = np.median(ref[outer]) / np.median(ref[inner])
        assert abs(got / want - 1) < 0.15, (i, re, got, want)


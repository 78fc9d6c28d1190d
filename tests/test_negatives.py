"""Negative pool: spec §2 schema, cuts, exclusion, N1 stratification, N2 categories, seeding, DR8 input."""
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
import astropy.units as u

from stronglens.negatives import NegativeSamplingConfig
from stronglens.negatives import (CatalogConfig, POOL_COLUMNS, SPEC_POOL_COLUMNS, POSITIVE_EXTRA_COLUMNS, check_pool_schema,
                                  resolve_catalog_paths, build_catalogs, synthetic_sky, synthetic_sweep, write_sweep_fits,
                                  sample_negatives, nobs_bin, ChunkContext, process_chunk)

# spec §2 "Negative Pool Manifest", transcribed literally (str -> pandas str, int -> int64)
SPEC = ("galaxy_id str, brickname str, objid int, ra float64, dec float64, type str, nobs_z int, nobs_z_bin str, type_bin str, "
        "flux_g float32, flux_r float32, flux_z float32, flux_w1 float32, mag_g float32, mag_r float32, mag_z float32, "
        "g_minus_r float32, r_minus_z float32, z_minus_w1 float32, psfsize_g float32, psfsize_r float32, psfsize_z float32, "
        "psfdepth_g float32, psfdepth_r float32, psfdepth_z float32, galdepth_g float32, galdepth_r float32, galdepth_z float32, "
        "ebv float32, maskbits int, healpix_64 int64, healpix_128 int64, split str, pool str, sweep_file str, "
        "pipeline_version str, git_commit str")


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    synthetic_sky(str(run / "sky"), n_per_file=30000, n_lenses=60, seed=0)
    return run


@pytest.fixture(scope="module")
def neg_cfg():
    neg = NegativeSamplingConfig()
    neg.stratification.negatives_per_positive = 10
    return neg


@pytest.fixture(scope="module")
def result(sky, neg_cfg):
    ccfg = CatalogConfig(progress=False, write_candidates=True)
    return build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(sky)))


def test_spec_schema_columns_and_dtypes(result):
    spec = [tuple(x.split()) for x in SPEC.split(", ")]
    assert SPEC_POOL_COLUMNS == [c for c, _ in spec]
    for df in (result.negatives, result.positives, result.candidates):
        for c, t in spec:
            assert c in df.columns, c
            if t == "str":
                assert str(df[c].dtype) == "str", (c, df[c].dtype)
            else:
                assert str(df[c].dtype) == {"int": "int64"}.get(t, t), (c, df[c].dtype)
        assert list(df.columns[: len(POOL_COLUMNS)]) == list(POOL_COLUMNS)
        assert df[[c for c, _ in spec]].drop(columns=["mag_g", "mag_r", "mag_z", "g_minus_r", "r_minus_z", "z_minus_w1"]).notna().all().all()
    assert check_pool_schema(result.positives, POSITIVE_EXTRA_COLUMNS) == []
    assert set(result.negatives.pool) == {"N1", "N2"} and set(result.positives.pool) == {"positive"}
    assert (result.negatives.galaxy_id == result.negatives.brickname + "_" + result.negatives.objid.astype(str)).all()
    assert not set(result.negatives.galaxy_id) & set(result.positives.galaxy_id)


def test_cuts_follow_config(result, neg_cfg):
    c = result.candidates
    assert set(c.type) <= {"SER", "DEV", "REX"}
    assert (c.nobs_z >= 3).all() and (c.mag_z < 20.0).all()
    rej = sum(1 << b for b in neg_cfg.cuts.reject_maskbits)
    assert ((c.maskbits & rej) == 0).all()
    rows = result.counts
    assert rows["rows_read"] == sum(rows[k] for k in ("radec", "type", "nonfinite_flux", "nobs", "mag_z", "maskbits", "near_known_lens", "candidates"))


def test_mags_colours_depths_independent_reference():
    flux = np.array([1.0, 0.0, -2.0, np.nan, 100.0], np.float32)
    from stronglens.physics import nmgy_to_mag
    m = nmgy_to_mag(flux).astype(np.float32)
    with np.errstate(all="ignore"):
        ref = np.where(flux > 0, 22.5 - 2.5 * np.log10(flux.astype(np.float64)), np.nan)
    assert np.allclose(m, ref, equal_nan=True, atol=1e-5)
    arr = synthetic_sweep(3000, seed=5)
    arr["flux_g"][:50] = -1.0                     # non-positive g flux -> NaN mag_g and g-r
    ctx = ChunkContext(NegativeSamplingConfig(), np.array([0.0]), np.array([-80.0]), np.zeros(0), np.zeros(0))
    res = process_chunk(arr, ctx, "x.fits").candidates
    gal = res.set_index("objid")
    bad = gal.index.isin(np.arange(50))
    assert gal.loc[bad, "mag_g"].isna().all() and gal.loc[bad, "g_minus_r"].isna().all()
    ok = ~bad
    assert np.allclose(gal.loc[ok, "g_minus_r"], 2.5 * np.log10(gal.loc[ok, "flux_r"].astype(float) / gal.loc[ok, "flux_g"].astype(float)), atol=1e-4)
    d = gal.psfdepth_r.astype(float)
    assert np.allclose(gal.psfdepth_r_mag, 22.5 - 2.5 * np.log10(5 / np.sqrt(d)), atol=1e-4)


def test_nobs_bins_reference():
    n = np.arange(-1, 30)
    ref = np.select([(n >= 1) & (n <= 2), (n >= 3) & (n <= 5), (n >= 6) & (n <= 10), n >= 11], ["1-2", "3-5", "6-10", "11+"], "none")
    assert list(nobs_bin(n)) == [None if r == "none" else r for r in ref]


def test_planted_known_lens_excludes_its_neighbours(tmp_path, neg_cfg):
    arr = synthetic_sweep(20000, seed=11, ra_range=(20.1, 20.4), dec_range=(-4.9, -4.6), brick_prefix="0201m049")
    sky = tmp_path / "sky"
    write_sweep_fits(str(sky / "sweep-020m005-025p000.fits"), arr)
    ccfg = CatalogConfig(progress=False, write_candidates=True, morphology_catalog="")
    # first without lenses: pick a candidate galaxy, then plant a lens 6" from it (not on any source)
    pd.DataFrame({"name": ["far"], "RA": [100.0], "DEC": [50.0], "grading": ["confident"]}).to_csv(sky / "known_lenses.csv", index=False)
    base = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(tmp_path)))
    g = base.candidates.iloc[len(base.candidates) // 2]
    lens_ra, lens_dec = g.ra + 6.0 / 3600 / np.cos(np.radians(g.dec)), g.dec
    pd.DataFrame({"name": ["planted", "far"], "RA": [lens_ra, 100.0], "DEC": [lens_dec, 50.0], "type": ["galaxy", "galaxy"],
                  "grading": ["probable", "confident"]}).to_csv(sky / "known_lenses.csv", index=False)
    res = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(tmp_path)))
    assert g.galaxy_id not in set(res.candidates.galaxy_id)
    sep = SkyCoord(res.candidates.ra.values * u.deg, res.candidates.dec.values * u.deg).separation(SkyCoord(lens_ra * u.deg, lens_dec * u.deg)).arcsec
    assert sep.min() > 11.0
    before = SkyCoord(base.candidates.ra.values * u.deg, base.candidates.dec.values * u.deg).separation(SkyCoord(lens_ra * u.deg, lens_dec * u.deg)).arcsec
    assert (before <= 11.0).sum() == res.counts["near_known_lens"] >= 1
    assert set(base.candidates.galaxy_id[before > 11.0]) == set(res.candidates.galaxy_id)


def test_dropped_known_lenses_still_exclude(result):
    kl = result.inputs.known_lenses
    dropped = result.inputs.dropped_lenses
    assert set(dropped.drop_reason) == {"type_cluster", "nosocs_cluster_catalog", "duplicate_within_3arcsec"}
    c = result.candidates
    _, d2d, _ = SkyCoord(c.ra.values * u.deg, c.dec.values * u.deg).match_to_catalog_sky(SkyCoord(kl.ra.values * u.deg, kl.dec.values * u.deg))
    assert d2d.arcsec.min() > 11.0


def test_positives_matched_within_radius(result):
    p = pd.concat([result.positives, result.positives_eval])
    kl = result.inputs.positives_catalog.set_index("name")
    assert len(p) == 60 and set(p.tier) == {"A", "B"}
    sep = SkyCoord(p.ra.values * u.deg, p.dec.values * u.deg).separation(
        SkyCoord(kl.loc[p.lens_name, "ra"].values * u.deg, kl.loc[p.lens_name, "dec"].values * u.deg)).arcsec
    assert np.allclose(sep, p.match_sep_arcsec, atol=1e-6) and (sep <= 1.5).all()
    assert dict(result.unmatched.reason.value_counts()) == {"outside_sweep_footprint": 1}


def test_n1_matches_positive_distribution_within_1pct(result, neg_cfg):
    c = result.candidates.assign(_rank_key=np.arange(len(result.candidates)))
    # positives concentrated in SER and at 6-10 exposures (unlike the candidates' mix)
    # (few DEV galaxies are N1 in this small sky: most are bright enough for the ring proxy, so DEV positives are rare here)
    w = np.where(c.type_bin == "SER", 6.0, np.where(c.type_bin == "DEV", 0.2, 1.0)) * np.where(c.nobs_z_bin == "6-10", 2.0, 1.0)
    pos = c.sample(120, weights=w, random_state=2)
    cand = c[~c.galaxy_id.isin(pos.galaxy_id)]
    strat = NegativeSamplingConfig().stratification
    strat.negatives_per_positive = 4
    s, tab = sample_negatives(cand, pos, strat)
    assert tab.shortfall.sum() == 0
    n1 = s[s.pool == "N1"]
    key = ["nobs_z_bin", "type_bin"]
    fp = pos.groupby(key).size() / len(pos)
    fn = (n1.groupby(key).size() / len(n1)).reindex(fp.index, fill_value=0)
    assert set(n1.groupby(key).size().index) <= set(fp.index)
    assert (fp - fn).abs().max() < 0.01
    from scipy.stats import chisquare
    assert chisquare(n1.groupby(key).size().reindex(fp.index).values, fp.values * len(n1)).pvalue > 0.99
    # N1:N2 = 85:15 per stratum (rounded half up), 4 negatives per positive
    per = s.groupby(key + ["pool"]).size().unstack().reindex(fp.index)
    npos = pos.groupby(key).size()
    n_t = np.floor(4 * npos + 0.5)
    assert (per.N1 + per.N2 == n_t).all() and (per.N2 == np.floor(0.15 * n_t + 0.5)).all()
    assert abs(per.N2.sum() / len(s) - 0.15) < 0.01
    assert abs(len(s) - 4 * len(pos)) <= len(fp)


def test_n2_categories_match_the_categories_catalog(result, sky):
    conf = pd.read_csv(sky / "sky" / "confusers.csv")
    c = result.candidates
    sc = SkyCoord(c.ra.values * u.deg, c.dec.values * u.deg)
    idx, d2d, _ = sc.match_to_catalog_sky(SkyCoord(conf.ra.values * u.deg, conf.dec.values * u.deg))
    hit = d2d.arcsec <= 1.0
    assert hit.sum() > 100
    expect = conf.category.values[idx[hit]]
    expect = np.where(expect == "normal", "", expect)
    assert list(c.n2_category.values[hit]) == list(expect)
    assert (c.pool.values[hit] == np.where(expect == "", "N1", "N2")).all()
    # elsewhere the catalog-level proxies apply (first match wins)
    assert set(c.n2_category.values[~hit]) <= {"", "ring", "edge_on", "blue_clumpy", "large"}


def test_seeded_and_chunking_independent(sky, neg_cfg, result):
    ccfg = CatalogConfig(progress=False, chunk_rows=7001)
    again = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(sky)))
    pd.testing.assert_frame_equal(again.negatives, result.negatives)
    pd.testing.assert_frame_equal(again.positives, result.positives)
    import copy
    neg2 = copy.deepcopy(neg_cfg); neg2.seed = 7
    other = build_catalogs(ccfg, neg2, resolve_catalog_paths(ccfg, str(sky)))
    assert set(other.negatives.galaxy_id) != set(result.negatives.galaxy_id)
    assert len(other.negatives) == len(result.negatives)


def test_process_pool_equals_in_process(sky, neg_cfg, result):
    ccfg = CatalogConfig(progress=False, n_jobs=2, chunk_rows=10000)
    par = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(sky)))
    pd.testing.assert_frame_equal(par.negatives, result.negatives)


def test_real_dr8_sweeps_through_the_stage(shared_data, tmp_path, neg_cfg):
    d = shared_data / "dr8_sweeps_desitarget"
    from stronglens.legacysurvey import read_sweep
    src = read_sweep(str(sorted(d.glob("sweep-*.fits"))[0]))
    kl = tmp_path / "kl.csv"
    pd.DataFrame({"name": ["L1"], "RA": [src.ra[0] + 0.3 / 3600], "DEC": [src.dec[0]], "grading": ["confident"]}).to_csv(kl, index=False)
    ccfg = CatalogConfig(progress=False, sweep_dir=str(d), known_lenses=str(kl), morphology_catalog="")
    res = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(tmp_path)))
    assert len(res.problems) == 3 and all("PSFSIZE_Z: missing" in p.problem and "filled" in p.action for p in res.problems)
    assert res.counts["rows_read"] == 18
    both = pd.concat([res.positives, res.positives_eval])     # the real DR8 row decides which set it joins (its cuts)
    assert list(both.galaxy_id) == [f"{src.brickname[0]}_{src.objid[0]}"]
    assert both.psfsize_z.isna().all()          # missing in DR8 -> NaN, documented
    ccfg2 = CatalogConfig(progress=False, sweep_dir=str(d), known_lenses=str(kl), morphology_catalog="", missing_columns="skip_file")
    res2 = build_catalogs(ccfg2, neg_cfg, resolve_catalog_paths(ccfg2, str(tmp_path)))
    assert len(res2.problems) == 3 and all(p.action.startswith("skipped") for p in res2.problems)
    assert len(res2.positives) == 0 and len(res2.negatives) == 0
    assert list(res2.unmatched.reason) == ["sweep_file_skipped"]


def test_catalog_config_validation():
    CatalogConfig().validate()
    for bad in (dict(engine="x"), dict(missing_columns="zero"), dict(match_radius_arcsec=0), dict(chunk_rows=0), dict(keep_tiers=["C"])):
        with pytest.raises(ValueError, match="catalogs"):
            CatalogConfig(**bad).validate()


def _sweep_rows(sky, ids):
    "The sweep rows (all columns) of galaxy ids, read back from the sky's sweep files."
    from stronglens.legacysurvey import read_sweep
    df = pd.concat([read_sweep(str(f)) for f in sorted((sky / "sky").glob("sweep-*.fits"))], ignore_index=True)
    df["galaxy_id"] = df.brickname + "_" + df.objid.astype(str)
    return df.set_index("galaxy_id").loc[list(ids)]


def test_training_positives_pass_the_pool_cuts(result, sky, neg_cfg):
    "Issue 13.2: positives used for training pass the pool's quality cuts (types, nobs per band, z<20, maskbits)."
    rows = _sweep_rows(sky, result.positives.galaxy_id)
    c = neg_cfg.cuts
    assert set(rows.type) <= set(c.types)
    assert (rows[["nobs_g", "nobs_r", "nobs_z"]].min(axis=1) >= c.min_nobs_grz).all()
    assert (22.5 - 2.5 * np.log10(rows.flux_z.clip(lower=1e-30)) < c.max_mag_z).all()
    assert ((rows.maskbits & sum(1 << b for b in c.reject_maskbits)) == 0).all()
    assert len(result.positives) == 54


def test_positives_failing_a_cut_are_a_labelled_evaluation_set(result, sky, neg_cfg):
    "Issue 13.2: matched lenses failing a cut are kept apart, each labelled with the cuts it fails (independent check)."
    ev = result.positives_eval
    assert len(ev) == 6 and not set(ev.galaxy_id) & set(result.positives.galaxy_id)
    rows = _sweep_rows(sky, ev.galaxy_id)
    c = neg_cfg.cuts
    for gid, got in zip(ev.galaxy_id, ev.failed_cuts):
        r = rows.loc[gid]
        want = [name for name, ok in [("type", r.type in c.types), ("nobs", min(r.nobs_g, r.nobs_r, r.nobs_z) >= c.min_nobs_grz),
                                      ("mag_z", r.flux_z > 10 ** ((22.5 - c.max_mag_z) / 2.5)),
                                      ("maskbits", (int(r.maskbits) & sum(1 << b for b in c.reject_maskbits)) == 0)] if not ok]
        assert got.split(",") == want, gid
    assert {"nobs", "type", "mag_z", "maskbits"} <= {x for f in ev.failed_cuts for x in f.split(",")}
    rep = result.report()["positives"]
    assert (rep["training"], rep["evaluation_only"], rep["matched"]) == (54, 6, 60)


def test_nobs_z_bin_only_takes_the_spec_values(result):
    "Issue 13.2: nobs_z_bin is one of the spec's four values wherever it is set; a lens without z coverage has none."
    spec = {"1-2", "3-5", "6-10", "11+"}
    for df in (result.negatives, result.positives, result.candidates):
        assert set(df.nobs_z_bin) <= spec and df.nobs_z_bin.notna().all()
    ev = result.positives_eval
    assert set(ev.nobs_z_bin.dropna()) <= spec and "none" not in set(ev.nobs_z_bin.dropna())
    assert (ev.nobs_z_bin.isna() == (ev.nobs_z == 0)).all() and ev.nobs_z_bin.isna().sum() == 2


def test_every_training_stratum_can_hold_negatives(result):
    "Issue 13.2: no nobs_z_bin x type_bin stratum holds positives but no negatives (1-2 and OTHER were such strata)."
    key = ["nobs_z_bin", "type_bin"]
    pos = result.positives.groupby(key).size()
    neg = result.negatives.groupby(key).size().reindex(pos.index, fill_value=0)
    assert (neg > 0).all(), neg[neg == 0]
    assert "1-2" not in set(result.positives.nobs_z_bin) and "OTHER" not in set(result.positives.type_bin)


def test_stratification_config_refuses_bins_that_leave_rows_out():
    from stronglens.config import config_from_dict, ConfigError
    with pytest.raises(ConfigError, match=r"nobs_z_bins: '1-2' and '4-5' leave a gap"):
        config_from_dict({"stratification": {"nobs_z_bins": ["1-2", "4-5", "6+"]}}, schema=NegativeSamplingConfig)
    with pytest.raises(ConfigError, match="above cuts.min_nobs_grz"):
        config_from_dict({"stratification": {"nobs_z_bins": ["4-5", "6+"]}}, schema=NegativeSamplingConfig)
    with pytest.raises(ConfigError, match="cuts.min_nobs_grz: expected >= 1"):
        config_from_dict({"cuts": {"min_nobs_grz": 0}}, schema=NegativeSamplingConfig)


MATCH = {"match_mag_r_bins": [17.5, 18.0, 18.5, 19.0, 19.5, 20.0], "match_g_minus_r_bins": [0.5, 0.8, 1.1, 1.3, 1.5, 1.7, 2.0, 2.5]}


def test_matched_negatives_follow_the_positives_in_r_and_g_minus_r(sky, result, neg_cfg):
    "Issue 14.8: with matching on, N1's r-mag and g-r distributions match the positives' (KS p > 0.01); off, they do not."
    from scipy.stats import ks_2samp
    import copy
    neg = copy.deepcopy(neg_cfg)
    for k, v in MATCH.items(): setattr(neg.stratification, k, v)
    neg.validate()
    ccfg = CatalogConfig(progress=False)
    on = build_catalogs(ccfg, neg, resolve_catalog_paths(ccfg, str(sky)))
    pos = on.positives
    pd.testing.assert_frame_equal(pos, result.positives)                  # matching changes the draw, not the positives
    p = {name: {c: ks_2samp(r.negatives.loc[r.negatives.pool == "N1", c].dropna(), pos[c].dropna()).pvalue
                for c in ("mag_r", "g_minus_r")} for name, r in (("off", result), ("on", on))}
    assert p["on"]["mag_r"] > 0.01 and p["on"]["g_minus_r"] > 0.01, p
    assert p["off"]["mag_r"] < 0.01 and p["off"]["g_minus_r"] < 0.01, p
    # the sampling table is per fine stratum; the report names the keys
    assert {"mag_r_bin", "g_minus_r_bin"} <= set(on.sampling.columns)
    assert on.report()["stratification"]["keys"] == ["nobs_z_bin", "type_bin", "mag_r_bin", "g_minus_r_bin"]
    assert list(on.negatives.columns) == list(result.negatives.columns)


def test_fill_from_other_pool_keeps_each_stratum_full(result):
    "With fill_from_other_pool, a stratum whose N1 runs short takes the rest from its own N2 (never from another stratum)."
    from stronglens.negatives import StratificationSection, pool_quotas
    c = result.candidates.assign(_rank_key=np.arange(len(result.candidates)))
    pos = c[(c.type_bin == "DEV") & (c.pool == "N2")].sample(40, random_state=3)        # bright DEV "deflectors"
    cand = c[~c.galaxy_id.isin(pos.galaxy_id)]
    key = ["nobs_z_bin", "type_bin"]
    off, t_off = sample_negatives(cand, pos, StratificationSection(negatives_per_positive=8))
    on, t_on = sample_negatives(cand, pos, StratificationSection(negatives_per_positive=8, fill_from_other_pool=True))
    assert t_off.shortfall.sum() > 0 and t_off.extra.sum() == 0
    tot_on = t_on.groupby(key)[["target", "available", "drawn"]].sum()
    assert (tot_on.drawn == np.minimum(tot_on.target, tot_on.available)).all()       # each stratum as full as it can be
    assert set(off.galaxy_id) <= set(on.galaxy_id)                                   # the same draw, plus the fill
    extra = on[~on.galaxy_id.isin(off.galaxy_id)]
    assert len(extra) == t_on.extra.sum() and set(extra.pool) == {"N2"}
    assert (on.groupby(key).size() <= pos.groupby(key).size() * 8).all()
    q = pool_quotas(t_off[key + ["pool", "target"]], t_off[key + ["pool", "available"]], key, True)
    assert (q["quota"].to_numpy() == t_on.drawn.to_numpy()).all()


def test_matching_never_leaves_a_stratum_without_negatives(result):
    "A positive whose magnitude/colour cell has no candidate must not leave its nobs_z_bin x type_bin stratum empty."
    from stronglens.negatives import StratificationSection
    c = result.candidates.assign(_rank_key=np.arange(len(result.candidates)))
    pos = c.nsmallest(5, "mag_r")                                            # the brightest galaxies: cells nobody else fills
    cand = c[~c.galaxy_id.isin(pos.galaxy_id)]
    st = StratificationSection(negatives_per_positive=4, match_mag_r_bins=list(np.arange(14.0, 21.0, 0.02)),
                               match_g_minus_r_bins=list(np.arange(0.0, 2.5, 0.02)))
    s, tab = sample_negatives(cand, pos, st)
    key = ["nobs_z_bin", "type_bin"]
    per = s.groupby(key).size().reindex(pos.groupby(key).size().index, fill_value=0)
    assert (per > 0).all(), per
    assert (tab.mag_r_bin == "any").any() and tab.target.sum() == 4 * len(pos)
    fb = tab[tab.mag_r_bin == "any"][key].drop_duplicates()
    assert not tab[tab.mag_r_bin != "any"].merge(fb, on=key).shape[0]              # fine rows of those strata are replaced


def test_exclusion_catalog_keeps_its_entries_out_of_the_negatives(tmp_path, neg_cfg):
    "catalogs.exclude_catalogs ('auto' -> <sweep_dir>/excluded_lenses.csv): entries are excluded like known lenses, never positives."
    arr = synthetic_sweep(20000, seed=12, ra_range=(20.1, 20.4), dec_range=(-4.9, -4.6), brick_prefix="0201m049")
    sky = tmp_path / "sky"
    write_sweep_fits(str(sky / "sweep-020m005-025p000.fits"), arr)
    pd.DataFrame({"name": ["far"], "RA": [100.0], "DEC": [50.0], "grading": ["confident"]}).to_csv(sky / "known_lenses.csv", index=False)
    ccfg = CatalogConfig(progress=False, write_candidates=True, morphology_catalog="")
    base = build_catalogs(ccfg, neg_cfg, resolve_catalog_paths(ccfg, str(tmp_path)))
    assert resolve_catalog_paths(ccfg, str(tmp_path))["exclude_catalogs"] == []           # auto: no file, nothing excluded
    picks = base.candidates.iloc[[10, len(base.candidates) // 2, len(base.candidates) - 10]]
    pd.DataFrame({"ra": picks.ra, "dec": picks.dec, "galaxy_id": picks.galaxy_id}).to_csv(sky / "excluded_lenses.csv", index=False)
    paths = resolve_catalog_paths(ccfg, str(tmp_path))
    assert paths["exclude_catalogs"] == [str(sky / "excluded_lenses.csv")]
    res = build_catalogs(ccfg, neg_cfg, paths)
    assert not set(picks.galaxy_id) & set(res.candidates.galaxy_id) and not set(picks.galaxy_id) & set(res.negatives.galaxy_id)
    ex = SkyCoord(picks.ra.values * u.deg, picks.dec.values * u.deg)
    idx, sep, _ = SkyCoord(res.candidates.ra.values * u.deg, res.candidates.dec.values * u.deg).match_to_catalog_sky(ex)
    assert sep.arcsec.min() > 11.0                                                         # the whole exclusion radius
    idx, sep, _ = SkyCoord(base.candidates.ra.values * u.deg, base.candidates.dec.values * u.deg).match_to_catalog_sky(ex)
    assert res.counts["near_known_lens"] == base.counts["near_known_lens"] + int((sep.arcsec <= 11.0).sum())
    assert set(base.candidates.galaxy_id[sep.arcsec > 11.0]) == set(res.candidates.galaxy_id)
    rep = res.report()
    assert rep["excluded_lenses"] == {"entries": 3, "files": {"excluded_lenses.csv": 3}} and rep["known_lenses"]["entries"] == 1
    none = CatalogConfig(progress=False, morphology_catalog="", exclude_catalogs="")         # "" switches it off
    assert resolve_catalog_paths(none, str(tmp_path))["exclude_catalogs"] == []


def test_exclusion_catalog_bad_input_names_file_and_row(tmp_path, neg_cfg):
    from stronglens.negatives import load_exclusion_catalogs
    p = tmp_path / "cands.csv"
    pd.DataFrame({"ra": [1.0, np.nan], "dec": [0.0, 1.0]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"cands.csv: data row 1 \(0-based\): expected finite ra"):
        load_exclusion_catalogs([str(p)])
    with pytest.raises(FileNotFoundError):
        load_exclusion_catalogs([str(tmp_path / "missing.csv")])

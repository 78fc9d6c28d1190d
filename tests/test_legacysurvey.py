"""Sweep reader on real Legacy Surveys files, bad files, and known-lens catalogs (lenscat)."""
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from stronglens.legacysurvey import (SWEEP_COLUMNS, SweepReadError, read_sweep, iter_sweeps,
                                     open_table, load_known_lenses, clean_known_lenses, lenscat_csv_path, sweep_box,
                                     lenscat_available)

needs_lenscat = pytest.mark.skipif(not lenscat_available(), reason="lenscat not installed (pip install --no-deps lenscat)")

# the spec §2 pool needs these DR10 columns (PSFSIZE_* etc. are missing from DR8)
DR8_MISSING = {"PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z", "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC"}


def _compare_with_astropy(df, path):
    ref = fits.getdata(path, 1)
    assert len(df) == len(ref)
    for c in SWEEP_COLUMNS:
        if c not in ref.columns.names:
            continue
        v, w = df[c.lower()].to_numpy(), ref[c]
        if np.asarray(w).dtype.kind in "SU":
            assert list(v) == [x.strip() for x in w], c
        else:
            assert np.array_equal(v.astype(np.float64), np.asarray(w, np.float64), equal_nan=True), c


def test_real_dr8_sweeps_and_tractor_files_read(shared_data):
    files = sorted((shared_data / "dr8_sweeps_desitarget").glob("*.fits"))
    assert len(files) == 6
    for f in files:
        problems = []
        df = read_sweep(str(f), problems=problems, chunk_rows=4)      # 6 rows -> 2 chunks
        _compare_with_astropy(df, f)
        # DR8 lacks the DR9/DR10 shape and PSF-size columns: reported by name, filled with NaN
        assert len(problems) == 1 and problems[0].file == str(f)
        assert {s.split(":")[0].strip() for s in problems[0].problem.split(";")} == DR8_MISSING
        assert "filled" in problems[0].action
        assert df[[c.lower() for c in DR8_MISSING]].isna().all().all()


def test_dr8_missing_columns_skip_file_policy(shared_data):
    f = sorted((shared_data / "dr8_sweeps_desitarget").glob("sweep-*.fits"))[0]
    with pytest.raises(SweepReadError, match="PSFSIZE_Z: missing"):
        read_sweep(str(f), missing_columns="skip_file")
    problems = []
    got = list(iter_sweeps([str(f)], missing_columns="skip_file", problems=problems, progress=False))
    assert got == [] and "skipped" in problems[0].action


def test_real_dr9_row_full_schema(shared_data):
    f = shared_data / "dr9_tractor_fastspecfit" / "tractor-1054p567.fits"
    problems = []
    df = read_sweep(str(f), problems=problems)
    assert problems == []
    _compare_with_astropy(df, f)
    assert df.psfsize_z.notna().all() and df.shape_r.notna().all()


def test_bad_files_reported_and_run_continues(shared_data, tmp_path):
    good = sorted((shared_data / "dr8_sweeps_desitarget").glob("sweep-*.fits"))[0]
    t = open_table(str(good))
    (tmp_path / "trunc.fits").write_bytes(good.read_bytes()[: t.data_offset + t.row_bytes * t.nrows - 7])
    (tmp_path / "notfits.fits").write_bytes(b"SIMPLE = nonsense" * 400)
    # required column with the wrong dtype
    cols = [fits.Column(name="RA", format="J", array=np.arange(3)), fits.Column(name="DEC", format="D", array=np.zeros(3)),
            fits.Column(name="BRICKNAME", format="8A", array=["a"] * 3), fits.Column(name="OBJID", format="E", array=np.zeros(3)),
            fits.Column(name="TYPE", format="3A", array=["SER"] * 3)]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "baddtype.fits")
    # wrong dtype of an optional column -> filled and reported
    ref = fits.getdata(good, 1)
    cols2 = [fits.Column(name=c, format=ref.columns[c].format, array=ref[c]) for c in ref.columns.names if c != "FLUX_R"]
    cols2.append(fits.Column(name="FLUX_R", format="8A", array=["x"] * len(ref)))
    fits.BinTableHDU.from_columns(cols2).writeto(tmp_path / "fluxstr.fits")
    urls = [str(tmp_path / "trunc.fits"), str(good), str(tmp_path / "notfits.fits"), str(tmp_path / "baddtype.fits"),
            str(tmp_path / "missing.fits"), str(tmp_path / "fluxstr.fits")]
    problems = []
    chunks = list(iter_sweeps(urls, problems=problems, progress=False))
    assert sorted({u for u, _, _ in chunks}) == sorted([str(good), str(tmp_path / "fluxstr.fits")])
    by = {p.file.split("/")[-1]: p for p in problems}
    assert "truncated" in by["trunc.fits"].problem and by["trunc.fits"].action == "skipped"
    assert "FITS header" in by["notfits.fits"].problem
    assert "OBJID: dtype" in by["baddtype.fits"].problem and "skipped" in by["baddtype.fits"].action
    assert "not found" in by["missing.fits"].problem
    assert "FLUX_R: dtype |S8" in by["fluxstr.fits"].problem and "filled" in by["fluxstr.fits"].action
    arr = [a for u, _, a in chunks if u.endswith("fluxstr.fits")][0]
    assert np.isnan(arr["flux_r"]).all() and np.isfinite(arr["flux_g"]).all()


def test_sweep_box():
    assert sweep_box("sweep-340m010-345m005.fits") == (340.0, 345.0, -10.0, -5.0)


def test_mock_sky_sweep_has_the_columns_the_dr9_row_has(shared_data, tmp_path):
    mocksky = pytest.importorskip("stronglens.mocksky")
    cfg = mocksky.SkyConfig(ra_max_deg=151.0, dec_max_deg=1.0, density_scale=0.1, n_lenses=5)
    mocksky.build_sky(cfg, str(tmp_path / "sky"), progress=False)
    sweeps = sorted((tmp_path / "sky").glob("sweep-*.fits"))
    assert sweeps
    dr9 = fits.getdata(shared_data / "dr9_tractor_fastspecfit" / "tractor-1054p567.fits", 1)
    need = {c for c in SWEEP_COLUMNS if c in dr9.columns.names}
    assert need == set(SWEEP_COLUMNS)          # the real DR9 row has every column the pool needs
    t = open_table(str(sweeps[0]))
    assert need <= set(t.columns), sorted(need - set(t.columns))
    problems = []
    df = read_sweep(str(sweeps[0]), problems=problems)
    assert problems == [] and len(df) > 0
    # same dtype kind as the real DR9 row for every needed column
    for c in need:
        assert df[c.lower()].dtype.kind == pd.Series(np.asarray(dr9[c]).astype(np.asarray(dr9[c]).dtype.newbyteorder("="))).dtype.kind \
            or (df[c.lower()].dtype.kind in "OUT" and np.asarray(dr9[c]).dtype.kind == "S"), c


# ------------------------------------------------------------------ lenscat

@needs_lenscat
def test_lenscat_csv_read_without_importing_lenscat():
    import sys
    p = lenscat_csv_path()
    assert p.name == "catalog.csv" and p.exists()
    lc = load_known_lenses("lenscat")
    assert "lenscat" not in sys.modules and "ligo.skymap" not in sys.modules
    raw = pd.read_csv(p)
    assert len(lc) == len(raw)
    # grading -> tier, checked against the raw column
    assert ((lc.tier == "A") == (raw.grading == "confident")).all()
    assert ((lc.tier == "B") == (raw.grading == "probable")).all()
    assert np.allclose(lc.ra, raw["RA [deg]"]) and np.allclose(lc.dec, raw["DEC [deg]"])


@needs_lenscat
def test_lenscat_contamination_dropped_from_positives_but_kept_for_exclusion():
    from astropy.coordinates import SkyCoord
    import astropy.units as u
    lc = load_known_lenses("lenscat")
    pos, dropped = clean_known_lenses(lc, dedup_radius_arcsec=3.0)
    assert len(pos) + len(dropped) == len(lc)
    counts = dropped.drop_reason.value_counts()
    nosocs = lc.ref.str.contains("Lopes et al. (2004)", regex=False)
    assert counts["nosocs_cluster_catalog"] == nosocs.sum() and 9_000 < nosocs.sum() < 11_000
    assert counts["type_cluster"] == ((lc.type == "cluster") & ~nosocs).sum()
    assert counts["type_group"] == ((lc.type == "group") & ~nosocs).sum()
    assert not pos.ref.str.contains("Lopes").any() and set(pos.type) == {"galaxy"}
    # no two positives within 3" (astropy reference), and every duplicate had a kept neighbour within 3"
    sc = SkyCoord(pos.ra.values * u.deg, pos.dec.values * u.deg)
    _, d2, _ = sc.match_to_catalog_sky(sc, nthneighbor=2)
    assert d2.arcsec.min() > 3.0
    dup = dropped[dropped.drop_reason.str.startswith("duplicate")]
    assert len(dup) > 0
    _, d2d, _ = SkyCoord(dup.ra.values * u.deg, dup.dec.values * u.deg).match_to_catalog_sky(sc)
    assert (d2d.arcsec <= 3.0).all()
    # Tier-A wins over Tier-B among duplicates
    assert (pos.tier == "A").sum() >= (lc[~nosocs & (lc.type == "galaxy")].tier == "A").sum() - (dup.tier == "A").sum()


def test_known_lens_csv_in_lenscat_columns(tmp_path):
    p = tmp_path / "kl.csv"
    pd.DataFrame({"name": ["a", "b"], "RA": [1.0, 2.0], "DEC": [0.5, -0.5], "zlens": ["0.3", "-"], "type": ["galaxy"] * 2,
                  "grading": ["confident", "probable"], "theta_e_true": [1.2, 0.8]}).to_csv(p, index=False)
    kl = load_known_lenses(str(p))
    assert list(kl.tier) == ["A", "B"] and "theta_e_true" in kl.columns
    pd.DataFrame({"RA": [1.0], "DEC": [0.0], "grading": ["maybe"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="unknown grading"):
        load_known_lenses(str(p))


@pytest.mark.parametrize("ra, dec, shown", [(725.0, 1.0, "RA=725.0"), (-3.0, 1.0, "RA=-3.0"), (10.0, 95.0, "Dec=95.0"),
                                            (10.0, -90.5, "Dec=-90.5"), ("", 1.0, "RA=nan"), ("inf", 1.0, "RA=inf")])
def test_known_lens_bad_coordinates_name_the_row(tmp_path, ra, dec, shown):
    "Issue 12.11: a known-lens RA of 725 (or Dec beyond +-90, or a blank) is an error naming the row and the value."
    p = tmp_path / "kl.csv"
    pd.DataFrame({"name": ["ok1", "typo", "ok2"], "RA": [1.0, ra, 2.0], "DEC": [0.0, dec, 0.0],
                  "grading": ["confident"] * 3}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"kl\.csv: 1 known-lens row\(s\) with invalid coordinates") as e:
        load_known_lenses(str(p))
    msg = str(e.value)
    assert "row 1 (name 'typo'): RA=" in msg and shown in msg.split("row 1 (name 'typo'): ")[1]
    assert "0 <= RA < 360" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_known_lens_without_grading_is_not_tier_a(tmp_path):
    "Issue 13.2: an empty or absent grading never becomes Tier-A silently."
    p = tmp_path / "kl.csv"
    pd.DataFrame({"name": ["a", "b", "c"], "RA": [1.0, 2.0, 3.0], "DEC": [0.0] * 3,
                  "grading": ["confident", None, "probable"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"1 known-lens row\(s\) without a grading \(rows \[1\]\)"):
        load_known_lenses(str(p))
    pd.DataFrame({"name": ["a"], "RA": [1.0], "DEC": [0.0]}).to_csv(tmp_path / "nograde.csv", index=False)
    with pytest.raises(ValueError, match="without a grading"):
        load_known_lenses(str(tmp_path / "nograde.csv"))
    assert list(load_known_lenses(str(p), missing_grading="probable").tier) == ["A", "B", "B"]
    kl = load_known_lenses(str(p), missing_grading="drop")
    assert list(kl.tier) == ["A", "", "B"]
    kept, dropped = clean_known_lenses(kl)
    assert list(kept.name) == ["a", "c"] and list(dropped.drop_reason) == ["no_grading"]


def test_truncated_file_counts_its_lost_rows(shared_data, tmp_path):
    "Issue 12.6: a truncated sweep file is skipped with the number of rows its header promised (the stage counts them)."
    good = sorted((shared_data / "dr8_sweeps_desitarget").glob("sweep-*.fits"))[0]
    t = open_table(str(good))
    (tmp_path / "trunc.fits").write_bytes(good.read_bytes()[: t.data_offset + t.row_bytes * 2 + 5])
    with pytest.raises(SweepReadError, match=r"truncated: the table of 6 rows .* \(4 rows short\)") as e:
        open_table(str(tmp_path / "trunc.fits"))
    assert e.value.nrows == 6
    problems = []
    assert list(iter_sweeps([str(tmp_path / "trunc.fits"), str(good)], problems=problems, progress=False))
    lost = [p for p in problems if p.lost]
    assert [(p.file.split("/")[-1], p.rows) for p in lost] == [("trunc.fits", 6)]

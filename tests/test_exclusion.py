"""Exclusion around known lenses (spec §3) against astropy's SkyCoord matching."""
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky
from hypothesis import given, settings, strategies as st

from stronglens.exclusion import (DEFAULT_RADIUS_ARCSEC, LensIndex, angular_separation_arcsec, arcsec_from_chord,
                                  chord_from_arcsec, near_known_lens, nearest_lens_separation)


def sphere(rng, n):
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def make_case(seed, n_lens=2000, n_rand=20_000):
    """Random lenses + special lenses (RA seam, poles) and points placed at exactly 10.9" and 11.1" from each lens."""
    rng = np.random.default_rng(seed)
    lra, ldec = sphere(rng, n_lens)
    lra = np.concatenate([lra, [0.0, 359.9999, 0.0005, 120.0, 300.0, 10.0, 180.0]])
    ldec = np.concatenate([ldec, [0.0, -20.0, 45.0, 89.9999, 90.0 - 0.05, -89.9999, -89.95]])
    lenses = SkyCoord(lra * u.deg, ldec * u.deg)
    pa = rng.uniform(0, 360, lra.size) * u.deg
    inner = lenses.directional_offset_by(pa, 10.9 * u.arcsec)
    outer = lenses.directional_offset_by(pa + 137 * u.deg, 11.1 * u.arcsec)
    rra, rdec = sphere(rng, n_rand)
    # random points clustered near the RA seam and both poles, plus near some lenses
    k = n_rand // 10
    seam_ra = np.mod(rng.normal(0, 0.01, k), 360)
    seam_dec = rng.uniform(-60, 60, k)
    pole_dec = np.concatenate([90 - rng.uniform(0, 0.01, k // 2), -90 + rng.uniform(0, 0.01, k - k // 2)])
    pole_ra = rng.uniform(0, 360, k)
    near_l = lenses[rng.integers(0, lra.size, k)].directional_offset_by(rng.uniform(0, 360, k) * u.deg,
                                                                        rng.uniform(0, 20, k) * u.arcsec)
    ra = np.concatenate([inner.ra.deg, outer.ra.deg, rra, seam_ra, pole_ra, near_l.ra.deg])
    dec = np.concatenate([inner.dec.deg, outer.dec.deg, rdec, seam_dec, pole_dec, near_l.dec.deg])
    return ra, dec, lra, ldec, lra.size


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_astropy_match_to_catalog_sky(seed):
    ra, dec, lra, ldec, nl = make_case(seed)
    pts, lenses = SkyCoord(ra * u.deg, dec * u.deg), SkyCoord(lra * u.deg, ldec * u.deg)
    a_idx, a_sep, _ = pts.match_to_catalog_sky(lenses)
    sep, idx = nearest_lens_separation(ra, dec, lra, ldec)
    assert sep.dtype == np.float64 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, a_idx)
    np.testing.assert_allclose(sep, a_sep.arcsec, rtol=0, atol=1e-6)
    near = near_known_lens(ra, dec, lra, ldec, radius_arcsec=11.0)
    assert near.dtype == bool
    np.testing.assert_array_equal(near, a_sep.arcsec <= 11.0)
    # the placed points: every 10.9" point is excluded, no 11.1" point is (lenses are far apart)
    assert near[:nl].all()
    ok_outer = a_sep.arcsec[nl:2 * nl] > 11.0
    assert ok_outer.mean() > 0.99
    assert not near[nl:2 * nl][ok_outer].any()
    np.testing.assert_allclose(sep[:nl][a_idx[:nl] == np.arange(nl)], 10.9, atol=1e-6)


def test_pairs_within_matches_search_around_sky():
    ra, dec, lra, ldec, nl = make_case(3, n_lens=500, n_rand=5000)
    pts, lenses = SkyCoord(ra * u.deg, dec * u.deg), SkyCoord(lra * u.deg, ldec * u.deg)
    i1, i2, d2, _ = search_around_sky(pts, lenses, 11.0 * u.arcsec)
    ref = sorted(zip(i1.tolist(), i2.tolist()))
    i_pt, i_lens, s = LensIndex(lra, ldec).pairs_within(ra, dec, 11.0)
    assert list(zip(i_pt.tolist(), i_lens.tolist())) == ref
    order = np.lexsort((i2, i1))
    np.testing.assert_allclose(s, d2.arcsec[order], atol=1e-6)


def test_boundary_is_inclusive_and_tight():
    lens = SkyCoord(359.99999 * u.deg, -45.0 * u.deg)
    offs = np.array([10.999, 10.9999, 11.0001, 11.001])
    p = lens.directional_offset_by(np.full(offs.size, 33.0) * u.deg, offs * u.arcsec)
    near = near_known_lens(p.ra.deg, p.dec.deg, [lens.ra.deg], [lens.dec.deg], 11.0)
    assert near.tolist() == [True, True, False, False]
    sep, _ = nearest_lens_separation(p.ra.deg, p.dec.deg, [lens.ra.deg], [lens.dec.deg])
    np.testing.assert_allclose(sep, offs, atol=1e-7)


@pytest.mark.parametrize("dec0", [90.0, -90.0])
def test_poles(dec0):
    "All RAs at a pole are the same point; points just across the pole are close."
    ra = np.linspace(0, 359, 50)
    near = near_known_lens(ra, np.full(50, dec0), [123.0], [dec0 - np.sign(dec0) * 10.0 / 3600])
    assert near.all()
    sign = np.sign(dec0)
    # 6" from the pole on opposite meridians: 12" apart, so not within 11"
    sep, idx = nearest_lens_separation([0.0], [dec0 - sign * 6 / 3600], [180.0], [dec0 - sign * 6 / 3600])
    np.testing.assert_allclose(sep, [12.0], atol=1e-6)
    assert not near_known_lens([0.0], [dec0 - sign * 6 / 3600], [180.0], [dec0 - sign * 6 / 3600]).any()


def test_ra_wrap_inputs():
    "RA given outside [0, 360) is wrapped for points and lenses."
    rng = np.random.default_rng(4)
    ra, dec = sphere(rng, 2000)
    lra, ldec = ra[:100] + 1e-3, dec[:100]
    a = nearest_lens_separation(ra, dec, lra, ldec)
    b = nearest_lens_separation(ra - 360, dec, lra + 720, ldec)
    np.testing.assert_allclose(a[0], b[0], atol=1e-7)
    np.testing.assert_array_equal(a[1], b[1])


def test_empty_and_errors():
    assert near_known_lens([1.0, 2.0], [0.0, 0.0], [], []).tolist() == [False, False]
    sep, idx = nearest_lens_separation([1.0], [0.0], [], [])
    assert np.isinf(sep).all() and idx.tolist() == [-1]
    assert near_known_lens([], [], [1.0], [1.0]).shape == (0,)
    with pytest.raises(ValueError, match=r"lens_dec_deg\[row 1\]"):
        near_known_lens([1.0], [0.0], [1.0, 2.0], [0.0, -90.5])
    with pytest.raises(ValueError, match=r"dec_deg\[row 2\]"):
        near_known_lens([1.0, 2, 3], [0.0, 0, np.nan], [1.0], [0.0])
    with pytest.raises(ValueError, match=r"lens_ra_deg\[row 0\]"):
        nearest_lens_separation([1.0], [0.0], [np.nan], [0.0])
    with pytest.raises(ValueError, match="max_sep_arcsec"):
        LensIndex([1.0], [0.0]).nearest([1.0], [0.0], max_sep_arcsec=-1.0)


def test_default_radius():
    assert DEFAULT_RADIUS_ARCSEC == 11.0


@settings(max_examples=100, deadline=None)
@given(sep=st.floats(min_value=0.0, max_value=180 * 3600.0))
def test_chord_roundtrip(sep):
    assert abs(float(arcsec_from_chord(chord_from_arcsec(sep))) - sep) <= 1e-9 * max(1.0, sep) + 1e-9


@settings(max_examples=100, deadline=None)
@given(ra1=st.floats(-720, 720), dec1=st.floats(-90, 90), ra2=st.floats(-720, 720), dec2=st.floats(-90, 90))
def test_separation_matches_astropy(ra1, dec1, ra2, dec2):
    ref = SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(SkyCoord(ra2 * u.deg, dec2 * u.deg)).arcsec
    assert abs(float(angular_separation_arcsec(ra1, dec1, ra2, dec2)) - ref) < 1e-6


def test_exactly_on_the_radius_is_near():
    "radius equal to the (Vincenty) separation itself: inclusive, whatever the chord rounding does."
    rng = np.random.default_rng(12)
    lens = SkyCoord(rng.uniform(0, 360, 300) * u.deg, np.degrees(np.arcsin(rng.uniform(-1, 1, 300))) * u.deg)
    p = lens.directional_offset_by(rng.uniform(0, 360, 300) * u.deg, rng.uniform(10.5, 11.5, 300) * u.arcsec)
    sep = angular_separation_arcsec(p.ra.deg, p.dec.deg, lens.ra.deg, lens.dec.deg)
    for i in range(300):
        assert near_known_lens([p.ra.deg[i]], [p.dec.deg[i]], [lens.ra.deg[i]], [lens.dec.deg[i]],
                               radius_arcsec=sep[i]).tolist() == [True]
        assert near_known_lens([p.ra.deg[i]], [p.dec.deg[i]], [lens.ra.deg[i]], [lens.dec.deg[i]],
                               radius_arcsec=np.nextafter(sep[i], 0)).tolist() == [False]


def test_due_north_south_on_radius_and_prefilter_superset():
    "Offsets along a meridian make |dDec| == separation: the Dec-band prefilter must still keep them."
    from stronglens.exclusion import dec_band_candidates
    rng = np.random.default_rng(21)
    ldec = np.concatenate([rng.uniform(-89.9, 89.9, 200), [-89.99, 89.99, 0.0]])
    lra = rng.uniform(0, 360, ldec.size)
    lens = SkyCoord(lra * u.deg, ldec * u.deg)
    for pa in (0.0, 180.0):
        p = lens.directional_offset_by(np.full(ldec.size, pa) * u.deg, np.full(ldec.size, 11.0) * u.arcsec)
        sep = angular_separation_arcsec(p.ra.deg, p.dec.deg, lra, ldec)
        assert dec_band_candidates(p.dec.deg, ldec, 11.0).all()
        for i in range(ldec.size):
            assert LensIndex([lra[i]], [ldec[i]]).near([p.ra.deg[i]], [p.dec.deg[i]], sep[i]).tolist() == [True]
    ra, dec, lra, ldec, _ = make_case(5, n_lens=3000, n_rand=20_000)
    near = near_known_lens(ra, dec, lra, ldec)
    cand = dec_band_candidates(dec, ldec, 11.0)
    assert not (near & ~cand).any()
    assert cand.mean() < 0.5

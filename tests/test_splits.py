"""HEALPix splits (spec §3) against independent references: healpy and the spec's literal per-row functions."""
import hashlib

import healpy as hp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from stronglens import splits as S
from stronglens.splits import (DEFAULT_ALLOCATIONS, all_pixel_splits, assign_split, compute_healpix, healpix_split,
                               split_fractions, validate_allocations, validate_radec)


def spec_assign_split(healpix_idx, allocations, seed=42):
    "Literal copy of spec §3 `assign_split`, kept here independent of the library."
    hash_input = f"{healpix_idx}_{seed}"
    hash_bytes = hashlib.sha256(hash_input.encode()).digest()
    hash_value = int.from_bytes(hash_bytes[:4], "big") / (2**32)
    cumulative = 0.0
    for split, proportion in sorted(allocations.items()):
        cumulative += proportion
        if hash_value < cumulative:
            return split
    return "train"


def sphere(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def healpy_ref(ra, dec, nside):
    return hp.ang2pix(nside, np.radians(90.0 - dec), np.radians(ra), nest=True)


@pytest.mark.parametrize("nside", [64, 128])
@pytest.mark.parametrize("backend", ["healpy", "numpy"])
def test_compute_healpix_matches_healpy(nside, backend):
    ra, dec = sphere(200_000, seed=nside)
    # add the poles, the equator, the RA seam and the 2/3 belt/cap boundary (cos theta = 2/3)
    ra = np.concatenate([ra, [0, 180, 0, 359.999999, 0, 90, 45, 45, 123.4, 123.4]])
    dec = np.concatenate([dec, [90, -90, 0, 0, 1e-12, -1e-12, np.degrees(np.arcsin(2 / 3)),
                                -np.degrees(np.arcsin(2 / 3)), 89.999999, -89.999999]])
    pix = compute_healpix(ra, dec, nside, backend=backend)
    assert pix.dtype == np.int64
    np.testing.assert_array_equal(pix, healpy_ref(ra, dec, nside))


def test_compute_healpix_numpy_backend_high_nside_and_caps():
    ra, dec = sphere(100_000, seed=3)
    dec = np.concatenate([dec, 90 - np.abs(dec[:20_000]) * 1e-4, -90 + np.abs(dec[20_000:40_000]) * 1e-4])
    ra = np.concatenate([ra, ra[:40_000]])
    for nside in (1, 2, 1024, 2**16):
        np.testing.assert_array_equal(compute_healpix(ra, dec, nside, backend="numpy"), healpy_ref(ra, dec, nside))


def test_compute_healpix_matches_spec_scalar():
    ra, dec = sphere(3000, seed=5)
    ref = [S.compute_healpix_scalar(r, d, 128) for r, d in zip(ra, dec)]
    np.testing.assert_array_equal(compute_healpix(ra, dec, 128), ref)


def test_ra_wrapping():
    ra, dec = sphere(50_000, seed=7)
    base = compute_healpix(ra, dec, 128)
    for shift in (-720.0, -360.0, 360.0, 1080.0):
        np.testing.assert_array_equal(compute_healpix(ra + shift, dec, 128), base)
    np.testing.assert_array_equal(compute_healpix([360.0, -1e-20], [10.0, 10.0], 128),
                                  compute_healpix([0.0, 0.0], [10.0, 10.0], 128))


@pytest.mark.parametrize("bad_dec, row", [([0, 0, np.nan, 0], 2), ([0, 90.0000001, 0, 0], 1), ([-91, 0, 0, 0], 0)])
def test_bad_dec_names_row(bad_dec, row):
    with pytest.raises(ValueError, match=rf"dec_deg\[row {row}\]"):
        compute_healpix([10, 20, 30, 40], bad_dec, 128)
    with pytest.raises(ValueError, match=rf"dec_deg\[row {row}\]"):
        healpix_split([10, 20, 30, 40], bad_dec)


def test_bad_ra_names_row():
    with pytest.raises(ValueError, match=r"ra_deg\[row 3\]"):
        compute_healpix([10, 20, 30, np.nan], [0, 0, 0, 0], 128)
    with pytest.raises(ValueError, match=r"ra_deg\[row 0\]"):
        compute_healpix([np.inf], [0], 128)
    with pytest.raises(ValueError, match="differ in length"):
        validate_radec([1, 2], [1])


def test_bad_nside():
    for nside in (0, 100, -4, 2.0, True):
        with pytest.raises(ValueError, match="nside"):
            compute_healpix([1.0], [1.0], nside)


ALLOCS = [
    DEFAULT_ALLOCATIONS,
    {"train": 0.8, "val": 0.1, "test": 0.1},
    {"a": 0.5, "b": 0.25, "c": 0.25},                   # no "train" key: fallback label never used
    {"train": 0.6, "validation": 0.2, "test": 0.2},     # longer names
    {"test": 0.1, "val": 0.1, "train": 0.1 + 0.1 + 0.1 + 0.1 + 0.1 + 0.1 + 0.1 + 0.1 - 1e-12},  # rounding edges
    {"train": 1.0},
    {"test": 0.0, "train": 0.7, "val": 0.3},
]


@pytest.mark.parametrize("alloc", ALLOCS)
@pytest.mark.parametrize("seed", [42, 0, 7, 2**31 + 5])
def test_assign_split_matches_spec(alloc, seed):
    rng = np.random.default_rng(seed % 1000)
    pix = rng.integers(0, 12 * 128**2, 100_000)
    got = assign_split(pix, alloc, seed=seed)
    assert got.dtype == object and isinstance(got[0], str)
    uniq = np.unique(pix)
    ref = dict(zip(uniq.tolist(), (spec_assign_split(int(p), alloc, seed) for p in uniq)))
    assert got.tolist() == [ref[p] for p in pix.tolist()]


def test_assign_split_row_by_row_including_large_indices():
    rng = np.random.default_rng(11)
    pix = np.concatenate([rng.integers(0, 12 * 8192**2, 100_000), [0, 1, 2**40, 2**62]])
    got = assign_split(pix, DEFAULT_ALLOCATIONS, seed=42)
    assert got.tolist() == [spec_assign_split(int(p), DEFAULT_ALLOCATIONS, 42) for p in pix]


def test_assign_split_cache_consistent():
    S.clear_hash_cache()
    pix = np.arange(0, 12 * 128**2, 7)
    a = assign_split(pix, seed=3)
    b = assign_split(pix[::-1], seed=3)                      # warm cache
    c = assign_split(pix, seed=3, cache=False)
    np.testing.assert_array_equal(a, b[::-1])
    np.testing.assert_array_equal(a, c)
    assert a.tolist()[:50] == [spec_assign_split(int(p), DEFAULT_ALLOCATIONS, 3) for p in pix[:50]]


@settings(max_examples=60, deadline=None)
@given(pix=st.lists(st.integers(min_value=0, max_value=2**45), min_size=1, max_size=50),
       seed=st.integers(min_value=-10**6, max_value=10**12),
       w=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=4).filter(lambda w: sum(w) > 0))
def test_assign_split_property(pix, seed, w):
    alloc = {f"s{i}": x / sum(w) for i, x in enumerate(w)}
    if abs(sum(alloc.values()) - 1) > 1e-9:
        return
    got = assign_split(np.array(pix, dtype=np.int64), alloc, seed=seed)
    assert got.tolist() == [spec_assign_split(p, alloc, seed) for p in pix]


def test_split_fractions_all_pixels():
    frac = split_fractions(all_pixel_splits(128, DEFAULT_ALLOCATIONS, seed=42))
    assert set(frac) == {"train", "val", "test"}
    for name, target in DEFAULT_ALLOCATIONS.items():
        assert abs(frac[name] - target) < 0.01, (name, frac[name])


def test_splits_are_spatial():
    "Points in the same pixel share a split; a pixel never holds two splits (LESSONS.md leakage)."
    ra, dec = sphere(300_000, seed=9)
    pix, split = healpix_split(ra, dec)
    order = np.argsort(pix, kind="stable")
    p, s = pix[order], split[order]
    same = p[1:] == p[:-1]
    assert (s[1:][same] == s[:-1][same]).all()


@pytest.mark.parametrize("alloc, msg", [
    ({"train": 0.7, "val": 0.2}, "sum to 1"),
    ({"train": 0.7, "val": 0.15, "test": 0.15 + 2e-9}, "sum to 1"),
    ({"train": 1.1, "val": -0.1}, r"allocations\['val'\]"),
    ({"train": float("nan"), "val": 1.0}, r"allocations\['train'\]"),
    ({}, "non-empty"),
    ({"train": "0.7", "val": 0.3}, r"allocations\['train'\]"),
])
def test_bad_allocations(alloc, msg):
    with pytest.raises(ValueError, match=msg):
        assign_split([1, 2, 3], alloc)


def test_allocations_within_tolerance_ok():
    alloc = {"train": 0.7, "val": 0.15, "test": 0.15 + 5e-10}
    assert validate_allocations(alloc) == alloc


def test_bad_pixels_name_row():
    with pytest.raises(ValueError, match=r"healpix_idx\[row 2\]"):
        assign_split([1.0, 2.0, np.nan])
    with pytest.raises(ValueError, match=r"healpix_idx\[row 1\]"):
        assign_split([1.0, 2.5])
    with pytest.raises(ValueError, match=r"healpix_idx\[row 0\]"):
        assign_split([-1, 2])
    with pytest.raises(ValueError, match="seed"):
        assign_split([1], seed=1.5)


def test_hash_equal_to_edge_goes_to_next_split():
    "hash_value == cumulative edge is not `<`: the spec sends it on to the next split (strict comparison)."
    for p in (0, 1, 12345):
        h = int.from_bytes(hashlib.sha256(f"{p}_42".encode()).digest()[:4], "big") / 2**32
        alloc = {"a": h, "b": 1.0 - h}
        assert spec_assign_split(p, alloc, 42) == "b"
        assert assign_split([p], alloc, seed=42).tolist() == ["b"]


def test_validate_radec_range():
    ra, dec = validate_radec([-1e-20, 360.0, -360.0, 719.9999999, -0.5], [0, 0, 0, 0, 0])
    assert ((ra >= 0) & (ra < 360)).all()
    assert ra[:3].tolist() == [0.0, 0.0, 0.0] and ra[4] == 359.5


def test_pixel_vertices_match_healpy():
    "Points exactly on pixel edges/corners: the theta/phi expression must be the spec's, to the last bit."
    nside = 128
    rng = np.random.default_rng(2)
    pix = rng.integers(0, 12 * nside**2, 3000)
    vec = hp.boundaries(nside, pix, step=2, nest=True)            # (n, 3, 8)
    lon, lat = hp.vec2ang(np.moveaxis(vec, 1, 2).reshape(-1, 3), lonlat=True)
    np.testing.assert_array_equal(compute_healpix(lon, lat, nside), healpy_ref(lon, lat, nside))


def test_numpy_backend_extreme_poles():
    "Within ~1e-7 rad of a pole 1 - cos(theta) loses precision; HEALPix switches to sin(theta) there."
    rng = np.random.default_rng(8)
    dec = np.concatenate([90 - rng.uniform(0, 1e-5, 5000), -90 + rng.uniform(0, 1e-5, 5000)])
    ra = rng.uniform(0, 360, dec.size)
    for nside in (2**20, 2**29):
        np.testing.assert_array_equal(compute_healpix(ra, dec, nside, backend="numpy"), healpy_ref(ra, dec, nside))

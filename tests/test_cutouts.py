"Spec §1 NPZ cutouts: round trip, deterministic bytes, corrupt files, sanitiser, batch readers."
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from stronglens import cutouts as C

GOOD_META = dict(galaxy_id="1054p567_1234", ra=150.123456789012, dec=-2.5, type="SER", nobs_z=4, psfsize_z=1.25,
                 flux_r=3.5, cutout_url="https://www.legacysurvey.org/viewer/fits-cutout?ra=150.1&dec=-2.5",
                 download_timestamp="2026-02-09T12:00:00+00:00")


def _img(seed=0):
    return np.random.default_rng(seed).normal(0.0, 0.02, C.CUTOUT_SHAPE).astype(np.float32)


def _raw_npz(path, **arrays):
    "Write an NPZ with numpy directly (bypassing write_cutout's checks), like a foreign or broken writer would."
    np.savez_compressed(path, **arrays)
    return str(path)


def _meta_arrays(**over):
    m = {**GOOD_META, **over}
    return {f"meta_{k}": np.asarray(v) for k, v in m.items()}


# ---------------------------------------------------------------- format

def test_constants_match_spec():
    assert C.CUTOUT_SHAPE == (101, 101, 3)
    assert C.BANDS == ("g", "r", "z")
    assert C.PIXSCALE_ARCSEC == 0.262
    assert list(C.META_FIELDS) == ["galaxy_id", "ra", "dec", "type", "nobs_z", "psfsize_z", "flux_r",
                                   "cutout_url", "download_timestamp"]


def test_written_file_has_exactly_spec_keys_and_dtypes(tmp_path):
    p = C.write_cutout(tmp_path / "a.npz", _img(), GOOD_META)
    with np.load(p, allow_pickle=False) as z:           # independent reader: numpy itself
        assert sorted(z.files) == sorted(["cutout"] + [f"meta_{k}" for k in C.META_FIELDS])
        assert z["cutout"].shape == (101, 101, 3) and z["cutout"].dtype == np.float32
        assert z["meta_ra"].dtype == np.float64 and z["meta_dec"].dtype == np.float64
        assert z["meta_psfsize_z"].dtype == np.float32 and z["meta_flux_r"].dtype == np.float32
        assert z["meta_nobs_z"].dtype.kind == "i"
        for k in ("galaxy_id", "type", "cutout_url", "download_timestamp"):
            assert z[f"meta_{k}"].dtype.kind == "U" and z[f"meta_{k}"].shape == ()
        assert str(z["meta_galaxy_id"]) == GOOD_META["galaxy_id"]
        assert float(z["meta_ra"]) == GOOD_META["ra"]
    with zipfile.ZipFile(p) as zf:                      # np.savez_compressed: deflated members
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
        assert zf.testzip() is None


def test_bytes_are_deterministic_and_equal_savez_content(tmp_path):
    a = C.cutout_to_bytes(_img(), GOOD_META)
    import time; time.sleep(2.1)                        # zip timestamps have 2 s resolution
    b = C.cutout_to_bytes(_img(), GOOD_META)
    assert a == b
    # same members and payload as a plain np.savez_compressed archive
    ref = io.BytesIO()
    np.savez_compressed(ref, cutout=_img(), **_meta_arrays(nobs_z=np.int64(4), psfsize_z=np.float32(1.25), flux_r=np.float32(3.5)))
    with zipfile.ZipFile(io.BytesIO(a)) as za, zipfile.ZipFile(ref) as zr:
        assert sorted(za.namelist()) == sorted(zr.namelist())
        for n in za.namelist():
            assert za.read(n) == zr.read(n), n


def test_write_is_atomic_no_temp_left(tmp_path):
    C.write_cutout(tmp_path / "x" / "g.npz", _img(), GOOD_META)
    assert os.listdir(tmp_path / "x") == ["g.npz"]


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="channels-first"):
        C.write_cutout(tmp_path / "a.npz", _img().transpose(2, 0, 1), GOOD_META)
    with pytest.raises(ValueError, match="unknown metadata"):
        C.write_cutout(tmp_path / "a.npz", _img(), {**GOOD_META, "evil": 1})
    with pytest.raises(ValueError, match="galaxy_id"):
        C.write_cutout(tmp_path / "a.npz", _img(), {k: v for k, v in GOOD_META.items() if k != "galaxy_id"})
    with pytest.raises(ValueError, match="ra"):
        C.write_cutout(tmp_path / "a.npz", _img(), {**GOOD_META, "ra": "not a number"})
    assert not any(tmp_path.iterdir())


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
finite64 = st.floats(allow_nan=False, allow_infinity=False, width=64)
f32 = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gid=text.filter(lambda s: s != ""), ra=finite64, dec=finite64, typ=text, nobs=st.integers(-2**62, 2**62),
       psf=f32, flux=f32, url=text, ts=text, seed=st.integers(0, 2**32 - 1))
def test_roundtrip_property(tmp_path, gid, ra, dec, typ, nobs, psf, flux, url, ts, seed):
    img = _img(seed)
    meta = dict(galaxy_id=gid, ra=ra, dec=dec, type=typ, nobs_z=nobs, psfsize_z=psf, flux_r=flux,
                cutout_url=url, download_timestamp=ts)
    p = C.write_cutout(tmp_path / C.cutout_filename(gid), img, meta)
    assert Path(p).parent == tmp_path
    arr, m = C.read_cutout(p)
    np.testing.assert_array_equal(arr, img)
    assert arr.dtype == np.float32
    assert m["galaxy_id"] == gid and m["type"] == typ and m["cutout_url"] == url and m["download_timestamp"] == ts
    assert m["ra"] == ra and m["dec"] == dec and m["nobs_z"] == nobs and isinstance(m["nobs_z"], int)
    np.testing.assert_array_equal(np.float32(m["psfsize_z"]), np.float32(psf))
    np.testing.assert_array_equal(np.float32(m["flux_r"]), np.float32(flux))


# ---------------------------------------------------------------- corrupt files

def _corrupt_cases(d: Path) -> dict[str, tuple[str, str, str]]:
    "name -> (path, expected stage, substring of the reason)"
    good = C.write_cutout(d / "good.npz", _img(), GOOD_META)
    blob = Path(good).read_bytes()
    cases = {}
    (d / "trunc.npz").write_bytes(blob[: len(blob) // 3]); cases["trunc"] = ("read", "unreadable archive")
    (d / "empty.npz").write_bytes(b""); cases["empty"] = ("read", "unreadable archive")
    (d / "html.npz").write_bytes(b"<html><body>502 Bad Gateway</body></html>"); cases["html"] = ("read", "unreadable archive")
    _raw_npz(d / "pickled.npz", cutout=np.array([_img(), "x"], dtype=object), **_meta_arrays(galaxy_id="pickled"))
    cases["pickled"] = ("validate", "object array in 'cutout'")
    _raw_npz(d / "pickled_meta.npz", cutout=_img(), **{**_meta_arrays(galaxy_id="pickled_meta"), "meta_ra": np.array([{"a": 1}], dtype=object)})
    cases["pickled_meta"] = ("validate", "object array in 'meta_ra'")
    _raw_npz(d / "short.npz", cutout=_img()[:100], **_meta_arrays(galaxy_id="short")); cases["short"] = ("validate", "wrong shape (100, 101, 3)")
    _raw_npz(d / "chw.npz", cutout=_img().transpose(2, 0, 1), **_meta_arrays(galaxy_id="chw")); cases["chw"] = ("validate", "channels-first")
    _raw_npz(d / "f64.npz", cutout=_img().astype(np.float64), **_meta_arrays(galaxy_id="f64")); cases["f64"] = ("validate", "wrong dtype float64")
    m = _meta_arrays(galaxy_id="nometa"); del m["meta_nobs_z"]
    _raw_npz(d / "nometa.npz", cutout=_img(), **m); cases["nometa"] = ("validate", "missing key 'meta_nobs_z'")
    _raw_npz(d / "noimg.npz", **_meta_arrays(galaxy_id="noimg")); cases["noimg"] = ("validate", "missing key 'cutout'")
    _raw_npz(d / "allnan.npz", cutout=np.full(C.CUTOUT_SHAPE, np.nan, np.float32), **_meta_arrays(galaxy_id="allnan"))
    cases["allnan"] = ("validate", "non-finite fraction 1.0000")
    core = _img(); core[50, 51, 2] = np.nan
    _raw_npz(d / "core.npz", cutout=core, **_meta_arrays(galaxy_id="core")); cases["core"] = ("validate", "within 8.0 px")
    cases["missing"] = ("read", "FileNotFoundError")
    return {k: (str(d / f"{k}.npz"), *v) for k, v in cases.items()}


def test_read_cutout_raises_documented_error(tmp_path):
    cases = _corrupt_cases(tmp_path)
    for name, (path, stage, reason) in cases.items():
        with pytest.raises(C.CutoutError) as ei:
            C.read_cutout(path)
        assert reason in str(ei.value), (name, str(ei.value))
        assert isinstance(ei.value, ValueError)
    # channels-first + float64 + all-NaN in one file: every problem listed
    _raw_npz(tmp_path / "multi.npz", cutout=np.full((3, 101, 101), np.nan), **_meta_arrays())
    with pytest.raises(C.CutoutError) as ei:
        C.read_cutout(tmp_path / "multi.npz")
    assert len(ei.value.problems) == 3, ei.value.problems


def test_pickle_payload_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))
    _raw_npz(tmp_path / "evil.npz", cutout=np.array([Boom()], dtype=object), **_meta_arrays())
    with pytest.raises(C.CutoutError):
        C.read_cutout(tmp_path / "evil.npz")
    X, meta, fail = C.read_cutouts([tmp_path / "evil.npz"], progress=False)
    assert len(X) == 0 and len(fail) == 1
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batch_reader_records_every_bad_file(tmp_path, n_jobs):
    cases = _corrupt_cases(tmp_path)
    goods = [C.write_cutout(tmp_path / f"g{i}.npz", _img(i), {**GOOD_META, "galaxy_id": f"g{i}"}) for i in range(5)]
    few = _img(99); few[0, :20, 1] = np.nan             # 20 NaNs at the border: allowed, counted
    goods.append(C.write_cutout(tmp_path / "few.npz", few, {**GOOD_META, "galaxy_id": "few"}))
    urls = goods[:3] + [c[0] for c in cases.values()] + goods[3:]
    X, meta, fail = C.read_cutouts(urls, n_jobs=n_jobs, progress=False)
    assert X.shape == (6, 101, 101, 3) and X.dtype == np.float32
    assert list(meta.galaxy_id) == ["g0", "g1", "g2", "g3", "g4", "few"]
    for i in range(5):
        np.testing.assert_array_equal(X[i], _img(i))
    np.testing.assert_array_equal(X[5], few)
    assert meta.nonfinite_frac.iloc[5] == pytest.approx(20 / X[5].size) and (meta.nonfinite_frac.iloc[:5] == 0).all()
    assert meta.ra.dtype == np.float64 and meta.psfsize_z.dtype == np.float32 and meta.nobs_z.dtype == np.int64
    assert list(fail.columns) == ["galaxy_id", "path", "stage", "reason"]
    assert len(fail) == len(cases)
    for (name, (path, stage, reason)), row in zip(cases.items(), fail.itertuples()):
        assert row.path == path and row.stage == stage and reason in row.reason, (name, row)
        assert row.galaxy_id == name


def test_iter_batches_covers_all(tmp_path):
    urls = [C.write_cutout(tmp_path / f"g{i}.npz", _img(i), {**GOOD_META, "galaxy_id": f"g{i}"}) for i in range(7)]
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    urls.insert(3, str(tmp_path / "bad.npz"))
    got = list(C.iter_cutout_batches(urls, batch_size=3, progress=False))
    assert [len(b[0]) for b in got] == [3, 2, 2]
    assert sum(len(b[2]) for b in got) == 1
    assert pd.concat([b[1] for b in got]).galaxy_id.tolist() == [f"g{i}" for i in range(7)]
    got2 = list(C.iter_cutout_batches(urls, batch_size=4, n_jobs=2, progress=False))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got2]), np.concatenate([b[0] for b in got]))


def test_empty_inputs():
    X, meta, fail = C.read_cutouts([], progress=False)
    assert X.shape == (0, 101, 101, 3) and len(meta) == 0 and len(fail) == 0


# ---------------------------------------------------------------- sanitiser

EVIL = ["../../etc/passwd", "/etc/passwd", "..", ".", "...", "a/../../b", "a\x00b", "\x00", "C:\\Windows\\x",
        "~root", ".hidden", "a b", "ü", "a" * 400, "a/b", "a_b", "a\\b", "a:b", "%2e%2e%2fetc", "\n", "-rf"]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_sanitiser_cannot_escape(gid):
    name = C.safe_filename(gid)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and name not in (".", "..") and len(name) <= 170
    base = Path("/srv/out")
    assert (base / C.cutout_filename(gid)).resolve().parent == base


def test_sanitiser_known_cases(tmp_path):
    for gid in EVIL:
        fn = C.cutout_filename(gid)
        target = (tmp_path / fn).resolve()
        assert target.parent == tmp_path.resolve(), gid
        if "\x00" in gid:          # a numpy str cannot hold NUL: refused with a clear error, nothing written
            with pytest.raises(ValueError, match="NUL"):
                C.write_cutout(target, _img(), {**GOOD_META, "galaxy_id": gid})
            continue
        C.write_cutout(target, _img(), {**GOOD_META, "galaxy_id": gid})
    kept = [g for g in EVIL if "\x00" not in g]
    assert len(list(tmp_path.iterdir())) == len(kept)     # injective: every id its own file
    assert {C.read_cutout(p)[1]["galaxy_id"] for p in tmp_path.iterdir()} == set(kept)
    assert C.cutout_filename("1054p567_1234") == "1054p567_1234.npz"   # DR10-style ids unchanged
    assert C.safe_filename(42) == "42"
    with pytest.raises(ValueError):
        C.safe_filename("")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12, alphabet="ab/._ ~\x00"), min_size=2, max_size=30, unique=True))
def test_sanitiser_injective(ids):
    assert len({C.safe_filename(i) for i in ids}) == len(ids)


def test_radial_grid():
    r = C.radial_grid()
    i, j = np.indices((101, 101))
    np.testing.assert_allclose(r, np.sqrt((i - 50) ** 2 + (j - 50) ** 2))


# ---------------------------------------------------------------- validate_cutout given a path (issue 13.3)

def test_validate_cutout_accepts_a_path(tmp_path):
    good = C.write_cutout(tmp_path / "good.npz", _img(), GOOD_META)
    assert C.validate_cutout(str(good)) == [] and C.validate_cutout(Path(good)) == []   # was "wrong shape ()"
    core = _img(); core[50, 50, 0] = np.nan
    bad = C.write_cutout(tmp_path / "bad.npz", core, GOOD_META)
    assert C.validate_cutout(bad) == [f"1 non-finite value(s) within {C.CORE_RADIUS_PX} px of the centre"]
    no_meta = _raw_npz(tmp_path / "nometa.npz", cutout=_img())
    assert C.validate_cutout(no_meta) == [f"missing key 'meta_{k}'" for k in C.META_FIELDS]
    (tmp_path / "trunc.npz").write_bytes(Path(good).read_bytes()[:300])
    assert C.validate_cutout(tmp_path / "trunc.npz")[0].startswith("unreadable archive")
    assert C.validate_cutout(tmp_path / "missing.npz")[0].startswith("cannot read")


def test_validate_cutout_refuses_other_types_clearly(tmp_path):
    blob = C.cutout_to_bytes(_img(), GOOD_META)
    with pytest.raises(TypeError, match="load_cutout_bytes"):
        C.validate_cutout(blob)
    with pytest.raises(TypeError, match="pass the 'cutout' array"):
        C.validate_cutout({"cutout": _img()})
    p = C.write_cutout(tmp_path / "a.npz", _img(), GOOD_META)
    with np.load(p) as z, pytest.raises(TypeError, match="NpzFile"):
        C.validate_cutout(z)
    with pytest.raises(TypeError, match="meta=None"):
        C.validate_cutout(p, GOOD_META)


def test_min_npz_bytes_is_below_every_valid_file(tmp_path):
    "The resume check's floor: the smallest valid archives are above it, a truncated real one below."
    smallest = [C.cutout_to_bytes(np.zeros(C.CUTOUT_SHAPE, np.float32), {"galaxy_id": g, "ra": ra, "dec": 0.0, "nobs_z": 0})
                for g in ("x", "1") for ra in (0.0, 1.0, -0.0)]
    assert min(map(len, smallest)) >= C.MIN_NPZ_BYTES
    real = C.cutout_to_bytes(_img(), GOOD_META)
    assert len(real) > 40 * C.MIN_NPZ_BYTES

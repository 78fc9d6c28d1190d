"""stronglens.data: preprocessing vs a direct numpy reference, augmentation invariants, packed cache (keyed on the
pixels, no litter after SIGKILL), run-relative manifest paths, the loader's leakage checks."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stronglens.config import resolve_path
from stronglens.cutouts import radial_grid, write_cutout
from stronglens.data import (ANNULUS_R_IN_PX, ANNULUS_R_OUT_PX, DEFAULT_CLIP, AugmentSpec, Augmenter, PreprocessSpec,
                             PreprocessingMismatchError, build_packed_split, check_manifest_leakage, check_preprocessing,
                             epoch_batches, preprocess, raw_robust, remove_stale_temp, residual, resolve_paths, ring_index,
                             synthetic_cutouts, write_synthetic_manifest)
from stronglens.manifest import LeakageError

ROOT = Path(__file__).resolve().parents[1]


def _ref_raw_robust(X, r_in=32.5, r_out=45.0, clip=10.0):
    "Direct per-cutout, per-band numpy reference (loops; independent of the vectorised code)."
    h, w = X.shape[1:3]
    yy, xx = np.mgrid[:h, :w]
    r = np.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)
    ann = (r >= r_in) & (r <= r_out)
    out = np.zeros_like(X, dtype=np.float32)
    for n in range(X.shape[0]):
        for b in range(X.shape[3]):
            img = X[n, :, :, b].astype(np.float64)
            v = img[ann]
            v = v[np.isfinite(v)]
            med = np.median(v)
            mad = np.median(np.abs(v - med))
            y = np.clip((img - med) / mad, -clip, clip)
            y[~np.isfinite(y)] = 0
            out[n, :, :, b] = y
    return out


@pytest.fixture(scope="module")
def toy():
    X, y = synthetic_cutouts(12, seed=3, nan_fraction=0.3)
    return X, y


def test_raw_robust_matches_numpy_reference(toy):
    X, _ = toy
    assert np.isnan(X).any()
    for r_in, r_out, clip in [(32.5, 45.0, 10.0), (20.0, 32.0, 5.0)]:
        got = raw_robust(X, r_in, r_out, clip)
        np.testing.assert_allclose(got, _ref_raw_robust(X, r_in, r_out, clip), rtol=1e-5, atol=1e-5)
    # the normalised annulus has median 0 and MAD 1 per band
    Y = raw_robust(X[~np.isnan(X).reshape(len(X), -1).any(1)])
    ann = (radial_grid() >= 32.5) & (radial_grid() <= 45)
    np.testing.assert_allclose(np.median(Y[:, ann], axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.median(np.abs(Y[:, ann]), axis=1), 1, atol=1e-4)


def test_preprocess_counts_nans_and_zeroes_them(toy):
    X, _ = toy
    for mode in ("raw_robust", "raw", "residual"):
        Y, n_nan = preprocess(X, mode)
        assert Y.shape == (12, 3, 101, 101) and Y.dtype == np.float32
        assert np.isfinite(Y).all()
        np.testing.assert_array_equal(n_nan, np.isnan(X).reshape(12, -1).sum(1))
        assert (Y.transpose(0, 2, 3, 1)[np.isnan(X)] == 0).all()


def test_residual_removes_ring_medians(toy):
    X, _ = toy
    X = X[~np.isnan(X).reshape(len(X), -1).any(1)]
    R = residual(X, clip=10.0)
    rr = ring_index()
    Yr = _ref_raw_robust(X, clip=np.inf)     # unclipped normalisation; the clip comes after the subtraction
    assert (np.abs(Yr[:, rr <= 3]) > 10).any()
    for k in (0, 1, 2, 7, 30, 60):
        m = rr == k
        np.testing.assert_allclose(np.median(R[:, m, :], axis=1), 0, atol=1e-5)
        ref = np.clip(Yr[:, m, :] - np.median(Yr[:, m, :], axis=1, keepdims=True), -10, 10)
        np.testing.assert_allclose(R[:, m, :], ref, rtol=1e-5, atol=1e-4)


def test_preprocessing_spec_mismatch():
    s = PreprocessSpec(annulus_r_in_px=30, annulus_r_out_px=44, clip=8)
    assert check_preprocessing(s.to_dict(), None) == s
    with pytest.raises(PreprocessingMismatchError):
        check_preprocessing(s.to_dict(), "residual")
    with pytest.raises(PreprocessingMismatchError):
        check_preprocessing(s.to_dict(), PreprocessSpec())
    with pytest.raises(ValueError):
        PreprocessSpec(annulus_r_in_px=45, annulus_r_out_px=30)


def _images(n=16, seed=0):
    X, y = synthetic_cutouts(n, seed=seed, lens_fraction=0.5)
    return torch.from_numpy(preprocess(X)[0]), y


def test_az_shuffle_keeps_radial_profile_exactly():
    x, _ = _images()
    aug = Augmenter(AugmentSpec(flips=False, rot90=False, az_shuffle_prob=1.0), seed=11)
    out = aug(x, np.arange(len(x)), epoch=0)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    rr = ring_index().ravel()
    a, b = x.reshape(len(x), 3, -1).numpy(), out.reshape(len(x), 3, -1).numpy()
    for n in range(len(x)):
        for k in np.unique(rr):
            m = rr == k
            # same multiset of pixels per ring and band => identical radial profile (any statistic)
            np.testing.assert_array_equal(np.sort(a[n][:, m], axis=1), np.sort(b[n][:, m], axis=1))
        # the same permutation for all bands: each output pixel's (g, r, z) vector is an input pixel's vector
        pairs_in = {tuple(v) for v in a[n].T}
        assert all(tuple(v) in pairs_in for v in b[n].T)
    # the arc is destroyed: pixel-wise the images differ a lot beyond the centre
    assert (np.abs(a - b)[:, :, rr > 3]).mean() > 0.1


def test_flips_rot90_preserve_label_shape_and_profile():
    x, y = _images()
    aug = Augmenter(AugmentSpec(), seed=5)
    idx = np.arange(len(x))
    out = aug(x, idx, epoch=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    d = aug.draws(idx, 3)
    for n in range(len(x)):
        t = int(d["transform"][n])
        ref = torch.rot90(x[n], t % 4, dims=(1, 2))
        if t >= 4:
            ref = torch.flip(ref, dims=(2,))
        torch.testing.assert_close(out[n], ref, rtol=0, atol=0)
    assert len(set(d["transform"].tolist())) > 3
    # labels untouched: the augmenter never sees them; same draws for the same (seed, epoch, index)
    torch.testing.assert_close(aug(x, idx, 3), out, rtol=0, atol=0)
    assert not torch.equal(aug(x, idx, 4), out)
    sub = aug(x[5:9], idx[5:9], 3)   # independent of batch composition
    torch.testing.assert_close(sub, out[5:9], rtol=0, atol=0)


def test_core_dropout_zeroes_the_disc():
    x, _ = _images()
    x = x + 1.0   # no zeros anywhere before
    aug = Augmenter(AugmentSpec(flips=False, rot90=False, core_dropout_prob=1.0, core_dropout_radius_px=5.0))
    out = aug(x, np.arange(len(x)), 0)
    disc = torch.from_numpy(radial_grid() <= 5.0)
    assert disc.sum() == 81
    assert (out[:, :, disc] == 0).all()
    torch.testing.assert_close(out[:, :, ~disc], x[:, :, ~disc], rtol=0, atol=0)
    aug2 = Augmenter(AugmentSpec(flips=False, rot90=False, core_dropout_prob=0.5), seed=2)
    frac = aug2.draws(np.arange(4000), 0)["core_dropout"].mean()
    assert 0.45 < frac < 0.55


def test_subpixel_shift_moves_centroid():
    x, _ = _images(4)
    aug = Augmenter(AugmentSpec(flips=False, rot90=False, subpixel_shift_px=0.5), seed=1)
    out = aug(x, np.arange(4), 0)
    sh = aug.draws(np.arange(4), 0)["shift_px"]
    g = torch.from_numpy(np.exp(-radial_grid() ** 2 / 8.0)).float()[None, None].repeat(4, 3, 1, 1)
    og = aug(g, np.arange(4), 0)
    jj = torch.arange(101.0)
    cx = (og[:, 1].sum(1) * jj).sum(1) / og[:, 1].sum((1, 2)) - 50
    cy = (og[:, 1].sum(2) * jj).sum(1) / og[:, 1].sum((1, 2)) - 50
    np.testing.assert_allclose(cx.numpy(), sh[:, 0], atol=0.03)
    np.testing.assert_allclose(cy.numpy(), sh[:, 1], atol=0.03)
    assert out.shape == x.shape


def test_epoch_batches_seeded_per_epoch():
    a = epoch_batches(100, 16, seed=1, epoch=1)
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert all(np.array_equal(u, v) for u, v in zip(a, epoch_batches(100, 16, seed=1, epoch=1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(100, 16, seed=1, epoch=2)))


def test_packed_cache_build_reuse_and_invalidation(tmp_path):
    man = write_synthetic_manifest(str(tmp_path), n=40, seed=4, nan_fraction=0.2)
    # a broken file: left out of the cache and listed in failures
    bad = man[man.split == "train"].s3_path.iloc[0]
    (tmp_path / bad).write_bytes(b"not an npz")
    mp = str(tmp_path / "manifests" / "training_manifest.parquet")
    ps = build_packed_split(mp, "train", progress=False, root=str(tmp_path))
    n_train = int((man.split == "train").sum())
    assert len(ps) == n_train - 1 and len(ps.failures) == 1
    assert ps.X.shape == (n_train - 1, 3, 101, 101)
    assert isinstance(ps.X, np.memmap) or isinstance(getattr(ps.X, "base", None), np.memmap)
    X, _ = synthetic_cutouts(40, seed=4, nan_fraction=0.2)
    sel = (man.split == "train").to_numpy() & (man.s3_path != bad).to_numpy()
    np.testing.assert_allclose(np.asarray(ps.X), preprocess(X[sel])[0], atol=1e-6)
    assert list(ps.index.galaxy_id) == list(man.galaxy_id[sel])
    np.testing.assert_array_equal(ps.index.n_nan, np.isnan(X[sel]).reshape(sel.sum(), -1).sum(1))
    # reused: no rebuild (mtime unchanged)
    m0 = os.path.getmtime(ps.path + ".npy")
    ps2 = build_packed_split(mp, "train", progress=False, root=str(tmp_path))
    assert ps2.path == ps.path and os.path.getmtime(ps2.path + ".npy") == m0
    # changed preprocessing or manifest -> new key
    assert build_packed_split(mp, "train", PreprocessSpec(clip=3.0), progress=False, root=str(tmp_path)).path != ps.path
    man2 = man.copy(); man2.loc[man2.index[man2.split == "train"][1], "label"] ^= 1
    man2.to_parquet(mp)
    assert build_packed_split(mp, "train", progress=False, root=str(tmp_path)).path != ps.path
    # float16 cache
    h = build_packed_split(mp, "val", dtype="float16", progress=False, root=str(tmp_path))
    assert h.X.dtype == np.float16
    assert json.load(open(h.path + ".json"))["dtype"] == "float16"
    # no temporary files left behind
    assert not [f for f in os.listdir(os.path.dirname(ps.path)) if f.startswith(".tmp")]


def test_cache_key_covers_the_pixels(tmp_path):
    "12.2: regenerated cutouts (same ids, paths and labels; other pixels) must not be served from the old cache."
    man = write_synthetic_manifest(str(tmp_path), n=30, seed=5)
    mp = str(tmp_path / "manifests" / "training_manifest.parquet")
    old = build_packed_split(mp, "train", progress=False, root=str(tmp_path))
    rows = man.index[man.split == "train"]
    Xnew, _ = synthetic_cutouts(30, seed=77)                  # "cutouts -p cutouts.seed 1": new pixels, same files
    for k in rows:
        write_cutout(resolve_path(str(tmp_path), man.s3_path[k]), Xnew[k], {"galaxy_id": man.galaxy_id[k], "ra": 0.0, "dec": 0.0})
    new = build_packed_split(mp, "train", progress=False, root=str(tmp_path))
    assert new.path != old.path
    np.testing.assert_allclose(np.asarray(new.X), preprocess(Xnew[rows])[0], atol=1e-6)
    assert not np.allclose(np.asarray(new.X), np.asarray(old.X))
    # one repaired file is enough to rebuild; untouched files keep the key
    assert build_packed_split(mp, "train", progress=False, root=str(tmp_path)).path == new.path
    k = rows[3]
    write_cutout(resolve_path(str(tmp_path), man.s3_path[k]), Xnew[k] + 1.0, {"galaxy_id": man.galaxy_id[k], "ra": 0.0, "dec": 0.0})
    assert build_packed_split(mp, "train", progress=False, root=str(tmp_path)).path != new.path


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from stronglens.data import build_packed_split
    build_packed_split(sys.argv[1], "train", root=sys.argv[2], batch_size=8, progress=False)
""")


def test_killed_cache_build_leaves_no_litter(tmp_path):
    "12.7: a cache build killed with SIGKILL leaves a .tmp-*.npy; the next build removes it (and builds the cache)."
    man = write_synthetic_manifest(str(tmp_path), n=400, seed=6, splits=(1.0, 0.0, 0.0))
    mp = str(tmp_path / "manifests" / "training_manifest.parquet")
    cache = tmp_path / "manifests" / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, mp, str(tmp_path)], cwd=ROOT)
    deadline, litter = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and not litter:
        litter = list(cache.glob(".tmp-*.npy")) if cache.is_dir() else []
        time.sleep(0.02)
    assert litter, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    assert litter[0].exists() and litter[0].stat().st_size > 1e6          # the killed build's half-written array
    ps = build_packed_split(mp, "train", progress=False, root=str(tmp_path))
    assert len(ps) == len(man)
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_stale_temp_files_of_live_writers_are_kept(tmp_path):
    me = tmp_path / f".tmp-train-k.npy.pid{os.getpid()}@{__import__('stronglens.data', fromlist=['_host'])._host()}.x.npy"
    me.write_bytes(b"1")
    old = tmp_path / ".tmp-untagged.json.y"; old.write_text("{}"); os.utime(old, (time.time() - 7200,) * 2)
    assert [Path(p).name for p in remove_stale_temp(str(tmp_path))] == [old.name]
    assert me.exists()


def test_relative_manifest_paths_resolve_against_root(tmp_path):
    "12.9: manifest paths are relative to the run folder; a copied run reads its own cutouts."
    import shutil
    man = write_synthetic_manifest(str(tmp_path / "run"), n=20, seed=7)
    assert man.s3_path.str.startswith("cutouts/").all() and not man.s3_key.str.contains("/").any()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.rmtree(tmp_path / "run" / "cutouts")
    mp = str(tmp_path / "copy" / "manifests" / "training_manifest.parquet")
    ps = build_packed_split(mp, "train", progress=False, root=str(tmp_path / "copy"))
    assert len(ps) == (man.split == "train").sum() and len(ps.failures) == 0
    with pytest.raises(ValueError, match="pass root="):
        build_packed_split(mp, "train", progress=False)
    paths = ["cutouts/a.npz", "/x/b.npz", "s3://b/c.npz", "file:///y/d.npz"]
    assert list(resolve_paths(str(tmp_path), paths)) == [resolve_path(str(tmp_path), p) for p in paths]


def test_loader_repeats_the_leakage_checks(tmp_path):
    "12.11: duplicated id, a pixel in two splits, null split or pixel -> LeakageError naming the manifest."
    man = write_synthetic_manifest(str(tmp_path), n=40, seed=8)
    assert check_manifest_leakage(man)["passed"]
    dup = pd.concat([man, man.iloc[[3]]], ignore_index=True)
    with pytest.raises(LeakageError, match=r"m\.parquet: refusing a leaking training manifest.*duplicate_galaxy_id: 1"):
        check_manifest_leakage(dup, "m.parquet")
    two = man.copy()
    i, j = two.index[two.split == "train"][0], two.index[two.split != "train"][0]
    two.loc[j, ["ra", "dec"]] = two.loc[i, ["ra", "dec"]].to_numpy()
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits: 1"):
        check_manifest_leakage(two)
    with pytest.raises(LeakageError, match="null_split"):
        check_manifest_leakage(man.assign(split=man.split.where(man.index != 2, "")))
    with pytest.raises(LeakageError, match="valid HEALPix pixel"):
        check_manifest_leakage(man.assign(dec=man.dec.where(man.index != 5)))
    with pytest.raises(LeakageError, match="no ra/dec"):
        check_manifest_leakage(man.drop(columns=["ra", "dec"]))


def test_one_definition_of_the_annulus_and_of_the_augment_section():
    "13.4: the annulus default is written once (data) and the augmentation settings are one dataclass."
    from typing import get_type_hints
    from stronglens.train import DatasetSection, TrainingConfig
    assert (ANNULUS_R_IN_PX, ANNULUS_R_OUT_PX, DEFAULT_CLIP) == (32.5, 45.0, 10.0)
    defaults = {f.name: f.default for f in fields(DatasetSection)}
    assert (defaults["annulus_r_in_px"], defaults["annulus_r_out_px"], defaults["clip"]) == (ANNULUS_R_IN_PX, ANNULUS_R_OUT_PX, DEFAULT_CLIP)
    assert PreprocessSpec().annulus_r_in_px == ANNULUS_R_IN_PX
    assert get_type_hints(TrainingConfig)["augment"] is AugmentSpec
    mine = ["data.py", "model.py", "train.py"]
    assert [m for m in mine if "32.5" in (ROOT / "stronglens" / m).read_text()] == ["data.py"]


def _old_azimuthal_median_profile(X):
    "Reference: `data.azimuthal_median_profile` as of 592b5db (one np.median per ring), verbatim."
    X = np.asarray(X, np.float32)
    ring = ring_index(X.shape[1:3]).ravel()
    order = np.argsort(ring, kind="stable")
    bounds = np.flatnonzero(np.diff(ring[order])) + 1
    flat = X.reshape(X.shape[0], -1, X.shape[3])[:, order, :]
    return np.stack([np.median(part, axis=1) for part in np.split(flat, bounds, axis=1)], axis=1)


def _old_robust_stats(X, r_in_px=ANNULUS_R_IN_PX, r_out_px=ANNULUS_R_OUT_PX):
    "Reference: `data.robust_stats` as of 592b5db (np.median / np.nanmedian over axis 1), verbatim."
    X = np.asarray(X, np.float32)
    r = radial_grid(X.shape[1:3])
    A = X[:, (r >= r_in_px) & (r <= r_out_px), :]
    bad = ~np.isfinite(A)
    med_fn = np.nanmedian if bad.any() else np.median
    if bad.any(): A = np.where(bad, np.nan, A)
    med = med_fn(A, axis=1)
    mad = med_fn(np.abs(A - med[:, None, :]), axis=1)
    return med.astype(np.float32), mad.astype(np.float32)


def _old_raw_robust(X, r_in_px=ANNULUS_R_IN_PX, r_out_px=ANNULUS_R_OUT_PX, clip=DEFAULT_CLIP, stats=None):
    """Reference: `data.raw_robust` as of 16f9d0d (before the in-place passes), verbatim but for `stats`: the robust
    statistics (default: the 592b5db reference above; bench/injection.py passes 16f9d0d's, `data.robust_stats`)."""
    X = np.asarray(X, np.float32)
    med, mad = (stats or _old_robust_stats)(X, r_in_px, r_out_px)
    scale = np.where(np.isfinite(mad) & (mad > 0), mad, 1.0).astype(np.float32)
    med = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
    with np.errstate(invalid="ignore"):
        Y = np.clip((X - med[:, None, None, :]) / scale[:, None, None, :], -clip, clip)
    Y[~np.isfinite(Y)] = 0.0
    return Y


def _old_residual(X, r_in_px=ANNULUS_R_IN_PX, r_out_px=ANNULUS_R_OUT_PX, clip=DEFAULT_CLIP, raw=None, profile=None):
    """Reference: training's `residual` preprocessing as of 592b5db and 16f9d0d, from the functions above (the
    normalisation is `_old_raw_robust` without a clip: 592b5db's unclipped expression; `raw`, `profile`: other versions)."""
    X = np.asarray(X, np.float32)
    Y = (raw or _old_raw_robust)(X, r_in_px, r_out_px, clip=np.inf)
    prof = (profile or _old_azimuthal_median_profile)(Y)
    R = np.clip(Y - prof[:, ring_index(Y.shape[1:3]), :], -clip, clip).astype(np.float32)
    R[~np.isfinite(X)] = 0.0
    return R


def _real_stamps():
    "101 x 101 x 3 stamps cut from the real Legacy Surveys cutout-service FITS files of ../shared/data (16 per file)."
    from astropy.io import fits
    d = ROOT.parent / "shared" / "data" / "cutout_service_fits"
    if not d.is_dir(): pytest.skip(f"{d} not present")
    out = []
    for f in sorted(d.glob("*.fits")):
        img = np.asarray(fits.getdata(f), np.float32).transpose(1, 2, 0)                   # (424, 424, 3) grz
        out += [img[i:i + 101, j:j + 101] for i in range(0, 404, 101) for j in range(0, 404, 101)]
    return np.stack(out)


def test_fast_medians_equal_the_previous_preprocessing_exactly():
    """`azimuthal_median_profile` (padded sorts of ring groups) and `robust_stats` (sorted rows)
    replaced one np.median per ring / over axis 1, and `raw_robust` / `residual` work in place: training's `residual` and `raw_robust` inputs must not change by a bit — on real DR10
    cutouts, on random arrays, with NaN, ±inf and ties, and on other stamp sizes."""
    from stronglens.data import azimuthal_median_profile, robust_stats
    rng = np.random.default_rng(0)
    real = _real_stamps()
    rnd = rng.normal(0, 1, (7, 101, 101, 3)).astype(np.float32)
    ties = np.round(rng.normal(0, 1, (3, 101, 101, 3)), 1).astype(np.float32)
    odd = rng.normal(0, 1, (3, 64, 77, 3)).astype(np.float32)
    holes = rnd.copy(); holes[0, 50, 50, 0] = np.nan; holes[1, 10:12, 20, 2] = np.nan; holes[2, 0, 0, 1] = np.inf
    holes[3, 50, 51, :] = -np.inf; holes[4, 80, 50, 1] = np.nan                              # NaN inside the annulus too
    for X in (real, rnd, ties, odd, holes):
        np.testing.assert_array_equal(azimuthal_median_profile(X), _old_azimuthal_median_profile(X))
        for new, old in zip(robust_stats(X), _old_robust_stats(X)):
            np.testing.assert_array_equal(new, old)
        np.testing.assert_array_equal(residual(X), _old_residual(X))
        for clip in (DEFAULT_CLIP, 2.0, np.inf):                     # in-place passes, no clip pass when clip = inf
            np.testing.assert_array_equal(raw_robust(X, clip=clip), _old_raw_robust(X, clip=clip))
        np.testing.assert_array_equal(residual(X, 30.0, 40.0, 3.0), _old_residual(X, 30.0, 40.0, 3.0))
        np.testing.assert_array_equal(preprocess(X, "residual")[0], _old_residual(X).transpose(0, 3, 1, 2))
    assert np.isnan(azimuthal_median_profile(holes)).sum() == np.isnan(_old_azimuthal_median_profile(holes)).sum() > 0

"""NPZ cutout read throughput (cutouts/s): stronglens.cutouts.read_cutouts on one core and in a process pool,
against a baseline measured in the same run (a bare `np.load` loop with no validation); and the resume check
(which finished cutouts a rerun keeps): `cutoutsource.existing_cutouts` (one listing, sizes) against the check the
stage used before (decompress and validate every file, one thread) and `existing_cutouts(verify=True)`.

    .venv/bin/python bench/cutout_io.py [--quick] [--n N] [--jobs J]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from stronglens import cutouts as C
from stronglens import cutoutsource as S


def make_files(d: str, n: int, seed: int = 0) -> list[str]:
    "n realistic stamps: sky noise plus a round galaxy (compresses like real data, not like zeros)."
    rng = np.random.default_rng(seed)
    r = C.radial_grid()
    urls = []
    for i in range(n):
        img = rng.normal(0, 0.005, C.CUTOUT_SHAPE).astype(np.float32)
        img += (np.exp(-r / rng.uniform(2, 6))[..., None] * rng.uniform(0.1, 2, 3)).astype(np.float32)
        meta = dict(galaxy_id=f"bench_{i:06d}", ra=rng.uniform(0, 360), dec=rng.uniform(-30, 30), type="SER",
                    nobs_z=int(rng.integers(1, 12)), psfsize_z=1.2, flux_r=3.0, cutout_url="mock://bench",
                    download_timestamp="2026-01-01T00:00:00+00:00")
        urls.append(C.write_cutout(os.path.join(d, C.cutout_filename(meta["galaxy_id"])), img, meta))
    return urls


def baseline(urls):
    out = []
    for u in urls:
        with np.load(u, allow_pickle=False) as z:
            out.append(z["cutout"])
    return np.stack(out)


def old_resume_check(urls, gids):
    "What resuming did before: read (decompress + validate) every existing file and compare its galaxy id."
    keep = np.zeros(len(urls), bool)
    for i, (u, g) in enumerate(zip(urls, gids)):
        try: keep[i] = C.read_cutout(u)[1].get("galaxy_id") == g
        except C.CutoutError: pass
    return keep


def bench_resume(urls):
    gids = [os.path.basename(u)[:-4] for u in urls]
    n = len(urls)
    t_old, k_old = timed(old_resume_check, urls, gids)
    t_new, k_new = timed(S.existing_cutouts, urls)
    t_ver, k_ver = timed(S.existing_cutouts, urls, gids, True)
    assert k_old.all() and k_new.all() and k_ver.all()
    print(f"resume check, {n} finished cutouts:")
    print(f"  before: decompress + validate each, 1 thread : {t_old:7.2f} s  ({t_old / n * 1e3:.2f} ms per file; "
          f"{t_old / n * 4e5 / 60:.1f} min at 400k)")
    print(f"  existing_cutouts (listing + sizes)          : {t_new:7.3f} s  ({t_new / n * 1e6:.1f} us per file; "
          f"{t_new / n * 4e5:.1f} s at 400k)  speed-up {t_old / t_new:.0f}x")
    print(f"  existing_cutouts(verify=True), 4 threads     : {t_ver:7.2f} s  speed-up {t_old / t_ver:.2f}x")


def timed(fn, *a, **k):
    t = time.perf_counter(); res = fn(*a, **k); return time.perf_counter() - t, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="300 files instead of 2000")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    a = ap.parse_args(argv)
    n = a.n or (300 if a.quick else 2000)
    with tempfile.TemporaryDirectory() as d:
        tw, urls = timed(make_files, d, n)
        size_kb = sum(os.path.getsize(u) for u in urls) / n / 1024
        print(f"wrote {n} cutouts in {tw:.2f} s ({n / tw:.0f} cutouts/s, write_cutout incl. compression; {size_kb:.1f} KiB each)")
        baseline(urls[:50]); C.read_cutouts(urls[:50], progress=False)     # warm the page cache + imports
        tb, Xb = timed(baseline, urls)
        t1, (X1, m1, f1) = timed(C.read_cutouts, urls, n_jobs=1, progress=False)
        tp, (Xp, mp_, fp) = timed(C.read_cutouts, urls, n_jobs=a.jobs, progress=False)
        assert len(f1) == 0 and len(fp) == 0 and np.array_equal(X1, Xb) and np.array_equal(Xp, Xb)
        rb, r1, rp = n / tb, n / t1, n / tp
        print(f"baseline np.load loop (no checks) : {rb:8.0f} cutouts/s")
        print(f"read_cutouts n_jobs=1             : {r1:8.0f} cutouts/s  ratio vs baseline {r1 / rb:.2f}x")
        print(f"read_cutouts n_jobs={a.jobs} (spawn pool): {rp:8.0f} cutouts/s  ratio vs baseline {rp / rb:.2f}x, "
              f"vs n_jobs=1 {rp / r1:.2f}x (incl. pool start-up)")
        # the pool's steady state: batches through one reused pool
        t0 = time.perf_counter(); cnt = 0
        for X, _, _ in C.iter_cutout_batches(urls + urls, batch_size=512, n_jobs=a.jobs, progress=False):
            cnt += len(X)
        ti = time.perf_counter() - t0
        print(f"iter_cutout_batches n_jobs={a.jobs}, {cnt} reads: {cnt / ti:8.0f} cutouts/s  ratio vs baseline {cnt / ti / rb:.2f}x")
        bench_resume(urls)
        print(f"(cores on this machine: {os.cpu_count()})")


if __name__ == "__main__":
    sys.exit(main())

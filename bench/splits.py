"""Benchmark: HEALPix index + spec §3 split for random rows, vectorised vs the spec's per-row functions.

    .venv/bin/python bench/splits.py [--quick] [--n N] [--baseline-n M] [--nside 128]

The per-row baseline (spec `compute_healpix` + `assign_split`, one Python call each per row) is timed on
`--baseline-n` rows and scaled linearly to N rows; the vectorised path is timed on all N rows, both cold
(empty per-process hash cache: every unique pixel hashed) and warm (hashes cached from a previous call).
"""
import argparse
import platform
import time

import numpy as np

from stronglens.splits import (DEFAULT_ALLOCATIONS, assign_split_scalar, clear_hash_cache, compute_healpix,
                               compute_healpix_scalar, healpix_split)


def best_of(fn, repeat, setup=None):
    times = []
    for _ in range(repeat):
        if setup: setup()
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (1e5 rows, 1e4 baseline rows)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--baseline-n", type=int, default=None)
    ap.add_argument("--nside", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n = a.n or (100_000 if a.quick else 1_000_000)
    nb = min(n, a.baseline_n or (10_000 if a.quick else 100_000))
    rng = np.random.default_rng(a.seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    alloc = DEFAULT_ALLOCATIONS
    print(f"# bench/splits.py  python {platform.python_version()}  numpy {np.__version__}  {platform.machine()}")
    print(f"rows N = {n:,}  nside = {a.nside}  allocations = {alloc}  seed = 42")

    t0 = time.perf_counter()
    base_hp = [compute_healpix_scalar(r, d, a.nside) for r, d in zip(ra[:nb].tolist(), dec[:nb].tolist())]
    base_split = [assign_split_scalar(p, alloc, 42) for p in base_hp]
    t_base = (time.perf_counter() - t0)
    t_base_n = t_base * n / nb
    print(f"per-row spec functions : {t_base:.3f} s on {nb:,} rows -> {t_base_n:.2f} s scaled to {n:,} rows "
          f"({nb / t_base:,.0f} rows/s)")

    t_cold, (hp_v, split_v) = best_of(lambda: healpix_split(ra, dec, a.nside, alloc, 42), a.repeat, setup=clear_hash_cache)
    t_warm, (hp_w, split_w) = best_of(lambda: healpix_split(ra, dec, a.nside, alloc, 42), a.repeat)
    t_hp, _ = best_of(lambda: compute_healpix(ra, dec, a.nside), a.repeat)
    assert np.array_equal(hp_v[:nb], base_hp) and split_v[:nb].tolist() == base_split, "vectorised != per-row"
    assert np.array_equal(split_v, split_w)
    n_pix = np.unique(hp_v).size
    print(f"  (vectorised output equals the per-row output on the {nb:,} baseline rows; {n_pix:,} unique pixels)")
    print(f"vectorised, cold cache : {t_cold:.3f} s  ({n / t_cold:,.0f} rows/s)   speed-up x{t_base_n / t_cold:.1f}")
    print(f"vectorised, warm cache : {t_warm:.3f} s  ({n / t_warm:,.0f} rows/s)   speed-up x{t_base_n / t_warm:.1f}")
    print(f"  of which compute_healpix alone: {t_hp:.3f} s")
    print(f"goal >= 50x (cold): {'met' if t_base_n / t_cold >= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()

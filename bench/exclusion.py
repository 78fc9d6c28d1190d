"""Benchmark: exclusion flags for random points vs known lenses, KD-tree (stronglens.exclusion) vs astropy.

    .venv/bin/python bench/exclusion.py [--quick] [--n N] [--n-lenses M] [--radius 11]

Ours is timed end to end from degree arrays (validation, unit vectors, tree build, query, exact separation
cut). astropy's `search_around_sky` is timed with the SkyCoord objects already built (its best case);
SkyCoord construction is timed separately. Best of --repeat runs each.
"""
import argparse
import platform
import time

import numpy as np


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1e5 points")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--n-lenses", type=int, default=5000)
    ap.add_argument("--radius", type=float, default=11.0, help="arcsec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import astropy
    import astropy.units as u
    import scipy
    from astropy.coordinates import SkyCoord, search_around_sky

    from stronglens.exclusion import LensIndex, near_known_lens

    n = a.n or (100_000 if a.quick else 1_000_000)
    rng = np.random.default_rng(a.seed)
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lra, ldec = rng.uniform(0, 360, a.n_lenses), np.degrees(np.arcsin(rng.uniform(-1, 1, a.n_lenses)))
    # put 1% of the points near a lens so that some are excluded
    k = n // 100
    j = rng.integers(0, a.n_lenses, k)
    off = SkyCoord(lra[j] * u.deg, ldec[j] * u.deg).directional_offset_by(
        rng.uniform(0, 360, k) * u.deg, rng.uniform(0, 2 * a.radius, k) * u.arcsec)
    ra[:k], dec[:k] = off.ra.deg, off.dec.deg
    print(f"# bench/exclusion.py  python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}"
          f"  astropy {astropy.__version__}")
    print(f"points N = {n:,}  lenses = {a.n_lenses:,}  radius = {a.radius}\"")

    t_ours, near = best_of(lambda: near_known_lens(ra, dec, lra, ldec, a.radius), a.repeat)
    index = LensIndex(lra, ldec)
    t_q, near_q = best_of(lambda: index.near(ra, dec, a.radius), a.repeat)
    t_q2, near_q2 = best_of(lambda: index.near(ra, dec, a.radius, workers=-1), a.repeat)

    t_sc, (pts, lenses) = best_of(lambda: (SkyCoord(ra * u.deg, dec * u.deg), SkyCoord(lra * u.deg, ldec * u.deg)), 1)
    t_ast, res = best_of(lambda: search_around_sky(pts, lenses, a.radius * u.arcsec), max(1, a.repeat - 1))
    ref = np.zeros(n, bool); ref[res[0]] = True
    agree = int((ref == near).sum())
    assert np.array_equal(near, near_q) and np.array_equal(near, near_q2)
    print(f"flagged near a lens: {near.sum():,} (astropy: {ref.sum():,}); rows agreeing: {agree:,} of {n:,}")
    print(f"astropy search_around_sky (SkyCoords pre-built): {t_ast:.3f} s  ({n / t_ast:,.0f} pts/s)")
    print(f"  astropy SkyCoord construction adds              {t_sc:.3f} s")
    print(f"near_known_lens (end to end, 1 thread)         : {t_ours:.3f} s  ({n / t_ours:,.0f} pts/s)  "
          f"speed-up x{t_ast / t_ours:.1f}")
    print(f"LensIndex.near, tree pre-built, workers=1      : {t_q:.3f} s  speed-up x{t_ast / t_q:.1f}")
    print(f"LensIndex.near, tree pre-built, workers=-1     : {t_q2:.3f} s  speed-up x{t_ast / t_q2:.1f}")
    print(f"goal >= 3x (end to end, 1 thread): {'met' if t_ast / t_ours >= 3 else 'NOT met'}")
    if agree != n:
        raise SystemExit("results differ from astropy")


if __name__ == "__main__":
    main()

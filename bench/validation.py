"""Benchmark: spec §5 per-cutout validation metrics, cutouts/s on 2 cores.

Also: the per-feature shortcut-AUC bootstrap (`calibration.bootstrap_ci` with the vectorised weighted AUC, 1,000
class-stratified replicates) against a plain loop of scikit-learn `roc_auc_score` on resampled rows.

Sources: an in-memory (N,101,101,3) array, the packed cache (memory-mapped (N,3,101,101) .npy written by
`stronglens.data.build_packed_split` with `raw` preprocessing), and NPZ files (spec §1). Baseline, measured in the same
run: a straightforward per-cutout implementation (boolean masks + np.nanmean/np.nanmedian per stamp). Goal: the spec's
421,189 cutouts in < 5 min (>= 1,500 cutouts/s) with flat memory (RSS reported per batch while streaming).

    .venv/bin/python bench/validation.py [--quick] [--n N]
"""
import argparse, glob, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from stronglens import validation as V
from stronglens.cutouts import cutout_to_bytes, radial_grid
from stronglens.gates import synthetic_stamps


def baseline_metrics(X):
    "Per-cutout loop (the obvious implementation): masks applied one stamp at a time."
    r = radial_grid()
    i, j = np.indices((101, 101))
    sector = np.floor((np.arctan2(i - 50, j - 50) + np.pi) / (np.pi / 4)).astype(int) % 8
    core, ann, outer = r < 8, (r >= 4) & (r < 16), (r >= 16) & (r < 28)
    rows = []
    for x in X:
        rb = x[..., 1]
        c, a, o = np.nanmean(rb[core]), np.nanmean(rb[ann]), np.nanmean(rb[outer])
        sm = np.array([np.nanmean(rb[ann & (sector == k)]) for k in range(8)])
        med = np.nanmedian(rb)
        rows.append(dict(total_nan_frac=np.isnan(x).mean(), core_nan_frac=np.isnan(x[core]).mean(), core_brightness_r=c,
                         annulus_brightness_r=a, outer_brightness_r=o, azimuthal_asymmetry=sm.std() / abs(sm.mean()),
                         mad_r=np.nanmedian(np.abs(rb - med)), radial_gradient_r=c / o))
    return pd.DataFrame(rows)


CPU_RATES = {}

def rate(fn, n, repeat=1, name=None):
    "Best wall-clock rate (cutouts/s) over `repeat` runs; also records cutouts per CPU-second of this process."
    best, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time(); fn()
        best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
    if name: CPU_RATES[name] = n / cpu
    return n / best, best


def rss_mb(include_children=False):
    p = psutil.Process()
    m = p.memory_info().rss
    if include_children:
        m += sum(c.memory_info().rss for c in p.children(recursive=True) if c.is_running())
    return m / 2**20


def vmhwm_mb():
    "Peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited through fork+exec)."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream(folder, repeat=4, batch_size=256, n_jobs=2):
    "Stream `repeat` x the NPZ files of `folder` through iter_metrics; print RSS (this process + workers) per batch."
    urls = sorted(glob.glob(os.path.join(folder, "*.npz"))) * repeat
    rss, kept, t = [], 0, time.perf_counter()
    for df in V.iter_metrics(urls, batch_size=batch_size, n_jobs=n_jobs, progress=False):
        kept += len(df); rss.append(rss_mb(include_children=True))
    dt = time.perf_counter() - t
    warm = rss[min(4, len(rss) - 1):]
    print(f"streaming {kept} NPZ cutouts ({n_jobs} processes, batch {batch_size}): {kept / dt:.0f} cutouts/s incl. pool start; "
          f"RSS parent+workers after warm-up min {min(warm):.0f} MiB, max {max(warm):.0f} MiB, first->last {warm[-1] - warm[0]:+.0f} MiB; "
          f"parent peak (VmHWM) {vmhwm_mb():.0f} MiB")


def bench_bootstrap(n_rows, n_pos_frac=0.05, n_loop=100):
    "Per-feature AUC interval: the one vectorised bootstrap vs a scikit-learn loop (rate extrapolated from `n_loop`)."
    from sklearn.metrics import roc_auc_score
    from stronglens.calibration import bootstrap_ci, roc_auc
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=n_rows) < n_pos_frac).astype(int)
    s = rng.normal(size=n_rows) + 0.5 * y
    t, c = time.perf_counter(), time.process_time()
    r = bootstrap_ci(roc_auc, y, s, strata=y, vectorized=True, seed=0)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n_loop):
        i = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        roc_auc_score(y[i], s[i])
    bt, bc = (time.perf_counter() - t) * 1000 / n_loop, (time.process_time() - c) * 1000 / n_loop
    print(f"AUC bootstrap, {n_rows} rows, 1000 replicates: {dt:6.2f} s ({dc:.2f} CPU-s); sklearn loop ~{bt:6.1f} s "
          f"({bc:.1f} CPU-s, from {n_loop}): {bt / dt:.1f}x wall, {bc / dc:.1f}x CPU; interval [{r.ci_lower:.4f}, {r.ci_upper:.4f}]")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--stream":
        return stream(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small run (1,024 cutouts)")
    ap.add_argument("--n", type=int, default=None, help="number of cutouts (default 4,096; 1,024 with --quick)")
    args = ap.parse_args()
    n = args.n or (1024 if args.quick else 4096)
    print(f"cores: {os.cpu_count()}  load average: {os.getloadavg()[0]:.2f}  cutouts: {n}")
    X = synthetic_stamps(n, seed=0)
    X[::97, :3] = np.nan                                   # ~1% of stamps hold NaNs (slow path exercised)
    labels = np.arange(n) % 10 == 0

    nb = min(n, 256)
    base_rate, _ = rate(lambda: baseline_metrics(X[:nb]), nb, name="baseline")
    print(f"baseline (per-cutout loop, 1 core):          {base_rate:8.0f} cutouts/s")
    r1, _ = rate(lambda: V.metrics_from_array(X, labels=labels, batch_size=512, n_jobs=1), n, 2, name="in-memory")
    r2, _ = rate(lambda: V.metrics_from_array(X, labels=labels, batch_size=512, n_jobs=2), n, 2)
    print(f"in-memory array, 1 thread:                   {r1:8.0f} cutouts/s  ({r1 / base_rate:.1f}x baseline)")
    print(f"in-memory array, 2 threads:                  {r2:8.0f} cutouts/s  ({r2 / base_rate:.1f}x baseline)")
    # correctness of the fast path against the baseline
    ref, got = baseline_metrics(X[:64]), V.cutout_metrics(X[:64])
    for c in ref.columns:
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=c)

    with tempfile.TemporaryDirectory(prefix="bench-validation-") as td:
        td = Path(td)
        t = time.perf_counter()
        urls = []
        for k, x in enumerate(X):
            u = td / "cutouts" / f"obj{k:06d}.npz"; urls.append(str(u)); u.parent.mkdir(exist_ok=True)
            u.write_bytes(cutout_to_bytes(x, {"galaxy_id": f"obj{k:06d}", "ra": 1.0, "dec": 2.0, "type": "SER", "nobs_z": 3,
                                              "psfsize_z": 1.1, "flux_r": 5.0, "cutout_url": "", "download_timestamp": ""}))
        print(f"(wrote {n} NPZ files in {time.perf_counter() - t:.1f} s, {sum(os.path.getsize(u) for u in urls) / n / 1024:.0f} KiB each)")
        # packed cache (helper F's memory-mapped .npy, bands first)
        try:
            from stronglens.data import build_packed_split
            man = pd.DataFrame({"s3_path": urls, "galaxy_id": [Path(u).stem for u in urls], "label": labels.astype(int), "split": "test"})
            ps = build_packed_split(man, "test", "raw", cache_dir=str(td / "cache"), n_jobs=2, progress=False)
            packed, what = ps.X, "packed cache (memmap, N,3,101,101)"
        except Exception as e:                                                     # pragma: no cover
            print(f"(packed cache unavailable: {e}; using a plain .npy memmap)")
            np.save(td / "packed.npy", np.moveaxis(X, -1, 1)); packed, what = np.load(td / "packed.npy", mmap_mode="r"), "memmap .npy"
        rp, _ = rate(lambda: V.metrics_from_array(packed, batch_size=512, n_jobs=2), n, 2, name="packed cache")
        print(f"{what}, 2 threads: {rp:8.0f} cutouts/s  ({rp / base_rate:.1f}x baseline)")

        rf1, _ = rate(lambda: V.compute_metrics(urls, labels=labels, batch_size=256, n_jobs=1, progress=False), n, name="NPZ files")
        t, first, done = time.perf_counter(), None, 0
        for df in V.iter_metrics(urls, labels=labels, batch_size=256, n_jobs=2, progress=False):
            done += len(df)
            if first is None: first, n_first = time.perf_counter() - t, len(df)
        dt = time.perf_counter() - t
        rf2, rf2_steady = n / dt, (n - n_first) / max(dt - first, 1e-9)
        print(f"NPZ files, 1 process:                        {rf1:8.0f} cutouts/s  ({rf1 / base_rate:.1f}x baseline)")
        print(f"NPZ files, 2 processes (incl. pool start):   {rf2:8.0f} cutouts/s  ({rf2 / base_rate:.1f}x baseline); "
              f"after the first batch (pool started): {rf2_steady:.0f} cutouts/s ({rf2_steady / base_rate:.1f}x)")

        # memory while streaming 4x the files (2 processes), measured in a fresh interpreter holding nothing else
        t0 = os.times()
        out = subprocess.run([sys.executable, __file__, "--stream", str(td / "cutouts")], capture_output=True, text=True)
        t1 = os.times()
        print(out.stdout.strip() or out.stderr[-2000:])
        CPU_RATES["NPZ streaming, 2 processes (incl. interpreter + pool start)"] = 4 * n / (t1.children_user + t1.children_system - t0.children_user - t0.children_system)
    for rows in ([20_000] if args.quick else [20_000, 100_000]): bench_bootstrap(rows)
    print(f"peak RSS of this benchmark process (holds the {n} test stamps {X.nbytes / 2**20:.0f} MiB, several copies): {vmhwm_mb():.0f} MiB")
    print("cutouts per CPU-second (independent of other load on the machine; x2 ~ two idle cores):")
    for k, v in CPU_RATES.items(): print(f"    {k:<62s} {v:8.0f}")
    print(f"load average now: {os.getloadavg()[0]:.2f}")
    goal = 1500
    best_npz = max(rf1, rf2, rf2_steady)
    print(f"goal >= {goal} cutouts/s: in-memory {'MET' if r2 >= goal else 'NOT MET'} ({r2:.0f}); "
          f"NPZ {'MET' if best_npz >= goal else 'NOT MET'} ({best_npz:.0f}); 421,189 cutouts from NPZ ~ {421189 / best_npz / 60:.1f} min")


if __name__ == "__main__":
    main()

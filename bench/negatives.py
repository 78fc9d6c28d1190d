"""Benchmark: sweep FITS -> negative-pool Parquet, local engine vs Spark local[2].

    .venv/bin/python bench/negatives.py            # 1e6 and 1e7 mock sweep rows
    .venv/bin/python bench/negatives.py --quick    # 1e5 and 1e6

Synthetic sweep-format FITS files (1e6 rows each, DR10 columns, ~90,000 sources/deg^2 like DR10) and a known-lens
list at 2 lenses/deg^2 are generated once into --workdir. Reported:
  per-row   : `negatives.process_chunk` on rows already in memory (cuts, exclusion, HEALPix, split, bins, mags,
              N2 proxies, pool columns) - goal >= 1e6 rows/s - and, as a baseline measured in the same run, the
              spec's literal per-row functions (compute_healpix, assign_split, is_near_known_lens via a KD-tree);
  read only : FITS bytes -> the needed columns (part of local/spark);
  local     : plan + read + process + write the pool after cuts as one Parquet file (engine "local", n_jobs 1 and 2);
  spark     : the same tasks through mapInPandas on local[2], pool written by Spark as Parquet partitioned by split
              (session and Python-worker start-up excluded and printed separately).
"""
import argparse, math, os, shutil, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
from stronglens.config import atomic_write_parquet, git_commit
from stronglens.negatives import NegativeSamplingConfig
from stronglens.negatives import synthetic_sweep, write_sweep_fits, ChunkContext, process_chunk, plan_tasks, run_tasks_local
from stronglens.splits import compute_healpix_scalar, assign_split_scalar

ROWS_PER_FILE = 1_000_000
CHUNK_ROWS = 250_000           # rows per task (both engines): 4 tasks per file, so local[2] / n_jobs=2 use both cores
DENSITY_PER_DEG2 = 90_000      # DR10: ~46,500 non-PSF + PSF sources per deg^2
LENSES_PER_DEG2 = 2.0


def make_sky(workdir: Path, n_rows: int):
    "Sweep files totalling n_rows (cached), and a known-lens list; returns (urls, lens_ra, lens_dec)."
    d = workdir / f"sky_{n_rows:.0e}".replace("+", "")
    d.mkdir(parents=True, exist_ok=True)
    n_files = math.ceil(n_rows / ROWS_PER_FILE)
    urls, lens_ra, lens_dec = [], [], []
    for k in range(n_files):
        rows = min(ROWS_PER_FILE, n_rows - k * ROWS_PER_FILE)
        side = math.sqrt(rows / DENSITY_PER_DEG2)
        ra0, dec0 = 5.0 * (k % 60), -5.0 * (1 + k // 60)
        name = f"sweep-{int(ra0):03d}m{int(-dec0):03d}-{int(ra0) + 5:03d}m{int(-dec0) - 5:03d}.fits"
        rr, dr = (ra0 + 0.5, ra0 + 0.5 + side), (dec0 + 0.5, dec0 + 0.5 + side)
        f = d / name
        if not f.exists():
            write_sweep_fits(str(f), synthetic_sweep(rows, seed=k, ra_range=rr, dec_range=dr, brick_prefix=f"{int(ra0 * 10):04d}m{k:03d}"))
        rng = np.random.default_rng(1000 + k)
        nl = max(1, int(LENSES_PER_DEG2 * side * side))
        lens_ra.append(rng.uniform(*rr, nl)); lens_dec.append(rng.uniform(*dr, nl))
        urls.append(str(f))
    return urls, np.concatenate(lens_ra), np.concatenate(lens_dec)


def spec_per_row_baseline(arr, lens_ra, lens_dec, n=20000):
    "The spec §3 literal per-row functions on n rows: rows/s."
    from scipy.spatial import cKDTree
    def xyz(ra, dec):
        ra, dec = np.radians(ra), np.radians(dec)
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)
    tree = cKDTree(xyz(lens_ra, lens_dec))
    chord = 2 * np.sin(np.radians(11.0 / 3600) / 2)
    alloc = {"train": 0.7, "val": 0.15, "test": 0.15}
    t = time.perf_counter()
    for ra, dec in zip(arr["ra"][:n], arr["dec"][:n]):
        p = compute_healpix_scalar(float(ra), float(dec), 128)
        assign_split_scalar(p, alloc, 42)
        tree.query_ball_point(xyz(np.array([ra]), np.array([dec]))[0], chord)
    return n / (time.perf_counter() - t)


def bench_size(n_rows, workdir, spark, neg, n_jobs_list=(1, 2)):
    urls, lra, ldec = make_sky(workdir, n_rows)
    ctx = ChunkContext(neg, lra, ldec, lra, ldec, git_commit=git_commit())
    out = {}
    # per-row computation on one in-memory chunk
    from stronglens.legacysurvey import open_table, read_table_chunk, SWEEP_COLUMNS
    t = open_table(urls[0]); arr = read_table_chunk(t, 0, t.nrows, SWEEP_COLUMNS)
    process_chunk({k: v[:1000] for k, v in arr.items()}, ctx, urls[0])   # warm caches
    best = min(_timed(lambda: process_chunk(arr, ctx, urls[0])) for _ in range(3))
    out["per_row_rows_s"] = t.nrows / best
    out["spec_per_row_rows_s"] = spec_per_row_baseline(arr, lra, ldec)
    # reading alone (FITS bytes -> needed columns), for the breakdown
    t0 = time.perf_counter()
    for tk in plan_tasks(urls, CHUNK_ROWS, "fill_nan"):
        read_table_chunk(open_table(tk.url), tk.start, tk.stop, SWEEP_COLUMNS)
    out["read_rows_s"] = n_rows / (time.perf_counter() - t0)
    # local engine end to end
    res_dir = workdir / "out"; shutil.rmtree(res_dir, ignore_errors=True); res_dir.mkdir(parents=True)
    for nj in n_jobs_list:
        t0 = time.perf_counter()
        tasks = plan_tasks(urls, CHUNK_ROWS, "fill_nan")
        cand, lr, counts = run_tasks_local(tasks, ctx, n_jobs=nj, progress=False)
        atomic_write_parquet(cand.drop(columns=["_rank_key"]), str(res_dir / f"local_pool_{nj}.parquet"))
        out[f"local_nj{nj}_rows_s"] = n_rows / (time.perf_counter() - t0)
        out["candidates"] = len(cand)
    del cand, lr
    if spark is not None:
        from stronglens.spark import task_function, task_table, TASK_OUTPUT_COLUMNS, ROLE_COLUMNS, spark_schema, forwarded_env
        from pyspark.sql import functions as F
        t0 = time.perf_counter()
        tasks = plan_tasks(urls, CHUNK_ROWS, "fill_nan")
        res = task_table(spark, tasks).mapInPandas(task_function(ctx, forwarded_env()), spark_schema(TASK_OUTPUT_COLUMNS))
        (res.filter(F.col("_role") == "candidate").drop(*ROLE_COLUMNS)
            .write.mode("overwrite").partitionBy("split").parquet(str(res_dir / "spark_pool")))
        out["spark_rows_s"] = n_rows / (time.perf_counter() - t0)
        n_spark = pd.read_parquet(res_dir / "spark_pool", columns=["galaxy_id"]).shape[0]
        assert n_spark == out["candidates"], (n_spark, out["candidates"])
    return out


def _warm_python_workers(spark):
    "Start the (reused) Python workers and import stronglens in them, so the timings below exclude it."
    def f(it):
        import stronglens.negatives  # noqa: F401
        for b in it: yield b
    spark.range(0, 4, numPartitions=2).mapInPandas(f, "id long").count()


def _timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1e5 and 1e6 rows instead of 1e6 and 1e7")
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--workdir", default=os.environ.get("STRONGLENS_BENCH_DIR", "/tmp/stronglens_bench_negatives"))
    a = ap.parse_args(argv)
    sizes = [100_000, 1_000_000] if a.quick else [1_000_000, 10_000_000]
    work = Path(a.workdir)
    neg = NegativeSamplingConfig()
    spark = None
    if not a.no_spark:
        from stronglens.spark import spark_session
        t = time.perf_counter(); spark = spark_session("local[2]"); spark.range(2).count()
        print(f"spark local[2] session start-up: {time.perf_counter() - t:.1f} s (not counted below)")
        t = time.perf_counter(); _warm_python_workers(spark)
        print(f"spark python workers start-up (import stronglens): {time.perf_counter() - t:.1f} s (not counted below)")
    print(f"{'rows':>10} {'per-row':>12} {'spec per-row':>13} {'ratio':>7} {'read only':>12} {'local nj=1':>12} {'local nj=2':>12} {'spark[2]':>12} {'spark/local':>11} {'pool rows':>10}")
    for n in sizes:
        r = bench_size(n, work, spark, neg)
        sp = r.get("spark_rows_s", float("nan"))
        print(f"{n:>10.0e} {r['per_row_rows_s']:>12.3e} {r['spec_per_row_rows_s']:>13.3e} {r['per_row_rows_s'] / r['spec_per_row_rows_s']:>6.0f}x {r['read_rows_s']:>12.3e} "
              f"{r['local_nj1_rows_s']:>12.3e} {r['local_nj2_rows_s']:>12.3e} {sp:>12.3e} {sp / r['local_nj1_rows_s']:>11.2f} {r['candidates']:>10d}",
              flush=True)
    print("rows/s = sweep rows in / wall seconds. per-row: process_chunk on an in-memory 1e6-row chunk (goal >= 1e6 rows/s);"
          " local/spark: FITS read -> pool Parquet written.")
    if spark is not None: spark.stop()


if __name__ == "__main__":
    main()

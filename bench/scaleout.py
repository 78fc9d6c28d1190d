"""Scale-out benchmark: cutouts and injections on Spark local[1] vs local[2] (same run, same items), per-item cost of
one core, the 1 -> 2 core speed-up, and the estimate for the spec's 421,189 cutouts and 77,000 injections on a cluster.

  .venv/bin/python bench/scaleout.py [RUN] [--n-cutouts 192] [--cells 8] [--n-per-cell 24] [--repeat 3]

RUN is a run folder with the sky, catalogs and train stages done (default: a tiny one is built into runs/bench-scaleout
with configs/tiny.yaml). Prints ratios against the local[1] baseline measured in the same run, and the load average
(the machine is shared: read the speed-up with it); each measurement waits for a quiet machine (--quiet-load, at most
--max-wait s) and is the best of --repeat timings."""
import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def ensure_run(run: str) -> str:
    "A run with sky, catalogs and train done (built with the tiny config, 1 epoch, when missing)."
    from stronglens.config import load_config, save_config, url_join
    from stronglens.cli import default_config_path
    if (Path(run) / "model" / "checkpoints" / "best.pt").exists(): return run
    cfg = load_config(default_config_path("tiny"), ["training.train.epochs=1"])
    save_config(cfg, url_join(run, "config.yaml"))
    from stronglens.mocksky import run_sky_stage
    from stronglens.manifest import run_catalog_stage
    from stronglens.cutoutsource import run_cutouts_stage
    from stronglens.train import run_train_stage
    for fn in (run_sky_stage, run_catalog_stage, run_cutouts_stage, run_train_stage): fn(cfg, run)
    return run


def session(master: str):
    from pyspark.sql import SparkSession
    from stronglens.spark import spark_session
    s = SparkSession.getActiveSession()
    if s is not None: s.stop()
    return spark_session(master)


def time_cutouts(run: str, master: str, n: int, repeat: int = 3) -> float:
    "Best of `repeat` timings (s) to render and write `n` manifest cutouts with the Spark engine on `master` (fresh output folders)."
    from stronglens.cutoutsource import load_cutout_targets, MockSkySource
    from stronglens.spark_cutouts import generate_cutouts_spark
    from stronglens.config import url_join
    t = load_cutout_targets(run).drop(columns=["s3_path"], errors="ignore").head(n)   # written under the bench's own prefix
    spark = session(master)
    src = MockSkySource(url_join(run, "sky"), seed=0)
    with tempfile.TemporaryDirectory() as d:
        generate_cutouts_spark(t.head(8), src, d + "/warm", spark=spark, n_partitions=2, batch_size=4)   # warm the workers
        best = float("inf")
        for i in range(repeat):
            t0 = time.perf_counter()
            generate_cutouts_spark(t, src, f"{d}/out{i}", spark=spark, n_partitions=8, batch_size=24)
            best = min(best, time.perf_counter() - t0)
        return best


def time_injections(run: str, master: str, n_cells: int, n_per_cell: int, repeat: int = 3) -> tuple[float, int]:
    "(best of `repeat` timings in s, injections) for `n_cells` grid cells of `n_per_cell` injections scored by the run's CNN, on Spark `master`."
    from stronglens import injection as I
    from stronglens.config import load_config, url_join
    cfg = load_config(url_join(run, "config.yaml")); c = I.InjectionConfig(n_per_cell=n_per_cell)
    inp = I.load_inputs(cfg, run)
    hosts = inp["hosts"][(inp["hosts"].i_psf >= 0) & (inp["hosts"].i_depth >= 0)].reset_index(drop=True)
    ctx = I.CellContext(c, hosts, inp["colours"], {"kind": "checkpoint", "path": url_join(run, "model", "checkpoints", "best.pt")})
    cells = I.grid_cells(c)
    full = cells.merge(hosts.groupby(["i_psf", "i_depth"]).size().rename("n").reset_index(), on=["i_psf", "i_depth"])
    todo = cells[cells.cell_id.isin(full.cell_id)].head(n_cells)
    from stronglens.injection_spark import run_cells_spark
    spark = session(master)
    run_cells_spark(todo.head(2), ctx, spark=spark, n_workers=2)                               # warm the workers
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter(); res = run_cells_spark(todo, ctx, spark=spark, n_workers=int(master[6:-1]))
        best = min(best, time.perf_counter() - t0)
    return best, int(sum(len(r.injections) for r in res))


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    "Wait (up to `max_wait_s`) until the 1-minute load average is below `max_load`; returns the load when it starts."
    t0 = time.time()
    while os.getloadavg()[0] >= max_load and time.time() - t0 < max_wait_s: time.sleep(15)
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "bench-scaleout"))
    ap.add_argument("--n-cutouts", type=int, default=192); ap.add_argument("--cells", type=int, default=8); ap.add_argument("--n-per-cell", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3, help="timings per measurement; the best is kept (the machine is shared)")
    ap.add_argument("--quiet-load", type=float, default=1.5, help="wait until the 1-minute load average is below this before each measurement")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for --quiet-load at most (then measure anyway)")
    a = ap.parse_args()
    run = ensure_run(a.run)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    out = {}
    for master in ("local[1]", "local[2]"):
        l0 = wait_for_quiet(a.quiet_load, a.max_wait); tc = time_cutouts(run, master, a.n_cutouts, a.repeat)
        l1 = wait_for_quiet(a.quiet_load, a.max_wait); ti, ni = time_injections(run, master, a.cells, a.n_per_cell, a.repeat)
        print(f"{master}: load average {l0:.1f} before the cutouts, {l1:.1f} before the injections, {os.getloadavg()[0]:.1f} after")
        out[master] = {"cutouts_s": tc, "cutouts": a.n_cutouts, "injections_s": ti, "injections": ni}
        print(f"{master}: {a.n_cutouts} cutouts in {tc:.1f} s ({a.n_cutouts / tc:.1f}/s); {ni} injections in {ti:.1f} s ({ni / ti:.1f}/s)")
    b, f = out["local[1]"], out["local[2]"]
    per = {"cutouts": b["cutouts_s"] / b["cutouts"], "injections": b["injections_s"] / b["injections"]}
    sp = {"cutouts": b["cutouts_s"] / f["cutouts_s"], "injections": (b["injections_s"] / b["injections"]) / (f["injections_s"] / f["injections"])}
    print(f"speed-up local[1] -> local[2]: cutouts x{sp['cutouts']:.2f}, injections x{sp['injections']:.2f} (ratio to the local[1] baseline)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    from stronglens.scaleout import scaling_table
    t = scaling_table(per, sp)
    print(t.round(3).to_string(index=False))
    print(json.dumps({"per_item_s": per, "speedup_1_to_2": sp, "raw": out}))


if __name__ == "__main__":
    main()

"""Benchmark: injections rendered + scored per second (stronglens.injection) on this machine, with the demo's model size.

Hosts: synthetic red galaxies (`injection.synthetic_host_run`) spread over a few PSF x depth cells; scorer: the demo's
small CNN with its `residual` preprocessing, from a checkpoint (--checkpoint PATH, e.g. <run>/model/checkpoints/best.pt;
without one, an untrained `small` model in the training format: identical cost).
  * batched: `run_cells_local` on C cells x N injections, with 1 and 2 worker processes (the engine the stage uses);
  * baseline, same run: one injection at a time (a Python loop per injection: sample, render, inject, score), on a
    subsample, scaled;
  * breakdown of one N-injection cell: host draw + load, source sampling (the μ rejection), rendering, injection with
    Poisson noise, scoring (preprocessing + CNN).
Prints injections/s, the batched/baseline ratio, and the projected time of the spec's full grid, 385 x 200 = 77,000
injections, with 2 workers (the goal: < 4 min on this 2-core CPU). `--device cuda` scores on a GPU where there is one.

    .venv/bin/python bench/injection.py [--quick] [--n 200] [--cells 8] [--checkpoint PATH] [--device cpu]
"""
import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch


def untrained_checkpoint(path):
    "The demo's small CNN, untrained, in the training module's checkpoint format (scoring costs the same)."
    from stronglens.model import build_model, model_config
    from stronglens.train import save_checkpoint, CHECKPOINT_FORMAT
    torch.manual_seed(0)
    m = build_model("small")
    save_checkpoint(dict(format=CHECKPOINT_FORMAT, epoch=0, model=m.state_dict(), model_config=model_config("small"),
                         preprocessing={"mode": "residual", "annulus_r_in_px": 32.5, "annulus_r_out_px": 45.0, "clip": 10.0}), path)
    return path


def breakdown(cell, ctx, scorer):
    "Seconds of each step of one cell, as `run_cell` does them."
    from stronglens import injection as I
    c = ctx.cfg
    t = {}
    t0 = time.perf_counter()
    cs = I.cell_seed(c.seed, cell["i_theta_e"], cell["i_psf"], cell["i_depth"]); s_h, s_l, s_s, s_n = I._streams(cs)
    pool = ctx.hosts[(ctx.hosts.i_psf == cell["i_psf"]) & (ctx.hosts.i_depth == cell["i_depth"])].reset_index(drop=True)
    hosts, X, *_ = I._draw_loadable(pool, c.n_per_cell, s_h, I.HostStamps()); t["hosts (draw + read)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lens = I.sample_lens(cell["theta_e_lo"], cell["theta_e_hi"], hosts.shape_e1, hosts.shape_e2, np.random.default_rng(s_l), c)
    src = I.sample_source(lens, s_s, ctx.colours, c); t["sampling (μ rejection)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = I.render_arcs(lens, src, hosts[["psfsize_g", "psfsize_r", "psfsize_z"]].to_numpy(np.float64), c); t["rendering"] = time.perf_counter() - t0
    t0 = time.perf_counter(); stamps = I.inject(X, r.images, gain=I.arc_gain(hosts, c), seed=s_n); t["injection + Poisson"] = time.perf_counter() - t0
    t0 = time.perf_counter(); scorer(stamps, None); t["scoring (preprocess + CNN)"] = time.perf_counter() - t0
    return t, float(src["n_draws"].mean())


def sampling_screen_vs_exact(cell, ctx, repeats=2):
    "CPU seconds of one cell's μ-conditioned source sampling: the screened sampler (now) vs exact μ for every proposal (before)."
    from stronglens import injection as I
    from stronglens.lensing import sample_sources
    c = ctx.cfg; rng = np.random.default_rng(0); n = c.n_per_cell
    lens = I.sample_lens(np.full(n, cell["theta_e_lo"]), np.full(n, cell["theta_e_hi"]), rng.normal(0, .1, n), rng.normal(0, .1, n), rng, c)
    out = {}
    for eps in (0.0, 0.1) * repeats:
        t0 = time.process_time()
        sample_sources(n, 7, lens, colour_table=ctx.colours, mu_range=(c.mu_min, c.mu_max), proposals_per_round=c.proposals_per_round, mu_screen_eps_flux=eps)
        out[eps] = min(out.get(eps, np.inf), time.process_time() - t0)
    return out[0.0], out[0.1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--n", type=int, default=200, help="injections per cell (spec: 200)")
    ap.add_argument("--cells", type=int, default=8, help="cells in the batched run")
    ap.add_argument("--n-baseline", type=int, default=40, help="injections done one at a time")
    ap.add_argument("--checkpoint", default="", help="trained checkpoint (default: an untrained small CNN)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.quick: a.n, a.cells, a.n_baseline = 40, 4, 10
    from stronglens import injection as I
    from stronglens.mocksky import torch_threads
    d = tempfile.mkdtemp(prefix="bench-inj-")
    I.synthetic_host_run(d, n=160, seed=0, psf_range=(1.2, 1.7), depth_range=(23.75, 24.75))
    hosts = I.host_table(pd.read_parquet(f"{d}/manifests/training_manifest.parquet"), pd.read_parquet(f"{d}/manifests/negative_pool.parquet"), d)
    ck = a.checkpoint or untrained_checkpoint(os.path.join(d, "small.pt"))
    spec = {"kind": "checkpoint", "path": ck, "device": a.device, "batch_size": 256}
    cfg = I.InjectionConfig(n_per_cell=a.n)
    ctx = I.CellContext(cfg, hosts, I.LENSPOP_SOURCE_COLOURS, spec)
    cells = I.grid_cells(cfg)
    keys = hosts.groupby(["i_psf", "i_depth"]).size().sort_values(ascending=False).index[:4]
    pick = cells[np.array([(p, q) in set(keys) for p, q in zip(cells.i_psf, cells.i_depth)]) & cells.i_theta_e.isin([1, 4, 7, 10]).to_numpy()]
    pick = pick.sort_values(["i_theta_e", "i_psf"]).iloc[::max(1, len(pick) // a.cells)].head(a.cells)
    print(f"{len(pick)} cells x {a.n} injections; hosts: {len(hosts)} synthetic; scorer: {'checkpoint ' + ck if a.checkpoint else 'untrained small CNN'} on {a.device}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    scorer = I.make_scorer(spec)
    with torch_threads(1):
        I.run_cell(pick.iloc[0].to_dict(), ctx, scorer)                      # warm-up: PSF kernels, imports
        t, draws = breakdown(pick.iloc[len(pick) // 2].to_dict(), ctx, scorer)
    tot = sum(t.values())
    print(f"\none cell (θE {pick.iloc[len(pick) // 2].theta_e}\"), {a.n} injections, 1 thread: {tot:.2f} s = {a.n / tot:.1f} injections/s "
          f"({draws:.1f} μ-proposals per accepted source)")
    for k, v in t.items(): print(f"  {k:28s} {v:7.2f} s  {100 * v / tot:5.1f} %  {1e3 * v / a.n:6.2f} ms/injection")
    with torch_threads(1):
        for th in (1, 4, 10):
            cl = cells[cells.i_theta_e == th].iloc[0].to_dict(); before, after = sampling_screen_vs_exact(cl, ctx)
            print(f"  μ-conditioned sampling at θE {cl['theta_e']}\" (CPU s, best of 2): exact μ per proposal (before) {before:.2f} s, "
                  f"screened (now) {after:.2f} s: {before / after:.2f}x")
    rates = {}
    for w in (1, 2):
        t0, c0 = time.perf_counter(), time.process_time(); res = I.run_cells_local(pick, ctx, n_workers=w, progress=False)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        n = sum(len(r.injections) for r in res); rates[w] = n / dt
        print(f"\nbatched, {w} worker(s): {n} injections in {dt:.1f} s = {rates[w]:.1f} injections/s (incl. worker start-up)")
        if w == 1:          # in this process: CPU time is what an idle core would need (a loaded machine inflates wall time)
            cpu_rate = n / dc
            print(f"  CPU time {dc:.1f} s = {cpu_rate:.1f} injections per CPU-second (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    one = I.CellContext(I.InjectionConfig(n_per_cell=1), hosts, I.LENSPOP_SOURCE_COLOURS, spec)
    cell = pick.iloc[len(pick) // 2].to_dict()
    with torch_threads(1):
        t0 = time.perf_counter()
        for k in range(a.n_baseline):
            one.cfg.seed = k; I.run_cell(cell, one, scorer)
        base = a.n_baseline / (time.perf_counter() - t0)
    print(f"\nbaseline, one injection at a time (1 thread): {base:.1f} injections/s")
    print(f"ratio batched (1 worker) / baseline: {rates[1] / base:.1f}x; batched (2 workers) / baseline: {rates[2] / base:.1f}x")
    full = 385 * 200
    print(f"\nprojected spec grid, {full:,} injections with 2 workers: {full / rates[2] / 60:.1f} min at this run's load; "
          f"{full / (2 * cpu_rate) / 60:.1f} min on an idle 2-core CPU (2 x the CPU-time rate) "
          f"(goal < 4 min on a 2-core CPU; the original needed ~4 min on a GH200 GPU for half as many)")


if __name__ == "__main__":
    main()

"""Benchmark: injections rendered + scored per second (stronglens.injection) on this machine, with the demo's model size.

Hosts: synthetic red galaxies (`injection.synthetic_host_run`) spread over a few PSF x depth cells; scorer: the demo's
small CNN with its `residual` preprocessing, from a checkpoint (--checkpoint PATH, e.g. <run>/model/checkpoints/best.pt;
without one, an untrained `small` model in the training format: identical cost).
  * CPU seconds (time.process_time: the machine is shared, wall time is meaningless under load), now and with three
    earlier batched paths in the same run: f44122c (the μ screen with the renderer's box bound and refinement, an
    out-of-place `_refinement_need`, a stamp-sized gain copy in `inject`; `f44122c_path`), 16f9d0d (also the renderer's 8-neighbour footprint passes,
    per-parameter gathers and out-of-place ray arithmetic, preprocessing without in-place passes, the CNN unfolded in NCHW; `session_start_path`) and
    592b5db (also every proposal of a sampling round screened at once, one Poisson draw per stamp pixel, one np.median
    per ring in the scoring's preprocessing; `previous_path`), swapped back in from the tests' reference copies;
  * breakdown of one N-injection cell: host draw + load, source sampling (the μ rejection), rendering, injection with
    Poisson noise, scoring (preprocessing + CNN), least CPU time of 4, the paths interleaved;
  * batched: C cells x N injections, 1 thread (`run_cell` per cell, each path, every cell on every path in turn 3
    times, the least CPU time per cell and path), then the engine itself, `run_cells_local`, with 1 worker (CPU time)
    and 2 workers (wall);
  * baseline, same run: one injection at a time (a Python loop per injection: sample, render, inject, score).
Prints injections per CPU-second, the ratios, and the projected time of the spec's full grid, 385 x 200 = 77,000
injections, on an idle 2-core CPU with 2 workers (the goal: < 4 min). `--device cuda` scores on a GPU where there is one.
`--full-grid`: instead, the spec's whole grid itself, 385 cells x --n injections, through `run_cells_local` with 2 workers
(wall clock, worker start-up included), on synthetic hosts spread over all 35 PSF x depth cells (--hosts of them).

    .venv/bin/python bench/injection.py [--quick] [--n 200] [--cells 8] [--checkpoint PATH] [--device cpu]
    .venv/bin/python bench/injection.py --full-grid [--n 200] [--hosts 700] [--workers 2] [--checkpoint PATH]
"""
import argparse
import contextlib
import functools
import os
import time

import numpy as np
import pandas as pd
import torch
from stronglens.config import scratch_dir


def untrained_checkpoint(path):
    "The demo's small CNN, untrained, in the training module's checkpoint format (scoring costs the same)."
    from stronglens.model import build_model, model_config
    from stronglens.train import save_checkpoint, CHECKPOINT_FORMAT
    torch.manual_seed(0)
    m = build_model("small")
    save_checkpoint(dict(format=CHECKPOINT_FORMAT, epoch=0, model=m.state_dict(), model_config=model_config("small"),
                         preprocessing={"mode": "residual", "annulus_r_in_px": 32.5, "annulus_r_out_px": 45.0, "clip": 10.0}), path)
    return path


def inject_per_pixel(hosts, arcs, gain, seed=None):
    "The previous `lensing.inject` (before 20:00 on 2026-11-30): one Poisson draw per pixel of the stamp, in float64."
    h, a = np.asarray(hosts), np.asarray(arcs)
    g = np.asarray(gain, dtype=np.float64)[:, None, None, :]
    lam = np.clip(a.astype(np.float64), 0, None) * g
    noisy = np.where(a > 0, np.random.default_rng(seed).poisson(lam) / g, a)
    return (h.astype(np.float64) + noisy).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _test_module(test_file):
    "tests/<test_file> as a module (loaded once)."
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", test_file)
    spec = importlib.util.spec_from_file_location("_ref_" + test_file[:-3], path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def reference(test_file, name):
    "A previous implementation kept as the reference of a test (tests/<test_file>): the bench times what the test compares."
    return getattr(_test_module(test_file), name)


def _raw_robust_16f9d0d(X, r_in_px=32.5, r_out_px=45.0, clip=10.0):
    "`data.raw_robust` as of 16f9d0d (before its in-place passes): the reference of tests/test_data.py with 16f9d0d's robust stats."
    from stronglens.data import robust_stats
    return reference("test_data.py", "_old_raw_robust")(X, r_in_px, r_out_px, clip, stats=robust_stats)


def _residual_16f9d0d(X, r_in_px=32.5, r_out_px=45.0, clip=10.0):
    "`data.residual` as of 16f9d0d (a subtraction, a clip and a copy, each a new array), likewise."
    from stronglens import data as D
    return reference("test_data.py", "_old_residual")(X, r_in_px, r_out_px, clip, raw=D.raw_robust, profile=D.azimuthal_median_profile)


class _swap:
    "Context: set module attributes, restore them on exit."
    def __init__(self, *triples): self.triples = triples
    def __enter__(self):
        self.saved = [(m, k, getattr(m, k)) for m, k, _ in self.triples]
        for m, k, v in self.triples: setattr(m, k, v)
    def __exit__(self, *exc):
        for m, k, v in self.saved: setattr(m, k, v)


def f44122c_path():
    """Context: the code as of f44122c (03:02, 2026-12-01): the sampler's μ screen with the renderer's per-axis box bound
    and its refinement of every pixel above 1 % of I(R_e) (`_screened_magnification`), `_refinement_need` out of place,
    `inject` copying the gain to stamp size."""
    from stronglens import injection as I, lensing as L
    return _swap((L, "_screened_magnification", reference("test_lensing.py", "f44122c_screen")),
                 (L, "_refinement_need", reference("test_lensing.py", "_old_refinement_need")),
                 (I, "inject", reference("test_lensing.py", "_old_inject")))


def session_start_path():
    """Context: the code as of 16f9d0d (23:20, 2026-11-30): `_footprints` with 8 neighbour passes, `_render_pixels` gathering
    each parameter separately, `_adaptive_box` with a mask and a nonzero per level, out-of-place `_sie_alpha`,
    `_ray_shoot` and `_sersic_eval`, `raw_robust`/`residual` without in-place passes, the CNN unfolded in NCHW
    (`LensScorer.predict`), plus everything `f44122c_path` reverts."""
    from stronglens import injection as I, lensing as L, data as D
    old = ("footprints", "render_pixels", "sie_alpha", "ray_shoot", "sersic_eval", "adaptive_box", "refinement_need")
    return _swap(*[(L, "_" + f, reference("test_lensing.py", "_old_" + f)) for f in old],
                 (L, "_screened_magnification", reference("test_lensing.py", "f44122c_screen")), (I, "inject", reference("test_lensing.py", "_old_inject")),
                 (D, "raw_robust", _raw_robust_16f9d0d), (D, "residual", _residual_16f9d0d), (I, "cpu_inference_model", lambda m: None))


class previous_path:
    """Context: `injection` runs the batched path of 592b5db: every proposal of a sampling round screened at once (the
    sampler verifying each accepted μ itself), one Poisson draw per stamp pixel, and one np.median per ring and over the
    annulus in the scoring's `residual` preprocessing (the references of tests/test_lensing.py and tests/test_data.py),
    plus everything `session_start_path` reverts."""
    def __enter__(self):
        from stronglens import injection as I, data as D
        self.start = session_start_path(); self.start.__enter__()
        eager = reference("test_lensing.py", "_eager_sample_sources")
        self.saved = I.sample_sources, I.inject, D.azimuthal_median_profile, D.robust_stats, D.residual
        I.sample_sources = lambda *a, verify_accepted=True, **k: eager(*a, **k)
        I.inject = inject_per_pixel
        D.azimuthal_median_profile = reference("test_data.py", "_old_azimuthal_median_profile")
        D.robust_stats = reference("test_data.py", "_old_robust_stats")
        D.residual = reference("test_data.py", "_old_residual")
    def __exit__(self, *exc):
        from stronglens import injection as I, data as D
        I.sample_sources, I.inject, D.azimuthal_median_profile, D.robust_stats, D.residual = self.saved
        self.start.__exit__(*exc)


PATHS = {"592b5db": previous_path, "16f9d0d": session_start_path, "f44122c": f44122c_path, "now": contextlib.nullcontext}


def breakdown(cell, ctx, scorer):
    "CPU seconds of each step of one cell, as `run_cell` does them."
    from stronglens import injection as I
    c, t, clock = ctx.cfg, {}, time.process_time
    t0 = clock()
    cs = I.cell_seed(c.seed, cell["i_theta_e"], cell["i_psf"], cell["i_depth"]); s_h, s_l, s_s, s_n = I._streams(cs)
    pool = ctx.hosts[(ctx.hosts.i_psf == cell["i_psf"]) & (ctx.hosts.i_depth == cell["i_depth"])].reset_index(drop=True)
    hosts, X, *_ = I._draw_loadable(pool, c.n_per_cell, s_h, I.HostStamps()); t["hosts (draw + read)"] = clock() - t0
    t0 = clock()
    lens = I.sample_lens(cell["theta_e_lo"], cell["theta_e_hi"], hosts.shape_e1, hosts.shape_e2, np.random.default_rng(s_l), c)
    src = I.sample_source(lens, s_s, ctx.colours, c, verify_accepted=False); t["sampling (μ rejection)"] = clock() - t0
    t0 = clock()
    r = I.render_arcs(lens, src, hosts[["psfsize_g", "psfsize_r", "psfsize_z"]].to_numpy(np.float64), c); t["rendering"] = clock() - t0
    t0 = clock(); stamps = I.inject(X, r.images, gain=I.arc_gain(hosts, c), seed=s_n); t["injection + Poisson"] = clock() - t0
    t0 = clock(); scorer(stamps, None); t["scoring (preprocess + CNN)"] = clock() - t0
    return t, float(src["n_draws"].mean())


def best_breakdown(cell, ctx, scorer, repeats=3):
    "Per step, the least CPU time over `repeats` runs of `breakdown` (the machine is shared: the minimum is the cost)."
    runs = [breakdown(cell, ctx, scorer) for _ in range(repeats)]
    return {k: min(r[0][k] for r in runs) for k in runs[0][0]}, runs[0][1]


def sampling_screen_vs_exact(cell, ctx, repeats=2):
    "CPU seconds of one cell's μ-conditioned source sampling: exact μ for every proposal vs the screened, lazily evaluated sampler (now)."
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


def synthetic_context(a, prefix, n_hosts, seed, psf_range, depth_range):
    "(context, hosts, checkpoint) of synthetic test-split hosts in a scratch folder and the scorer of --checkpoint (else an untrained small CNN)."
    from stronglens import injection as I
    d = scratch_dir(prefix)
    I.synthetic_host_run(d, n=n_hosts, seed=seed, psf_range=psf_range, depth_range=depth_range)
    hosts = I.host_table(pd.read_parquet(f"{d}/manifests/training_manifest.parquet"), pd.read_parquet(f"{d}/manifests/negative_pool.parquet"), d)
    ck = a.checkpoint or untrained_checkpoint(os.path.join(d, "small.pt"))
    spec = {"kind": "checkpoint", "path": ck, "device": a.device, "batch_size": 256}
    return I.CellContext(I.InjectionConfig(n_per_cell=a.n), hosts, I.LENSPOP_SOURCE_COLOURS, spec), hosts, ck


def full_grid(a):
    "The spec's 385-cell grid, --n injections per cell, through the engine with --workers processes: wall-clock time."
    from stronglens import injection as I
    c = I.InjectionConfig()
    ctx, hosts, _ = synthetic_context(a, "bench-inj-grid-", a.hosts, 1, (c.psf_min_arcsec - c.psf_step_arcsec / 2, c.psf_max_arcsec + c.psf_step_arcsec / 2),
                                      (c.depth_min_mag - c.depth_step_mag / 2, c.depth_max_mag + c.depth_step_mag / 2))
    cells = I.grid_cells(ctx.cfg)
    per_cell = hosts[hosts.i_psf >= 0].groupby(["i_psf", "i_depth"]).size()
    print(f"full grid: {len(cells)} cells x {a.n} injections, {a.workers} workers; {len(hosts)} synthetic hosts, {len(per_cell)} of 35 "
          f"PSF x depth cells hosted ({per_cell.min()}-{per_cell.max()} hosts each); load average {os.getloadavg()[0]:.1f} before", flush=True)
    t0 = time.perf_counter()
    res = I.run_cells_local(cells, ctx, n_workers=a.workers, progress=True)
    dt = time.perf_counter() - t0
    n = sum(len(r.injections) for r in res); empty = sum(bool(r.reason) for r in res)
    print(f"full grid: {n:,} injections in {dt:.1f} s wall = {dt / 60:.2f} min ({n / dt:.1f} injections/s; {empty} empty cells; "
          f"load average {os.getloadavg()[0]:.1f} after; the goal: 77,000 in < 4 min on a 2-core CPU)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--n", type=int, default=200, help="injections per cell (spec: 200)")
    ap.add_argument("--cells", type=int, default=8, help="cells in the batched run")
    ap.add_argument("--n-baseline", type=int, default=40, help="injections done one at a time")
    ap.add_argument("--checkpoint", default="", help="trained checkpoint (default: an untrained small CNN)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-grid", action="store_true", help="run the spec's whole 385-cell grid (wall clock) instead")
    ap.add_argument("--hosts", type=int, default=700, help="--full-grid: synthetic hosts over the 35 PSF x depth cells")
    ap.add_argument("--workers", type=int, default=2, help="--full-grid: worker processes")
    a = ap.parse_args()
    if a.full_grid: return full_grid(a)
    if a.quick: a.n, a.cells, a.n_baseline = 40, 4, 10
    from stronglens import injection as I
    from stronglens.mocksky import torch_threads
    ctx, hosts, ck = synthetic_context(a, "bench-inj-", 160, 0, (1.2, 1.7), (23.75, 24.75))
    cfg, spec = ctx.cfg, ctx.scorer
    cells = I.grid_cells(cfg)
    keys = hosts.groupby(["i_psf", "i_depth"]).size().sort_values(ascending=False).index[:4]
    pick = cells[np.array([(p, q) in set(keys) for p, q in zip(cells.i_psf, cells.i_depth)]) & cells.i_theta_e.isin([1, 4, 7, 10]).to_numpy()]
    pick = pick.sort_values(["i_theta_e", "i_psf"]).iloc[::max(1, len(pick) // a.cells)].head(a.cells)
    print(f"{len(pick)} cells x {a.n} injections; hosts: {len(hosts)} synthetic; scorer: {'checkpoint ' + ck if a.checkpoint else 'untrained small CNN'} on {a.device}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    mid = pick.iloc[len(pick) // 2].to_dict()
    bd, draws = {}, 0.0
    with torch_threads(1):
        I.run_cell(pick.iloc[0].to_dict(), ctx, I.make_scorer(spec))          # warm-up: PSF kernels, imports
        for rep in range(2):                                                  # interleaved: the machine's load drifts
            for name, path in PATHS.items():
                with path():
                    scorer = I.make_scorer(spec)                              # (the scorer of that path: unfolded CNN before)
                    t, draws = best_breakdown(mid, ctx, scorer, repeats=2)
                bd[name] = {k: min(v, bd.get(name, {}).get(k, np.inf)) for k, v in t.items()}
    t, tot = bd["now"], sum(bd["now"].values())
    print(f"\none cell (θE {mid['theta_e']}\"), {a.n} injections, 1 thread, CPU s (least of 4): now {tot:.2f} s = {a.n / tot:.1f} "
          f"injections per CPU-second; " + "; ".join(f"{n} path {sum(bd[n].values()):.2f} s ({sum(bd[n].values()) / tot:.2f}x)" for n in PATHS if n != "now")
          + f" ({draws:.1f} μ-proposals per accepted source)")
    for k, v in t.items(): print(f"  {k:28s} {v:6.2f} s  {100 * v / tot:5.1f} %  {1e3 * v / a.n:6.2f} ms/injection   "
                                 + "   ".join(f"{n} {bd[n][k]:6.2f} s ({bd[n][k] / v:4.2f}x)" for n in PATHS if n != "now"))
    with torch_threads(1):
        for th in (1, 4, 10):
            cl = cells[cells.i_theta_e == th].iloc[0].to_dict(); exact, screened = sampling_screen_vs_exact(cl, ctx)
            print(f"  μ-conditioned sampling at θE {cl['theta_e']}\" (CPU s, best of 2): exact μ per proposal {exact:.2f} s, "
                  f"screened + lazy (now) {screened:.2f} s: {exact / screened:.2f}x")
    cpu, per, n_in, scorers = {}, {}, {}, {}
    for name in PATHS:
        with PATHS[name]():
            scorers[name] = I.make_scorer(spec)                               # (the scorer of that path: unfolded CNN before)
    with torch_threads(1):
        for rep in range(3):                  # every cell on every path in turn, 3 times: the machine's load drifts, the least CPU time is the cost
            for i in range(len(pick)):
                for name in PATHS:
                    with PATHS[name]():
                        c0 = time.process_time(); r = I.run_cell(pick.iloc[i].to_dict(), ctx, scorers[name]); dc = time.process_time() - c0
                    per[name, i], n_in[i] = min(per.get((name, i), np.inf), dc), len(r.injections)
    n = sum(n_in.values())
    for name in PATHS:
        dc = sum(per[name, i] for i in range(len(pick))); cpu[name] = n / dc
        print(f"\nbatched, 1 thread, {name} path: {n} injections in {dc:.1f} CPU-s (per cell the least of 3, paths interleaved) = "
              f"{n / dc:.1f} injections per CPU-second")
    print(f"ratio now / f44122c (this session's start): {cpu['now'] / cpu['f44122c']:.2f}x; "
          f"now / 16f9d0d: {cpu['now'] / cpu['16f9d0d']:.2f}x; now / 592b5db: {cpu['now'] / cpu['592b5db']:.2f}x "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    c0 = time.process_time(); res = I.run_cells_local(pick, ctx, n_workers=1, progress=False); dc = time.process_time() - c0
    print(f"the engine itself (run_cells_local, 1 worker, now, one run at this load): {sum(len(r.injections) for r in res)} injections in {dc:.1f} CPU-s = "
          f"{sum(len(r.injections) for r in res) / dc:.1f} injections per CPU-second")
    t0 = time.perf_counter(); res = I.run_cells_local(pick, ctx, n_workers=2, progress=False); dt = time.perf_counter() - t0
    n = sum(len(r.injections) for r in res); rate2 = n / dt
    print(f"batched, 2 workers: {n} injections in {dt:.1f} s wall = {rate2:.1f} injections/s (incl. worker start-up, at this run's load)")
    one = I.CellContext(I.InjectionConfig(n_per_cell=1), hosts, I.LENSPOP_SOURCE_COLOURS, spec)
    with torch_threads(1):
        c0 = time.process_time()
        for k in range(a.n_baseline):
            one.cfg.seed = k; I.run_cell(mid, one, scorer)
        base = a.n_baseline / (time.process_time() - c0)
    print(f"\nbaseline, one injection at a time (1 thread): {base:.1f} injections per CPU-second")
    print(f"ratio batched (now) / one at a time: {cpu['now'] / base:.1f}x; 592b5db batched path / one at a time: {cpu['592b5db'] / base:.1f}x")
    full = 385 * 200
    print(f"\nprojected spec grid, {full:,} injections on an idle 2-core CPU (2 workers, 2 x the CPU-time rate): "
          f"{full / (2 * cpu['now']) / 60:.1f} min now, {full / (2 * cpu['f44122c']) / 60:.1f} min with f44122c's path, {full / (2 * cpu['16f9d0d']) / 60:.1f} min with 16f9d0d's, {full / (2 * cpu['592b5db']) / 60:.1f} min with 592b5db's; "
          f"{full / rate2 / 60:.1f} min at this run's load with 2 workers (goal < 4 min on a 2-core CPU; the original needed ~4 min on a GH200 GPU for half as many)")

if __name__ == "__main__":
    main()

"""Benchmark of the mock DR10 sky: catalog rows/s (build_sky, and the sweep FITS writer alone) and cutouts/s rendered.

    .venv/bin/python bench/mocksky.py [--quick]

Baselines measured in the same run: the sweep writer vs astropy.table.Table.write of the same columns, the batched
renderer vs the same renderer called one cutout at a time, and the renderer with the outer light (PSF wings, Sérsics past 4-8 r_e) vs without (`outer_light=False`)."""
import argparse, os, tempfile, time
from pathlib import Path

import numpy as np
import torch

from stronglens import mocksky as M


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2x2 deg sky, 300 cutouts (default: the 10x5 deg demo sky, 3000 cutouts)")
    ap.add_argument("--n-lenses", type=int, default=None, help="planted lenses (default: configs/demo.yaml's lens_density_scale)")
    ap.add_argument("--threads", type=int, default=0, help="sky.num_threads for build and render (0: keep the config default, 1)")
    a = ap.parse_args()
    # the demo's sky (configs/demo.yaml `sky:`, lens_density_scale 30: ~6,000 lenses on 50 deg²); --quick: 4 deg², 150 lenses
    from stronglens.config import load_config
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").sky
    cfg = M.SkyConfig(ra_max_deg=152.0, dec_max_deg=2.0, n_lenses=150, seed=demo.seed) if a.quick else demo
    if a.n_lenses is not None: cfg.n_lenses = a.n_lenses
    n_cut, n_base = (300, 40) if a.quick else (3000, 150)
    if a.threads: cfg.num_threads = a.threads
    print(f"sky.num_threads: {cfg.num_threads}, torch default threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter(); M.build_sky(cfg, f"{tmp}/sky", progress=False); t_build = time.perf_counter() - t0
        sky = M.MockSky.open(f"{tmp}/sky")
        n_rows = len(sky.sources)
        print(f"build_sky: {n_rows:,} rows, {sky.meta['n_lenses_planted']} lenses in {t_build:.2f} s -> {n_rows / t_build:,.0f} rows/s (everything: catalog, lenses, arcs, files)")
        # sweep writer alone vs astropy Table.write (baseline)
        from astropy.table import Table
        import pandas as pd
        rng = np.random.default_rng(0)
        s = pd.DataFrame({"ra": rng.uniform(150, 155, n_rows), "dec": rng.uniform(0, 5, n_rows), "brickid": 1, "brickname": "1501p001",
                          "objid": np.arange(n_rows), "type": "REX"})
        for c in ("ebv", "maskbits", "shape_r", "sersic", "e1", "e2"): s[c] = 0
        for b in ("g", "r", "z", "w1"): s[f"flux_{b}"] = 1.0; s[f"flux_ivar_{b}"] = 1.0
        for b in "grz":
            for c in ("mw_transmission", "nobs", "psfdepth", "galdepth", "psfsize"): s[f"{c}_{b}"] = 1
        t0 = time.perf_counter(); M.write_sweeps(s, f"{tmp}/w"); t_w = time.perf_counter() - t0
        t0 = time.perf_counter(); Table(M._sources_to_sweep_array(s)).write(f"{tmp}/base.fits", overwrite=True); t_b = time.perf_counter() - t0
        print(f"write_sweeps: {n_rows / t_w:,.0f} rows/s; baseline astropy Table.write {n_rows / t_b:,.0f} rows/s; ratio {t_b / t_w:.2f}x")
        # rendering: pool-like galaxies (z < 20, SER/DEV/REX) with their neighbours, confusers and arcs
        S = sky.sources
        pool = S[S.type.isin(["SER", "DEV", "REX"]) & (S.flux_z > 10 ** (-0.4 * (20 - 22.5)))]
        tg = pool.sample(n_cut, random_state=1, replace=len(pool) < n_cut)
        sky.render(tg.ra.to_numpy()[:20], tg.dec.to_numpy()[:20])            # warm-up
        t0 = time.perf_counter(); X, _ = sky.render(tg.ra.to_numpy(), tg.dec.to_numpy(), seed=0); t_r = time.perf_counter() - t0
        t0 = time.perf_counter(); sky.render(tg.ra.to_numpy(), tg.dec.to_numpy(), seed=0, outer_light=False); t_nw = time.perf_counter() - t0
        print(f"render with outer_light=False (PSF cut at its 63 px square, Sérsics at Tractor's 4-8 r_e: the renderer before): {n_cut / t_nw:,.1f} cutouts/s; "
              f"now {n_cut / t_r:,.1f} cutouts/s; cost of the outer light {t_r / t_nw:.2f}x "
              f"({len(sky._wing_idx):,} of {len(sky.sources):,} sources bright enough to need one)")
        n2 = min(n_cut, 600)
        t0 = time.perf_counter(); sky.render(tg.ra.to_numpy()[:n2], tg.dec.to_numpy()[:n2], seed=0, num_threads=2); t_r2 = time.perf_counter() - t0
        print(f"render with 2 torch threads: {n2 / t_r2:,.1f} cutouts/s ({n2} cutouts)")
        t0 = time.perf_counter()
        for i in range(n_base): sky.render(tg.ra.to_numpy()[i:i + 1], tg.dec.to_numpy()[i:i + 1], seed=0)
        t_1 = (time.perf_counter() - t0) / n_base
        print(f"render (num_threads={sky.num_threads}): {n_cut} cutouts in {t_r:.2f} s -> {n_cut / t_r:,.1f} cutouts/s; baseline one-at-a-time {1 / t_1:,.1f} cutouts/s; ratio {t_1 * n_cut / t_r:.2f}x")
        print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Training throughput (images/s): per-sample NPZ reading vs the packed memory-mapped cache, same run.

    .venv/bin/python bench/train.py [--quick] [--n 1024] [--arch small] [--batch-size 64] [--num-workers 0]
    .venv/bin/python bench/train.py --device cuda --arch resnet --batch-size 512 --num-workers 8   # GPU: AMP + channels_last

Both paths run the same model, optimizer, augmentation and batch size on the same synthetic NPZ cutouts
(written to a temporary folder); the only difference is where the batches come from:
  baseline: torch DataLoader over `data.NPZDataset` (decompress + preprocess one NPZ per sample, every epoch)
  cache:    `data.build_packed_split` once (timed separately), then whole batches from the memory map.
Reported: data-loading-only images/s and training images/s for both, and the ratios cache / NPZ; the time to decide
that an existing cache is still valid (manifest rows + a size/mtime fingerprint of every cutout file, issue 12.2), and
with --fingerprint-files N that decision's file scan for N (empty) files against a per-file os.stat loop.
With --device cuda also: pure GPU compute images/s (batches already on the GPU) for the chosen arch with
bf16 autocast and channels_last, so "data loading is not the bottleneck" can be read off directly.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stronglens.data import (AugmentSpec, Augmenter, NPZDataset, PreprocessSpec, build_packed_split,  # noqa: E402
                             file_fingerprints, resolve_paths, write_synthetic_manifest)
from stronglens.model import build_model, count_parameters  # noqa: E402
from stronglens.train import amp_dtype_for, make_loader, masked_bce, resolve_device  # noqa: E402
from stronglens.config import scratch_dir  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_epoch(loader, model, opt, aug, dev, amp, channels_last, train=True, max_batches=None):
    "Images/s over one pass of `loader` (training step per batch, or loading only when model is None)."
    n, t0, started = 0, None, False
    for b, (x, y, rows) in enumerate(loader):
        if b == 1 and not started:          # first batch is warm-up (worker start, allocator, kernels)
            _sync(dev); t0, n, started = time.perf_counter(), 0, True
        if model is not None:
            x = aug(x.to(dev, non_blocking=True), rows.numpy(), 0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
            loss, _ = masked_bce(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        n += len(x)
        if max_batches and b + 1 >= max_batches:
            break
    _sync(dev)
    if t0 is None:
        raise SystemExit("need at least 2 batches: raise --n or lower --batch-size")
    return n / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run (256 cutouts)")
    p.add_argument("--n", type=int, default=1024, help="number of synthetic NPZ cutouts")
    p.add_argument("--arch", default="small", choices=["small", "resnet"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for both paths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--gpu-steps", type=int, default=50, help="steps of the pure-compute GPU measurement")
    p.add_argument("--fingerprint-files", type=int, default=0, help="also time the cache-key file scan for this many files")
    a = p.parse_args(argv)
    n = 256 if a.quick else a.n
    dev = resolve_device(a.device)
    amp = amp_dtype_for(dev, True)
    cl = dev.type == "cuda"
    torch.manual_seed(0)
    tmp = scratch_dir("bench-train-")
    try:
        t = time.perf_counter()
        man = write_synthetic_manifest(tmp, n=n, seed=0, splits=(1.0, 0.0, 0.0))
        print(f"wrote {n} synthetic NPZ cutouts in {time.perf_counter() - t:.1f} s")
        mp = str(Path(tmp) / "manifests" / "training_manifest.parquet")
        spec = PreprocessSpec()
        print(f"device {dev} (amp {amp}, channels_last {cl}), arch {a.arch} "
              f"({count_parameters(build_model(a.arch)):,d} params), batch {a.batch_size}, workers {a.num_workers}, "
              f"torch threads {torch.get_num_threads()}")

        def fresh():
            torch.manual_seed(0)
            m = build_model(a.arch).to(dev)
            if cl:
                m = m.to(memory_format=torch.channels_last)
            return m.train(), torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
        aug = Augmenter(AugmentSpec(), seed=0)

        # baseline: one NPZ per sample
        npz = NPZDataset(resolve_paths(tmp, man.s3_path), man.label, spec)
        npz_loader = lambda: torch.utils.data.DataLoader(npz, batch_size=a.batch_size, shuffle=True, num_workers=a.num_workers,
                                                         pin_memory=cl, generator=torch.Generator().manual_seed(0))
        load_npz = run_epoch(npz_loader(), None, None, None, dev, amp, cl)
        m, o = fresh()
        train_npz = run_epoch(npz_loader(), m, o, aug, dev, amp, cl)

        # packed cache
        t = time.perf_counter()
        ps = build_packed_split(mp, "train", spec, cache_dir=str(Path(tmp) / "cache"), dtype=a.cache_dtype,
                                n_jobs=max(1, a.num_workers), progress=False, root=tmp)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        again = build_packed_split(mp, "train", spec, cache_dir=str(Path(tmp) / "cache"), dtype=a.cache_dtype, progress=False, root=tmp)
        reuse_s = time.perf_counter() - t
        assert again.path == ps.path
        cache_loader = lambda: make_loader(ps, a.batch_size, seed=0, epoch=1, shuffle=True, num_workers=a.num_workers, pin_memory=cl)
        load_cache = run_epoch(cache_loader(), None, None, None, dev, amp, cl)
        m, o = fresh()
        train_cache = run_epoch(cache_loader(), m, o, aug, dev, amp, cl)

        print(f"cache build (once): {build_s:.2f} s for {len(ps)} cutouts ({len(ps) / build_s:.0f} cutouts/s, {a.cache_dtype}); "
              f"re-use check (key incl. file fingerprints): {reuse_s * 1e3:.0f} ms ({reuse_s / build_s:.1%} of a build)")
        print(f"data loading only  NPZ: {load_npz:9.1f} img/s   cache: {load_cache:9.1f} img/s   ratio {load_cache / load_npz:6.1f}x")
        print(f"training           NPZ: {train_npz:9.1f} img/s   cache: {train_cache:9.1f} img/s   ratio {train_cache / train_npz:6.1f}x")

        if dev.type == "cuda":
            m, o = fresh()
            x = torch.from_numpy(np.asarray(ps.X[:a.batch_size], np.float32)).to(dev)
            y = torch.from_numpy(ps.labels[:a.batch_size].astype(np.float32)).to(dev)
            rows = np.arange(a.batch_size)

            def step():
                with torch.autocast(device_type="cuda", dtype=amp or torch.float32, enabled=amp is not None):
                    logits = m(aug(x, rows, 0).contiguous(memory_format=torch.channels_last))
                loss, _ = masked_bce(logits, y)
                o.zero_grad(set_to_none=True); loss.backward(); o.step()
            for _ in range(5):
                step()
            _sync(dev); t = time.perf_counter()
            for _ in range(a.gpu_steps):
                step()
            _sync(dev)
            gpu = a.gpu_steps * a.batch_size / (time.perf_counter() - t)
            print(f"GPU compute only (batch on device, {amp}, channels_last): {gpu:9.1f} img/s; "
                  f"cache-fed training reaches {train_cache / gpu:.0%} of it")
        if a.fingerprint_files:
            bench_fingerprints(Path(tmp) / "many", a.fingerprint_files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_fingerprints(folder: Path, n: int):
    "Cache-key file scan (`data.file_fingerprints`: one listing per folder) vs a per-file os.stat loop, n empty files."
    import os
    folder.mkdir(parents=True)
    urls = [str(folder / f"g{i:07d}.npz") for i in range(n)]
    for u in urls:
        open(u, "wb").close()
    t = time.perf_counter(); base = [f"{st.st_size}:{st.st_mtime_ns}" for st in map(os.stat, urls)]; t_base = time.perf_counter() - t
    t = time.perf_counter(); fp = file_fingerprints(urls); t_fp = time.perf_counter() - t
    assert list(fp) == base
    print(f"fingerprints of {n} files: file_fingerprints {t_fp:.2f} s, per-file os.stat loop {t_base:.2f} s (ratio {t_base / t_fp:.2f}x)")


if __name__ == "__main__":
    main()

"""Benchmark: what an audit of an external model costs per cutout (CPU seconds), against the in-house scorer.

Scores the same cutouts with the in-house `train.LensScorer` (the baseline, measured in the same run) and with
`audit.ExternalModel` on the checkpoint's TorchScript and ONNX exports and on the checkpoint itself; then the
counterfactual transforms (ring shuffle, core mask) and, on a mock-sky run, the re-render without arcs. Printed as
CPU ms per cutout and as ratios to the baseline; nothing is asserted.

    .venv/bin/python bench/audit.py                  # a synthetic run (report.synthetic_run, small CNN)
    .venv/bin/python bench/audit.py --run runs/demo  # a real run (its checkpoint; the mock re-render too)
"""
import argparse, time

import numpy as np
import pandas as pd

from stronglens import audit as A
from stronglens.config import load_config, read_parquet, resolve_path, url_join
from stronglens.cutouts import read_cutouts
from stronglens.train import LensScorer, export_onnx, export_torchscript
from stronglens.config import scratch_dir


def cpu(fn, *a, **k):
    "(result, process CPU seconds) of one call."
    t0 = time.process_time(); out = fn(*a, **k)
    return out, time.process_time() - t0


def main(run: str | None, n: int):
    d = scratch_dir("bench-audit-")
    if run is None:
        from stronglens.report import synthetic_run
        run = f"{d}/run"; synthetic_run(run, n=max(n, 240), seed=0)
    man = read_parquet(url_join(run, "manifests", "training_manifest.parquet"))
    pos = man[man.label == 1].head(n)
    X, meta, _ = read_cutouts([resolve_path(run, p) for p in man.s3_path.head(n)], progress=False)
    ck = url_join(run, "model", "checkpoints", "best.pt")
    files = {"torchscript": export_torchscript(ck, f"{d}/m.pt"), "onnx": export_onnx(ck, f"{d}/m.onnx"), "checkpoint": ck}
    base, t0 = cpu(LensScorer.from_checkpoint(ck).predict, X)
    rows = [("in-house LensScorer (baseline)", t0, 0.0)]
    for k, f in files.items():
        z, t = cpu(A.ExternalModel(f, batch_size=128), X)
        rows.append((f"ExternalModel {k}", t, float(np.abs(z - base).max())))
    rows.append(("ring shuffle (counterfactual b)", cpu(A.shuffle_rings, X, 0)[1], np.nan))
    rows.append(("core mask (counterfactual c)", cpu(A.mask_core, X, 5.0)[1], np.nan))
    if A.planted_lens_ids(run):
        cfg = load_config(url_join(run, "config.yaml")); planted = pos[pos.galaxy_id.astype(str).isin(A.planted_lens_ids(run))]
        (Xd, ok), t = cpu(A.render_without_arcs, run, cfg, planted)
        rows.append((f"mock re-render without arcs (d), {int(ok.sum())} stamps", t * len(X) / max(int(ok.sum()), 1), np.nan))
    t = pd.DataFrame(rows, columns=["step", "cpu_s", "max_abs_logit_diff"])
    t["ms_per_cutout"] = 1e3 * t.cpu_s / len(X); t["ratio_to_baseline"] = t.cpu_s / t0
    print(f"{len(X)} cutouts from {run}\n" + t.drop(columns="cpu_s").round({"ms_per_cutout": 3, "ratio_to_baseline": 3}).to_string(index=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder with manifests/, cutouts and model/checkpoints/best.pt (default: a synthetic run)")
    ap.add_argument("--n", type=int, default=256, help="cutouts to score")
    a = ap.parse_args(); main(a.run, a.n)

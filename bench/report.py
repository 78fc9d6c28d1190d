"""Benchmark: the `report` stage on a synthetic run, step by step (CPU seconds), and the figure writer against its baseline.

Steps of `stronglens.report.build_report`: load the run, the scored table (strata, tiers, categories), the detection
threshold, tables 1–6 (the bootstraps), figures 1–8 (drawing), saving them (PNG 200 dpi + PDF with TrueType fonts), the
headline numbers and the page. Baseline, measured in the same run: saving the same figures with
`bbox_inches="tight"` (what the first version did: one extra draw per file). Printed as ratios; nothing is asserted.

    .venv/bin/python bench/report.py [--n 400]
"""
import argparse, io, time

from stronglens import figures as F
from stronglens import report as R
from stronglens.config import scratch_dir


def cpu(fn, *a, **k):
    "(result, process CPU seconds) of one call."
    t0 = time.process_time(); out = fn(*a, **k)
    return out, time.process_time() - t0


def save_all(figs, out_dir, tight: bool) -> float:
    "CPU seconds to write every figure as PNG + PDF (with or without bbox_inches='tight')."
    t0 = time.process_time()
    for name, f in figs.items():
        for fmt in ("png", "pdf"):
            buf = io.BytesIO()
            with F.paper_style():
                f.savefig(buf, format=fmt, dpi=200, metadata={"CreationDate": None} if fmt == "pdf" else {},
                          **({"bbox_inches": "tight"} if tight else {}))
    return time.process_time() - t0


def main(n: int):
    d = scratch_dir("bench-report-")
    R.synthetic_run(d, n=n, seed=0)
    cfg = R.ReportConfig()
    inp, t_load = cpu(R.load_report_inputs, d)
    sc, t_sc = cpu(R.scored_table, inp, cfg)
    th, t_th = cpu(R.detection_threshold, sc, cfg, inp.closure)
    tabs, t_tab = cpu(R.report_tables, inp, sc, th, cfg)
    (figs, extra), t_fig = cpu(R.report_figures, inp, sc, th, tabs, cfg)
    hl, t_hl = cpu(R.headline_numbers, sc, th, cfg)
    t_save = save_all(figs, d, tight=False)
    t_tight = save_all(figs, d, tight=True)
    _, t_total = cpu(R.build_report, inp, f"{d}/report", cfg, log=lambda m: None)
    rows = [("load run", t_load), ("scored table", t_sc), ("threshold", t_th), ("tables 1-6", t_tab), ("figures 1-8 (draw)", t_fig),
            ("headline numbers", t_hl), ("save figures (png+pdf)", t_save)]
    print(f"synthetic run: {n} manifest rows, {int((sc.split == 'test').sum())} in the evaluation split")
    for k, v in rows: print(f"  {k:26s} {v:7.2f} s CPU")
    print(f"  {'build_report, end to end':26s} {t_total:7.2f} s CPU")
    r = t_tight / max(t_save, 1e-9)
    print(f"save: bbox_inches='tight' (baseline) {t_tight:.2f} s vs constrained layout only {t_save:.2f} s: "
          f"baseline/ours = {r:.2f}x" + (" (no gain beyond noise)" if abs(r - 1) < 0.1 else ""))
    print(f"share of build_report spent saving PNG+PDF: {t_save / max(t_total, 1e-9):.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="manifest rows of the synthetic run")
    main(ap.parse_args().n)

"""Resume decisions at scale (issue 12.10): how long does a rerun take to decide what to skip, for N existing cutouts?

Baseline (the pre-issue-12 check, reimplemented here): list the folder, then read and decompress every NPZ in one
thread and compare its stored galaxy id (1.8 ms a file: ~12 minutes per resume at 400k).
New:
  1. the stage protocol's decision for a finished stage (`stronglens.runs.plan_stage`: upstream markers, one
     `os.scandir`/stat pass compared with the recorded fingerprint table; no file is opened), and the fingerprinting
     a stage does once when it finishes;
  2. the cutouts runner's item-level resume check (`cutoutsource.existing_cutouts`: one listing, file sizes).
Files: `--templates` distinct real cutouts (spec §1 NPZ, mock noise) hard-linked to N names, so 10^5 files cost no
disk; the decompression work per file is the real one (a warm page cache, the baseline's best case).

    python bench/resume.py                 # N = 100,000 (goal: decide in < 10 s, i.e. < 1 min at 400k)
    python bench/resume.py --n 20000 --baseline-sample 2000
"""
import argparse, os, random, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd
from stronglens.config import config_from_dict, get_fs
from stronglens.cutouts import write_cutout, read_cutout, CutoutError
from stronglens.runs import stage_run, plan_stage, read_marker, STAGES


def old_existing_valid(dests, gids) -> np.ndarray:
    "The resume check before issue 12: one listing, then every listed NPZ read, decompressed and its galaxy id compared."
    keep = np.zeros(len(dests), bool)
    parents = [u.rsplit("/", 1)[0] for u in dests]
    listed = {}
    for p in set(parents):
        fs, path = get_fs(p)
        listed[p] = {str(x).rstrip("/").rsplit("/", 1)[-1] for x in fs.ls(path, detail=False)}
    for i, (u, p, g) in enumerate(zip(dests, parents, gids)):
        if u.rsplit("/", 1)[-1] not in listed[p]: continue
        try:
            _, m = read_cutout(u, strict=False)
            keep[i] = m.get("galaxy_id") == str(g)
        except (CutoutError, OSError):
            keep[i] = False
    return keep


def make_run(root: Path, n: int, n_templates: int, seed: int = 0):
    "A run folder whose sky and catalogs stages are done (toy outputs) and whose cutouts stage holds n NPZ files."
    cfg = config_from_dict({"run": {"seed": 1}, "sky": {}, "cutouts": {}})
    quiet = lambda *_: None
    for s in ("sky", "catalogs"):
        with stage_run(root, s, cfg, log=quiet) as st:
            Path(st.path("x.txt")).write_text(s)
    rng = np.random.default_rng(seed)
    tdir = root.parent / "templates"; tdir.mkdir(exist_ok=True)
    templates = []
    for k in range(n_templates):
        img = (rng.normal(0, 0.01, (101, 101, 3)) + 0.05 * np.exp(-((np.indices((101, 101)) - 50) ** 2).sum(0) / 50)[..., None]).astype(np.float32)
        meta = {"galaxy_id": f"tmpl_{k}", "ra": 150.0 + k * 1e-3, "dec": 1.0, "type": "SER", "nobs_z": 3, "psfsize_z": 1.2,
                "psfdepth_z": 500.0, "flux_r": 3.0, "source": "bench"}
        try: write_cutout(str(tdir / f"tmpl_{k}.npz"), img, meta)
        except Exception:   # a meta schema that asks for other keys: fall back to the minimal one
            write_cutout(str(tdir / f"tmpl_{k}.npz"), img, {"galaxy_id": f"tmpl_{k}"})
        templates.append(tdir / f"tmpl_{k}.npz")
    gids = [f"1234p{i // 1000:03d}_{i}" for i in range(n)]
    t0 = time.perf_counter()
    with stage_run(root, "cutouts", cfg, log=quiet) as st:
        out = Path(st.out)
        t_link = time.perf_counter()
        for i, g in enumerate(gids): os.link(templates[i % n_templates], out / f"{g}.npz")
        t_link = time.perf_counter() - t_link
    t_finish = time.perf_counter() - t0 - t_link
    return cfg, [str(Path(st.out) / f"{g}.npz") for g in gids], gids, t_finish


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="existing NPZ files")
    ap.add_argument("--templates", type=int, default=64, help="distinct NPZ files behind the hard links")
    ap.add_argument("--baseline-sample", type=int, default=0, help="time the baseline on this many files and scale (0 = all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run folder")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        run = tmp / "run"
        cfg, dests, gids, t_finish = make_run(run, a.n, a.templates)
        m = read_marker(run, STAGES["cutouts"])
        mib = sum(os.path.getsize(d) for d in dests[:a.templates]) / a.templates * a.n / 2**20
        print(f"N = {a.n:,} NPZ files ({mib / 1024:.1f} GiB apparent; content-hashed at finish: "
              f"{'no, size+mtime' if m['outputs']['digest'] and (pd.read_parquet(run / 'cutouts' / '_stage_files.parquet').digest == '').all() else 'yes'})")
        print(f"stage finish (fingerprint {a.n:,} files, write table + marker): {t_finish:8.2f} s")
        plan_stage(run, "cutouts", cfg)                                   # warm the listing, as a real resume would be
        t = time.perf_counter(); p = plan_stage(run, "cutouts", cfg); t_plan = time.perf_counter() - t
        assert p.action == "skip", p
        os.unlink(dests[123])
        t = time.perf_counter(); p2 = plan_stage(run, "cutouts", cfg); t_plan_miss = time.perf_counter() - t
        assert p2.action == "resume" and "1 missing" in p2.reasons[0], p2
        print(f"protocol decision, finished stage -> skip:           {t_plan:8.2f} s")
        print(f"protocol decision, one file deleted -> resume:      {t_plan_miss:8.2f} s")
        try:
            from stronglens.cutoutsource import existing_cutouts
            t = time.perf_counter(); ok = existing_cutouts(dests); t_items = time.perf_counter() - t
            assert int(ok.sum()) == a.n - 1
            print(f"runner item check (existing_cutouts, sizes):        {t_items:8.2f} s")
        except ImportError:
            t_items = None
            print("runner item check: stronglens.cutoutsource.existing_cutouts not available")
        k = a.baseline_sample or a.n
        idx = sorted(random.Random(0).sample(range(a.n), k)) if k < a.n else range(a.n)
        t = time.perf_counter(); keep = old_existing_valid([dests[i] for i in idx], [gids[i] for i in idx]); t_old = time.perf_counter() - t
        t_old_n = t_old * a.n / k
        print(f"baseline (decompress every NPZ, one thread):        {t_old_n:8.2f} s" + (f"  (measured on {k:,}, scaled)" if k < a.n else "")
              + f"  [{1e3 * t_old / k:.2f} ms/file; it kept {int(keep.sum())} since hard links carry a template's id]")
        print(f"ratio baseline / protocol decision: {t_old_n / t_plan:7.1f}x" +
              (f";  baseline / runner item check: {t_old_n / t_items:7.1f}x" if t_items else ""))
        print(f"at 400k files (linear): protocol {t_plan * 4e5 / a.n:6.1f} s, baseline {t_old_n * 4e5 / a.n / 60:6.1f} min")
    finally:
        if not a.keep: shutil.rmtree(tmp, ignore_errors=True)
        else: print("kept", tmp)


if __name__ == "__main__":
    sys.exit(main())

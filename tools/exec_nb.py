#!/usr/bin/env python
"""Execute module notebooks in place so that their outputs (plots, tables, galleries) are committed, then clean them.

  .venv/bin/python tools/exec_nb.py nbs/04_lensing.ipynb [more.ipynb ...]   # or: make outputs NB=nbs/04_lensing.ipynb

Cells run with the notebook's folder as working directory (as `nbdev_test` does), slow cells included, with tqdm's
progress bars off (TQDM_DISABLE=1, and an IPython startup file that disables also the bars made with disable=False)
and tqdm.auto's 'IProgress not found' warning silenced: committed outputs show results, not progress lines. A
notebook that raises is left unchanged and reported (exit 1). `nbdev_clean` then strips volatile metadata and keeps
the outputs.
"""
import os, subprocess, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

BIN = Path(sys.executable).parent

# IPython startup file of the executing kernels: every tqdm bar off, also those created with an explicit
# `disable=not progress` (TQDM_DISABLE only changes tqdm's default), so committed outputs carry no progress lines.
NO_PROGRESS = """import tqdm.std as _t
_init = _t.tqdm.__init__
def _quiet_init(self, *args, **kwargs):
    kwargs["disable"] = True
    _init(self, *args, **kwargs)
_t.tqdm.__init__ = _quiet_init
"""

def quiet_ipython_dir() -> str:
    "A temporary IPYTHONDIR whose default profile turns tqdm off at kernel start."
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="exec-nb-ipython-"))
    (d / "profile_default" / "startup").mkdir(parents=True)
    (d / "profile_default" / "startup" / "00-no-progress.py").write_text(NO_PROGRESS)
    return str(d)

def run(path: Path, timeout: int = 1800) -> str | None:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as e:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:300]}"
    nbformat.write(nb, path)
    subprocess.run([str(BIN / "nbdev_clean"), "--fname", str(path)], check=True)
    print(f"{path}: executed in {time.time() - t0:.0f} s")
    return None

if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["TQDM_DISABLE"] = "1"        # no progress bars in committed outputs (tqdm reads TQDM_* as its defaults)
    os.environ["IPYTHONDIR"] = quiet_ipython_dir()                   # ... and for bars made with disable=False
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))   # tqdm.auto without ipywidgets
    bad = [(p, e) for p in map(Path, sys.argv[1:]) if (e := run(p))]
    for p, e in bad: print(f"{p}: FAILED, left unchanged: {e}", file=sys.stderr)
    sys.exit(1 if bad else 0)

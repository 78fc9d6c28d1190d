"""The documentation site (`make docs` = tools/build_docs.py): it renders from the committed notebooks without
executing them, passes its own link check, works offline (no remote script, style or image; MathJax vendored), and
the home page and the audit tutorial open in headless Chromium with every image loaded and the math typeset (a
screenshot is taken). Skips the browser checks with a message where Chromium cannot run."""
import importlib.util, os, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const imgs = [...document.images];
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length);
  document.body.setAttribute("data-math", document.querySelectorAll(".MathJax, .MathJax_Display, .MathJax_SVG").length);
  document.body.setAttribute("data-matherr", document.querySelectorAll(".MathJax_Error, merror").length);
}, 4000));</script></body>"""


def _build_docs_module():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "_docs"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--no-readme", "--out", str(out)],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
    return out, r


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name): return shutil.which(name)
    pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium); the browser checks cannot run here")


def _chrome(args, tmp_path, timeout=180):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    try: return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": str(tmp_path)})
    except (OSError, subprocess.TimeoutExpired) as e: pytest.skip(f"Chromium could not run here: {e}")


def _probe(page: Path, tmp_path) -> dict:
    "Images, broken images, typeset formulas and MathJax errors of `page` once loaded, read back from the DOM."
    probe = page.with_name(".probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE))
    try: r = _chrome(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()], tmp_path)
    finally: probe.unlink()
    m = re.search(r'data-images="(\d+)" data-broken="(\d+)" data-math="(\d+)" data-matherr="(\d+)"', r.stdout)
    assert m, f"no probe result in Chromium's DOM dump (rc {r.returncode}): {r.stderr[-800:]}"
    return dict(zip(("images", "broken", "math", "math_errors"), map(int, m.groups())))


def test_site_builds_without_broken_links(site):
    out, r = site
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for page in ("index.html", "api.html", "tutorials/getting_started.html", "tutorials/audit_external_finder.html",
                 "19_audit.html", "20_scaleout.html", "15_calibration.html"):
        assert (out / page).is_file(), page
    assert (out / "mathjax" / "MathJax.js").is_file() and (out / "mathjax" / "config" / "stronglens.js").is_file()
    for page in ("tutorials/audit_external_finder.html", "19_audit.html"):          # outputs as text, not their line lists
        assert not re.search(r"(\['<div>\\n', |<pre>\['[^'\n]*\\n'[,\]])", (out / page).read_text()), page


def test_site_is_offline(site):
    out, _ = site
    for p in out.glob("*.html"):
        html = p.read_text()
        assert not re.search(r'<(script|link|img)\b[^>]*(src|href)="https?://', html), p.name
        assert "cdnjs" not in html and "require.min.js" not in html, p.name


def test_api_reference_lists_and_links_the_audit_functions(site):
    out, _ = site
    api = (out / "api.html").read_text()
    for name in ("run_audit_stage", "check_external_scores", "ExternalModel", "run_spark_stage", "bootstrap_ci"):
        assert re.search(rf'href="[^"]+#{name}"', api), name
    assert 'id="run_audit_stage"' in (out / "19_audit.html").read_text()


def test_link_check_catches_a_broken_image_and_a_remote_script(site, tmp_path):
    "The check can fail: a copy of a page with a missing image and a CDN script is reported twice."
    out, _ = site
    bd = _build_docs_module()
    bad = tmp_path / "copy"; shutil.copytree(out, bad, ignore=shutil.ignore_patterns("mathjax"))
    (bad / "mathjax").mkdir(); (bad / "mathjax" / "MathJax.js").write_text("")
    p = bad / "19_audit.html"
    p.write_text(p.read_text().replace("</body>", '<img src="figures/none.png"><script src="https://cdn.example/x.js"></script></body>'))
    probs = bd.check_site(bad)
    assert any("figures/none.png" in x for x in probs) and any("remote script" in x for x in probs), probs


@pytest.mark.parametrize("page, min_images, math", [("index.html", 0, False), ("tutorials/audit_external_finder.html", 3, False),
                                                   ("15_calibration.html", 1, False), ("19_audit.html", 1, True)])
def test_pages_open_in_chromium_with_images_and_math(site, tmp_path, page, min_images, math):
    "Every image loads; no MathJax error; a page with equations (19_audit: the drop fraction) has them typeset offline."
    out, _ = site
    s = _probe(out / page, tmp_path)
    assert s["broken"] == 0 and s["images"] >= min_images, s
    assert s["math_errors"] == 0, s
    if math: assert s["math"] > 0, s


def test_screenshot_of_the_tutorial_shows_its_figures(site, tmp_path):
    from PIL import Image
    out, _ = site
    shot = tmp_path / "tutorial.png"
    r = _chrome(["--window-size=1280,2400", "--virtual-time-budget=15000", f"--screenshot={shot}",
                 (out / "tutorials" / "audit_external_finder.html").as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 50_000, r.stderr[-500:]
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape[:2] == (2400, 1280)
    nav = im[:, :250]; assert (np.abs(nav - [0xF6, 0xF7, 0xF9]).sum(-1) <= 6).mean() > 0.5     # the sidebar is drawn
    assert (np.abs(np.diff(im[:, 260:], axis=1)).sum(-1) > 60).sum() > 10_000                    # text and figures


def test_executed_notebooks_keep_no_progress_bars(tmp_path):
    "tools/exec_nb.py (how module notebooks get their committed outputs) runs them without tqdm bars or the IProgress warning."
    import json, nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor i in tqdm(range(3), desc='working'): pass\n"
                                        "for j in tqdm(range(2), desc='explicit', disable=False): pass\nprint('result', i, j)")]
    nbformat.write(nb, tmp_path / "t.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "PYTHONWARNINGS")}
    subprocess.run([sys.executable, str(ROOT / "tools" / "exec_nb.py"), str(tmp_path / "t.ipynb")], check=True, env=env, timeout=300)
    out = json.dumps(json.loads((tmp_path / "t.ipynb").read_text())["cells"][0]["outputs"])
    assert "result 2 1" in out
    assert "working" not in out and "explicit" not in out and "it/s" not in out and "IProgress" not in out, out


def test_committed_notebooks_carry_no_build_machine_noise():
    "No committed notebook output shows tqdm's IProgress warning or a path into the build machine's virtualenv (the docs would show them)."
    import json
    bad = []
    for f in sorted((ROOT / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in f.parts: continue
        for i, c in enumerate(json.loads(f.read_text())["cells"]):
            text = json.dumps(c.get("outputs", []))
            if "TqdmWarning" in text or "IProgress not found" in text or "/.venv/lib/" in text:
                bad.append(f"{f.relative_to(ROOT)} cell {i}")
    assert not bad, "re-execute with tools/exec_nb.py (or drop the warning output): " + ", ".join(bad)

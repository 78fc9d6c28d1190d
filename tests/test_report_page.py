"""The report page in headless Chromium (Debian's `chromium`): it opens, a screenshot is taken, no image is broken, and
a failed gate is rendered in red at the top. Skips with a message where Chromium is not installed."""
import os, re, shutil, subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stronglens.report import ReportConfig, build_report, load_report_inputs, synthetic_run

PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length);
});</script></body>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name): return shutil.which(name)
    pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium); the page test cannot run here")


def _run_chromium(args, tmp_path, timeout=120) -> subprocess.CompletedProcess:
    exe = _chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": str(tmp_path)})


def _image_status(page: Path, tmp_path) -> tuple[int, int]:
    "(images, broken images) of `page` once loaded, read back from the DOM Chromium dumps."
    probe = page.with_name(".probe-" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE))
    try:
        r = _run_chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    finally:
        probe.unlink()
    m = re.search(r'data-images="(\d+)" data-broken="(\d+)"', r.stdout)
    assert m, f"no probe result in Chromium's DOM dump (rc {r.returncode}): {r.stderr[-500:]}"
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def leaky_page(tmp_path_factory):
    d = tmp_path_factory.mktemp("leaky-run")
    synthetic_run(str(d), n=160, seed=2, leak=True)
    build_report(load_report_inputs(str(d)), str(d / "report"), ReportConfig(), log=lambda m: None)
    return d / "report" / "index.html"


def test_page_opens_with_every_image(leaky_page, tmp_path):
    n, broken = _image_status(leaky_page, tmp_path)
    assert (n, broken) == (8, 0)


def test_broken_image_is_detected(leaky_page, tmp_path):
    "The probe can fail: the same page with one missing image reports it."
    bad = leaky_page.with_name("broken.html")
    bad.write_text(leaky_page.read_text().replace("<h2>", '<img src="figures/no-such-figure.png" alt="missing"><h2>', 1))
    try:
        assert _image_status(bad, tmp_path) == (9, 1)
    finally:
        bad.unlink()


def test_screenshot_shows_the_alert_in_red_at_the_top(leaky_page, tmp_path):
    shot = tmp_path / "page.png"
    r = _run_chromium(["--window-size=1280,2400", f"--screenshot={shot}", leaky_page.as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 50_000, r.stderr[-500:]
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape[:2] == (2400, 1280)
    alert_bg = np.all(np.abs(im - [0xFD, 0xEC, 0xEE]) <= 2, axis=-1)       # .alert background (#fdecee)
    alert_bar = np.all(np.abs(im - [0xB0, 0x00, 0x20]) <= 2, axis=-1)      # its red left border (#b00020)
    rows = np.flatnonzero(alert_bg.any(axis=1) & alert_bar.any(axis=1))
    assert len(rows) > 20 and rows.min() < 300, "the red alert is not rendered near the top of the page"
    figure_px = (np.abs(np.diff(im, axis=1)).sum(-1) > 60).sum()           # figures and text: lots of edges
    assert figure_px > 10_000

"""Cutout generation throughput (cutouts/s).

1. Mock renderer -> NPZ files with `generate_cutouts`, 1 and 2 processes (ratio vs 1 process). Uses the mock sky
   (`stronglens.mocksky`) when it is available — `--sky DIR` for an existing sky folder, otherwise a small sky is
   built in a temp folder — else a stand-in Gaussian renderer (labelled as such).
2. HTTP client (`LegacySurveyCutoutService.fetch`) against a local threaded server on 127.0.0.1 that serves
   101x101x3 FITS cutouts with a fixed service latency, at concurrency 1, 4, 16 (ratio vs concurrency 1), next to
   the server's own ceiling measured with bare GETs (no parsing) at concurrency 16.

    .venv/bin/python bench/cutouts.py [--quick] [--sky DIR] [--latency-ms 20]
"""
import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd

from stronglens import cutoutsource as S


class GaussianRenderer:
    "Stand-in renderer when the mock sky is unavailable: Gaussian galaxy + seeded noise."
    def render(self, ra_deg, dec_deg, seed=0):
        rng = np.random.default_rng(seed)
        r2 = ((np.indices((101, 101)) - 50.0) ** 2).sum(0)
        X = np.exp(-r2 / 30.0)[None, ..., None] * np.array([0.3, 0.6, 1.0]) + rng.normal(0, 0.01, (len(ra_deg), 101, 101, 3))
        return X.astype(np.float32), None


def mock_source(sky_dir, tmp):
    try:
        from stronglens import mocksky
    except ImportError:
        return S.MockSkySource(renderer=GaussianRenderer(), seed=1), "stand-in Gaussian renderer (no stronglens.mocksky)", None
    if sky_dir is None:
        sky_dir = os.path.join(tmp, "sky")
        t = time.perf_counter()
        cfg = mocksky.SkyConfig(ra_min_deg=150.0, ra_max_deg=151.0, dec_min_deg=0.0, dec_max_deg=1.0, n_lenses=30)
        mocksky.build_sky(cfg, sky_dir, progress=False)
        print(f"built a 1 deg² mock sky (demo density) in {time.perf_counter() - t:.1f} s")
    sky = mocksky.MockSky.open(sky_dir)
    return S.MockSkySource(sky_dir, seed=1), f"mock sky {sky_dir}", sky


def sky_targets(sky, n, seed=0):
    "n target positions: real sources of the mock sky when possible, else random positions in a 5x5 deg box."
    rng = np.random.default_rng(seed)
    if sky is not None:
        for attr in ("catalog", "sources", "tractor"):
            cat = getattr(sky, attr, None)
            if isinstance(cat, pd.DataFrame) and len(cat):
                cols = {c.lower(): c for c in cat.columns}
                if "ra" in cols and "dec" in cols:
                    sel = cat.iloc[rng.choice(len(cat), size=min(n, len(cat)), replace=False)]
                    return pd.DataFrame({"galaxy_id": [f"bench_{i}" for i in range(len(sel))],
                                         "ra": sel[cols["ra"]].to_numpy(float), "dec": sel[cols["dec"]].to_numpy(float)})
    return pd.DataFrame({"galaxy_id": [f"bench_{i}" for i in range(n)], "ra": rng.uniform(150, 155, n),
                         "dec": rng.uniform(0, 5, n)})


def bench_mock(n, sky_dir):
    with tempfile.TemporaryDirectory() as tmp:
        src, label, sky = mock_source(sky_dir, tmp)
        t = sky_targets(sky, n)
        print(f"[mock] source: {label}; {len(t)} targets")
        rates = {}
        for w in (1, 2):
            out = os.path.join(tmp, f"out{w}")
            t0 = time.perf_counter()
            f = S.generate_cutouts(t, src, out, n_workers=w, batch_size=min(96, max(8, len(t) // (2 * w))), progress=False)
            dt = time.perf_counter() - t0
            rates[w] = (len(t) - len(f)) / dt
            print(f"[mock] generate_cutouts n_workers={w}: {rates[w]:7.1f} cutouts/s ({len(t) - len(f)} written, "
                  f"{len(f)} failed, {dt:.2f} s incl. pool start-up)" + (f"  ratio vs 1 process {rates[w] / rates[1]:.2f}x" if w > 1 else ""))
        print(f"[mock] time for 5000 demo cutouts at the 2-process rate: {5000 / rates[2]:.0f} s")


class _Server(ThreadingHTTPServer):
    request_queue_size = 256          # the default backlog (5) drops connections under 16-way concurrency
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""; latency_s = 0.0
    def log_message(self, *a): pass
    def do_GET(self):
        time.sleep(self.latency_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def bench_http(n, latency_ms):
    rng = np.random.default_rng(0)
    _Handler.body = S.cube_to_fits_bytes(rng.normal(0, 0.01, (101, 101, 3)).astype(np.float32))
    _Handler.latency_s = latency_ms / 1000
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/viewer/fits-cutout"
    t = pd.DataFrame({"galaxy_id": [f"h{i}" for i in range(n)], "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-20, 20, n)})
    print(f"[http] local server, {latency_ms:.0f} ms service latency, {len(_Handler.body)} B FITS; {n} requests per run")
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        get = lambda i: opener.open(f"{base}?i={i}", timeout=10).read()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(get, range(32)))                     # warm-up
            t0 = time.perf_counter()
            list(ex.map(get, range(n)))
        ceiling = n / (time.perf_counter() - t0)
        print(f"[http] server ceiling (bare GETs, 16 threads, no parsing): {ceiling:7.1f} req/s")
        rates = {}
        for c in (1, 4, 16):
            src = S.LegacySurveyCutoutService(base_url=base, concurrency=c, rate_limit_per_s=0, timeout_s=10, max_retries=0)
            m = n if c > 1 else max(20, n // 4)
            t0 = time.perf_counter()
            res = src.fetch(t.iloc[:m])
            dt = time.perf_counter() - t0
            assert all(r.ok for r in res), [r.reason for r in res if not r.ok][:3]
            rates[c] = m / dt
            print(f"[http] client concurrency={c:2d}: {rates[c]:7.1f} cutouts/s  ratio vs concurrency 1 "
                  f"{rates[c] / rates[1]:5.2f}x, {rates[c] / ceiling:.0%} of the server ceiling")
    finally:
        srv.shutdown(); srv.server_close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sky", default=None, help="existing mock sky folder")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    a = ap.parse_args(argv)
    bench_mock(60 if a.quick else 400, a.sky)
    bench_http(80 if a.quick else 400, a.latency_ms)
    print(f"(cores on this machine: {os.cpu_count()})")


if __name__ == "__main__":
    sys.exit(main())

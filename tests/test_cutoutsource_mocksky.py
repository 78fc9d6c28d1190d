"""Cutout sources against the real mock sky (stronglens.mocksky): the mock source writes exactly what
`MockSky.render` returns, batching does not change a byte, and the HTTP client fed by a local service that
serves FITS rendered from the mock sky delivers the same pixels."""
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stronglens import cutouts as C
from stronglens import cutoutsource as S

M = pytest.importorskip("stronglens.mocksky")
sys.path.insert(0, str(Path(__file__).parent))
from test_cutoutsource import FakeService   # noqa: E402


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    d = tmp_path_factory.mktemp("sky")
    cfg = M.SkyConfig(ra_min_deg=150.0, ra_max_deg=150.5, dec_min_deg=0.0, dec_max_deg=0.5, density_scale=0.2, n_lenses=3)
    M.build_sky(cfg, str(d), progress=False)
    return str(d), M.MockSky.open(str(d))


def _targets(sky_obj, n=24, seed=0):
    s = sky_obj.sources.sample(n, random_state=seed)
    return pd.DataFrame({"galaxy_id": (s.brickname + "_" + s.objid.astype(str)).to_numpy(),
                         "ra": s.ra.to_numpy(float), "dec": s.dec.to_numpy(float)})


def _npz(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).glob("*.npz"))}


def test_mock_source_equals_render(tmp_path, sky):
    sky_dir, sk = sky
    t = _targets(sk)
    outside = pd.DataFrame({"galaxy_id": ["far_away"], "ra": [10.0], "dec": [-40.0]})
    t2 = pd.concat([t.iloc[:5], outside, t.iloc[5:]], ignore_index=True)
    src = S.MockSkySource(sky_dir, seed=4)
    f = S.generate_cutouts(t2, src, str(tmp_path / "a"), batch_size=7, progress=False)
    assert list(f.galaxy_id) == ["far_away"] and f.stage[0] == "render" and "outside the mock sky footprint" in f.reason[0]
    S.generate_cutouts(t, src, str(tmp_path / "b"), batch_size=100, progress=False)
    a, b = _npz(tmp_path / "a"), _npz(tmp_path / "b")
    assert len(a) == len(t) and a == b                                   # batching changes nothing
    one = [sk.render(t.ra.to_numpy()[i:i + 1], t.dec.to_numpy()[i:i + 1], seed=4) for i in range(len(t))]   # the renderer,
    X, meta = np.concatenate([x for x, _ in one]), pd.concat([m for _, m in one], ignore_index=True)       # one cutout per call
    for i, g in enumerate(t.galaxy_id):
        arr, m = C.read_cutout(tmp_path / "a" / C.cutout_filename(g))
        np.testing.assert_array_equal(arr, X[i])
        assert m["type"] == meta.type[i] and m["nobs_z"] == meta.nobs_z[i]
        assert m["psfsize_z"] == pytest.approx(float(meta.psfsize_z[i]))
        assert m["download_timestamp"] == S.MOCK_TIMESTAMP and "seed=4" in m["cutout_url"]


def test_http_client_with_mock_sky_service(tmp_path, sky):
    sky_dir, sk = sky
    t = _targets(sk, n=10, seed=1)
    render = lambda ra, dec: sk.render([ra], [dec], seed=0)[0][0]
    modes = {ra: ("500_then_ok" if i % 3 == 0 else "ok") for i, ra in enumerate(t.ra)}
    modes[t.ra.iloc[-1]] = "badshape"
    with FakeService(modes, image_fn=render) as fake:
        src = S.LegacySurveyCutoutService(base_url=fake.base_url, concurrency=3, rate_limit_per_s=0, timeout_s=10,
                                          max_retries=2, backoff_base_s=0.02)
        f = S.generate_cutouts(t, src, str(tmp_path), progress=False)
    assert list(f.galaxy_id) == [t.galaxy_id.iloc[-1]] and "wrong shape (3, 100, 101)" in f.reason[0]
    for g, ra, dec in zip(t.galaxy_id[:-1], t.ra[:-1], t.dec[:-1]):
        arr, m = C.read_cutout(tmp_path / C.cutout_filename(g))
        np.testing.assert_array_equal(arr, render(float(f"{ra:.7f}"), float(f"{dec:.7f}")))
    assert not (tmp_path / C.cutout_filename(t.galaxy_id.iloc[-1])).exists()

"""The cutout stage on Spark writes the same files and the same failures table as the local engine."""
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark")
from pyspark import cloudpickle   # PySpark ships its own copy; register with that one

from stronglens import cutouts as C
from stronglens import cutoutsource as S
from stronglens.spark_cutouts import generate_cutouts_spark

sys.path.insert(0, str(Path(__file__).parent))
import test_cutoutsource as T   # ToyRenderer, FakeService

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def spark():
    from stronglens.spark import spark_session
    cloudpickle.register_pickle_by_value(T)             # executors cannot import the tests folder
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    s = spark_session()
    yield s
    s.stop()


class NaNBelowDec(T.ToyRenderer):
    def render(self, ra_deg, dec_deg, seed=0):
        X, m = super().render(ra_deg, dec_deg, seed)
        X[np.asarray(dec_deg) < -80] = np.nan
        return X, m


def _files(d: Path) -> dict[str, bytes]:
    "Every file's bytes but the failures table's (its `path` column names the engine's own folder)."
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != S.FAILURES_FILE}


def assert_same_failures(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.drop(columns="path"), b.drop(columns="path"))
    assert list(a.path.map(os.path.basename)) == list(b.path.map(os.path.basename))


def test_spark_equals_local_mock(tmp_path, spark):
    n = 23
    t = pd.DataFrame({"galaxy_id": [f"b{i % 3}_{i}" for i in range(n)], "ra": np.linspace(40, 41, n),
                      "dec": np.where(np.arange(n) % 7 == 3, -85.0, 5.0), "type": ["DEV"] * n,
                      "nobs_z": pd.array([3] * (n - 1) + [None], dtype="Int64"), "flux_r": np.float32(2.5)})
    src = S.MockSkySource(renderer=NaNBelowDec(), seed=9)
    f_local = S.generate_cutouts(t, src, str(tmp_path / "local"), batch_size=5, progress=False)
    # pre-fill part of the Spark output folder: resume must keep those and produce the rest
    (tmp_path / "spark").mkdir()
    for name in sorted(os.listdir(tmp_path / "local"))[:5]:
        if name.endswith(".npz") or name == S.SOURCE_STAMP:
            (tmp_path / "spark" / name).write_bytes((tmp_path / "local" / name).read_bytes())
    f_spark = generate_cutouts_spark(t, src, str(tmp_path / "spark"), spark=spark, n_partitions=3, batch_size=2)
    assert len(f_local) == 3 and set(f_local.stage) == {"validate"}
    assert_same_failures(f_spark, f_local)
    assert _files(tmp_path / "spark") == _files(tmp_path / "local")     # NPZs and the source stamp
    assert_same_failures(pd.read_parquet(tmp_path / "spark" / S.FAILURES_FILE), pd.read_parquet(tmp_path / "local" / S.FAILURES_FILE))
    assert f_spark.attrs["n_skipped"] >= 3
    assert C.read_cutout(tmp_path / "spark" / C.cutout_filename(t.galaxy_id.iloc[-1]))[1]["nobs_z"] == 4   # missing in targets -> the source's value


def test_spark_http_source(tmp_path, spark):
    modes = ["ok"] * 6 + ["404", "html", "badshape", "500_then_ok"]
    ra = 70.0 + np.arange(len(modes)) * 0.01
    t = pd.DataFrame({"galaxy_id": [f"h{i}_{m}" for i, m in enumerate(modes)], "ra": ra, "dec": 2.0})
    with T.FakeService(dict(zip(ra, modes))) as fake:
        src = S.LegacySurveyCutoutService(base_url=fake.base_url, concurrency=2, rate_limit_per_s=0, timeout_s=5,
                                          max_retries=2, backoff_base_s=0.05)
        f_spark = generate_cutouts_spark(t, src, str(tmp_path / "spark"), spark=spark, n_partitions=2, batch_size=3)
        f_local = S.generate_cutouts(t, src, str(tmp_path / "local"), progress=False)
    assert_same_failures(f_spark, f_local)
    assert list(f_spark.galaxy_id) == ["h6_404", "h7_html", "h8_badshape"]
    X1, m1, _ = C.read_cutouts(sorted((tmp_path / "spark").glob("*.npz")), progress=False)
    X2, m2, _ = C.read_cutouts(sorted((tmp_path / "local").glob("*.npz")), progress=False)
    assert len(X1) == 7 and np.array_equal(X1, X2) and list(m1.galaxy_id) == list(m2.galaxy_id)


def test_spark_stage_equals_local_stage(tmp_path, spark):
    "`cutouts.engine: spark` in the pipeline stage writes what the local engine writes (local[2])."
    t, modes, flaky = T._http_targets(n=16, every=5)
    with T.FakeService(modes) as fake:
        fake.down = False
        runs = {}
        for engine in ("local", "spark"):
            cfg, rd = T.make_run(tmp_path, {**T._http_cutouts(fake), "engine": engine, "spark_partitions": 2}, t, name=engine)
            runs[engine] = (S.run_cutouts_stage(cfg, rd, progress=False), Path(rd) / "cutouts")
    (r_local, d_local), (r_spark, d_spark) = runs["local"], runs["spark"]
    assert r_local["n_written"] == r_spark["n_written"] == 16 and r_spark["engine"] == "spark"
    X1, m1, _ = C.read_cutouts(sorted(d_local.glob("*.npz")), progress=False)
    X2, m2, _ = C.read_cutouts(sorted(d_spark.glob("*.npz")), progress=False)
    assert np.array_equal(X1, X2) and list(m1.galaxy_id) == list(m2.galaxy_id)
    pd.testing.assert_frame_equal(pd.read_parquet(d_local / S.FAILURES_FILE), pd.read_parquet(d_spark / S.FAILURES_FILE))

"""The catalog stage on the mock DR10 sky (stronglens.mocksky): positives are the listed deflectors, N2 categories are the true ones."""
from types import SimpleNamespace
import numpy as np
import pandas as pd
import pytest

from stronglens.config import read_parquet
from stronglens.negatives import NegativeSamplingConfig

mocksky = pytest.importorskip("stronglens.mocksky")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from stronglens.negatives import CatalogConfig
    from stronglens.manifest import run_catalog_stage
    r = tmp_path_factory.mktemp("mockrun")
    mocksky.build_sky(mocksky.SkyConfig(ra_max_deg=152.5, dec_max_deg=2.5, density_scale=0.3, n_lenses=60), str(r / "sky"), progress=False)
    neg = NegativeSamplingConfig(); neg.stratification.negatives_per_positive = 20
    cfg = SimpleNamespace(catalogs=CatalogConfig(progress=False, write_candidates=True), negatives=neg)
    out = run_catalog_stage(cfg, str(r))
    return r, out


def test_positives_are_the_listed_deflectors(run):
    r, out = run
    kl = pd.read_csv(r / "sky" / "known_lenses.csv")
    pos = read_parquet(str(r / "manifests" / "positives.parquet"))
    assert len(pos) == len(kl) and out["report"]["positives"]["unmatched"] == {}
    m = pos.merge(kl[["name", "galaxy_id", "grading"]], left_on="lens_name", right_on="name", suffixes=("", "_truth"))
    assert (m.galaxy_id == m.galaxy_id_truth).all()        # matched to the true deflector's sweep row
    assert ((m.tier == "A") == (m.grading_truth == "confident")).all()


def test_unlisted_lenses_are_not_excluded_but_listed_ones_are(run):
    r, out = run
    truth = pd.read_parquet(r / "sky" / "lens_truth.parquet")
    cand = read_parquet(str(r / "manifests" / "negative_candidates.parquet"))
    listed = set(truth.galaxy_id[truth.listed])
    assert not listed & set(cand.galaxy_id)
    # the mock's point: unlisted lenses are still in the negative pool (label noise the audit must measure)
    unl = truth[~truth.listed]
    assert len(unl) > 0 and len(set(unl.galaxy_id) & set(cand.galaxy_id)) > 0


def test_n2_categories_are_the_true_confuser_categories(run):
    r, out = run
    conf = pd.read_csv(r / "sky" / "confusers.csv")
    cand = read_parquet(str(r / "manifests" / "negative_candidates.parquet"))
    m = cand.merge(conf[["galaxy_id", "category"]], on="galaxy_id")
    assert len(m) > 50
    assert (m.n2_category == m.category).all() and (m.pool == "N2").all()
    neg = read_parquet(str(r / "manifests" / "negative_pool.parquet"))
    assert set(neg.n2_category[neg.pool == "N2"]) <= set(conf.category) | {"ring", "edge_on", "blue_clumpy", "large"}
    assert out["leakage"]["passed"]

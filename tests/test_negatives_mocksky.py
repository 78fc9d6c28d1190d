"""The catalog stage on the mock DR10 sky (stronglens.mocksky): positives are the listed deflectors, N2 categories are the true ones."""
import pandas as pd
import pytest

from stronglens.config import read_parquet

mocksky = pytest.importorskip("stronglens.mocksky")
pytestmark = pytest.mark.slow


MATCH = {"match_mag_r_bins": [17.0, 18.0, 18.5, 19.0, 19.5, 20.0, 21.0], "match_g_minus_r_bins": [0.6, 1.0, 1.3, 1.5, 1.7, 1.9, 2.2]}


def _config(sky, **strat):
    from stronglens.config import config_from_dict
    return config_from_dict({"run": {"name": "mock"}, "catalogs": {"progress": False, "write_candidates": True, "sweep_dir": str(sky)},
                             "negatives": {"stratification": {"negatives_per_positive": 10, **strat}}, "cutouts": {"source": "legacysurvey"}})


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    r = tmp_path_factory.mktemp("mocksky")
    mocksky.build_sky(mocksky.SkyConfig(ra_max_deg=152.5, dec_max_deg=2.5, density_scale=1.0, n_lenses=800), str(r / "sky"), progress=False)
    return r / "sky"


@pytest.fixture(scope="module")
def run(sky):
    from stronglens.manifest import run_catalog_stage
    r = sky.parent / "run"
    return r, run_catalog_stage(_config(sky), str(r))


def test_positives_are_the_listed_deflectors(run):
    r, out = run
    kl = pd.read_csv(r.parent / "sky" / "known_lenses.csv")
    pos = pd.concat([read_parquet(str(r / "manifests" / f)) for f in ("positives.parquet", "positives_eval.parquet")])
    assert len(pos) == len(kl) and out["report"]["positives"]["unmatched"] == {}
    m = pos.merge(kl[["name", "galaxy_id", "grading"]], left_on="lens_name", right_on="name", suffixes=("", "_truth"))
    assert (m.galaxy_id == m.galaxy_id_truth).all()        # matched to the true deflector's sweep row
    assert ((m.tier == "A") == (m.grading_truth == "confident")).all()


def test_unlisted_lenses_are_not_excluded_but_listed_ones_are(run):
    r, out = run
    truth = pd.read_parquet(r.parent / "sky" / "lens_truth.parquet")
    cand = read_parquet(str(r / "manifests" / "negative_candidates.parquet"))
    listed = set(truth.galaxy_id[truth.listed])
    assert not listed & set(cand.galaxy_id)
    # the mock's point: unlisted lenses are still in the negative pool (label noise the audit must measure)
    unl = truth[~truth.listed]
    assert len(unl) > 0 and len(set(unl.galaxy_id) & set(cand.galaxy_id)) > 0


def test_n2_categories_are_the_true_confuser_categories(run):
    r, out = run
    conf = pd.read_csv(r.parent / "sky" / "confusers.csv")
    cand = read_parquet(str(r / "manifests" / "negative_candidates.parquet"))
    m = cand.merge(conf[["galaxy_id", "category"]], on="galaxy_id")
    assert len(m) > 50
    assert (m.n2_category == m.category).all() and (m.pool == "N2").all()
    neg = read_parquet(str(r / "manifests" / "negative_pool.parquet"))
    assert set(neg.n2_category[neg.pool == "N2"]) <= set(conf.category) | {"ring", "edge_on", "blue_clumpy", "large"}
    assert out["leakage"]["passed"]


def test_matched_negatives_follow_the_deflectors_on_the_mock_sky(sky, run):
    """Issue 14.8 on the mock sky: with magnitude/colour matching (and the demo's fill_from_other_pool) the negatives' r-mag
    and g-r match the positives' (KS p > 0.01); the N2 ring proxy leaves N1 without bright DEV galaxies, which N2 fills."""
    from scipy.stats import ks_2samp
    from stronglens.manifest import run_catalog_stage
    r = sky.parent / "run_matched"
    out = run_catalog_stage(_config(sky, **MATCH, fill_from_other_pool=True), str(r))
    pos = read_parquet(str(r / "manifests" / "positives.parquet"))
    neg = read_parquet(str(r / "manifests" / "negative_pool.parquet"))
    p = {c: ks_2samp(neg[c].dropna(), pos[c].dropna()).pvalue for c in ("mag_r", "g_minus_r")}
    assert min(p.values()) > 0.01, p
    unmatched = read_parquet(str(run[0] / "manifests" / "negative_pool.parquet"))
    assert ks_2samp(unmatched.mag_r.dropna(), pos.mag_r.dropna()).pvalue < p["mag_r"]
    assert out["leakage"]["passed"] and out["report"]["stratification"]["keys"][2:] == ["mag_r_bin", "g_minus_r_bin"]
    pd.testing.assert_frame_equal(pos, read_parquet(str(run[0] / "manifests" / "positives.parquet")))
    # why N1 alone cannot follow DEV deflectors: every DEV with flux_r >= 5 nmgy (r <= 20.75) is a ring-proxy N2
    cand = read_parquet(str(r / "manifests" / "negative_candidates.parquet"))
    n1_dev = cand[(cand.pool == "N1") & (cand.type == "DEV") & (cand.n2_category == "")]
    assert (n1_dev.flux_r < 5.0).all()
    samp = pd.read_csv(r / "manifests" / "sampling.csv")
    assert samp.extra.sum() > 0 and out["report"]["negatives"]["from_other_pool"] == samp.extra.sum()

"""Training manifest (spec §2), leakage checks that must fail on doctored manifests, and the catalog stage under the stage protocol."""
import json, shutil
import pandas as pd
import pytest

from stronglens.config import read_parquet, config_from_dict, config_to_dict, resolve_path
from stronglens.cutouts import cutout_filename
from stronglens.negatives import synthetic_sky, POOL_COLUMNS, EVAL_EXTRA_COLUMNS, POSITIVE_EXTRA_COLUMNS, check_pool_schema
from stronglens.manifest import (TRAINING_MANIFEST_COLUMNS, check_leakage, check_manifest_paths,
                                 LeakageError, run_catalog_stage)
from stronglens.runs import StageError, read_marker, get_stage
from stronglens.splits import assign_split_scalar, compute_healpix_scalar

SPEC_TRAINING = ["s3_key", "s3_path", "galaxy_id", "filename", "label", "cutout_type", "split", "ra", "dec"]


def stage_config(sky, **catalogs):
    "A pipeline config for the catalog stage on an external synthetic sky (no mock-sky stage needed)."
    return config_from_dict({"run": {"name": "t"}, "catalogs": {"sweep_dir": str(sky), "progress": False, **catalogs},
                             "negatives": {"stratification": {"negatives_per_positive": 10}}, "cutouts": {"source": "legacysurvey"}})


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    base = tmp_path_factory.mktemp("cat")
    synthetic_sky(str(base / "sky"), n_per_file=20000, n_lenses=50, seed=3)
    cfg = stage_config(base / "sky")
    out = run_catalog_stage(cfg, str(base / "run"))
    return base / "run", cfg, out


def test_stage_writes_the_manifests(stage):
    run, cfg, out = stage
    m = run / "manifests"
    for f in ("negative_pool.parquet", "positives.parquet", "positives_eval.parquet", "training_manifest.parquet", "leakage.json",
              "catalog_report.json", "stratification.csv", "sampling.csv", "unmatched_lenses.parquet", "dropped_lenses.parquet",
              "sweep_problems.csv"):
        assert (m / f).exists(), f
    tm = read_parquet(str(m / "training_manifest.parquet"))
    assert list(tm.columns) == SPEC_TRAINING
    assert {c: str(t) for c, t in tm.dtypes.items()} == TRAINING_MANIFEST_COLUMNS
    pos, neg = read_parquet(str(m / "positives.parquet")), read_parquet(str(m / "negative_pool.parquet"))
    ev = read_parquet(str(m / "positives_eval.parquet"))
    assert len(tm) == len(pos) + len(neg) and (tm.label == 1).sum() == len(pos)
    assert not set(ev.galaxy_id) & set(tm.galaxy_id) and len(ev) >= 4          # evaluation positives are not trained on
    assert check_pool_schema(ev, {**POSITIVE_EXTRA_COLUMNS, **EVAL_EXTRA_COLUMNS}) == []
    assert (tm.filename == [cutout_filename(g) for g in tm.galaxy_id]).all()
    assert set(tm.cutout_type[tm.label == 1]) == {"positive"} and set(tm.cutout_type[tm.label == 0]) == {"negative"}
    # every row's pixel and split from the spec's literal per-row functions
    alloc = dict(cfg.negatives.splits.allocations)
    both = pd.concat([pos, neg])
    for r in both.sample(200, random_state=0).itertuples():
        assert r.healpix_128 == compute_healpix_scalar(r.ra, r.dec, 128)
        assert r.split == assign_split_scalar(r.healpix_128, alloc, 42)
    j = tm.merge(both[["galaxy_id", "split", "ra", "dec"]], on="galaxy_id", suffixes=("", "_pool"))
    assert len(j) == len(tm) and (j.split == j.split_pool).all()
    leak = json.loads((m / "leakage.json").read_text())
    assert leak["passed"] and set(leak["checks"]) >= {"pixel_in_multiple_splits", "duplicate_galaxy_id", "null_healpix", "null_split",
                                                      "negative_near_known_lens", "split_not_from_pixel", "positive_only_stratum"}
    assert abs(sum(leak["split_fractions"]["all"].values()) - 1) < 1e-9
    rep = json.loads((m / "catalog_report.json").read_text())
    assert rep["known_lenses"]["dropped_from_positives"] == {"type_cluster": 1, "nosocs_cluster_catalog": 1, "duplicate_within_3arcsec": 1}
    assert rep["positives"]["unmatched"] == {"outside_sweep_footprint": 1}
    assert rep["positives"]["evaluation_only"] == len(ev) and rep["positives"]["training"] == len(pos)
    assert rep["losses"]["files"] == {"lost": 0, "total": 2} and rep["provenance"]["stage"] == "catalogs"
    st = pd.read_csv(m / "stratification.csv")
    assert st.iloc[-1].positives == len(pos) and st.iloc[-1].negatives == len(neg)
    assert read_marker(str(run), get_stage("catalogs"))["status"] == "done"


def test_manifest_paths_are_relative_to_the_run(stage, tmp_path):
    "Issue 12.9: s3_path is run-relative (cutouts/<file>.npz), s3_key relative to the prefix; a copied run resolves to its own files."
    run, cfg, out = stage
    tm = read_parquet(str(run / "manifests" / "training_manifest.parquet"))
    assert (tm.s3_path == "cutouts/" + tm.filename).all() and (tm.s3_key == tm.filename).all()
    copy_ = tmp_path / "copied_run"
    shutil.copytree(run, copy_)
    tm2 = read_parquet(str(copy_ / "manifests" / "training_manifest.parquet"))
    assert all(resolve_path(str(copy_), p).startswith(str(copy_) + "/cutouts/") for p in tm2.s3_path)
    assert not any(str(run) in resolve_path(str(copy_), p) for p in tm2.s3_path)
    check_manifest_paths(tm2, str(copy_), str(copy_ / "cutouts"))


def test_cutouts_out_prefix_is_honoured(stage, tmp_path):
    "Issue 12.9: a declared cutouts.out_prefix is used for the manifest paths (full URL outside the run, relative inside)."
    run, cfg, out = stage
    d = config_to_dict(cfg)
    d["cutouts"]["out_prefix"] = "s3://bucket/shared/cutouts"
    o = run_catalog_stage(config_from_dict(d), str(tmp_path / "r1"))
    tm = read_parquet(str(tmp_path / "r1" / "manifests" / "training_manifest.parquet"))
    assert (tm.s3_path == "s3://bucket/shared/cutouts/" + tm.filename).all() and (tm.s3_key == tm.filename).all()
    assert o["training_manifest"]["cutout_prefix"] == "s3://bucket/shared/cutouts"
    d["cutouts"]["out_prefix"] = "npz"                                 # relative: inside the run folder
    run_catalog_stage(config_from_dict(d), str(tmp_path / "r2"))
    tm = read_parquet(str(tmp_path / "r2" / "manifests" / "training_manifest.parquet"))
    assert (tm.s3_path == "npz/" + tm.filename).all()


def test_manifest_path_outside_the_prefix_is_refused(stage):
    "Issue 12.11: a manifest s3_path outside the output prefix is an error naming the row."
    run, cfg, out = stage
    tm = read_parquet(str(run / "manifests" / "training_manifest.parquet"))
    check_manifest_paths(tm, str(run), str(run / "cutouts"))
    for bad_path in ("/elsewhere/cutouts/x.npz", "cutouts/../model/x.npz", "s3://other/x.npz", "model/x.npz"):
        b = tm.copy(); b.loc[7, "s3_path"] = bad_path
        with pytest.raises(ValueError, match=r"1 row\(s\) with an s3_path outside the cutout prefix") as e:
            check_manifest_paths(b, str(run), str(run / "cutouts"))
        assert f"row 7 (galaxy_id {tm.galaxy_id[7]})" in str(e.value) and bad_path in str(e.value)


def test_stage_skips_when_done_and_reruns_on_change(stage, capsys):
    run, cfg, out = stage
    assert run_catalog_stage(cfg, str(run)) == out
    assert "skip" in capsys.readouterr().out
    d = config_to_dict(cfg); d["negatives"]["stratification"]["negatives_per_positive"] = 5
    o2 = run_catalog_stage(config_from_dict(d), str(run))
    assert "config changed" in capsys.readouterr().out and o2["report"]["negatives"]["sampled"] < out["report"]["negatives"]["sampled"]
    o3 = run_catalog_stage(cfg, str(run), force=True)
    assert o3["report"] == {**out["report"], "provenance": o3["report"]["provenance"]}


def test_truncated_sweep_fails_the_stage_naming_the_file(tmp_path):
    "Issue 12.6: a truncated sweep file fails the stage (past run.max_failure_frac) with a one-screen summary naming it."
    synthetic_sky(str(tmp_path / "sky"), n_per_file=12000, n_lenses=40, seed=9)
    f = sorted((tmp_path / "sky").glob("sweep-*.fits"))[1]
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) * 2 // 3])
    with pytest.raises(StageError) as e:
        run_catalog_stage(stage_config(tmp_path / "sky"), str(tmp_path / "run"))
    msg = str(e.value)
    assert f.name in msg and "truncated" in msg and "1 of 2 sweep files failed" in msg and "12000 rows" in msg
    assert "positives" in msg and len(msg.splitlines()) <= 12
    m = read_marker(str(tmp_path / "run"), get_stage("catalogs"))
    assert m["status"] == "failed" and f.name in m["error"]["message"]
    assert not (tmp_path / "run" / "manifests" / "training_manifest.parquet").exists()
    probs = pd.read_csv(tmp_path / "run" / "manifests" / "sweep_problems.csv")
    assert list(probs.file.map(lambda s: s.rsplit("/", 1)[-1])) == [f.name] and probs.rows[0] == 12000


def test_loss_under_the_threshold_finishes_with_failures(tmp_path):
    "A loss under run.max_failure_frac is recorded (done_with_failures, retried next run), not fatal."
    synthetic_sky(str(tmp_path / "sky"), n_per_file=12000, n_lenses=20, seed=9)
    f = sorted((tmp_path / "sky").glob("sweep-*.fits"))[1]
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    d = config_to_dict(stage_config(tmp_path / "sky")); d["run"]["max_failure_frac"] = 0.6
    out = run_catalog_stage(config_from_dict(d), str(tmp_path / "run"))
    m = read_marker(str(tmp_path / "run"), get_stage("catalogs"))
    assert m["status"] == "done_with_failures" and m["failures"]["n_failed"] > 0
    assert out["report"]["losses"]["files"] == {"lost": 1, "total": 2}


def _manifest_and_pool(stage):
    run, cfg, out = stage
    m = run / "manifests"
    tm = read_parquet(str(m / "training_manifest.parquet"))
    pool = pd.concat([read_parquet(str(m / "positives.parquet"))[list(POOL_COLUMNS)], read_parquet(str(m / "negative_pool.parquet"))])
    from stronglens.legacysurvey import load_known_lenses
    return tm, pool, load_known_lenses(str(run.parent / "sky" / "known_lenses.csv"))


def test_leakage_one_pixel_in_two_splits_fails(stage):
    tm, pool, kl = _manifest_and_pool(stage)
    assert check_leakage(tm, pool=pool, known_lenses=kl)["passed"]
    # doctor: move one validation galaxy into a training pixel (pixel overlap, IDs all distinct)
    train_pix = pool.loc[pool.split == "train", "healpix_128"].iloc[0]
    victim = pool.loc[pool.split != "train", "galaxy_id"].iloc[0]
    bad = pool.copy(); bad.loc[bad.galaxy_id == victim, "healpix_128"] = train_pix
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits: 1") as e:
        check_leakage(tm, pool=bad)
    assert e.value.report["checks"]["pixel_in_multiple_splits"]["examples"][0]["pixel"] == train_pix
    # the same leak carried in the manifest itself
    tm2 = tm.merge(pool[["galaxy_id", "healpix_128"]], on="galaxy_id")
    tm2.loc[tm2.galaxy_id == victim, "healpix_128"] = train_pix
    with pytest.raises(LeakageError, match="pixel_in_multiple_splits"):
        check_leakage(tm2)


def test_leakage_other_doctored_manifests_fail(stage):
    tm, pool, kl = _manifest_and_pool(stage)
    with pytest.raises(LeakageError, match="duplicate_galaxy_id: 1"):
        check_leakage(pd.concat([tm, tm.iloc[[3]]]), pool=pool)
    pos_ids = set(tm.galaxy_id[tm.label == 1])
    with pytest.raises(LeakageError, match="null_healpix: 3"):    # positives missing from the pool -> null pixel
        check_leakage(tm, pool=pool[~pool.galaxy_id.isin(sorted(pos_ids)[:3])])
    b = tm.copy(); b.loc[b.index[:2], "split"] = None
    with pytest.raises(LeakageError, match="null_split: 2"):
        check_leakage(b, pool=pool)
    b = tm.copy(); i = b.index[b.label == 0][0]; b.loc[i, "split"] = "val" if b.split[i] != "val" else "test"
    with pytest.raises(LeakageError, match="split_not_from_pixel: 1"):
        check_leakage(b, pool=pool, allocations={"train": .7, "val": .15, "test": .15})
    n = tm[tm.label == 0].iloc[0]
    lens = pd.DataFrame({"ra": [n.ra + 8 / 3600], "dec": [n.dec]})
    with pytest.raises(LeakageError, match="negative_near_known_lens: 1"):
        check_leakage(tm, pool=pool, known_lenses=pd.concat([kl[["ra", "dec"]], lens]))
    rep = check_leakage(tm, pool=pool, known_lenses=lens.assign(ra=n.ra + 12 / 3600), raise_on_error=True)
    assert rep["passed"]


def test_leakage_positive_only_stratum_fails_with_counts(stage):
    "Issue 13.2: a stratum holding positives but no negatives is a leakage-check failure, with the counts."
    tm, pool, kl = _manifest_and_pool(stage)
    assert check_leakage(tm, pool=pool)["checks"]["positive_only_stratum"]["passed"]
    # three positives moved to a shallow stratum (1-2 exposures in z), where the pool cuts leave no negative
    ids = sorted(tm.galaxy_id[tm.label == 1])[:3]
    bad = pool.copy(); bad.loc[bad.galaxy_id.isin(ids), "nobs_z_bin"] = "1-2"
    types = bad.set_index("galaxy_id").loc[ids, "type_bin"]
    with pytest.raises(LeakageError, match="positive_only_stratum") as e:
        check_leakage(tm, pool=bad)
    ex = e.value.report["checks"]["positive_only_stratum"]["examples"]
    assert {(x["nobs_z_bin"], x["type_bin"]) for x in ex} == {("1-2", t) for t in types}
    assert sum(x["positives"] for x in ex) == 3 and all(x["negatives"] == 0 for x in ex)
    # a manifest carrying the strata itself is checked too, and the sampling table adds what was available
    tm2 = tm.merge(bad[["galaxy_id", "nobs_z_bin", "type_bin"]], on="galaxy_id")
    samp = pd.DataFrame({"nobs_z_bin": ["1-2"], "type_bin": [types.iloc[0]], "pool": ["N1"], "available": [0]})
    rep = check_leakage(tm2, sampling=samp, raise_on_error=False)
    assert not rep["passed"] and all("available" in x for x in rep["checks"]["positive_only_stratum"]["examples"])


@pytest.mark.slow
def test_pipeline_notebook_runs_with_papermill(tmp_path):
    import papermill as pm
    from pathlib import Path
    run = tmp_path / "run"
    synthetic_sky(str(tmp_path / "sky"), n_per_file=15000, n_lenses=30, seed=4)
    run.mkdir()
    (run / "config.yaml").write_text(f"run: {{name: t, seed: 1}}\nnegatives: {{stratification: {{negatives_per_positive: 10}}}}\n"
                                     f"catalogs: {{progress: false, sweep_dir: {tmp_path / 'sky'}}}\ncutouts: {{source: legacysurvey}}\n")
    nb = Path(__file__).resolve().parents[1] / "nbs" / "pipeline" / "01_catalogs.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"run_dir": str(run)}, kernel_name="python3",
                        language="python", progress_bar=False)
    assert json.loads((run / "manifests" / "leakage.json").read_text())["passed"]
    assert (run / "manifests" / "training_manifest.parquet").exists()

"""Bad-input tests for stronglens.config: every error names the file, the key path and what was expected."""
from pathlib import Path
import pytest, yaml
from stronglens.config import (ConfigError, load_config, config_from_dict, PipelineConfig, config_hash, dump_config,
                               save_config)
from stronglens.train import TrainingConfig
from stronglens.negatives import NegativeSamplingConfig

ROOT = Path(__file__).resolve().parents[1]
SPEC_TRAIN = ROOT / "configs" / "unpaired_matched_raw.yaml"
NEG = ROOT / "configs" / "negative_sampling_v1.yaml"


def _write(tmp_path, d, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_spec_training_config_has_exactly_the_spec_keys():
    raw = yaml.safe_load(SPEC_TRAIN.read_text())
    assert raw == {
        "dataset": {"parquet_path": "s3://darkhaloscope/phase4_pipeline/phase4c/v5_cosmos_paired/",
                    "mode": "unpaired_manifest", "manifest_path": "./manifests/unpaired_matched.parquet",
                    "preprocessing": "raw_robust", "seed": 1337},
        "augment": {"core_dropout_prob": 0.0, "az_shuffle_prob": 0.0},
        "train": {"epochs": 50, "batch_size": 128, "lr": "1e-4", "weight_decay": "1e-4", "num_workers": 6,
                  "device": "cuda", "early_stopping_patience": 10, "out_dir": "./runs/R3_unpaired_matched_raw",
                  "mixed_precision": True}}
    cfg = load_config(SPEC_TRAIN)
    assert isinstance(cfg, TrainingConfig) and cfg.train.weight_decay == pytest.approx(1e-4)


@pytest.mark.parametrize("mutate,key,expect", [
    (lambda d: d["train"].pop("lr"), "train.lr", "missing required key"),
    (lambda d: d["train"].__setitem__("lr", "fast"), "train.lr", "expected float"),
    (lambda d: d["train"].__setitem__("epochs", "ten"), "train.epochs", "expected int"),
    (lambda d: d["train"].__setitem__("mixed_precision", "yes"), "train.mixed_precision", "expected bool"),
    (lambda d: d["dataset"].__setitem__("colour", 1), "dataset.colour", "unknown key"),
    (lambda d: d["augment"].__setitem__("az_shuffle_prob", 1.5), "augment", "probability"),
    (lambda d: d["dataset"].__setitem__("preprocessing", "zscore"), "dataset", "raw_robust"),
])
def test_training_config_errors_name_file_and_key(tmp_path, mutate, key, expect):
    d = yaml.safe_load(SPEC_TRAIN.read_text()); mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and expect in msg, msg


def test_allocations_must_sum_to_one(tmp_path):
    d = yaml.safe_load(NEG.read_text())
    d["splits"]["allocations"] = {"train": 0.7, "val": 0.15, "test": 0.1500001}
    with pytest.raises(ConfigError, match=r"splits.allocations: expected fractions summing to 1"):
        load_config(_write(tmp_path, d))
    d["splits"]["allocations"] = {"train": 0.7, "val": 0.15, "test": 0.15 + 5e-10}   # within 1e-9: accepted
    assert isinstance(load_config(_write(tmp_path, d)), NegativeSamplingConfig)


def test_overrides_are_validated_like_file_values():
    cfg = load_config(SPEC_TRAIN, overrides={"train.epochs": "3", "dataset.manifest_path": "s3://b/m.parquet"})
    assert cfg.train.epochs == 3 and cfg.dataset.manifest_path == "s3://b/m.parquet"
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int"):
        load_config(SPEC_TRAIN, overrides=["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(SPEC_TRAIN, overrides=["train.batch_size"])


def test_pipeline_config_sections(tmp_path):
    cfg = config_from_dict({"run": {"name": "t", "seed": 3}})
    assert isinstance(cfg, PipelineConfig) and cfg.run.seed == 3
    with pytest.raises(ConfigError, match=r"nonsense: unknown section"):
        config_from_dict({"run": {}, "nonsense": {}})
    with pytest.raises(ConfigError, match=r"run: missing required section"):
        config_from_dict({"negatives": {}})
    with pytest.raises(ConfigError, match=r"negatives.exclusion.radius_arcsec: expected float"):
        config_from_dict({"run": {}, "negatives": {"exclusion": {"radius_arcsec": "far"}}})


def test_round_trip_and_hash(tmp_path):
    cfg = load_config(NEG)
    p = save_config(cfg, str(tmp_path / "saved.yaml"))
    again = load_config(p)
    assert dump_config(again) == dump_config(cfg) and config_hash(again) == config_hash(cfg)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"; p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_cannot_construct_python_objects(tmp_path):
    p = tmp_path / "evil.yaml"; p.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)

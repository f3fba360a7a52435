"""The config contract: defaults, overrides, and errors that say what, where and how to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bptrain.config import Config, json_schema, load_config, to_yaml
from bptrain.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_resolves_every_default():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.data.source == "digits"
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.lr == pytest.approx(3e-3)
    assert cfg.trainer.precision == "32" and cfg.trainer.accumulate_grad_batches == 1
    assert cfg.logging.name == "quickstart" and cfg.logging.tensorboard is True
    # the resolved YAML round-trips to the same config
    again = Config.model_validate(__import__("yaml").safe_load(to_yaml(cfg)))
    assert again == cfg


def test_overrides_are_parsed_as_yaml(write_config):
    cfg = load_config(
        write_config(),
        [
            "optimizer.lr=3e-4",
            "trainer.max_epochs=5",
            "model.hidden=[128,128]",
            "trainer.precision=bf16",
        ],
    )
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert isinstance(cfg.optimizer.lr, float)
    assert cfg.trainer.max_epochs == 5
    assert cfg.model.hidden == [128, 128]
    assert cfg.trainer.precision == "bf16"


def test_scientific_notation_in_yaml_is_a_float(write_config):
    path = write_config(
        text="data: {source: moons}\noptimizer: {name: sgd, lr: 3e-4, weight_decay: 1e-5}\n"
    )
    cfg = load_config(path)
    assert cfg.optimizer.lr == pytest.approx(3e-4) and cfg.optimizer.weight_decay == pytest.approx(
        1e-5
    )


def test_unknown_key_names_file_line_path_and_closest_key(write_config):
    path = write_config(text="data:\n  source: moons\n  batch_sise: 32\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}, line 3" in message
    assert "data.batch_sise" in message
    assert "Did you mean 'batch_size'?" in message


def test_unknown_top_level_section(write_config):
    path = write_config(text="data: {source: moons}\noptimiser: {name: adam}\n")
    with pytest.raises(
        ConfigError, match=r"line 2: optimiser: unknown key 'optimiser'. Did you mean 'optimizer'\?"
    ):
        load_config(path)


def test_wrong_type_names_line_and_expectation(write_config):
    path = write_config(text="data:\n  source: moons\ntrainer:\n  max_epochs: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}, line 4: trainer.max_epochs" in str(err.value)
    assert "valid integer" in str(err.value) and "'many'" in str(err.value)


def test_invalid_choice_suggests_closest(write_config):
    path = write_config(
        text="data: {source: moons}\nmodel: {activation: rellu}\noptimizer: {name: adamm}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "Did you mean 'relu'?" in str(err.value)
    assert "optimizer.name: unknown choice 'adamm'" in str(
        err.value
    ) and "Did you mean 'adam'?" in str(err.value)


def test_options_of_another_variant_are_rejected(write_config):
    path = write_config(text="data: {source: moons}\noptimizer: {name: adam, momentum: 0.9}\n")
    with pytest.raises(ConfigError, match="optimizer.momentum: unknown key 'momentum'"):
        load_config(path)


def test_override_errors_name_the_override(write_config):
    path = write_config()
    with pytest.raises(
        ConfigError, match="command-line override 'optimizer.lrr=1'.*Did you mean 'lr'"
    ):
        load_config(path, ["optimizer.lrr=1"])
    with pytest.raises(ConfigError, match="optimizer.lr is a value"):
        load_config(path, ["optimizer.lr.x=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["optimizer.lr"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, ["model.hidden=[1,"])
    with pytest.raises(ConfigError, match="override 'optimizer.lr=-1'.*greater than 0"):
        load_config(path, ["optimizer.lr=-1"])


def test_duplicate_keys_are_an_error(write_config):
    path = write_config(text="data: {source: moons}\ntrainer:\n  max_epochs: 3\n  max_epochs: 4\n")
    with pytest.raises(ConfigError, match="line 4: key 'trainer.max_epochs' is given twice"):
        load_config(path)


def test_python_object_tags_are_refused(write_config, tmp_path):
    marker = tmp_path / "pwned"
    path = write_config(text=f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="safe_load"):
        load_config(path)
    assert not marker.exists()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_yaml_syntax_names_line(write_config):
    path = write_config(text="data:\n  source: moons\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_incompatible_choices_are_rejected_early(write_config):
    with pytest.raises(ConfigError, match="lbfgs cannot run with precision fp16"):
        load_config(
            write_config(), ["optimizer.name=lbfgs", "optimizer.lr=1", "trainer.precision=fp16"]
        )
    with pytest.raises(
        ConfigError, match="exactly one of grad_clip.max_norm or grad_clip.max_value"
    ):
        load_config(write_config(), ["trainer.grad_clip={max_norm: 1, max_value: 1}"])


def test_schema_documents_every_field():
    schema = json_schema()
    trainer = schema["$defs"]["TrainerConfig"]["properties"]
    assert "GradScaler" in trainer["precision"]["description"]
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        for field, spec in definition.get("properties", {}).items():
            if field not in ("name", "source"):
                assert spec.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize(
    "model",
    [
        {"name": "mlp"},
        {"name": "cnn"},
        {"name": "cnn1d"},
        {"name": "rnn"},
        {"name": "transformer", "num_heads": 2},
        {"class_path": "mymodels.Net"},
    ],
)
def test_every_model_kind_has_the_transfer_learning_keys(write_config, model):
    """init_from, init_strict and freeze exist for every model, with one default, listed after the model's own keys."""
    from bptrain.config import to_dict

    cfg = load_config(write_config({"=model": model}), ["model.init_strict=false"])
    section = to_dict(cfg)["model"]
    assert next(iter(section)) == next(iter(model))  # the variant's tag first
    assert list(section)[-3:] == ["init_from", "init_strict", "freeze"]
    assert section["init_from"] is None and section["init_strict"] is False
    assert section["freeze"] == []

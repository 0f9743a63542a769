import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from stepdistill.config import parse_configs, to_dict


@dataclass
class ToyTrainer:
    """Trainer options."""

    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    max_steps: int = field(default=10, metadata={"help": "steps"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "precision"})
    ema: bool = field(default=True, metadata={"help": "keep an EMA"})
    resume: str | None = field(default=None, metadata={"help": "checkpoint"})

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class ToyMethod:
    """Method options."""

    steps: list[int] = field(default_factory=lambda: [4, 2], metadata={"help": "schedule"})


def test_flags_override_file_override_preset(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": 0.5, "max_steps": 7}))
    trainer, method = parse_configs(
        [ToyTrainer, ToyMethod],
        ["--preset", "paper", "--config", str(path), "--max-steps", "3", "--no-ema", "--steps", "8", "4"],
        presets={"paper": {"lr": 0.1, "mixed_precision": "bf16", "steps": [16]}},
    )
    assert (trainer.lr, trainer.max_steps, trainer.mixed_precision, trainer.ema) == (0.5, 3, "bf16", False)
    assert method.steps == [8, 4] and trainer.resume is None
    assert to_dict(trainer, method)["ToyMethod"]["steps"] == [8, 4]


def test_yaml_and_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.25\nmax_stpes: 3\n")
    with pytest.raises(ValueError, match="Unknown option 'max_stpes'.*'max_steps'"):
        parse_configs([ToyTrainer], ["--config", str(path)])
    path.write_text("lr: 0.25\nresume: ckpt\n")
    (trainer,) = parse_configs([ToyTrainer], ["--config", str(path)])
    assert trainer.lr == 0.25 and trainer.resume == "ckpt"


def test_validation_and_bad_flags(capsys):
    with pytest.raises(ValueError, match="lr must be positive"):
        parse_configs([ToyTrainer], ["--lr", "-1"])
    with pytest.raises(SystemExit):
        parse_configs([ToyTrainer], ["--mixed-precision", "fp8"])
    with pytest.raises(FileNotFoundError):
        parse_configs([ToyTrainer], ["--config", "missing.yaml"])


def test_yaml_values_are_read_as_their_fields_types(tmp_path):
    """PyYAML reads `1e-4` as a string and `no` as False: both become what the field means."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nmax_steps: 2e1\nmixed_precision: no\nema: 'off'\nresume: null\nsteps: [8, '4']\n")
    trainer, method = parse_configs([ToyTrainer, ToyMethod], ["--config", str(path)])
    assert (trainer.lr, trainer.max_steps, trainer.mixed_precision, trainer.ema) == (1e-4, 20, "no", False)
    assert trainer.resume is None and method.steps == [8, 4]
    for text, message in [
        ("lr: fast\n", "Option 'lr' in .* must be float, got 'fast'"),
        ("max_steps: 2.5\n", "Option 'max_steps' .* must be int"),
        ("mixed_precision: fp8\n", r"must be one of \['no', 'fp16', 'bf16'\]"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            parse_configs([ToyTrainer, ToyMethod], ["--config", str(path)])


def test_broken_yaml_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: [1e-4\n")
    with pytest.raises(ValueError, match="run.yaml' is not valid YAML"):
        parse_configs([ToyTrainer, ToyMethod], ["--config", str(path)])


# every train script's config classes: each of its presets must name real options with valid values
SCRIPT_CONFIGS = {
    "progressive": "stepdistill.strategies.progressive:ProgressiveConfig",
    "consistency": "stepdistill.strategies.consistency:ConsistencyConfig",
    "dmd": "stepdistill.strategies.dmd:DMDConfig",
    "sid": "stepdistill.strategies.sid:SiDConfig",
}


def _script_presets():
    import importlib

    return [(s, p) for s in SCRIPT_CONFIGS for p in importlib.import_module(f"train.{s}").PRESETS]


@pytest.mark.parametrize("script,preset", _script_presets())
def test_every_train_script_preset_builds_valid_configs(script, preset):
    """The paper and SD-scale presets are never trained in the suite: this catches a misspelt option or an invalid
    combination (each config's __post_init__) in any of them."""
    import importlib

    from stepdistill.config import ModelConfig
    from stepdistill.trainer import TrainerConfig

    module, name = SCRIPT_CONFIGS[script].split(":")
    method = getattr(importlib.import_module(module), name)
    presets = importlib.import_module(f"train.{script}").PRESETS
    configs = parse_configs([TrainerConfig, ModelConfig, method], ["--preset", preset], presets)
    resolved = {k: v for section in to_dict(*configs).values() for k, v in section.items()}
    for key, value in presets[preset].items():
        assert resolved[key] == value, f"preset {preset!r} sets {key}={value!r}, resolved to {resolved[key]!r}"

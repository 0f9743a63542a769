import dataclasses
import inspect
import json
import os
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
    "ladd": "stepdistill.strategies.ladd:LADDConfig",
    "scm": "stepdistill.strategies.scm:SCMConfig",
    "meanflow": "stepdistill.strategies.meanflow:MeanFlowConfig",
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


def _strategy_config_classes():
    """Every registered strategy's config class and the option bases they inherit (``strategies.options``)."""
    import inspect

    from stepdistill.strategies import REGISTRY, options

    classes = {cls.config_class for cls in REGISTRY.values()}
    classes |= {c for _, c in inspect.getmembers(options, inspect.isclass) if dataclasses.is_dataclass(c)}
    return sorted(classes, key=lambda c: c.__name__)


def _own_fields(cls) -> dict:
    """The fields ``cls`` declares itself (not inherited), with their defaults."""
    own = inspect.get_annotations(cls)
    return {f.name: _default(f) for f in dataclasses.fields(cls) if f.name in own}


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_no_strategy_config_repeats_an_option_of_another_or_of_its_base():
    """Each shared option is declared once (in ``strategies.options``): a config re-declares an inherited field only to
    give it another default, and two configs that are not one the other's base never both declare the same option
    with the same default (it belongs in a base they share)."""
    classes = _strategy_config_classes()
    problems = []
    for cls in classes:
        for name, default in _own_fields(cls).items():
            for base in filter(dataclasses.is_dataclass, cls.__mro__[1:]):
                if name in _own_fields(base) and _own_fields(base)[name] == default:
                    problems.append(f"{cls.__name__}.{name} repeats {base.__name__}.{name} = {default!r}")
        for other in classes:
            if other is cls or issubclass(cls, other) or issubclass(other, cls) or other.__name__ < cls.__name__:
                continue
            for name, default in _own_fields(cls).items():
                if name in _own_fields(other) and _own_fields(other)[name] == default:
                    problems.append(f"{cls.__name__}.{name} and {other.__name__}.{name} both declare {default!r}")
    assert not problems, problems


def test_a_renamed_option_is_read_under_its_old_name_with_a_warning(tmp_path):
    """DMD's dm_t_range is now t_range (one name with SiD): the old flag and config-file key still set it, warning."""
    from stepdistill.strategies.dmd import DMDConfig

    with pytest.warns(FutureWarning, match="--dm-t-range is now --t-range"):
        (dmd,) = parse_configs([DMDConfig], ["--dm-t-range", "0.1", "0.9"])
    assert dmd.t_range == [0.1, 0.9]
    path = tmp_path / "run.yaml"
    path.write_text("dm_t_range: [0.2, 0.8]\n")
    with pytest.warns(FutureWarning, match="'dm_t_range' in .*run.yaml is now called 't_range'"):
        (dmd,) = parse_configs([DMDConfig], ["--config", str(path)])
    assert dmd.t_range == [0.2, 0.8]


@pytest.mark.parametrize(
    "student",
    sorted(p.parent.name for p in __import__("pathlib").Path("benchmarks/students").glob("*/training_config.json")),
)
def test_the_kept_students_training_configs_load_as_config_files(student):
    """A kept student's training_config.json (written before options were renamed or added) is a --config of its own
    train script: every option resolves to the value the run used (renamed ones under their new names)."""
    import importlib
    import warnings

    from stepdistill.config import ModelConfig, upgrade_saved
    from stepdistill.trainer import TrainerConfig

    path = os.path.join("benchmarks", "students", student, "training_config.json")
    saved = json.load(open(path))
    method = next(k for k in saved if k not in ("TrainerConfig", "ModelConfig"))
    script = {v.split(":")[1]: k for k, v in SCRIPT_CONFIGS.items()}[method]
    module, name = SCRIPT_CONFIGS[script].split(":")
    classes = [TrainerConfig, ModelConfig, getattr(importlib.import_module(module), name)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        configs = parse_configs(classes, ["--config", path, "--output-dir", "elsewhere"])
        expected = upgrade_saved(saved, path)
    resolved = to_dict(*configs)
    for section, values in expected.items():
        for key, value in values.items():
            if key not in ("output_dir", "resume", "overwrite"):
                assert resolved[section][key] == value, f"{section}.{key}"

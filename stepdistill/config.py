"""Typed configs and the one helper that turns dataclasses into a command line.

Every config is a ``@dataclass`` whose fields are typed, have defaults and carry
``metadata={"help": ...}``; ``__post_init__`` validates and raises ``ValueError`` naming the field.
``parse_configs`` builds the CLI: a ``--preset NAME`` is the base, a ``--config run.yaml`` (or .json) file
overrides it, and flags override both. Unknown keys are errors, with a suggestion.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
import warnings
from typing import Any, Literal, get_args, get_origin


@dataclasses.dataclass
class ModelConfig:
    """The teacher and the data."""

    teacher: str = dataclasses.field(
        default="assets/fashion-teacher",
        metadata={
            "help": "teacher: a folder or Hub id of a UNet + scheduler, or of a Stable Diffusion (1.x/2.x) or SDXL "
            "pipeline"
        },
    )
    revision: str | None = dataclasses.field(default=None, metadata={"help": "Hub revision of the teacher"})
    variant: str | None = dataclasses.field(
        default=None, metadata={"help": "weight variant of the teacher's files (e.g. fp16 for fp16.safetensors)"}
    )
    student: str | None = dataclasses.field(
        default=None, metadata={"help": "initialise the student from this model folder (default: the teacher)"}
    )
    data: str = dataclasses.field(
        default="assets/fashion-mnist",
        metadata={
            "help": "training images: a folder of idx files or of images; for a text-to-image teacher a folder of "
            "captioned images (metadata.jsonl with file_name and text, diffusers' imagefolder layout)"
        },
    )
    dataset: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "training images from Hugging Face datasets, instead of --data: a Hub id, a local imagefolder "
            "(class subfolders, or metadata.jsonl with file_name and text) or a save_to_disk folder (pip install "
            "'stepdistill[data]')"
        },
    )
    dataset_split: str = dataclasses.field(default="train", metadata={"help": "the split of --dataset to train on"})
    image_column: str = dataclasses.field(default="image", metadata={"help": "--dataset's column of images"})
    label_column: str | None = dataclasses.field(
        default=None, metadata={"help": "--dataset's column of class labels (default: 'label' if it has one)"}
    )
    caption_column: str | None = dataclasses.field(
        default=None,
        metadata={"help": "--dataset's column of captions (default: the first of text, caption, prompt it has)"},
    )
    data_limit: int | None = dataclasses.field(default=None, metadata={"help": "use at most this many images"})
    prompts: str | None = dataclasses.field(
        default=None,
        metadata={"help": "text-to-image teachers: a prompt file (one per line), the data of data-free methods (SiD)"},
    )
    cache_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "text-to-image teachers: keep the VAE latents and prompt embeddings of the data here, "
            "computed once and reused by later runs on the same data"
        },
    )
    stream_data: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "read an image folder, a folder of webdataset-style .tar shards (key.png + key.cls) or a "
            "--dataset from disk batch by batch (--num-workers loader processes) instead of loading it into memory; "
            "unreadable files are skipped and counted"
        },
    )
    eval_every: int = dataclasses.field(
        default=0,
        metadata={"help": "steps between FD/accuracy evaluations of the student with the domain classifier (0: off)"},
    )
    eval_samples: int = dataclasses.field(default=1000, metadata={"help": "samples per evaluation"})
    classifier: str = dataclasses.field(
        default="assets/fashion-classifier", metadata={"help": "domain classifier folder for evaluations"}
    )

    def __post_init__(self):
        if self.data_limit is not None and self.data_limit < 1:
            raise ValueError(f"ModelConfig.data_limit must be positive, got {self.data_limit}.")
        if self.eval_every < 0 or self.eval_samples < 2:
            raise ValueError("ModelConfig.eval_every must be >= 0 and eval_samples >= 2.")


# Options renamed (old name -> new name): the old name is still read from flags, presets, config files and saved
# configs (resume, --config of an export's training_config.json), with a deprecation warning, for one release.
RENAMED_OPTIONS = {"dm_t_range": "t_range"}
# Options added since runs were saved, with the value that reproduces what those runs did: a saved config that lacks
# one matches a run that leaves it at this value (resume; the golden exports).
ADDED_OPTIONS = {
    "betas": [0.9, 0.999],
    "gan_generator_weight": 0.0,  # SiD's adversarial term (SiDA)
    "gan_critic_weight": 0.0,
    "gan_t_max": 1.0,
    "gan_features": "fake_score",
    "gan_t_sampling": "uniform",
    "gan_loss": "non_saturating",
    "gan_r1_weight": 0.0,
    "gan_warmup_steps": 0,
    "gan_lr": None,
    "dataset_split": "train",  # --dataset and its columns (None: --data, as before)
    "image_column": "image",
}


def added_at_default(name: str, value) -> bool:
    """Whether option ``name``, missing from a saved config, is one added since with ``value`` its old behaviour."""
    return name in ADDED_OPTIONS and value == ADDED_OPTIONS[name]


def upgrade_options(values: dict, where: str) -> dict:
    """``values`` (a flat mapping of option names) with renamed options under their new names, warning once per
    old name found in ``where``."""
    out = {}
    for key, value in values.items():
        if key in RENAMED_OPTIONS:
            new = RENAMED_OPTIONS[key]
            warnings.warn(
                f"Option {key!r} in {where} is now called {new!r}; the old name is read until the next release.",
                FutureWarning,
                stacklevel=3,
            )
            key = new
        out[key] = value
    return out


def upgrade_saved(config: dict, where: str) -> dict:
    """A saved resolved config (``to_dict``'s nesting by class name) in today's option names."""
    return {k: upgrade_options(v, where) if isinstance(v, dict) else v for k, v in config.items()}


def _base_type(tp):
    """Strip ``Optional[...]`` / ``X | None``; return (inner type, optional?)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, hints: dict) -> None:
    tp, optional = _base_type(hints[field.name])
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    help_text = field.metadata.get("help", "")
    kwargs: dict[str, Any] = {
        "dest": field.name,
        "default": argparse.SUPPRESS,
        "help": f"{help_text} (default: {default!r})",
    }
    flag = "--" + field.name.replace("_", "-")
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if get_origin(tp) is Literal:
        kwargs["choices"] = get_args(tp)
        kwargs["type"] = type(get_args(tp)[0])
    elif get_origin(tp) in (list, tuple):
        kwargs["nargs"] = "+"
        kwargs["type"] = get_args(tp)[0]
    elif tp in (int, float, str):
        kwargs["type"] = tp
    else:
        kwargs["type"] = str
    if optional:
        inner = kwargs.get("type", str)
        kwargs["type"] = lambda s, inner=inner: None if s.lower() == "none" else inner(s)
    parser.add_argument(flag, **kwargs)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a flat YAML or JSON mapping of field names to values."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"Config file {path!r} is not valid YAML: {err}".replace("\n", " ")) from None
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of option names to values.")
    if data and all(isinstance(v, dict) and k.endswith("Config") for k, v in data.items()):
        # a saved resolved config (an export's training_config.json, a run's config.json): one section per class
        data = {k: v for section in upgrade_saved(data, path).values() for k, v in section.items()}
        return {k: v for k, v in data.items() if k not in RUN_LOCAL_OPTIONS}
    return upgrade_options(data, path)


# options of one run, not of its recipe: a saved config read back as --config leaves them out
RUN_LOCAL_OPTIONS = ("output_dir", "resume", "overwrite")

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _coerce(name: str, value: Any, hint, where: str) -> Any:
    """A config-file value as its field's type: YAML reads ``1e-4`` as a string and ``no`` as ``False``; a value
    that cannot be read as the field's type is a ``ValueError`` naming the field."""
    tp, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"Option {name!r} in {where} cannot be empty.")
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()]
            if not isinstance(value, bool):
                raise ValueError
            return value
        if get_origin(tp) is Literal:
            choices = get_args(tp)
            if isinstance(value, bool):  # YAML 1.1: `no` -> False
                value = next((c for c in choices if _BOOL_WORDS.get(str(c).lower()) is value), value)
            if value not in choices:
                raise ValueError
            return value
        if get_origin(tp) in (list, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            inner = get_args(tp)[0]
            return [_coerce(name, v, inner, where) for v in items]
        if tp is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        expected = f"one of {list(get_args(tp))}" if get_origin(tp) is Literal else getattr(tp, "__name__", str(tp))
        raise ValueError(f"Option {name!r} in {where} must be {expected}, got {value!r}.") from None
    return value


def _check_keys(values: dict, known: set[str], where: str) -> None:
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown option {key!r} in {where}.{hint}")


def parse_configs(
    classes: list[type],
    argv: list[str] | None = None,
    presets: dict[str, dict] | None = None,
    description: str | None = None,
) -> tuple:
    """Build the configs ``classes`` from ``--preset NAME``, then ``--config FILE``, then flags (later wins).

    Field names must be unique across ``classes`` (the command line is flat).

    Returns:
        one instance per class, in order.
    """
    hints = {cls: typing.get_type_hints(cls) for cls in classes}
    owner: dict[str, type] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name in owner:
                raise TypeError(f"Option {f.name!r} is defined by both {owner[f.name].__name__} and {cls.__name__}.")
            owner[f.name] = cls
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file of options; flags given here override it")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), help="a named set of options (from the paper)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved options (preset, file and flags) as a YAML --config file, and exit",
    )
    for cls in classes:
        group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
        for f in dataclasses.fields(cls):
            _add_field(group, f, hints[cls])
    _add_renamed_flags(parser, owner)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    print_config = args.pop("print_config")
    preset = args.pop("preset", None)
    if preset:
        preset_values = upgrade_options(presets[preset], f"preset {preset!r}")
        _check_keys(preset_values, set(owner), f"preset {preset!r}")
        values.update(preset_values)
    config_path = args.pop("config", None)
    if config_path:
        file_values = load_config_file(config_path)
        _check_keys(file_values, set(owner), config_path)
        values.update({k: _coerce(k, v, hints[owner[k]][k], config_path) for k, v in file_values.items()})
    values.update(args)
    configs = tuple(cls(**{k: v for k, v in values.items() if owner[k] is cls}) for cls in classes)
    if print_config:
        print_options(configs)
        raise SystemExit(0)
    return configs


def print_options(configs) -> None:
    """Print ``configs`` as one flat YAML mapping that ``--config`` reads back (without the run's own folder and
    resume settings)."""
    import yaml

    flat = {k: v for section in to_dict(*configs).values() for k, v in section.items()}
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items() if k not in RUN_LOCAL_OPTIONS}
    print(yaml.safe_dump(flat, sort_keys=False), end="")


def _add_renamed_flags(parser: argparse.ArgumentParser, owner: dict[str, type]) -> None:
    """Hidden flags for renamed options (``RENAMED_OPTIONS``): they set the new option and warn."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            new = "--" + self.dest.replace("_", "-")
            warnings.warn(
                f"{option_string} is now {new}; the old flag is read until the next release.", FutureWarning, 2
            )
            setattr(namespace, self.dest, values)

    for old, new in RENAMED_OPTIONS.items():
        action = next((a for a in parser._actions if a.dest == new), None)
        if new in owner and action is not None:
            kwargs = {"nargs": action.nargs, "type": action.type, "default": argparse.SUPPRESS}
            parser.add_argument(
                "--" + old.replace("_", "-"), dest=new, action=Renamed, help=argparse.SUPPRESS, **kwargs
            )


def to_dict(*configs) -> dict:
    """The resolved configs as one JSON-ready dict keyed by class name (written next to checkpoints)."""
    return {type(c).__name__: dataclasses.asdict(c) for c in configs}

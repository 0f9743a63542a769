"""Checkpoint folders: listing, integrity (a manifest of file sizes), and checks that a checkpoint belongs to this run.

A checkpoint is ``OUTPUT_DIR/checkpoints/step-NNNNNNNN``: accelerate's state (weights in safetensors, optimizer and
RNG states loaded with ``weights_only``), ``trainer_state.pt`` (data position, step, EMA, strategy state; tensors and
plain values only, loaded with ``weights_only=True``, so opening a checkpoint never runs code), ``config.json`` (the
resolved config) and, written last, ``manifest.json`` (strategy name and every file's size). A folder becomes
visible by an atomic rename, so a kill during a save leaves only a ``.tmp-`` folder; the manifest also catches a
checkpoint damaged later (a truncated or deleted file).
"""

from __future__ import annotations

import json
import os
import re

from .config import upgrade_saved

CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
MANIFEST = "manifest.json"

# Options that may change between a run and its resumption (how long, how often, where to report); every other
# resolved option must match the checkpoint's.
RESUMABLE_CHANGES = {
    "output_dir",
    "resume",
    "overwrite",
    "max_steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "report_to",
    "num_workers",
    "max_bad_steps",
    "eval_every",
    "eval_samples",
    "classifier",
    # where computed-once inputs are kept (data latents, DMD's regression pairs): the inputs themselves are the same
    "cache_dir",
    "regression_cache",
}


def list_checkpoints(output_dir: str) -> list[str]:
    """Completed checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if CHECKPOINT_RE.match(n))
    return [os.path.join(folder, n) for n in names]


def checkpoint_step(folder: str) -> int:
    match = CHECKPOINT_RE.match(os.path.basename(os.path.normpath(folder)))
    if not match:
        raise ValueError(f"{folder!r} is not a checkpoint folder (expected .../checkpoints/step-NNNNNNNN).")
    return int(match.group(1))


def write_manifest(folder: str, strategy: str) -> None:
    """Record the strategy and every file's size; written last, after everything else in ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = os.path.getsize(path)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"strategy": strategy, "files": files}, f, indent=2)


def verify(folder: str) -> str | None:
    """``None`` if ``folder`` is complete, else what is wrong with it (missing manifest, missing or resized file)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"no readable {MANIFEST} ({err.__class__.__name__})"
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} when saved (truncated or replaced)"
    return None


def check_belongs(folder: str, strategy: str, config: dict) -> None:
    """Raise ``ValueError`` if the checkpoint was written by another strategy or with other settings."""
    with open(os.path.join(folder, MANIFEST)) as f:
        saved_strategy = json.load(f).get("strategy")
    if saved_strategy != strategy:
        raise ValueError(
            f"Checkpoint {folder!r} was written by strategy {saved_strategy!r}, but this run is {strategy!r}: "
            "resume it with its own train script, or start a new --output-dir."
        )
    with open(os.path.join(folder, "config.json")) as f:
        saved = _flat(upgrade_saved(json.load(f), folder))
    config = _flat(config)
    differ = [
        f"{key}: {saved.get(key)!r} in the checkpoint, {config.get(key)!r} now"
        for key in sorted(set(saved) | set(config))
        if key.rsplit(".", 1)[-1] not in RESUMABLE_CHANGES and saved.get(key) != config.get(key)
    ]
    if differ:
        raise ValueError(
            f"Checkpoint {folder!r} was written with other settings ({'; '.join(differ[:4])}"
            f"{'; ...' if len(differ) > 4 else ''}): resume with the same settings, or start a new --output-dir."
        )


def _flat(config: dict) -> dict:
    """``{"TrainerConfig": {"lr": ...}}`` -> ``{"TrainerConfig.lr": ...}`` (one level, as ``config.to_dict`` nests)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out

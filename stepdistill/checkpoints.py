"""Checkpoint folders: listing, integrity (a manifest of file sizes), and checks that a checkpoint belongs to this run.

A checkpoint is ``OUTPUT_DIR/checkpoints/step-NNNNNNNN``: accelerate's state (weights in safetensors, optimizer and
RNG states loaded with ``weights_only``), ``trainer_state.pt`` (data position, step, EMA, strategy state; tensors and
plain values only, loaded with ``weights_only=True``, so opening a checkpoint never runs code), ``config.json`` (the
resolved config) and, written last, ``manifest.json`` (strategy name and every file's size). A folder becomes
visible by an atomic rename, so a kill during a save leaves only a ``.tmp-`` folder; the manifest also catches a
checkpoint damaged later (a truncated or deleted file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable

import torch

from .config import added_at_default, upgrade_saved
from .io import read_jsonl

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
    # what the stop at non-finite values advises to change before --resume latest
    "lr",
    "fake_lr",
    "teacher_dtype",
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


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str, strategy: str) -> None:
    """Record the strategy and every file's size and SHA-256; written last, after everything else in ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"strategy": strategy, "files": files}, f, indent=2)


def verify(folder: str) -> str | None:
    """``None`` if ``folder`` is complete and intact, else what is wrong with it (missing manifest, missing, resized or
    altered file: the content hash catches damage that keeps the size). Manifests of older checkpoints record sizes
    only, and are checked for those."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"no readable {MANIFEST} ({err.__class__.__name__})"
    for name, record in files.items():
        size, digest = (record, None) if isinstance(record, int) else (record["size"], record["sha256"])
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} when saved (truncated or replaced)"
        if digest is not None and _sha256(path) != digest:
            return f"{name} differs from its content hash (damaged since it was saved)"
    return None


def check_belongs(folder: str, strategy: str, config: dict) -> list[str]:
    """Raise ``ValueError`` if the checkpoint was written by another strategy or with other settings; return the
    options (of ``RESUMABLE_CHANGES``) that this run changes, as ``"name: old -> new"``."""
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
    differ, changed = [], []
    for key in sorted(set(saved) | set(config)):
        name = key.rsplit(".", 1)[-1]
        if saved.get(key) == config.get(key) or (key not in saved and added_at_default(name, config[key])):
            continue
        line = f"{key}: {saved.get(key)!r} in the checkpoint, {config.get(key)!r} now"
        if name not in RESUMABLE_CHANGES:
            differ.append(line)
        elif name not in ("resume", "overwrite", "output_dir"):
            changed.append(f"{name}: {saved.get(key)!r} -> {config.get(key)!r}")
    if differ:
        raise ValueError(
            f"Checkpoint {folder!r} was written with other settings ({'; '.join(differ[:4])}"
            f"{'; ...' if len(differ) > 4 else ''}): resume with the same settings, or start a new --output-dir."
        )
    return changed


def _flat(config: dict) -> dict:
    """``{"TrainerConfig": {"lr": ...}}`` -> ``{"TrainerConfig.lr": ...}`` (one level, as ``config.to_dict`` nests)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- run folder
# what a run writes into its output folder (progressive distillation's exports are pipeline-<N>steps)
RUN_FILES = ("checkpoints", "grids", "log.jsonl", "training_curves.png", "config.json", "lora", "regression-pairs.pt")
RUN_PREFIXES = ("pipeline",)


def _run_entry(name: str) -> bool:
    return name in RUN_FILES or name.startswith(RUN_PREFIXES)


def _is_run_config(path: str) -> bool:
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "TrainerConfig" in saved


def _run_markers(output_dir: str) -> list[str]:
    """What shows that ``output_dir`` holds a run: its checkpoints and log, of those present."""
    return [n for n in ("checkpoints", "log.jsonl") if os.path.exists(os.path.join(output_dir, n))]


def check_output_dir(output_dir: str, resume: str | None) -> None:
    """Refuse an output folder that holds anything but a stepdistill run (a model folder, a dataset: a run would
    overwrite its ``config.json``), and a ``--resume`` checkpoint of another run folder when this folder holds a run of
    its own (resuming would truncate its log and replace its checkpoints and exports)."""
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise ValueError(f"--output-dir {output_dir!r} is a file: choose a folder.")
        return
    names = sorted(os.listdir(output_dir))
    foreign = [n for n in names if not _run_entry(n)]
    config = os.path.join(output_dir, "config.json")
    if os.path.isfile(config) and not _is_run_config(config):
        foreign.append("config.json (not a run's)")
    if foreign:
        raise ValueError(
            f"--output-dir {output_dir!r} holds files that no stepdistill run wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}): a run there could overwrite them (a model folder's config.json); "
            "choose an empty or new --output-dir."
        )
    if resume and resume != "latest" and _run_markers(output_dir):
        own = os.path.realpath(os.path.join(output_dir, "checkpoints"))
        if os.path.dirname(os.path.realpath(os.path.normpath(resume))) != own:
            raise ValueError(
                f"--resume {resume!r} is a checkpoint of another run folder, and --output-dir {output_dir!r} holds a "
                "run of its own that resuming would replace: resume into the checkpoint's own run folder, or into an "
                "empty --output-dir."
            )


def claim_output_dir(accelerator, output_dir: str, overwrite: bool) -> None:
    """Refuse to start in a folder that holds another run, unless ``overwrite``: then delete everything that run
    wrote (checkpoints, logs, grids, exports), so nothing of it is left behind. ``check_output_dir`` first."""
    check_output_dir(output_dir, None)
    previous = _run_markers(output_dir)
    if not previous:
        return
    if not overwrite:
        raise ValueError(
            f"{output_dir!r} already holds a run ({', '.join(previous)}): pass --resume "
            "latest to continue it, --overwrite to delete it and start over, or choose another --output-dir."
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in filter(_run_entry, os.listdir(output_dir)):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    accelerator.wait_for_everyone()


def write_run_config(output_dir: str, config: dict) -> None:
    """The run's resolved config, ``OUTPUT_DIR/config.json``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def truncate_log(log_path: str, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint by the run that crashed), so steps never repeat."""
    if not os.path.isfile(log_path):
        return
    kept = [
        json.dumps(entry) + "\n" for _, entry in read_jsonl(log_path, strict=False) if entry.get("step", 0) <= step
    ]
    with open(log_path, "w") as f:
        f.writelines(kept)


# ------------------------------------------------------------------------------------------- save / load
def save(
    accelerator, config, step: int, networks: dict, trainer_state: Callable[[], dict], resolved: dict, strategy: str
) -> str:
    """Save the training state at ``step`` to ``checkpoints/step-N``, atomically (all processes must call): accelerate's
    state, ``trainer_state()`` (tensors and plain values), the resolved config and the manifest, in a ``.tmp-`` folder
    renamed into place; then keep the newest ``config.keep_checkpoints``.

    Raises:
        FloatingPointError: if a network holds non-finite weights (the previous checkpoint stays the latest).
    """
    for name, network in networks.items():
        if not all(torch.isfinite(p).all() for p in network.parameters()):
            raise FloatingPointError(
                f"The {name} network has non-finite weights at step {step}; not saving a checkpoint (the "
                "previous one stays the latest). Lower the learning rate, then --resume latest."
            )
    folder = os.path.join(config.output_dir, "checkpoints")
    final = os.path.join(folder, f"step-{step:08d}")
    tmp = os.path.join(folder, f".tmp-step-{step:08d}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(tmp)
        if accelerator.is_main_process:
            torch.save(trainer_state(), os.path.join(tmp, "trainer_state.pt"))
            write_run_config(tmp, resolved)
            write_manifest(tmp, strategy)
    except OSError as err:  # a full disk: the partial folder is removed, the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"Could not write checkpoint {final!r} ({err.strerror or err}); removed the partial copy, the previous "
            f"checkpoint stays the latest: free space in {config.output_dir!r}, then --resume latest."
        ) from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)  # the only moment the checkpoint becomes visible
        for old in list_checkpoints(config.output_dir)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(
    accelerator, output_dir: str, which: str, strategy: str, resolved: dict, restore: Callable[[str], None]
) -> str:
    """Restore a run with ``restore(folder)`` from ``which``: a checkpoint folder, or ``"latest"`` (the newest
    complete one, falling back with a warning past any that are damaged). Refuses a checkpoint of another strategy
    or config (``check_belongs``). Returns the folder restored."""
    if which == "latest":
        candidates = list_checkpoints(output_dir)[::-1]
        if not candidates:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {output_dir}/checkpoints.")
    else:
        if not os.path.isdir(which):
            raise FileNotFoundError(f"Checkpoint {which!r} does not exist.")
        checkpoint_step(which)
        candidates = [which]
    config = json.loads(json.dumps(resolved))  # as it was saved
    for i, folder in enumerate(candidates):
        problem = verify(folder)
        if problem is None:
            changed = check_belongs(folder, strategy, config)
            if changed and accelerator.is_main_process:
                print(f"resuming {folder} with changed settings: {'; '.join(changed)}")
            try:
                restore(folder)
                return folder
            except Exception as err:  # noqa: BLE001  a damaged file of the right size: try the previous checkpoint
                problem = f"{type(err).__name__}: {err}"
        if i + 1 == len(candidates):
            raise ValueError(f"Cannot resume: checkpoint {folder!r} is damaged ({problem}) and none is older.")
        warnings.warn(
            f"Checkpoint {folder!r} is damaged ({problem}); resuming from {candidates[i + 1]!r} instead.", stacklevel=3
        )
    raise AssertionError("unreachable")

"""File helpers: atomic writes so that an interrupted save never replaces the last good copy."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def read_jsonl(path: str, strict: bool = True) -> list[tuple[int, object]]:
    """``(line number, value)`` of each non-empty line of a JSON-lines file. A line that is not JSON is a
    ``ValueError`` naming ``path:line``, or with ``strict=False`` (a log whose last line a crash cut off) dropped with
    a warning naming it."""
    import json
    import warnings

    out = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((number, json.loads(line)))
            except ValueError as err:
                if strict:
                    raise ValueError(f"{path}:{number} is not valid JSON ({err}).") from None
                warnings.warn(f"{path}:{number} is not valid JSON (cut off?); dropped it.", stacklevel=2)
    return out


def check_model_path(path: str) -> bool:
    """Whether ``path`` is a local folder (``True``) or may be sent to the Hub as a model id (``False``). A missing
    path that cannot be a Hub id ``owner/name``, or whose first part is close to a local folder's name (a mistyped
    ``asset/fashion-teacher``), is refused here, before any network request.

    Raises:
        FileNotFoundError: naming the path and, for a near miss, the local folder it probably means.
    """
    import difflib

    if os.path.isdir(path):
        return True
    top = path.split("/", 1)[0]
    if path.startswith((".", "/", "~")) or path.count("/") != 1 or os.path.isdir(top):
        raise FileNotFoundError(f"Model folder {path!r} does not exist (and it is not a Hub id 'owner/name').")
    near = difflib.get_close_matches(top, [d for d in os.listdir(".") if os.path.isdir(d)], n=1, cutoff=0.8)
    if near:
        raise FileNotFoundError(
            f"Model folder {path!r} does not exist; did you mean {near[0] + path[len(top) :]!r}? (It was not "
            f"sent to the Hub as a model id because a local folder {near[0]!r} looks like it.)"
        )
    return False


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    If the body raises (or the process dies), ``path`` keeps its previous content and the temporary
    folder is removed (or left as ``.tmp-*`` garbage that never shadows a good copy).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        yield tmp
        for root, _, files in os.walk(tmp):  # some writers (safetensors) create owner-only files
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file beside ``path`` and one rename: a killed run never leaves
    a half-written file for the next one to read."""
    import torch

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def hub_errors(path: str):
    """Turn a failure to reach the Hugging Face Hub for ``path`` (offline, no network, unknown id) into one
    ``FileNotFoundError`` that says to pass a local folder instead; local paths pass errors through unchanged."""
    try:
        yield
    except OSError as err:
        if os.path.isdir(path):
            raise
        raise FileNotFoundError(
            f"Could not load {path!r} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Download it where the Hub can be reached (`huggingface-cli download {path} --local-dir DIR`) and pass "
            "the local folder instead (--teacher DIR)."
        ) from err


def write_training_record(folder: str, previous: str, record: dict) -> None:
    """Write ``record`` as ``folder/training.json`` and keep the hand-written model card (``README.md``) of the
    ``previous`` version of the folder, if any: what the asset-training scripts write inside ``atomic_dir``."""
    import json

    with open(os.path.join(folder, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
    card = os.path.join(previous, "README.md")
    if os.path.isfile(card):
        shutil.copyfile(card, os.path.join(folder, "README.md"))

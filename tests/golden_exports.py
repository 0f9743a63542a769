"""Fingerprints of what every train script exports, for the golden-export test (``test_golden_exports.py``).

Each case trains a strategy for 2 steps on a tiny model at a fixed seed and exports it; ``fingerprint`` reduces the
folders written to one entry per file:

* text files (JSON, cards, pipeline code, tokenizer files): the SHA-256 of their bytes after the run's temporary
  folders are replaced by fixed names (JSON is hashed as parsed and re-dumped with sorted keys, so that only
  values count, not the order in which a dataclass lists its fields);
* ``training_config.json`` also whole: a recorded config matches today's once options renamed since are read under
  their new names (``config.upgrade_saved``) and options added since are at the value the recorded run used
  (``config.ADDED_OPTIONS``), so such a change is a named one, not a new golden file;
* weight files (``.safetensors``): the SHA-256 of the bytes and, per tensor, its shape, dtype, sum and sum of
  squares. The test accepts an equal SHA-256, or (another CPU may round float32 sums otherwise) equal shapes and
  sums within a tolerance far below one optimizer step's change.

Run ``python tests/golden_exports.py`` to print the table for the current code (``--write`` stores it in
``tests/golden_exports.json``); a change of a stored entry needs a commit that names why.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "golden_exports.json")
SEED = 0

# (case, teacher kind, script, flags); every registered strategy on the class-conditional UNet, its LoRA and GAN
# variants, and each text-to-image pipeline kind
CASES = [
    ("class-progressive", "class", "progressive", ["--teacher-steps", "4", "--target-steps", "2", "--steps-per-round", "2"]),
    ("class-consistency", "class", "consistency", ["--preset", "fashion", "--sample-steps", "2"]),
    ("class-consistency-lora", "class", "consistency", ["--preset", "fashion-lora", "--lora-rank", "4", "--sample-steps", "2"]),
    ("class-consistency-phased", "class", "consistency", ["--preset", "fashion", "--phases", "2", "--sample-steps", "2"]),
    ("class-dmd-gan", "class", "dmd", ["--preset", "fashion", "--generator-steps", "2"]),
    ("class-dmd-lora", "class", "dmd", ["--lora-rank", "4", "--lr", "1e-3"]),
    ("class-sid", "class", "sid", ["--preset", "fashion-lsg"]),
    ("class-sid-lora", "class", "sid", ["--preset", "fashion", "--lora-rank", "4", "--lr", "1e-3"]),
    ("sd15-progressive", "sd15", "progressive", ["--teacher-steps", "4", "--target-steps", "2", "--steps-per-round", "2"]),
    ("sd15-dmd-lora", "sd15", "dmd", ["--lora-rank", "4", "--lr", "1e-3", "--generator-steps", "2"]),
    ("sdxl-consistency", "sdxl", "consistency", ["--sample-steps", "2"]),
    ("sd3-consistency-lora", "sd3", "consistency", ["--lora-rank", "4", "--lr", "1e-3", "--sample-steps", "2"]),
    ("sd3-sid", "sd3", "sid", ["--preset", "fashion"]),
]  # fmt: skip


def build_teachers(root: str) -> dict[str, str]:
    """The tiny teachers (class-conditional UNet folder, SD 1.5-, SDXL- and SD3-shaped pipelines) and their data."""
    sys.path.insert(0, HERE)
    from conftest import tiny_scheduler, tiny_unet
    from tiny_text import PROMPTS, build_pipeline, build_sd3, captioned_folder

    folders = {"class": os.path.join(root, "class")}
    tiny_unet(num_classes=10).save_pretrained(os.path.join(folders["class"], "unet"))
    tiny_scheduler().save_pretrained(os.path.join(folders["class"], "scheduler"))
    folders["sd15"] = build_pipeline(os.path.join(root, "sd15"))
    folders["sdxl"] = build_pipeline(os.path.join(root, "sdxl"), sdxl=True)
    folders["sd3"] = build_sd3(os.path.join(root, "sd3"))
    folders["captions"] = captioned_folder(os.path.join(root, "captions"))
    folders["prompts"] = os.path.join(root, "prompts.txt")
    with open(folders["prompts"], "w") as f:
        f.write("\n".join(PROMPTS) + "\n")
    return folders


def run_case(case: str, folders: dict[str, str], out: str, global_seed: int = SEED) -> None:
    """Train ``case`` for 2 steps at the fixed ``--seed`` into ``out`` (its export folders land there), torch's global
    RNG seeded with ``global_seed`` before the script starts."""
    import importlib

    from conftest import reset_accelerate_state

    _, kind, script, flags = next(c for c in CASES if c[0] == case)
    if kind == "class":
        data = ["--data", os.path.join(ROOT, "assets", "fashion-mnist"), "--data-limit", "32"]
    else:
        data = ["--prompts", folders["prompts"]] if script == "sid" else ["--data", folders["captions"]]
    common = ["--max-steps", "2", "--batch-size", "4", "--seed", str(SEED), "--eval-every", "0"]
    reset_accelerate_state()
    torch.manual_seed(global_seed)  # the state of torch's global RNG before the script, whatever ran before it
    try:
        importlib.import_module(f"train.{script}").main(
            ["--teacher", folders[kind], *data, *common, "--output-dir", out, *flags]
        )
    finally:
        reset_accelerate_state()


EXPORTS = ("pipeline", "lora")  # the export folders of a run (progressive distillation's are pipeline-<N>steps)


def fingerprint(out: str, replace: dict[str, str]) -> dict[str, dict]:
    """``{relative path: entry}`` for every file of the run's export folders (see the module docstring)."""
    table = {}
    for name in sorted(os.listdir(out)):
        if not name.startswith(EXPORTS) or not os.path.isdir(os.path.join(out, name)):
            continue
        for folder, _, files in os.walk(os.path.join(out, name)):
            for file in files:
                path = os.path.join(folder, file)
                table[os.path.relpath(path, out)] = _entry(path, replace)
    return dict(sorted(table.items()))


def _entry(path: str, replace: dict[str, str]) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        tensors = {
            k: [list(v.shape), str(v.dtype), float(v.double().sum()), float(v.double().pow(2).sum())]
            for k, v in sorted(load_file(path).items())
        }
        return {"sha256": hashlib.sha256(raw).hexdigest(), "tensors": tensors}
    text = raw.decode()
    for old, new in replace.items():
        text = text.replace(old, new)
    if path.endswith(".json"):
        text = json.dumps(json.loads(text), sort_keys=True)
    entry = {"sha256": hashlib.sha256(text.encode()).hexdigest()}
    if os.path.basename(path) == "training_config.json":  # kept whole: options renamed or added since are named
        entry["config"] = json.loads(text)
    return entry


def same(entry: dict, golden: dict) -> str | None:
    """None when ``entry`` matches ``golden`` (see the module docstring), else what differs."""
    if entry["sha256"] == golden["sha256"]:
        return None
    if "config" in golden:  # the recorded config in today's option names (config.RENAMED_OPTIONS, ADDED_OPTIONS)
        import warnings

        from stepdistill.config import upgrade_saved

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            upgraded = upgrade_saved(golden["config"], "golden_exports.json")
        differ = _diff(upgraded, entry["config"])
        return f"config differs: {differ}" if differ else None
    if "tensors" not in golden or os.environ.get("STEPDISTILL_GOLDEN_STRICT"):
        return "content differs"
    if set(entry["tensors"]) != set(golden["tensors"]):
        return f"tensor names differ: {sorted(set(entry['tensors']) ^ set(golden['tensors']))[:5]}"
    for name, (shape, dtype, total, squares) in entry["tensors"].items():
        g_shape, g_dtype, g_total, g_squares = golden["tensors"][name]
        if (shape, dtype) != (g_shape, g_dtype):
            return f"{name}: {shape} {dtype}, expected {g_shape} {g_dtype}"
        n = max(1, int(torch.tensor(shape).prod()))
        tol = 1e-6 * n**0.5
        if abs(total - g_total) > tol + 1e-6 * abs(g_total) or abs(squares - g_squares) > tol + 1e-6 * g_squares:
            return f"{name}: sum {total} / {squares}, expected {g_total} / {g_squares}"
    return None


def _diff(saved: dict, now: dict) -> list[str]:
    """The options that differ between a recorded config and today's, but for options added since at the value the
    recorded run used (``config.added_at_default``)."""
    from stepdistill.config import added_at_default

    flat = [{f"{s}.{k}": v for s, part in d.items() for k, v in part.items()} for d in (saved, now)]
    return [
        f"{k}: {flat[0].get(k)!r} -> {flat[1].get(k)!r}"
        for k in sorted(set(flat[0]) | set(flat[1]))
        if flat[0].get(k) != flat[1].get(k)
        and not (k not in flat[0] and added_at_default(k.rsplit(".", 1)[-1], flat[1][k]))
    ]


# The fingerprints were recorded with two torch threads; float sums (matmuls, reductions) split over another number of
# threads round differently, so the cases always run with two (under pytest -n a worker otherwise has one).
THREADS = 2


def compute(cases: list[str], root: str) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _compute(cases, root)
    finally:
        torch.set_num_threads(threads)


def _compute(cases: list[str], root: str) -> dict[str, dict]:
    folders = build_teachers(os.path.join(root, "teachers"))
    replace = {os.path.join(root, "teachers"): "TEACHERS", os.path.join(root, "runs"): "RUNS", ROOT: "REPO"}
    result = {}
    for case in cases:
        out = os.path.join(root, "runs", case)
        run_case(case, folders, out)
        result[case] = fingerprint(out, replace)
    return result


if __name__ == "__main__":
    import tempfile

    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, ROOT)
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")] or [c[0] for c in CASES]
    with tempfile.TemporaryDirectory() as tmp:
        table = compute(wanted, tmp)
    if "--write" in sys.argv:
        stored = json.load(open(GOLDEN)) if os.path.isfile(GOLDEN) else {}
        stored.update(table)
        with open(GOLDEN, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
            f.write("\n")
    else:
        print(json.dumps(table, indent=1))

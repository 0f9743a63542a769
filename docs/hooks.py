"""mkdocs hooks: the repository's figures as site files, and the command-line reference generated from the scripts.

The pages link figures by their path in the repository (``benchmarks/teacher/fd_domain_vs_steps.png``), as the README
does; ``on_files`` adds those files to the site at the same paths. ``on_page_markdown`` replaces the marker
``<!-- cli-reference -->`` with each script's ``--help`` (built from the config dataclasses' field help), so the
reference cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
FIGURE_FOLDERS = ("benchmarks", "assets")
MARKER = "<!-- cli-reference -->"
# (script, what it is for), in the reference's order
SCRIPTS = [
    ("train/progressive.py", "progressive distillation (PD, guided PD)"),
    ("train/consistency.py", "consistency distillation (CD / LCM, LCM-LoRA, phased)"),
    ("train/scm.py", "continuous-time consistency distillation (sCD, rCM)"),
    ("train/meanflow.py", "MeanFlow distillation of a flow-map student"),
    ("train/dmd.py", "distribution matching distillation (DMD, DMD2)"),
    ("train/sid.py", "score identity distillation (SiD, SiD-LSG, SiDA / SiD²A)"),
    ("train/ladd.py", "latent adversarial diffusion distillation (LADD)"),
    ("train/teacher.py", "train a small class-conditional teacher"),
    ("train/text_teacher.py", "train a small text-to-image teacher"),
    ("eval/evaluate.py", "FD / FID / class accuracy / CLIP score of models, pipelines and image folders"),
    ("eval/sample.py", "a sample grid of a model or pipeline"),
    ("eval/bench.py", "trainer overhead, memory and pipeline speed"),
    ("eval/memory.py", "GPU memory estimate per strategy for SD-sized models"),
    ("eval/gan_probe.py", "how much signal a critic's features carry"),
    ("eval/step_outputs.py", "each step of a few-step student scored apart"),
]


def on_files(files, config):
    for folder in FIGURE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.png")):
            files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


def script_help(script: str) -> str:
    """``python SCRIPT --help`` as the script prints it, from its ``main`` in this process."""
    path = ROOT / script
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    argv, cwd, out = sys.argv, os.getcwd(), io.StringIO()
    os.environ["COLUMNS"] = "110"
    try:
        os.chdir(ROOT)
        sys.path.insert(0, str(ROOT))
        spec.loader.exec_module(module)
        sys.argv = [script, "--help"]
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            module.main()
    finally:
        sys.argv = argv
        sys.path.remove(str(ROOT))
        os.chdir(cwd)
    text = out.getvalue().strip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"{script} --help printed no usage text: {text[:200]!r}")
    return text


def cli_reference() -> str:
    parts = []
    for script, what in SCRIPTS:
        parts += [f"## `{script}`", "", what.capitalize() + ".", "", "```text", script_help(script), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown

"""The README and the documentation site: short, built strict and offline, and every documented command parses.

A command in a ``bash`` block of the README or of ``docs/`` that runs a train script is parsed by that script with
``--print-config`` appended (its preset, config file and flags resolve, and every option's checks pass); one that
runs a script with a ``build_parser`` is parsed by it; any other script's flags must appear in its ``--help``. The
long runs behind the measured numbers are not re-run here (their test-sized versions run in ``test_scripts.py``); the
short ones run as written (``runs_as_written``).
"""

import contextlib
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import load_script, run_entry_point

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = re.compile(r"^(?:train|eval)/[a-z_]+\.py$")


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, [script, args...])`` of every script command in the pages' ``bash`` blocks."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                words = shlex.split(line)
                start = next((i for i, w in enumerate(words) if SCRIPT.match(w)), None)
                if start is not None:
                    commands.append((f"{page.name}: {line[:80]}", words[start:]))
    return commands


COMMANDS = documented_commands()


@cache
def help_text(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_readme_is_short_and_the_pages_have_commands():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    scripts = {words[0] for _, words in COMMANDS}
    assert {"train/consistency.py", "train/dmd.py", "train/sid.py", "eval/evaluate.py"} <= scripts
    assert len(COMMANDS) >= 40


def runs_as_written(words: list[str]) -> bool:
    """The short documented commands, run as written (in a scratch folder) rather than only parsed: writing the
    data guide's captioned Fashion-MNIST subsets (--limit)."""
    return words[0] == "train/captioned_fashion.py" and "--limit" in words


@pytest.mark.parametrize("where, words", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where, words, monkeypatch, tmp_path):
    script, argv = words[0], words[1:]
    monkeypatch.chdir(ROOT)
    module = load_script(str(ROOT / script))
    if runs_as_written(words):
        (tmp_path / "assets").symlink_to(ROOT / "assets")  # the command's default --data, as in the repository
        monkeypatch.chdir(tmp_path)
        proc = run_entry_point(module.cli, words)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = tmp_path / argv[argv.index("--out") + 1]
        limit = int(argv[argv.index("--limit") + 1])
        written = list(out.glob("*.tar")) or list(out.rglob("*.png"))
        assert written and f"{limit} captioned images" in proc.stdout, (where, proc.stdout)
    elif hasattr(module, "PRESETS") and "argv" in inspect.signature(module.main).parameters:
        # a train script: its preset, config file and flags resolve and validate, then --print-config exits 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            module.main([*argv, "--print-config"])
        assert exit_.value.code == 0, where
        assert "max_steps:" in out.getvalue()
    elif hasattr(module, "build_parser"):
        module.build_parser().parse_args(argv)
    else:
        flags = [w.split("=", 1)[0] for w in argv if w.startswith("--")]
        missing = [f for f in flags if f not in help_text(script)]
        assert not missing, f"{where}: {script} has no {missing}"


def test_the_documentation_site_builds_strict_and_offline(tmp_path):
    """`make docs`' build: mkdocs --strict fails on a broken link, a missing page or a page left out of the nav;
    the CLI reference is generated from every script's --help."""
    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--print-config" in reference and "--dataset" in reference and "usage: scm.py" in reference
    for page in ("data", "export", "sid", "choosing"):
        assert (tmp_path / "site" / page / "index.html").is_file()
    assert (tmp_path / "site" / "benchmarks" / "teacher" / "fd_domain_vs_steps.png").is_file()

"""The code's shape: no function of the library, the train scripts or the evaluation scripts over 60 lines (split by
concept instead, STYLE.md)."""

import ast
import pathlib

MAX_LINES = 60


def test_no_function_is_longer_than_60_lines():
    long = []
    for folder in ("stepdistill", "train", "eval"):
        for path in sorted(pathlib.Path(folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long

"""Refactoring guard: every strategy's export (class-conditional pipeline, LoRA, SD 1.5, SDXL and SD3 pipelines) is
the same file for file as the one recorded in ``golden_exports.json`` (see ``golden_exports.py``)."""

import json

import pytest
from golden_exports import CASES, GOLDEN, compute, same


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return compute([c[0] for c in CASES], str(tmp_path_factory.mktemp("golden")))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_export_is_unchanged(exports, case):
    golden = json.load(open(GOLDEN))[case]
    written = exports[case]
    assert sorted(written) == sorted(golden), "the export writes other files"
    problems = {path: same(written[path], golden[path]) for path in golden}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}

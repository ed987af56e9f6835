"""The adversarial corpus (tests/helpers/adversarial.py), one test per case: broken and oddly
encoded data, I/O faults (a read-only and a full small filesystem, mounted where the test may),
symlink loops, a directory as -o, outputs aimed at inputs for every writing command, missing extras.

Each case must exit with its expected code (2 for bad input, with one ``error:`` line), show no
traceback, and leave its inputs and any previous output byte for byte as they were. The counts::

    PYTHONPATH=src:. python bench/adversarial_counts.py
"""

from __future__ import annotations

import pytest

from tests.helpers.adversarial import CASES, Context, run_case


@pytest.fixture(scope="module")
def ctx(tiny_dir, tmp_path_factory) -> Context:
    return Context(tiny=tiny_dir, scratch=tmp_path_factory.mktemp("adversarial"))


@pytest.mark.parametrize("name", list(CASES))
def test_adversarial_case(name, ctx, tmp_path):
    outcome = run_case(name, tmp_path, ctx)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert not outcome.traceback, outcome.stderr
    assert outcome.code == outcome.expect, outcome.stderr
    assert not outcome.damaged, f"changed: {outcome.damaged}"
    assert outcome.problem is None, f"{outcome.problem}\n{outcome.stderr}"

"""The CLI error boundary (medtune.cli.faults): expected faults are one line and exit 2."""

from __future__ import annotations

import errno
import json

import pytest

from medtune.cli.faults import fault_message, report


def _raised(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the point is to get the exception with its traceback
        return exc
    raise AssertionError("nothing raised")


def test_os_errors_name_the_real_path_not_the_temp_sibling():
    exc = OSError(errno.EROFS, "Read-only file system", "/data/.out.jsonl.0a1b2c3d.tmp")
    assert fault_message(exc) == "/data/out.jsonl: Read-only file system; read-only file system; write elsewhere"
    assert "disk is full" in fault_message(OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize("exc, expected", [
    (lambda: json.loads("[" * 100_000), "nested too deeply"),
    (lambda: b"\xff".decode("utf-8"), "not valid in its encoding"),
    (lambda: "x".encode("utf-99"), "unknown encoding: utf-99"),
])
def test_expected_faults_have_a_message(exc, expected):
    assert expected in fault_message(_raised(exc))


def test_a_missing_extra_names_the_pip_install():
    exc = ModuleNotFoundError("No module named 'gradio'", name="gradio")
    assert fault_message(exc) == "gradio is not installed; run: pip install 'medtune[web]'"


def test_a_library_value_error_is_expected_but_ours_is_an_internal_error(capsys):
    def ours():
        raise ValueError("bad state")

    assert fault_message(_raised(ours)) is None
    assert report(_raised(ours), verbose=False) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: ValueError: bad state (run with --verbose")
    assert "Traceback" not in err
    assert report(_raised(ours), verbose=True) == 1
    assert "Traceback" in capsys.readouterr().err
    import yaml

    assert fault_message(_raised(lambda: yaml.safe_load("a: ["))).startswith("yaml: ")


def test_require_extras_names_the_pip_install_for_a_missing_module(monkeypatch):
    import sys

    from medtune.cli.faults import require_extras
    from medtune.errors import MedtuneError

    require_extras("json")
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(MedtuneError, match=r"gradio is not installed; run: pip install 'medtune\[web\]'"):
        require_extras("gradio")

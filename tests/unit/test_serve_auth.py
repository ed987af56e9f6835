"""``medtune serve api`` / ``serve web`` authentication at start-up: empty keys refused, open hosts
refused without an explicit ``--no-auth``, a warning when loopback runs without a key."""

from __future__ import annotations

import pytest

from medtune.errors import MedtuneError


def api_args(*argv):
    from medtune.cli.main import build_parser

    return build_parser().parse_args(["serve", "api", "--model", "m", *argv])


@pytest.mark.parametrize("argv,environ,message", [
    (["--api-key", ""], {}, "--api-key is empty"),
    (["--api-key", "  "], {}, "--api-key is empty"),
    ([], {"MEDTUNE_API_KEY": ""}, "$MEDTUNE_API_KEY is empty"),
    (["--host", "0.0.0.0"], {}, "--no-auth"),
    (["--api-key", "k", "--no-auth"], {}, "contradict"),
])
def test_api_key_refusals(argv, environ, message):
    from medtune.cli.serve import api_key_of

    with pytest.raises(MedtuneError, match=message.replace("$", r"\$")):
        api_key_of(api_args(*argv), environ)


def test_api_key_sources_and_the_open_choices(capsys):
    from medtune.cli.serve import api_key_of

    assert api_key_of(api_args("--api-key", "k"), {"MEDTUNE_API_KEY": "env"}) == "k"
    assert api_key_of(api_args(), {"MEDTUNE_API_KEY": "env"}) == "env"
    assert api_key_of(api_args("--host", "0.0.0.0"), {"MEDTUNE_API_KEY": "env"}) == "env"
    assert capsys.readouterr().out == ""
    assert api_key_of(api_args(), {}) is None
    assert "unauthenticated" in capsys.readouterr().out
    assert api_key_of(api_args("--host", "0.0.0.0", "--no-auth"), {}) is None
    assert api_args().request_timeout == 600

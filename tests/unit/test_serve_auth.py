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


def web_args(*argv):
    from medtune.cli.main import build_parser

    return build_parser().parse_args(["serve", "web", "--model", "m", *argv])


@pytest.mark.parametrize("argv,message", [
    (["--share"], "--share without a login"),
    (["--host", "0.0.0.0"], "--host 0.0.0.0 without a login"),
    (["--auth", "doc:"], "--auth: expected USER:PASSWORD"),
    (["--auth", ":pw"], "--auth: expected USER:PASSWORD"),
    (["--auth", "nocolon"], "--auth: expected USER:PASSWORD"),
    (["--auth", "doc:pw", "--no-auth"], "contradict"),
])
def test_web_login_refusals(argv, message):
    from medtune.cli.webui import web_logins

    with pytest.raises(MedtuneError, match=message):
        web_logins(web_args(*argv))


def test_web_logins_from_flags_and_a_file(tmp_path):
    from medtune.cli.webui import web_logins

    logins = tmp_path / "logins.txt"
    logins.write_text("# staff\nnurse:s3cret:with:colons\n\n", encoding="utf-8")
    assert web_logins(web_args()) is None
    assert web_logins(web_args("--share", "--no-auth")) is None
    assert web_logins(web_args("--share", "--auth", "doc:pw", "--auth-file", str(logins))) == [
        ("doc", "pw"), ("nurse", "s3cret:with:colons")]
    logins.write_text("nurse:\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match="logins.txt:1: expected"):
        web_logins(web_args("--auth-file", str(logins)))


class FakeBlocks:
    def __init__(self):
        self.calls = {}

    def queue(self, **kw):
        self.calls["queue"] = kw

    def launch(self, **kw):
        self.calls["launch"] = kw
        return None, None, "https://x.gradio.live" if kw["share"] else None

    def block_thread(self):
        self.calls["blocked"] = True


def test_launch_passes_the_logins_to_gradio(capsys):
    from medtune.serving.webui import launch

    app = FakeBlocks()
    launch(app, "127.0.0.1", 7860, share=True, auth=[("doc", "pw")])
    assert app.calls["launch"]["auth"] == [("doc", "pw")] and app.calls["launch"]["share"] is True
    assert "public link: https://x.gradio.live" in capsys.readouterr().out
    app = FakeBlocks()
    launch(app, "127.0.0.1", 7860)
    assert app.calls["launch"]["auth"] is None


def test_share_warns_before_launching(monkeypatch, capsys):
    import medtune.cli.webui as cli

    monkeypatch.setattr(cli, "_check_port_free", lambda host, port: None)
    monkeypatch.setattr("medtune.inference.chat.ChatModel.load", lambda *a, **k: (_ for _ in ()).throw(SystemExit(7)))
    with pytest.raises(SystemExit):
        cli.cmd_serve_web(web_args("--share", "--auth", "doc:pw", "--db", "none"))
    out = capsys.readouterr().out
    assert out.index("warning: --share opens a public") < out.index("loading m")

"""``medtune serve web``: a Gradio chat page (streaming, stop, regenerate, clear) over one model.

Example::

    medtune model tiny -o runs/tiny
    medtune serve web --model runs/tiny --port 7860       # open http://127.0.0.1:7860
    medtune serve web --model runs/tiny --share --auth-file logins.txt   # public link, with a login

A non-loopback ``--host`` or ``--share`` (a public gradio.live link) needs ``--auth`` /
``--auth-file``, or ``--no-auth`` to say it is meant to be open; ``--share`` prints a warning first.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from medtune.cli.serve import LOOPBACK
from medtune.errors import MedtuneError


def cmd_serve_web(args) -> int:
    """Load the model, serve the chat page until interrupted (its URL is printed once it is up)."""
    from medtune.cli.faults import require_extras
    from medtune.cli.model_args import model_kwargs
    from medtune.inference.chat import ChatModel
    from medtune.serving.webui import build_app, launch

    require_extras("gradio")
    auth = web_logins(args)
    from medtune.cli.rag import reply_service

    service = reply_service(args)  # a bad --rag index fails before the model loads
    _check_port_free(args.host, args.port)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who can reach it can "
              f"{'try the login' if auth else 'chat with the model'}")
    if args.share:
        print("warning: --share opens a public gradio.live link through Gradio's servers: anyone with the "
              f"link can {'try the login' if auth else 'chat with the model'}", flush=True)
    print(f"loading {args.model} ...", flush=True)
    bot = ChatModel.load(args.model, **model_kwargs(args))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup probes, logged per request
    app = build_app(bot, args.model + (f" + {args.adapter}" if args.adapter else ""), service)
    launch(app, args.host, args.port, args.share, auth=auth)
    return 0


def web_logins(args) -> list[tuple[str, str]] | None:
    """Return the ``(user, password)`` logins of ``--auth`` and ``--auth-file`` (None: no login).

    Refused: an empty user or password, logins with ``--no-auth``, and no login for a non-loopback
    ``--host`` or ``--share`` unless ``--no-auth``.
    """
    logins = [_login(spec, "--auth") for spec in args.auth]
    if args.auth_file:
        try:
            text = Path(args.auth_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MedtuneError(f"--auth-file {args.auth_file}: cannot read it ({exc})") from None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                logins.append(_login(line.strip(), f"{args.auth_file}:{n}"))
        if not logins:
            raise MedtuneError(f"--auth-file {args.auth_file}: no USER:PASSWORD line")
    if logins and args.no_auth:
        raise MedtuneError("--no-auth and --auth / --auth-file contradict each other: pass one")
    exposed = [what for what, on in (("--share", args.share), (f"--host {args.host}", args.host not in LOOPBACK)) if on]
    if exposed and not logins and not args.no_auth:
        raise MedtuneError(f"{' and '.join(exposed)} without a login: anyone reaching it could use the model; "
                           "pass --auth USER:PASSWORD or --auth-file FILE, or --no-auth to serve it open")
    return logins or None


def _login(spec: str, where: str) -> tuple[str, str]:
    user, sep, password = spec.partition(":")
    if not sep or not user.strip() or not password:
        raise MedtuneError(f"{where}: expected USER:PASSWORD with both non-empty")
    return user, password


def _check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise MedtuneError(f"cannot serve on {host}:{port} ({exc.strerror}); "
                               f"pick another --port or stop what uses it") from None

"""``medtune serve web``: a Gradio chat page (streaming, stop, regenerate, clear) over one model.

Example::

    medtune model tiny -o runs/tiny
    medtune serve web --model runs/tiny --port 7860       # open http://127.0.0.1:7860
"""

from __future__ import annotations

import logging
import socket

from medtune.errors import MedtuneError


def cmd_serve_web(args) -> int:
    """Load the model, serve the chat page until interrupted (its URL is printed once it is up)."""
    from medtune.cli.faults import require_extras
    from medtune.cli.model_args import model_kwargs
    from medtune.inference.chat import ChatModel
    from medtune.serving.webui import build_app, launch

    require_extras("gradio")
    _check_port_free(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach it can chat with the model")
    print(f"loading {args.model} ...", flush=True)
    bot = ChatModel.load(args.model, **model_kwargs(args))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup probes, logged per request
    app = build_app(bot, args.model + (f" + {args.adapter}" if args.adapter else ""))
    launch(app, args.host, args.port, args.share)
    return 0


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

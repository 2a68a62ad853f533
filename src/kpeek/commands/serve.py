"""kpeek serve [PID...]: a local web page with the live diagram of the
descriptor, open-file and inode tables of chosen processes, refreshed every
few seconds. Listens on 127.0.0.1 only; the printed URL carries a random
token without which every request is refused."""

from __future__ import annotations

import argparse
import signal

from kpeek.commands.common import pid_number, seconds
from kpeek.errors import NotPermitted, NotSupported, UsageError
from kpeek.render import text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="live diagram of file tables in a local web page",
                       description=__doc__)
    p.add_argument("pid", type=pid_number, nargs="*", help="processes to show first")
    p.add_argument("--port", type=port_number, default=0,
                   help="port on 127.0.0.1, 1-65535 (default: any free)")
    p.add_argument("--interval", type=seconds(0.5, 86400), default=2.0, metavar="SECONDS",
                   help="how often the page refreshes (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kpeek.render.dot import have_dot
    from kpeek.web.server import LiveServer

    if not have_dot():
        raise NotSupported("Graphviz is not installed: install the graphviz package")
    try:
        server = LiveServer(args.port, args.pid, args.interval)
    except PermissionError as e:
        raise NotPermitted(f"cannot listen on port {args.port}: {e.strerror}") from e
    except OSError as e:
        raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror}") from e
    # SIGTERM (systemd, kill) stops it as Ctrl-C does: sockets closed, exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out = text.console()
        out.print(f"kpeek serve: open {server.url}", highlight=False, soft_wrap=True)
        out.print("(127.0.0.1 only; the token in the URL is required; Ctrl-C stops)",
                  style="dim", highlight=False)
        out.file.flush()
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535 (leave --port out for any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 1-65535")
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

"""Serve the demo shop API: ``python -m bastion.demo --host 127.0.0.1 --port 9001``.

``--fd N`` serves on an already-bound listening socket inherited as file descriptor ``N`` (tests bind the
socket first, so the port is known before the process starts and cannot be taken by anything else).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from bastion.demo.api import create_app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bastion.demo", description="Serve the demo shop API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9001, help="port to bind (default: 9001)")
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this already-bound listening socket instead of --host/--port")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug", "trace"],
                        help="uvicorn log level (default: warning)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        fd=args.fd,
        http="httptools",
        loop="uvloop",
        access_log=False,
        server_header=False,
        log_level=args.log_level,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())

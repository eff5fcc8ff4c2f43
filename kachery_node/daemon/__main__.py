"""``python -m kachery_node.daemon --storage-dir DIR [--port N] [--log-file FILE]``: run the daemon in
the foreground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import default_storage_dir
from ..errors import KacheryError
from .process import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kachery_node.daemon")
    parser.add_argument("--storage-dir", type=Path, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log there, rotated, instead of to stderr (as `kachery node start` does)")
    args = parser.parse_args()
    try:
        run(args.storage_dir or default_storage_dir(), args.host, args.port, log_file=args.log_file)
    except KacheryError as exc:
        print(f"kachery daemon: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Command line of the ``machnet`` package.

``python -m machnet sidecar [FLAGS...]`` runs the Machnet sidecar — the same program as the
``machnet`` binary, built into this wheel (``python -m machnet sidecar --help`` lists the
flags). The ``machnet-sidecar`` console script does the same. ``python -m machnet version``
prints the package version.
"""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python -m machnet COMMAND [ARGS...]

commands:
  sidecar [FLAGS...]   run the Machnet sidecar (same flags as the `machnet` binary;
                       `python -m machnet sidecar --help` lists them)
  version              print the package version
"""


def sidecar_main(argv: Optional[List[str]] = None) -> int:
    """Runs the sidecar with ``argv`` (default: ``sys.argv[1:]``) until SIGINT/SIGTERM; returns
    its exit status (0 clean stop, 1 start failure, 2 bad flags)."""
    from . import _machnet

    args = sys.argv[1:] if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    return _machnet.run_sidecar(list(args))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m machnet``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "sidecar":
        return sidecar_main(args[1:])
    if args[0] == "version":
        from . import __version__

        print(__version__)
        return 0
    sys.stderr.write(f"machnet: unknown command {args[0]!r}\n\n{USAGE}")
    return 2


def _console() -> None:
    sys.exit(sidecar_main())


if __name__ == "__main__":
    sys.exit(main())

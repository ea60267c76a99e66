"""User-facing errors and the CLI wrapper that turns them into one-line messages."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3  # training diverged (fcn8s.trainer): not fixed by restarting


class UserError(Exception):
    """A mistake in the user's input (config, paths, data): reported in one line, exit code 2."""


class ConfigError(UserError):
    """A configuration key is unknown, mistyped or out of range."""


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main`` and map user errors to a one-line message on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

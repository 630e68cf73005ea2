"""The command lines' shared error rule: bad input (a ``ValueError`` or a missing file) prints one line
``<name>: error: <message>`` on stderr and exits with a non-zero code, instead of a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_or_exit(name: str, run: Callable[..., T], *args, code: int = 2) -> T:
    """``run(*args)``, or exit with ``code`` and one line naming ``name`` when the input is bad."""
    try:
        return run(*args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(code)

"""User-facing errors: one line, a fix, exit status 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["UsageError", "cli_main"]

F = TypeVar("F", bound=Callable[..., object])


class UsageError(Exception):
    """Bad input a user can fix: unknown model, bad checkpoint, missing data, bad range.

    The message is one line that names the problem and the fix.
    """


def cli_main(fn: F) -> F:
    """Wrap a command's ``main`` so a UsageError prints one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted; finished results are kept, rerun to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]

"""User-facing errors: one line, a fix, exit status 2, no traceback."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["ArgumentParser", "DefaultsHelpFormatter", "UsageError", "check_out", "cli_main",
           "non_negative"]

F = TypeVar("F", bound=Callable[..., object])


class UsageError(Exception):
    """Bad input a user can fix: unknown model, bad checkpoint, missing data, bad range.

    The message is one line that names the problem and the fix.
    """


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help only where X says something: not for flags
    off by default, unset options, or help that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or d is False or d == argparse.SUPPRESS:
            return h
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command: argparse's own errors (an unknown option, a bad number)
    become one line and exit status 2 like every UsageError, not a usage block; help gives
    each option's default (``DefaultsHelpFormatter``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def non_negative(text: str) -> int:
    """An argparse ``type``: an integer >= 0 (seeds)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {v}")
    return v


def check_out(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as an output folder that can be made and written, else a UsageError; nothing is
    created (a rejected run leaves no empty folder behind)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is an existing file, not a folder: pass a folder path")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {out} cannot be made: {parent} is a file; pass another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out} cannot be written ({parent} is not writable): pass "
                         "another folder")
    return out


def cli_main(fn: F) -> F:
    """Wrap a command's ``main`` so a UsageError prints one line and exits with status 2, Ctrl-C
    says what is kept (130), and a reader that closed the pipe ends it quietly (141)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe is found here, not at interpreter exit
            return out
        except BrokenPipeError:  # `python -m ablate ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell tool would end
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted; finished results are kept, rerun to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]

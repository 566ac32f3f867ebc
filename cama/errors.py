"""Errors in what the user gave (a file, a path, a setting).

``train.py`` prints the message of an :class:`InputError` as the last lines of its output and exits
with status 2, also when jsonargparse wraps it while instantiating the model (its union error puts
the original message in the middle of a long text).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["InputError", "find_input_error", "exit_on_input_error"]


class InputError(Exception):
    """Marks an exception whose message tells the user what to fix; subclasses also derive from the
    built-in type that fits (``FileNotFoundError``, ``ValueError``)."""


def find_input_error(error: BaseException | None) -> InputError | None:
    """``error`` or the first :class:`InputError` among its causes / contexts, else ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def exit_on_input_error(prog: str) -> Iterator[None]:
    """Run a command line: an :class:`InputError` (itself or among the causes of what was raised)
    ends it with ``<prog>: error: <message>`` as the last lines on stderr and exit status 2."""
    try:
        yield
    except Exception as e:
        error = find_input_error(e)
        if error is None:
            raise
        sys.stdout.flush()
        print(f"\n{prog}: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

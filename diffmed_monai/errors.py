"""The package's refusals as the last lines of a command's output, not inside MONAI's chained traceback.

A refusal of bad input (a checkpoint that does not fit, a missing file, a stale store, a bad case, teacher weights)
is raised by this package as a ``ValueError``, an ``OSError`` or one of its own error classes, with a message that
names the file and the config key. Under ``python -m monai.bundle run`` MONAI re-raises it wrapped in its own
``RuntimeError`` ("Failed to evaluate ..."), so Python prints two or three chained tracebacks (60-150 lines) with the
message in the middle. :func:`install_excepthook` (the first step of every bundle config's ``initialize``: an
explicit choice of the bundle's command, never a side effect of importing the package) prints such an error as
``<error class>: <message>`` alone, as the last lines; anything else (a bug: ``TypeError``, ``IndexError``...,
or an error raised outside this package) keeps Python's full traceback, as does every error when the environment
variable ``DIFFMED_TRACEBACK`` is set to ``1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = ["format_project_error", "install_excepthook", "project_error"]

#: the package folder (``diffmed_monai``, or ``scripts`` in a packed bundle): where a refusal must be raised
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: set to 1 to see the full traceback of a refusal
TRACEBACK_ENV = "DIFFMED_TRACEBACK"


def _raised_here(err: BaseException) -> bool:
    """The innermost frame of ``err``'s traceback is in this package (its own ``raise``)."""
    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ is not None else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def project_error(err: BaseException) -> BaseException | None:
    """The refusal this package raised in the chain of ``err`` (``err`` or one of its causes), or ``None``.

    A refusal is a ``ValueError``, an ``OSError`` or an exception class defined in this package, raised by this
    package's code; the innermost such error of the chain is returned.
    """
    found, seen, cur = None, set(), err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        own_class = type(cur).__module__.split(".")[0] == __name__.split(".")[0]
        if isinstance(cur, (ValueError, OSError)) or (own_class and isinstance(cur, Exception)):
            if _raised_here(cur):
                found = cur
        cur = cur.__cause__ or cur.__context__
    return found


def format_project_error(err: BaseException) -> str:
    """``<class>: <message>`` of a refusal, preceded by how to see the full traceback."""
    return (f"(the run stopped on the error below; {TRACEBACK_ENV}=1 shows the full traceback)\n"
            f"{type(err).__name__}: {err}")


def _excepthook(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        error = None if os.environ.get(TRACEBACK_ENV) == "1" else project_error(exc)
        if error is None:
            previous(exc_type, exc, tb)
        else:
            sys.stderr.write(format_project_error(error) + "\n")
            sys.stderr.flush()

    hook.diffmed_previous = previous  # type: ignore[attr-defined]
    return hook


def install_excepthook() -> None:
    """Print uncaught refusals of this package as the last lines of output (see the module docstring).

    Only Python's default hook is replaced (a hook set by another tool, e.g. IPython's, is left alone); every other
    exception goes to it unchanged. Installing twice does nothing.
    """
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook(sys.__excepthook__)

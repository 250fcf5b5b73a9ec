"""Boolean config keys as people type them.

``python -m monai.bundle run ... --overwrite false`` hands the config the *string* ``"false"`` (python-fire only
turns ``False`` into a bool), and any non-empty string is true in Python. Every boolean key of the bundle and of the
``diffmed-monai`` command goes through :func:`as_bool` once, where it enters.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["as_bool", "parse_flags"]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def as_bool(value: Any, key: str) -> bool:
    """``value`` as a bool: ``True``/``False``, 0/1 and the strings ``true/false/yes/no/on/off/1/0`` (any case).

    Anything else (``"flase"``, ``2``, ``None``, a list...) raises ``ValueError`` naming the config ``key``, so a
    typo never silently becomes ``True``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (numbers.Integral, np.bool_)) and value in (0, 1):  # 0/1, numpy booleans
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"Config key `{key}` must be true or false (true/false/yes/no/1/0), got {value!r}.")


def parse_flags(function: Callable) -> Callable:
    """Wrap a command-line function so that its ``bool`` parameters go through :func:`as_bool` (the error names
    ``--<parameter>``); the signature and docstring stay ``function``'s, for python-fire's help."""
    signature = inspect.signature(function)
    flags = [name for name, p in signature.parameters.items() if p.annotation in (bool, "bool")]

    @functools.wraps(function)
    def parsed(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        for name in flags:
            if name in bound.arguments:
                bound.arguments[name] = as_bool(bound.arguments[name], f"--{name}")
        return function(*bound.args, **bound.kwargs)

    return parsed

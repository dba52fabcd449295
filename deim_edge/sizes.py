"""Image and input sizes as (height, width): the one conversion from "one int or a pair". No torch."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from .errors import ConfigError


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) of `size`: one int for a square, or (height, width); a one-item sequence is a square too."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        return int(size), int(size)
    try:
        sides = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        sides = ()
    if len(sides) == 1:
        return sides[0], sides[0]
    if len(sides) != 2:
        raise ConfigError(f"a size is one int or (height, width), got {size!r}")
    return sides

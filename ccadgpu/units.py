"""Byte sizes: parse ``"256MiB"``-style strings and print them back."""
from __future__ import annotations

import re

from .errors import InvalidArgumentError

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, what: str = "size") -> int:
    """Return ``value`` in bytes.  Accepts non-negative ints and strings such as ``"64KiB"``,
    ``"2 MiB"``, ``"1.5GiB"``, ``"100MB"`` (SI) or ``"4096"``.  ``K``/``M``/``G`` alone are binary."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, str)):
        n = int(value)
    elif isinstance(value, str):
        m = _RE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"{what}: cannot parse {value!r} (use e.g. 4096, '64KiB', '256MiB', '2GiB')")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if n != int(n):
            raise InvalidArgumentError(f"{what}: {value!r} is not a whole number of bytes")
        n = int(n)
    else:
        raise InvalidArgumentError(f"{what}: expected an int or a string like '64KiB', "
                                   f"got {type(value).__name__}")
    if n < 0:
        raise InvalidArgumentError(f"{what}: must not be negative, got {value!r}")
    return n


def format_bytes(n: float) -> str:
    """``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

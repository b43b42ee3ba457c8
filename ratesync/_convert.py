"""Converting configuration values (TOML values, or strings after ``${VAR}`` expansion)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._exceptions import ConfigurationError

__all__ = ["as_bool", "as_float", "as_int", "as_str", "opt_float", "opt_int"]


def as_float(value: Any, key: str, *, positive: bool = True, allow_zero: bool = False) -> float:
    """``value`` as a finite float: an int, a float or a numeric string."""
    if isinstance(value, bool):
        raise ConfigurationError(f"expected a number, got the boolean {value!r}", key=key)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigurationError(f"expected a number, got {value!r}", key=key) from None
    if not isinstance(value, int | float):
        raise ConfigurationError(f"expected a number, got {type(value).__name__} {value!r}", key=key)
    result = float(value)
    if not math.isfinite(result):
        raise ConfigurationError(f"expected a finite number, got {value!r}", key=key)
    if positive and (result < 0 or (result == 0 and not allow_zero)):
        raise ConfigurationError(f"must be {'zero or ' if allow_zero else ''}greater than zero, got {value!r}", key=key)
    return result


def as_int(value: Any, key: str, *, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``: an int, an integral float or a numeric string."""
    if isinstance(value, bool):
        raise ConfigurationError(f"expected an integer, got the boolean {value!r}", key=key)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigurationError(f"expected an integer, got {value!r}", key=key) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ConfigurationError(f"expected an integer, got {type(value).__name__} {value!r}", key=key)
    if value < minimum:
        raise ConfigurationError(f"must be at least {minimum}, got {value!r}", key=key)
    return value


def as_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"expected a string, got {type(value).__name__} {value!r}", key=key)
    return value


def as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    raise ConfigurationError(f"expected true or false, got {value!r}", key=key)


def opt_float(options: Mapping[str, Any], key: str, default: float | None = None, **kw: Any) -> float | None:
    value = options.get(key)
    return default if value is None else as_float(value, key, **kw)


def opt_int(options: Mapping[str, Any], key: str, default: int | None = None, **kw: Any) -> int | None:
    value = options.get(key)
    return default if value is None else as_int(value, key, **kw)

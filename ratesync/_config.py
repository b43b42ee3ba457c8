"""rate-sync.toml: finding it, ``${VAR}`` expansion, and a strict schema.

Every mistake raises :class:`ConfigurationError` naming the file, the table and the key. Nothing
is dropped or guessed: an unknown key is an error, not a warning.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._algorithms import FixedWindow, SlidingWindow, Spec, TokenBucket
from ._convert import as_float, as_int, as_str
from ._exceptions import ConfigurationError

__all__ = [
    "CONFIG_ENV",
    "Config",
    "LimiterConfig",
    "StoreConfig",
    "expand_env",
    "find_config",
    "parse_config",
    "read_config",
]

#: The environment variable naming the configuration file.
CONFIG_ENV = "RATE_SYNC_CONFIG"
#: Where the file is looked for, in order, when the variable is not set.
SEARCH_PATHS = ("rate-sync.toml", "config/rate-sync.toml")

ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")
LIMIT_KEYS = frozenset({"algorithm", "rate_per_second", "burst", "limit", "window_seconds"})
LIMITER_KEYS = LIMIT_KEYS | frozenset({"store", "store_id", "max_concurrent", "lease_seconds", "timeout", "limits"})
TOP_LEVEL = frozenset({"stores", "limiters", "http"})

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    store_id: str
    engine: str
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """A limiter's definition, as configured (``clone_limiter`` copies it with overrides)."""

    limiter_id: str
    store_id: str | None = None
    specs: tuple[Spec, ...] = ()
    max_concurrent: int | None = None
    lease_seconds: float | None = None
    timeout: float | None = None

    def with_overrides(self, new_id: str, overrides: Mapping[str, Any]) -> LimiterConfig:
        if not overrides:
            return replace(self, limiter_id=new_id)
        return limiter_config(new_id, {**self.as_options(), **overrides})

    def as_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "store_id": self.store_id,
            "max_concurrent": self.max_concurrent,
            "lease_seconds": self.lease_seconds,
            "timeout": self.timeout,
        }
        if self.specs:
            options.update(_spec_options(self.specs[0]))
            if len(self.specs) > 1:
                options["limits"] = [_spec_options(s) for s in self.specs[1:]]
        return options


@dataclass(frozen=True, slots=True)
class Config:
    path: str | None
    stores: dict[str, StoreConfig] = field(default_factory=dict)
    limiters: dict[str, LimiterConfig] = field(default_factory=dict)
    #: The raw ``[http]`` table, validated by ``ratesync_http``.
    http: dict[str, Any] = field(default_factory=dict)


def find_config(cwd: Path | None = None) -> Path | None:
    """``$RATE_SYNC_CONFIG``, else ``./rate-sync.toml``, else ``./config/rate-sync.toml``, else None."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigurationError(f"{CONFIG_ENV} names {env!r}, which is not a file")
        return path
    base = cwd or Path.cwd()
    for candidate in SEARCH_PATHS:
        path = base / candidate
        if path.is_file():
            return path
    return None


def read_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a rate-sync.toml file."""
    text_path = os.fspath(path)
    try:
        with open(text_path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigurationError("no such configuration file", path=text_path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"malformed TOML: {exc}", path=text_path) from None
    return parse_config(data, path=text_path)


def expand_env(value: Any, *, path: str | None, table: str, key: str) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string inside ``value``."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is None or (got == "" and default is not None):
                if default is None:
                    raise ConfigurationError(
                        f"environment variable {name} is not set and ${{{name}}} has no default "
                        f"(write ${{{name}:-default}})",
                        path=path,
                        table=table,
                        key=key,
                    )
                return default
            return got

        return _VAR.sub(sub, value) if "${" in value else value
    if isinstance(value, list):
        return [expand_env(v, path=path, table=table, key=key) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, path=path, table=table, key=f"{key}.{k}") for k, v in value.items()}
    return value


def parse_config(data: Mapping[str, Any], *, path: str | None = None) -> Config:
    """Validate a parsed TOML document (also usable with a dict built in code)."""
    for name in data:
        if name not in TOP_LEVEL:
            raise ConfigurationError(
                f"unknown table; known tables: {', '.join(sorted(TOP_LEVEL))}", path=path, table=name
            )
    stores_raw = _table(data, "stores", path)
    limiters_raw = _table(data, "limiters", path)
    stores: dict[str, StoreConfig] = {}
    for store_id, raw in stores_raw.items():
        table = f"stores.{store_id}"
        raw = _expect_table(raw, path, table)
        options = {k: expand_env(v, path=path, table=table, key=k) for k, v in raw.items()}
        engine = options.pop("engine", None)
        strategy = options.pop("strategy", None)
        if engine is not None and strategy is not None and engine != strategy:
            raise ConfigurationError(
                f"engine {engine!r} and strategy {strategy!r} disagree (they are the same setting)",
                path=path,
                table=table,
                key="engine",
            )
        engine = engine if engine is not None else strategy
        if engine is None:
            raise ConfigurationError('missing engine (e.g. engine = "memory")', path=path, table=table, key="engine")
        try:
            engine = as_str(engine, "engine")
            _check_store_options(engine, options)
        except ConfigurationError as exc:
            raise _located(exc, path, table) from None
        stores[store_id] = StoreConfig(store_id, engine, options)
    limiters: dict[str, LimiterConfig] = {}
    for limiter_id, raw in limiters_raw.items():
        table = f"limiters.{limiter_id}"
        raw = _expect_table(raw, path, table)
        options = {k: expand_env(v, path=path, table=table, key=k) for k, v in raw.items()}
        try:
            cfg = limiter_config(limiter_id, options)
        except ConfigurationError as exc:
            raise _located(exc, path, table) from None
        if cfg.store_id is not None and cfg.store_id not in stores:
            raise ConfigurationError(
                f"names the store {cfg.store_id!r}, which is not defined; defined stores: "
                f"{', '.join(sorted(stores)) or '(none)'}",
                path=path,
                table=table,
                key="store",
            )
        limiters[limiter_id] = cfg
    http = data.get("http", {})
    if not isinstance(http, dict):
        raise ConfigurationError("must be a table", path=path, table="http")
    http = {k: expand_env(v, path=path, table="http", key=k) for k, v in http.items()}
    return Config(path, stores, limiters, http)


def _check_store_options(engine: str, options: Mapping[str, Any]) -> None:
    from ._stores import COMMON_OPTIONS, ENGINES, ON_ERROR_VALUES

    if engine not in ENGINES:
        raise ConfigurationError(
            f"unknown store engine {engine!r}; known engines: {', '.join(sorted(ENGINES))}", key="engine"
        )
    # Checked without importing the backend, so a file can be validated without its client library.
    from ._stores import engine_options

    allowed = COMMON_OPTIONS | engine_options(engine)
    for key in options:
        if key not in allowed:
            raise ConfigurationError(
                f"unknown option for engine {engine!r}; known options: {', '.join(sorted(allowed))}", key=key
            )
    if "on_error" in options and options["on_error"] not in ON_ERROR_VALUES:
        raise ConfigurationError(
            f"must be one of {', '.join(ON_ERROR_VALUES)}, not {options['on_error']!r}", key="on_error"
        )


def limiter_config(limiter_id: str, options: Mapping[str, Any]) -> LimiterConfig:
    """Validate a limiter's options (from TOML or ``configure_limiter``)."""
    for key in options:
        if key not in LIMITER_KEYS:
            raise ConfigurationError(
                f"unknown option for limiter {limiter_id!r}; known options: {', '.join(sorted(LIMITER_KEYS))}",
                key=key,
            )
    store = options.get("store", options.get("store_id"))
    store_id = None if store is None else as_str(store, "store")
    specs: list[Spec] = []
    main = _spec({k: v for k, v in options.items() if k in LIMIT_KEYS}, required=False)
    if main is not None:
        specs.append(main)
    extra = options.get("limits") or []
    if not isinstance(extra, list):
        raise ConfigurationError("expected an array of tables ([[limiters.NAME.limits]])", key="limits")
    for i, raw in enumerate(extra):
        if isinstance(raw, TokenBucket | SlidingWindow | FixedWindow):
            specs.append(raw)
            continue
        if not isinstance(raw, dict):
            raise ConfigurationError("each entry must be a table", key=f"limits[{i}]")
        for key in raw:
            if key not in LIMIT_KEYS:
                raise ConfigurationError(
                    f"unknown option; known options: {', '.join(sorted(LIMIT_KEYS))}", key=f"limits[{i}].{key}"
                )
        try:
            spec = _spec(raw, required=True)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.detail, key=f"limits[{i}].{exc.key}") from None
        assert spec is not None
        specs.append(spec)
    max_concurrent = options.get("max_concurrent")
    max_concurrent = None if max_concurrent is None else as_int(max_concurrent, "max_concurrent")
    if not specs and max_concurrent is None:
        raise ConfigurationError(
            "no limit: give rate_per_second, limit with window_seconds, or max_concurrent", key="rate_per_second"
        )
    lease = options.get("lease_seconds")
    timeout = options.get("timeout")
    return LimiterConfig(
        limiter_id=limiter_id,
        store_id=store_id,
        specs=tuple(specs),
        max_concurrent=max_concurrent,
        lease_seconds=None if lease is None else as_float(lease, "lease_seconds"),
        timeout=None if timeout is None else as_float(timeout, "timeout", allow_zero=True),
    )


def _spec(options: Mapping[str, Any], *, required: bool) -> Spec | None:
    algorithm = options.get("algorithm")
    if algorithm is None:
        if options.get("rate_per_second") is not None or options.get("burst") is not None:
            algorithm = "token_bucket"
        elif options.get("limit") is not None or options.get("window_seconds") is not None:
            # Say so rather than pick one of the two window algorithms silently.
            raise ConfigurationError(
                'limit and window_seconds need an algorithm: "sliding_window" or "fixed_window"', key="algorithm"
            )
        elif required:
            raise ConfigurationError(
                "a limit needs rate_per_second, or limit with window_seconds", key="rate_per_second"
            )
        else:
            return None
    algorithm = as_str(algorithm, "algorithm")
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}", key="algorithm")
    if algorithm == "token_bucket":
        for wrong in ("limit", "window_seconds"):
            if options.get(wrong) is not None:
                raise ConfigurationError(
                    f"{wrong} belongs to sliding_window and fixed_window, not token_bucket "
                    "(token_bucket takes rate_per_second and burst)",
                    key=wrong,
                )
        if options.get("rate_per_second") is None:
            raise ConfigurationError("token_bucket needs rate_per_second", key="rate_per_second")
        rate = as_float(options["rate_per_second"], "rate_per_second")
        burst = as_int(options.get("burst", 1), "burst")
        return TokenBucket(rate, burst)
    for wrong in ("rate_per_second", "burst"):
        if options.get(wrong) is not None:
            raise ConfigurationError(
                f"{wrong} belongs to token_bucket, not {algorithm} ({algorithm} takes limit and window_seconds)",
                key=wrong,
            )
    for needed in ("limit", "window_seconds"):
        if options.get(needed) is None:
            raise ConfigurationError(f"{algorithm} needs {needed}", key=needed)
    limit = as_int(options["limit"], "limit")
    window = as_float(options["window_seconds"], "window_seconds")
    return SlidingWindow(limit, window) if algorithm == "sliding_window" else FixedWindow(limit, window)


def _spec_options(spec: Spec) -> dict[str, Any]:
    if isinstance(spec, TokenBucket):
        return {"algorithm": "token_bucket", "rate_per_second": spec.rate_per_second, "burst": spec.burst}
    if isinstance(spec, SlidingWindow):
        return {"algorithm": "sliding_window", "limit": spec.limit, "window_seconds": spec.window_seconds}
    if isinstance(spec, FixedWindow):
        return {"algorithm": "fixed_window", "limit": spec.limit, "window_seconds": spec.window_seconds}
    raise ConfigurationError(f"cannot configure {type(spec).__name__} as a limiter limit")


def _table(data: Mapping[str, Any], name: str, path: str | None) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigurationError("must be a table", path=path, table=name)
    return value


def _expect_table(value: Any, path: str | None, table: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"must be a table, got {type(value).__name__}", path=path, table=table)
    return value


def _located(exc: ConfigurationError, path: str | None, table: str) -> ConfigurationError:
    return ConfigurationError(exc.detail, path=path, table=table, key=exc.key)

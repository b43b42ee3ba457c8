"""The ``ratesync`` command: check a configuration, show limiter state, clear a key.

ratesync check [PATH]                    validate a rate-sync.toml (default: the one found)
ratesync status [LIMITER ...] [--key K]  limit, remaining and reset of each limiter, from its store
ratesync clear LIMITER [--key K]         forget a limiter's state for a key
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from ._config import find_config
from ._exceptions import RateSyncError
from ._registry import Registry

__all__ = ["main"]


def _registry(path: str | None) -> Registry:
    found = path or find_config()
    if found is None:
        raise SystemExit("ratesync: no configuration file (set RATE_SYNC_CONFIG or create ./rate-sync.toml)")
    return Registry(config=found)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def cmd_check(args: argparse.Namespace) -> int:
    reg = _registry(args.path)
    print(f"{reg.config_path}: ok")
    for store_id in reg.list_stores():
        print(f"  store {store_id}: {reg.get_store(store_id).describe()} on_error={reg.get_store(store_id).on_error}")
    for limiter_id in reg.list_limiters():
        print(f"  limiter {limiter_id}: {reg.get_limiter(limiter_id)!r}")
    if reg.http_config:
        print(f"  [http]: {', '.join(sorted(reg.http_config))}")
    reg.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reg = _registry(args.config)
    ids = args.limiters or reg.list_limiters()
    print(f"{'limiter':24} {'key':12} {'limit':>8} {'remaining':>10} {'reset (s)':>10} {'retry (s)':>10}")
    for limiter_id in ids:
        limiter = reg.get_limiter(limiter_id)
        s = limiter.state(args.key)
        print(
            f"{limiter_id:24} {args.key or '-':12} {_fmt(s.limit):>8} {_fmt(s.remaining):>10} "
            f"{s.reset_after:>10.3f} {s.retry_after:>10.3f}"
        )
    reg.close()
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    reg = _registry(args.config)
    limiter = reg.get_limiter(args.limiter)
    limiter.reset(args.key)
    print(
        f"cleared {args.limiter}"
        + (f" key {args.key!r}" if args.key else "")
        + f" ({', '.join(limiter.store_keys(args.key))})"
    )
    reg.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ratesync", description="rate-sync: check configuration, inspect limiters")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a rate-sync.toml")
    check.add_argument("path", nargs="?", help="the file (default: RATE_SYNC_CONFIG, ./rate-sync.toml, ...)")
    check.set_defaults(func=cmd_check)
    status = sub.add_parser("status", help="state of limiters, read from their stores (consumes nothing)")
    status.add_argument("limiters", nargs="*")
    status.add_argument("--key", default=None)
    status.add_argument("--config", default=None)
    status.set_defaults(func=cmd_status)
    clear = sub.add_parser("clear", help="forget a limiter's state for a key")
    clear.add_argument("limiter")
    clear.add_argument("--key", default=None)
    clear.add_argument("--config", default=None)
    clear.set_defaults(func=cmd_clear)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except RateSyncError as exc:
        print(f"ratesync: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per request through ratesync_http against plain clients: the steady measure.

Requests per second on a shared two-core VM move by +-10% from run to run, more than what
rate-sync adds. Instructions do not: ``valgrind --tool=callgrind`` counts them, the same for the
same code whatever else the machine is doing. This runs each client twice under callgrind (a short
and a long run of requests to a local upstream in a process of its own), so the difference is
the cost of the extra requests alone, without interpreter start-up and imports, and compares
rate-sync's clients with plain ones measured in the same run.

    python bench/bench_http_instructions.py [--styles github,none] [--short 200] [--long 600]
                                            [--learn-interval SECONDS]

Under callgrind a request takes over ten milliseconds (12.5 ms measured) instead of a few hundred
microseconds, so the default ``learn_interval`` (0.05 s) reads about one response in four here,
where at full speed it reads one in a hundred or more: with upstream headers, the counts here
overstate what reading costs. ``--learn-interval 0`` reads every response, the other bound.

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Minutes, not seconds: the clients run
about fifty times slower under it. The ratio is plain instructions over rate-sync's, read as the
fraction of plain throughput a CPU-bound client keeps (target of the requests-per-second
benchmark, bench_http.py: >= 0.95x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_http import LABELS, RULE, upstream_process

CLIENTS = {
    "httpx.Client": ("httpx", "httpx-limited"),
    "requests.Session": ("requests", "requests-limited"),
}


def run_client(kind: str, url: str, n: int, learn_interval: float | None = None) -> None:
    """The measured loop: ``n`` GET requests through one client (runs in the child under valgrind)."""
    import httpx
    import requests

    import ratesync
    from ratesync_http import RateLimitedSession, RateLimitedTransport

    options = {} if learn_interval is None else {"learn_interval": learn_interval}
    client: httpx.Client | requests.Session
    if kind == "httpx":
        client = httpx.Client()
    elif kind == "httpx-limited":
        client = httpx.Client(transport=RateLimitedTransport(hosts=RULE, registry=ratesync.Registry(), **options))
    elif kind == "requests":
        client = requests.Session()
    else:
        client = RateLimitedSession(hosts=RULE, registry=ratesync.Registry(), **options)
    for _ in range(n):
        client.get(url)


def instructions(kind: str, url: str, n: int, learn_interval: float | None) -> int:
    """Instructions callgrind counts for a whole child process running ``n`` requests."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            kind,
            url,
            str(n),
            *([] if learn_interval is None else ["--learn-interval", str(learn_interval)]),
        ],
        capture_output=True,
        text=True,
        check=True,
        # The same string hashes in every run: dict and set probes (and so the count) repeat.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")


def per_request(kind: str, url: str, short: int, long: int, learn_interval: float | None) -> float:
    long_run = instructions(kind, url, long, learn_interval)
    return (long_run - instructions(kind, url, short, learn_interval)) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", default="github,none", help="upstream header styles (bench_http's)")
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=600)
    parser.add_argument("--learn-interval", type=float, default=None, help="the clients' learn_interval")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, url, n = args.child
        run_client(kind, url, int(n), args.learn_interval)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    rows = []
    for style in args.styles.split(","):
        with upstream_process(style) as url:
            for name, (plain, limited) in CLIENTS.items():
                print(f"  {name}, {LABELS[style]} ...", file=sys.stderr, flush=True)
                p = per_request(plain, url, args.short, args.long, args.learn_interval)
                r = per_request(limited, url, args.short, args.long, args.learn_interval)
                rows.append((f"{name}, {LABELS[style]}", p, r))
    print(
        f"\ninstructions per request (callgrind, {args.long} - {args.short} requests),"
        " memory store, limit never reached\n"
    )
    header = ("client, upstream headers", "plain", "rate-sync", "added", "ratio")
    table = [header] + [
        (n, f"{p:,.0f}", f"{r:,.0f}", f"{r - p:+,.0f} ({(r - p) / p:+.1%})", f"{p / r:.3f}x") for n, p, r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

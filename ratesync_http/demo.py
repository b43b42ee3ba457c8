"""``python -m ratesync_http.demo``: a few hundred requests, many async workers, no 429.

Starts a local rate-limited upstream on 127.0.0.1 (a free port), then sends its requests through
:class:`~ratesync_http.RateLimitedTransport` from many asyncio workers, with an embedded
configuration on the memory store (no rate-sync.toml is read or needed). A progress line shows
what is happening; the summary gives the limit, the achieved rate, the 429s and the time spent
waiting. Exits 0 when every request succeeded without a single 429.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import TextIO

import httpx

import ratesync
from ratesync_http import RateLimitedTransport
from ratesync_http.testing import LocalUpstream

__all__ = ["main"]


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    upstream_limit = args.rate
    configured = round(upstream_limit * 0.95, 2)
    # The embedded configuration: what rate-sync.toml would say as
    #   [http.hosts."127.0.0.1"]
    #   rate_per_second = <95% of the upstream's limit>
    config = {"hosts": {"127.0.0.1": {"rate_per_second": configured}}}
    interactive = out.isatty()
    with LocalUpstream(limit=upstream_limit, window=1.0) as upstream:
        transport = RateLimitedTransport(config=config, registry=ratesync.Registry())
        url = upstream.url + "/items/{n}"
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(args.requests):
            queue.put_nowait(n)
        statuses: dict[int, int] = {}
        started = time.monotonic()

        async def worker(client: httpx.AsyncClient) -> None:
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                response = await client.get(url.format(n=n))
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        def progress_line() -> str:
            done = sum(statuses.values())
            elapsed = time.monotonic() - started
            m = transport.get_metrics()
            return (
                f"[{_bar(done, args.requests)}] {done:>4}/{args.requests}  "
                f"{done / elapsed if elapsed > 0 else 0.0:5.1f} req/s  "
                f"429s: {m.responses_429}  waits: {m.waits}"
            )

        async def show_progress() -> None:
            last_line = 0.0
            while True:
                await asyncio.sleep(0.1)
                if interactive:
                    out.write("\r" + progress_line())
                    out.flush()
                elif time.monotonic() - last_line >= 1.0:
                    last_line = time.monotonic()
                    out.write(progress_line() + "\n")
                    out.flush()

        out.write(
            f"rate-sync demo: {args.requests} requests from {args.workers} async workers to a local upstream "
            f"that allows {upstream_limit} per second ({upstream.url})\n"
        )
        out.flush()
        async with httpx.AsyncClient(transport=transport) as client:
            display = asyncio.create_task(show_progress())
            try:
                await asyncio.gather(*(worker(client) for _ in range(args.workers)))
            finally:
                display.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await display
        elapsed = time.monotonic() - started
        if interactive:
            out.write("\r" + progress_line() + "\n")
        else:
            out.write(progress_line() + "\n")
        stats = upstream.stats()
        m = transport.get_metrics()
        ok = statuses.get(200, 0)
        out.write(
            "\n"
            f"  upstream limit       {upstream_limit} requests per second (fixed window)\n"
            f"  configured limit     {configured:g} requests per second (token bucket, memory store)\n"
            f"  requests             {ok} ok of {args.requests} in {elapsed:.1f} s\n"
            f"  achieved rate        {stats.rate:.1f} requests per second "
            f"({stats.rate / upstream_limit:.0%} of the upstream's limit)\n"
            f"  429s received        {stats.rejected}\n"
            f"  time spent waiting   {m.wait_seconds_total:.1f} s over {m.waits} waits "
            f"(longest {m.wait_seconds_max:.2f} s), summed over the workers\n"
            f"  learned from headers {m.learned} responses ({m.unread} unread, their quota far from exhausted)\n"
        )
        success = stats.rejected == 0 and ok == args.requests
        out.write("\nOK: no request was refused.\n" if success else "\nFAILED: some requests were refused.\n")
        out.flush()
        return 0 if success else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ratesync_http.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="how many requests (default 300)")
    parser.add_argument("--workers", type=int, default=50, help="concurrent async workers (default 50)")
    parser.add_argument("--rate", type=int, default=50, help="the upstream's limit per second (default 50)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.workers < 1 or args.rate < 1:
        parser.error("--requests, --workers and --rate must be at least 1")
    return asyncio.run(_run(args, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())

"""The PostgreSQL store: every acquire is one statement, decided on the server by the database's clock.

Layout (created on first use, or by teams that migrate their schema themselves: see
``PostgresStore.schema_sql`` and ``docs/stores/postgres.md``), in schema ``schema`` with names
starting with ``table_prefix``:

- ``<prefix>state``: one row per key (``kind``, the state's numbers, ``expires_at``);
- ``<prefix>leases``: one row per concurrency lease (``key``, ``lease_id``, ``expires_at``);
- ``<prefix>meta``: the schema version and the cursor of the expired-row sweep;
- PL/pgSQL functions ``<prefix>acquire`` (a port of ``decide``/``peek``), ``<prefix>observe``
  (``quota_observe``), ``<prefix>lease_acquire`` and ``<prefix>reset``; the SQL is in
  ``ratesync/resources/postgres/schema.sql``.

One call is one statement (``SELECT * FROM <schema>.<prefix>acquire($1, ...)``): the function takes
a transaction-level advisory lock per key (in one global order), reads the clock
(``clock_timestamp()``, once the locks are held), decides, writes, and the commit releases the
locks. No client-side transaction, one round trip.

asyncpg is async-only and its pools are bound to the event loop they were created on: the async
API keeps one pool per running loop; the sync API runs on a :class:`~ratesync._portal.Portal` (a
loop in a daemon thread, started lazily, rebuilt after ``fork()``) with a pool of its own there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._algorithms import (
    Decision,
    FixedWindow,
    LeaseDecision,
    Observation,
    Quota,
    SlidingWindow,
    Spec,
    TokenBucket,
)
from .._exceptions import ConfigurationError, MissingDependencyError, StoreError
from .._portal import Portal
from ._base import OnError, Slot, redact_url
from ._portal_store import PortalStore

__all__ = ["SCHEMA_VERSION", "PostgresStore", "render_schema_sql"]

logger = logging.getLogger("ratesync")

T = TypeVar("T")

#: The version of ``schema.sql`` (stored in ``<prefix>meta``); a store installs its functions when
#: the database holds an older version (or none).
SCHEMA_VERSION = 2

_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_SYNC_COMMIT = frozenset({"on", "off", "local", "remote_write", "remote_apply"})

#: Spec class -> the ``kind`` column (a key reused with another algorithm starts afresh).
_KINDS: dict[type[Any], int] = {TokenBucket: 1, SlidingWindow: 2, FixedWindow: 3, Quota: 4}

# Pools that a forked child inherited from its parent: their sockets are the parent's, so the
# child must neither use nor close them (closing would end the parent's sessions). They are kept
# referenced here so that garbage collection never finalizes them in the child either.
_INHERITED: list[Any] = []


@functools.lru_cache(maxsize=4096)
def _spec_args(spec: Spec) -> tuple[int, float, float]:
    if isinstance(spec, TokenBucket):
        return 1, float(spec.rate_per_second), float(spec.burst)
    if isinstance(spec, SlidingWindow):
        return 2, float(spec.limit), float(spec.window_seconds)
    if isinstance(spec, FixedWindow):
        return 3, float(spec.limit), float(spec.window_seconds)
    if isinstance(spec, Quota):
        return 4, float(spec.max_cooldown), 0.0
    raise TypeError(f"unsupported limit spec {spec!r}")


def _lock_space(schema: str, prefix: str) -> int:
    """A signed 64-bit seed for the advisory-lock hashes of one installation (schema + prefix)."""
    digest = hashlib.sha256(f"ratesync:{schema}.{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def render_schema_sql(
    schema: str = "public", table_prefix: str = "ratesync_", *, unlogged: bool = False, create_schema: bool = True
) -> str:
    """The DDL of the store's tables and functions, for teams that migrate their schema themselves.

    Idempotent (``IF NOT EXISTS`` / ``CREATE OR REPLACE``); run it in one transaction.
    """
    _check_ident(schema, "schema")
    _check_ident(table_prefix, "table_prefix", allow_empty=True)
    template = resources.files("ratesync").joinpath("resources/postgres/schema.sql").read_text(encoding="utf-8")
    sql = (
        template.replace("{schema}", schema)
        .replace("{prefix}", table_prefix)
        .replace("{unlogged}", "UNLOGGED " if unlogged else "")
        .replace("{lock_space}", str(_lock_space(schema, table_prefix)))
        .replace("{version}", str(SCHEMA_VERSION))
    )
    if create_schema:
        sql = f"CREATE SCHEMA IF NOT EXISTS {schema};\n\n{sql}"
    return sql


def _check_ident(value: str, key: str, *, allow_empty: bool = False) -> None:
    if allow_empty and value == "":
        return
    if not _IDENT_RE.match(value) or len(value) > 40:
        raise ConfigurationError(
            f"must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 40 characters), not {value!r}", key=key
        )


@dataclass
class _Pool:
    """One asyncpg pool, bound to the loop it was created on (and to the process that made it).

    ``inflight`` holds, for each set of slots with a statement under way on this loop, the calls
    that arrived meanwhile (``(cost, max_wait, future)``): they go together in the next statement.
    """

    pool: Any
    pid: int = field(default_factory=os.getpid)
    inflight: dict[tuple[Slot, ...], list[tuple[int, float, asyncio.Future[Decision]]]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    schema_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _no_reset(connection: Any) -> None:
    """Pool release hook: nothing to reset (no session state is ever left), no extra round trip.

    asyncpg's default runs ``RESET ALL; ...`` on every release: a second round trip per call.
    Every statement of this store is a single autocommit call whose locks end with it.
    """


class PostgresStore(PortalStore):
    """Limiter state in PostgreSQL, decided by PL/pgSQL functions with the database's clock.

    ``url``: ``postgresql://user:password@host:5432/db`` (``?sslmode=require`` and the other
    parameters asyncpg reads from a URL work); ``None`` uses the ``PG*`` environment variables.
    ``ssl`` is passed to asyncpg (``"require"``, ``"verify-full"``, ``True`` or an
    ``ssl.SSLContext``). ``schema``/``table_prefix`` name the objects; with ``auto_create`` they
    are created on first use (idempotent, safe when many processes start at once), without it the
    store checks that ``render_schema_sql()`` was applied. ``unlogged`` creates the tables
    UNLOGGED (no WAL: faster, but emptied by crash recovery and not replicated);
    ``synchronous_commit`` is set on the store's own connections (``"off"`` by default: a commit
    returns before its WAL is flushed, so a database crash may forget the last fraction of a
    second of charges; ``None`` keeps the server's setting).
    """

    engine = "postgres"
    OPTIONS = frozenset(
        {
            "url",
            "schema",
            "table_prefix",
            "pool_size",
            "connect_timeout",
            "command_timeout",
            "ssl",
            "unlogged",
            "synchronous_commit",
            "auto_create",
            "application_name",
            "batch",
        }
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = "public",
        table_prefix: str = "ratesync_",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        ssl: Any = None,
        unlogged: bool = False,
        synchronous_commit: str | bool | None = "off",
        auto_create: bool = True,
        application_name: str = "ratesync",
        batch: bool = True,
        name: str = "",
        on_error: OnError = "closed",
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(name=name, on_error=on_error, retry_interval=retry_interval)
        _require_asyncpg()
        if url is not None:
            scheme = urlsplit(url).scheme
            if scheme not in ("postgres", "postgresql"):
                raise ConfigurationError(
                    f"expected a postgresql://user:password@host:port/database URL, got {redact_url(url)!r}", key="url"
                )
        _check_ident(schema, "schema")
        _check_ident(table_prefix, "table_prefix", allow_empty=True)
        if pool_size < 1:
            raise ConfigurationError(f"must be at least 1, got {pool_size!r}", key="pool_size")
        if isinstance(ssl, str) and ssl not in _SSL_MODES:
            raise ConfigurationError(f"must be one of {', '.join(sorted(_SSL_MODES))} or a boolean", key="ssl")
        if isinstance(synchronous_commit, bool):
            synchronous_commit = "on" if synchronous_commit else "off"
        if synchronous_commit is not None and synchronous_commit not in _SYNC_COMMIT:
            raise ConfigurationError(
                f"must be one of {', '.join(sorted(_SYNC_COMMIT))} or a boolean, not {synchronous_commit!r}",
                key="synchronous_commit",
            )
        self.url = url
        self.schema = schema
        self.table_prefix = table_prefix
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.ssl = ssl
        self.unlogged = unlogged
        self.synchronous_commit = synchronous_commit
        self.auto_create = auto_create
        self.application_name = application_name
        self.batch = batch
        password = urlsplit(url).password if url else None
        self._secrets = [password] if password else []
        # A synchronous call waits for a connection, for the statement under way on its key (see
        # batching) and for its own, plus a margin; each part is bounded by its own timeout.
        self._call_timeout = connect_timeout + 2 * command_timeout + 1.0
        self._lock = threading.Lock()
        self._portal: Portal | None = None
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._pool_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._ready = False
        self._errors: tuple[type[BaseException], ...] | None = None
        self._missing_schema_errors: tuple[type[BaseException], ...] | None = None
        t = f"{schema}.{table_prefix}"
        # ``SELECT f(...)``, one composite value (read with fetchval), rather than
        # ``SELECT * FROM f(...)``: no function scan materializing the row (measured: 10% of the
        # server's time per call).
        self._sql_acquire = f"SELECT {t}acquire($1, $2, $3, $4, $5, $6)"
        self._sql_acquire_at = f"SELECT {t}acquire($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        self._sql_batch = (
            f"SELECT allowed, wait, remaining, reset_after, lim FROM {t}acquire_batch($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        self._sql_peek = f"SELECT {t}acquire($1, $2, $3, $4, 1, 0, true)"
        self._sql_observe = f"SELECT {t}observe($1, $2, $3, $4, $5, $6, $7, $8)"
        self._sql_lease = f"SELECT {t}lease_acquire($1, $2, $3, $4, $5, $6)"
        self._sql_release = f"DELETE FROM {t}leases WHERE key = $1 AND lease_id = $2"
        self._sql_reset = f"SELECT {t}reset($1)"
        _stores.add(self)

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> PostgresStore:
        """Build the store from a ``[stores.<name>]`` table of rate-sync.toml."""
        from .._convert import as_bool, as_float, as_int, as_str

        kwargs: dict[str, Any] = {}
        if "url" in options:
            kwargs["url"] = as_str(options["url"], "url")
        for key in ("schema", "table_prefix", "application_name"):
            if key in options:
                kwargs[key] = as_str(options[key], key)
        if "pool_size" in options:
            kwargs["pool_size"] = as_int(options["pool_size"], "pool_size")
        for key in ("connect_timeout", "command_timeout", "retry_interval"):
            if key in options:
                kwargs[key] = as_float(options[key], key)
        for key in ("unlogged", "auto_create", "batch"):
            if key in options:
                kwargs[key] = as_bool(options[key], key)
        if "ssl" in options:
            ssl = options["ssl"]
            if not isinstance(ssl, bool):
                ssl = as_str(ssl, "ssl")
            kwargs["ssl"] = ssl
        if "synchronous_commit" in options:
            value = options["synchronous_commit"]
            if isinstance(value, str) and value.strip().lower() in ("default", ""):
                value = None
            elif not isinstance(value, bool):
                value = as_str(value, "synchronous_commit").strip().lower()
            kwargs["synchronous_commit"] = value
        return cls(name=name, on_error=options.get("on_error", "closed"), **kwargs)

    def describe(self) -> str:
        where = redact_url(self.url) if self.url else "(PG* environment)"
        return f"postgres {where} {self.schema}.{self.table_prefix}*"

    def schema_sql(self) -> str:
        """The DDL this store installs (or expects, with ``auto_create=False``)."""
        return render_schema_sql(self.schema, self.table_prefix, unlogged=self.unlogged)

    # -- errors ------------------------------------------------------------------------------

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        if self._errors is None:
            import asyncpg
            import asyncpg.exceptions as pgx

            self._errors = (
                *super()._backend_errors(),
                ConnectionError,
                # Lost or refused connections, a pool closing under the call.
                asyncpg.InterfaceError,
                pgx.PostgresConnectionError,
                # 57xxx: a terminated backend (AdminShutdownError), a server shutting down or
                # starting (CannotConnectNowError, CrashShutdownError), a statement timeout.
                pgx.OperatorInterventionError,
                # 53xxx: too many connections, out of memory, disk full.
                pgx.InsufficientResourcesError,
                # 58xxx: I/O errors on the server.
                pgx.PostgresSystemError,
                # A failover left us on a read-only standby.
                pgx.ReadOnlySQLTransactionError,
                pgx.InternalServerError,
            )
        return self._errors

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if self.url:
            text = text.replace(self.url, redact_url(self.url))
        return text

    # -- pools -------------------------------------------------------------------------------

    async def _pool(self) -> Any:
        """The pool of the running loop (created on first use), with the schema checked once."""
        return (await self._entry()).pool

    async def _entry(self) -> _Pool:
        loop = asyncio.get_running_loop()
        entry = self._pools.get(loop)
        if entry is None or entry.pid != os.getpid():
            entry = await self._open_pool(loop)
        if not self._ready:
            # The first calls of a loop wait for one check instead of each running their own.
            async with entry.schema_lock:
                if not self._ready:
                    await self._ensure_schema(entry.pool)
        return entry

    async def _open_pool(self, loop: asyncio.AbstractEventLoop) -> _Pool:
        with self._lock:
            self._forget_dead_loops()
            lock = self._pool_locks.get(loop)
            if lock is None:
                lock = self._pool_locks[loop] = asyncio.Lock()
        async with lock:
            entry = self._pools.get(loop)
            if entry is not None and entry.pid == os.getpid():
                return entry
            import asyncpg

            server_settings = {"application_name": self.application_name}
            if self.synchronous_commit is not None:
                server_settings["synchronous_commit"] = self.synchronous_commit
            kwargs: dict[str, Any] = {}
            if self.ssl is not None:
                kwargs["ssl"] = self.ssl
            # min_size 0: creating the pool never connects (and so never fails); connections are
            # made by the calls that need them, and a pool survives an outage without rebuilding.
            pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings=server_settings,
                reset=_no_reset,
                **kwargs,
            )
            entry = _Pool(pool)
            with self._lock:
                self._pools[loop] = entry
            return entry

    def _forget_dead_loops(self) -> None:
        # Pools of loops that have closed cannot be used or closed any more; pools inherited from
        # the parent after fork must not be touched. Called with self._lock held.
        pid = os.getpid()
        for loop, entry in list(self._pools.items()):
            if entry.pid != pid:
                _INHERITED.append(entry)
                del self._pools[loop]
            elif loop.is_closed():
                with contextlib.suppress(Exception):
                    entry.pool.terminate()
                del self._pools[loop]
        for loop in [lp for lp in self._pool_locks if lp.is_closed()]:
            del self._pool_locks[loop]

    async def _close_current(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._pools.pop(loop, None)
            self._pool_locks.pop(loop, None)
            self._forget_dead_loops()
        if entry is not None and entry.pid == os.getpid():
            if entry.tasks:
                # Batches under way finish (or fail) first: their callers are waiting for them.
                await asyncio.wait(list(entry.tasks), timeout=self.command_timeout)
            try:
                await asyncio.wait_for(entry.pool.close(), self.command_timeout)
            except Exception:
                # A pool that cannot close cleanly (the server is gone) is terminated instead.
                entry.pool.terminate()

    def initialize(self) -> None:
        """Connect (on the sync side) and create the tables and functions if missing."""
        self._sync(self._connect_and_check)

    async def ainitialize(self) -> None:
        """Connect on the running loop and create the tables and functions if missing."""
        await self._connect_and_check()

    async def _connect_and_check(self) -> None:
        pool = await self._pool()
        await pool.fetchval("SELECT 1", timeout=self.command_timeout)

    # -- schema ------------------------------------------------------------------------------

    def _missing_schema(self) -> tuple[type[BaseException], ...]:
        if self._missing_schema_errors is None:
            import asyncpg.exceptions as pgx

            self._missing_schema_errors = (
                pgx.UndefinedTableError,
                pgx.UndefinedFunctionError,
                pgx.InvalidSchemaNameError,
                pgx.UndefinedObjectError,
            )
        return self._missing_schema_errors

    async def _installed_version(self, conn: Any) -> int | None:
        try:
            value = await conn.fetchval(
                f"SELECT value FROM {self.schema}.{self.table_prefix}meta WHERE name = 'version'",
                timeout=self.command_timeout,
            )
        except self._missing_schema():
            return None
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    async def _ensure_schema(self, pool: Any) -> None:
        async with pool.acquire(timeout=self.connect_timeout) as conn:
            version = await self._installed_version(conn)
            if version is None or version < SCHEMA_VERSION:
                if not self.auto_create:
                    raise StoreError(
                        f"store {self.name!r} ({self.describe()}): the rate-sync tables are missing or older than "
                        f"version {SCHEMA_VERSION} and auto_create is off; apply PostgresStore.schema_sql() "
                        "(see docs/stores/postgres.md)"
                    )
                await self._install(conn)
            elif version > SCHEMA_VERSION:
                logger.warning(
                    "rate-sync store %r: the database holds schema version %d, newer than this library's %d",
                    self.name,
                    version,
                    SCHEMA_VERSION,
                )
            await self._check_persistence(conn)
        self._ready = True

    async def _install(self, conn: Any) -> None:
        schema_exists = await conn.fetchval(
            "SELECT true FROM pg_namespace WHERE nspname = $1", self.schema, timeout=self.command_timeout
        )
        sql = render_schema_sql(self.schema, self.table_prefix, unlogged=self.unlogged, create_schema=False)
        async with conn.transaction():
            # Many processes may start at once: one installs, the others wait here and then find
            # the current version (concurrent CREATE OR REPLACE FUNCTION would fail otherwise).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_space(self.schema, self.table_prefix) ^ 1)
            if not schema_exists:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            version = await self._installed_version_in_tx(conn)
            if version is None or version < SCHEMA_VERSION:
                await conn.execute(sql)
                logger.info("rate-sync store %r: installed schema version %d", self.name, SCHEMA_VERSION)

    async def _installed_version_in_tx(self, conn: Any) -> int | None:
        # Inside a transaction a failed statement would abort it: look the table up first.
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self.schema}.{self.table_prefix}meta")
        if not exists:
            return None
        value = await conn.fetchval(f"SELECT value FROM {self.schema}.{self.table_prefix}meta WHERE name = 'version'")
        return int(value) if value is not None and value.isdigit() else None

    async def _check_persistence(self, conn: Any) -> None:
        persistence = await conn.fetchval(
            "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1)",
            f"{self.schema}.{self.table_prefix}state",
            timeout=self.command_timeout,
        )
        wanted = "u" if self.unlogged else "p"
        if persistence is not None and persistence != wanted:
            logger.warning(
                "rate-sync store %r: table %s.%sstate is %s but unlogged=%s; the table keeps its kind "
                "(ALTER TABLE ... SET %s changes it)",
                self.name,
                self.schema,
                self.table_prefix,
                "UNLOGGED" if persistence == "u" else "LOGGED",
                self.unlogged,
                "UNLOGGED" if self.unlogged else "LOGGED",
            )

    # -- running statements --------------------------------------------------------------------

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._statement(sql, args, many=False)

    async def _statement(self, sql: str, args: tuple[Any, ...], *, many: bool, pool: Any = None) -> Any:
        if pool is None:
            pool = await self._pool()
        try:
            return await self._run_on(pool, sql, args, many)
        except self._missing_schema():
            if not self.auto_create:
                raise
            # Someone dropped the tables (or the schema) under a running store: install again, once.
            self._ready = False
            pool = await self._pool()
            return await self._run_on(pool, sql, args, many)
        except self._backend_errors() as exc:
            if self._secrets and any(s in str(exc) for s in self._secrets):
                raise StoreError(self._scrub(f"{type(exc).__name__}: {exc}")) from None
            raise

    async def _run_on(self, pool: Any, sql: str, args: tuple[Any, ...], many: bool) -> Any:
        # No timeouts passed here: asyncpg applies one to acquire() through asyncio.wait_for, a
        # task per call, which costs as much as a third of a call. Statements are bounded by the
        # pool's command_timeout, connecting by connect_timeout, and so a wait for a connection by
        # the statements ahead of it.
        async with pool.acquire() as conn:
            if many:
                return await conn.fetch(sql, *args)
            return await conn.fetchval(sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of ``sql`` through the running loop's pool (for tests and tools)."""
        pool = await self._pool()
        async with pool.acquire(timeout=self.connect_timeout) as conn:
            rows: list[Any] = await conn.fetch(sql, *args, timeout=self.command_timeout)
            return rows

    # -- operations (async; the sync API runs them on the portal) --------------------------------

    async def _run_acquire(
        self,
        slots: Sequence[Slot],
        cost: int,
        max_wait: float,
        *,
        now: float | None = None,
        base: float | None = None,
    ) -> Decision:
        keys, kinds, a, b = _encode_slots(slots)
        if now is not None or base is not None:
            row = await self._fetchval(self._sql_acquire_at, keys, kinds, a, b, cost, float(max_wait), False, now, base)
            return Decision(row[0], row[1], row[2], row[3], row[4])
        if not self.batch:
            row = await self._fetchval(self._sql_acquire, keys, kinds, a, b, cost, float(max_wait))
            return Decision(row[0], row[1], row[2], row[3], row[4])
        # Natural batching: while a statement for these slots is under way on this loop, calls for
        # the same slots wait for it and then go together in ONE statement (acquire_batch), decided
        # in arrival order. A call is never delayed when nothing is under way, and a hot key costs
        # one lock hand-over per batch instead of one per call.
        entry = await self._entry()
        signature = tuple(slots)
        queue = entry.inflight.get(signature)
        if queue is not None:
            future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
            queue.append((cost, float(max_wait), future))
            return await future
        entry.inflight[signature] = []
        try:
            row = await self._statement(
                self._sql_acquire, (keys, kinds, a, b, cost, float(max_wait)), many=False, pool=entry.pool
            )
            return Decision(row[0], row[1], row[2], row[3], row[4])
        finally:
            self._drain(entry, signature)

    def _drain(self, entry: _Pool, signature: tuple[Slot, ...]) -> None:
        """Send the calls that queued behind a finished statement, if any, as one batch."""
        queue = entry.inflight.get(signature)
        waiting = [item for item in queue if not item[2].done()] if queue else []
        if not waiting:
            entry.inflight.pop(signature, None)
            return
        entry.inflight[signature] = []
        task = asyncio.get_running_loop().create_task(self._run_batch(entry, signature, waiting))
        entry.tasks.add(task)
        task.add_done_callback(entry.tasks.discard)

    async def _run_batch(
        self,
        entry: _Pool,
        signature: tuple[Slot, ...],
        waiting: list[tuple[int, float, asyncio.Future[Decision]]],
    ) -> None:
        keys, kinds, a, b = _encode_slots(signature)
        try:
            if len(waiting) == 1:
                cost, max_wait, _ = waiting[0]
                rows = [await self._fetchval(self._sql_acquire, keys, kinds, a, b, cost, max_wait)]
            else:
                costs = [item[0] for item in waiting]
                max_waits = [item[1] for item in waiting]
                rows = await self._statement(
                    self._sql_batch, (keys, kinds, a, b, costs, max_waits, None, None), many=True
                )
        except BaseException as exc:
            for _, _, future in waiting:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, _, future), row in zip(waiting, rows, strict=True):
                if not future.done():
                    future.set_result(Decision(row[0], row[1], row[2], row[3], row[4]))
        finally:
            self._drain(entry, signature)

    async def _run_peek(
        self, slots: Sequence[Slot], *, now: float | None = None, base: float | None = None
    ) -> Decision:
        keys, kinds, a, b = _encode_slots(slots)
        if now is None and base is None:
            row = await self._fetchval(self._sql_peek, keys, kinds, a, b)
        else:
            row = await self._fetchval(self._sql_acquire_at, keys, kinds, a, b, 1, 0.0, True, now, base)
        return Decision(row[0], row[1], row[2], row[3], row[4])

    async def _run_observe(
        self, key: str, spec: Quota, obs: Observation, *, now: float | None = None, base: float | None = None
    ) -> None:
        await self._fetchval(
            self._sql_observe,
            key,
            float(spec.max_cooldown),
            float(obs.remaining),
            float(obs.reset_after),
            None if obs.limit is None else float(obs.limit),
            None if obs.window is None else float(obs.window),
            now,
            base,
        )

    async def _run_lease_acquire(
        self,
        key: str,
        limit: int,
        lease_seconds: float,
        lease_id: str,
        *,
        now: float | None = None,
        base: float | None = None,
    ) -> LeaseDecision:
        row = await self._fetchval(self._sql_lease, key, limit, float(lease_seconds), lease_id, now, base)
        retry_after = row[2] if row[2] is not None else math.inf
        return LeaseDecision(row[0], row[1], retry_after)

    async def _run_lease_release(self, key: str, lease_id: str) -> None:
        await self._fetchval(self._sql_release, key, lease_id)

    async def _run_reset(self, keys: Sequence[str]) -> None:
        await self._fetchval(self._sql_reset, list(keys))


def _encode_slots(slots: Sequence[Slot]) -> tuple[list[str], list[int], list[float], list[float]]:
    if len(slots) == 1:
        key, spec = slots[0]
        kind, x, y = _spec_args(spec)
        return [key], [kind], [x], [y]
    keys: list[str] = []
    kinds: list[int] = []
    a: list[float] = []
    b: list[float] = []
    for key, spec in slots:
        kind, x, y = _spec_args(spec)
        keys.append(key)
        kinds.append(kind)
        a.append(x)
        b.append(y)
    return keys, kinds, a, b


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        raise MissingDependencyError("asyncpg", "postgres", "the PostgreSQL store (engine = 'postgres')") from None


# Stores whose sync side may hold a pool on a portal: closed (pools first, then the loop) at exit.
# Registered after the portal module's own exit hook, so it runs before that one stops the loops.
_stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for store in list(_stores):
        with contextlib.suppress(Exception):
            store.close()

-- rate-sync PostgreSQL schema (version 1): tables and functions of the "postgres" store.
--
-- Placeholders, filled in by the store (and shown filled in for the defaults in
-- docs/stores/postgres.md): {schema} and {prefix} name the objects (schema "public", prefix
-- "ratesync_" by default), {unlogged} is "UNLOGGED " or "" (the `unlogged` option), and
-- {lock_space} is a number derived from schema and prefix that keeps this installation's advisory
-- locks apart from another's in the same database. Requires PostgreSQL 11 or later.
--
-- The functions are line-by-line ports of the pure reference in ratesync/_algorithms.py; the
-- tests in tests/postgres run them against it on golden and generated sequences.
--
-- Time. Every decision uses the database's clock, read with clock_timestamp() once the call holds
-- its locks (now() is the start of the transaction, which for a call that queued behind others is
-- stale: the call would be recorded earlier than it happened). The algorithms run on times
-- relative to a base: stored states hold absolute epoch seconds, read as `stored - base` and
-- written as `relative + base`. In production `base` is the clock and `now` is 0, so arithmetic
-- runs on small numbers (an epoch time in a float8 has a last bit of about 2.4e-7 s, above the
-- reference's EPSILON of 1e-9: computing on it directly would turn exact boundaries, such as a
-- fresh bucket's first call, into refusals of 1e-7 s). Tests pass p_now with base 0, which makes
-- every operation the reference's, bit for bit.
--
-- Concurrency. Every call that changes a key first takes a transaction-level advisory lock on the
-- key's hash (in one global order when a call has several keys, so two calls never deadlock),
-- then reads, decides and writes with plain statements, and the lock goes with the commit. The
-- whole call is one statement: one round trip, no client-side transaction.
--
-- Cleanup. A state row carries expires_at (from state_ttl: after it the row means the same as no
-- row); a lease row its own expiry. Each lease call deletes its key's expired leases; one call in
-- 64 also runs {prefix}sweep, which deletes a bounded batch of expired rows (state rows walked in
-- key order from a cursor kept in {prefix}meta, so the state table needs no index on expires_at
-- and its updates stay HOT). The sweep runs last, once the call holds all its locks: it only
-- takes row locks with SKIP LOCKED and then waits for nothing, so it can join no deadlock (swept
-- first, a call holding a swept row's lock could wait for a key whose holder waits for that row).

CREATE {unlogged}TABLE IF NOT EXISTS {schema}.{prefix}state (
    key        text COLLATE "C" PRIMARY KEY,
    kind       smallint NOT NULL,   -- 1 token bucket, 2 sliding window, 3 fixed window, 4 quota
    v1         float8,              -- TAT | - | window start | reset_at (absolute epoch seconds)
    v2         float8,              -- - | - | count | remaining
    v3         float8,              -- quota: the upstream's limit (NULL: unknown)
    v4         float8,              -- quota: the upstream's window (NULL: unknown)
    ts         float8[],            -- sliding window: entry times (absolute), oldest first
    cs         integer[],           -- sliding window: entry costs
    expires_at float8 NOT NULL      -- absolute epoch seconds; a row past it is no row
) WITH (fillfactor = 50);

CREATE {unlogged}TABLE IF NOT EXISTS {schema}.{prefix}leases (
    key        text COLLATE "C" NOT NULL,
    lease_id   text COLLATE "C" NOT NULL,
    expires_at float8 NOT NULL,
    PRIMARY KEY (key, lease_id)
);

CREATE INDEX IF NOT EXISTS {prefix}leases_expires_at ON {schema}.{prefix}leases (expires_at);

CREATE TABLE IF NOT EXISTS {schema}.{prefix}meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO {schema}.{prefix}meta (name, value) VALUES ('sweep', '') ON CONFLICT (name) DO NOTHING;

-- A state kept as it is (a refused limit), with its expiry from state_ttl at p_ttl_now. A call
-- admitted over several limits writes every limit's state back, even one that refused at the
-- placement (which the reference allows for a quota), as the reference store does.
CREATE OR REPLACE FUNCTION {schema}.{prefix}unchanged(
    p_kind smallint, p_b float8, p_row {schema}.{prefix}state, p_base float8, p_ttl_now float8)
RETURNS {schema}.{prefix}state LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_end float8;
BEGIN
    IF p_row.kind IS NULL THEN
        RETURN p_row;
    END IF;
    v_end := CASE p_kind
        WHEN 1 THEN p_row.v1 - p_base
        WHEN 2 THEN CASE WHEN cardinality(p_row.ts) > 0 THEN p_row.ts[cardinality(p_row.ts)] - p_base + p_b END
        WHEN 3 THEN p_row.v1 - p_base + p_b
        ELSE p_row.v1 - p_base + coalesce(p_row.v4, 0.0)
    END;
    p_row.expires_at := (p_base + p_ttl_now) + greatest(0.0, coalesce(v_end - p_ttl_now, 0.0));
    RETURN p_row;
END
$fn$;

-- One limit, decided: a port of token_bucket / sliding_window / fixed_window / quota.
-- p_row is the live state (NULL if none); o_row the state to store (o_row.kind NULL: none), its
-- expires_at from state_ttl at p_ttl_now (the call's clock; p_now is later for a placed call).
-- Spec: p_kind 1 = TokenBucket(p_a rate, p_b burst), 2 = SlidingWindow(p_a limit, p_b window),
-- 3 = FixedWindow(p_a limit, p_b window), 4 = Quota.
CREATE OR REPLACE FUNCTION {schema}.{prefix}step(
    p_kind smallint, p_a float8, p_b float8, p_row {schema}.{prefix}state,
    p_now float8, p_cost integer, p_max_wait float8, p_base float8, p_ttl_now float8,
    OUT o_allowed boolean, OUT o_wait float8, OUT o_remaining float8, OUT o_reset_after float8,
    OUT o_limit float8, OUT o_row {schema}.{prefix}state)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    eps CONSTANT float8 := 1e-9;
    has boolean := p_row.kind IS NOT NULL;
    v_interval float8; v_span float8; v_tat float8; v_new_tat float8;
    v_w float8; v_start float8; v_count float8; v_current float8; v_room float8;
    n integer; i integer; j integer; i1 integer; i2 integer;
    v_t0 float8; v_at float8; v_used integer; v_need integer; v_freed integer;
    v_reset_at float8; v_rem float8; v_qlim float8; v_qwin float8;
    v_new_reset float8; v_new_rem float8;
BEGIN
    o_row.kind := NULL;
    IF p_kind = 1 THEN
        -- Token bucket (GCRA): the state is the theoretical arrival time of the next call.
        v_interval := 1.0 / p_a;
        v_span := p_b * v_interval;
        v_tat := CASE WHEN has THEN p_row.v1 - p_base END;
        IF v_tat IS NULL OR v_tat < p_now THEN
            v_tat := p_now;
        END IF;
        v_new_tat := v_tat + p_cost * v_interval;
        v_w := v_new_tat - v_span - p_now;
        IF v_w <= eps THEN
            v_w := 0.0;
        END IF;
        o_limit := p_b;
        IF v_w <= p_max_wait + eps THEN
            o_allowed := true;
            o_wait := v_w;
            o_remaining := CASE WHEN v_w = 0.0
                THEN greatest(0.0, floor((v_span - (v_new_tat - p_now)) / v_interval + eps)) ELSE 0.0 END;
            o_reset_after := v_new_tat - p_now;
            o_row.kind := 1;
            o_row.v1 := v_new_tat + p_base;
            o_row.expires_at := (p_base + p_ttl_now) + greatest(0.0, v_new_tat - p_ttl_now);
        ELSE
            o_allowed := false;
            o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
            o_wait := v_w;
            o_remaining := greatest(0.0, floor((v_span - (v_tat - p_now)) / v_interval + eps));
            o_reset_after := v_tat - p_now;
        END IF;
        RETURN;
    END IF;

    IF p_kind = 2 THEN
        -- Sliding window: an exact log of (time, cost) entries, oldest first. The entries still
        -- in the window are a suffix of the log (times never decrease): i is its first index.
        o_limit := p_a;
        n := CASE WHEN has THEN coalesce(cardinality(p_row.ts), 0) ELSE 0 END;
        i := 1;
        WHILE i <= n AND NOT (p_row.ts[i] - p_base > p_now - p_b) LOOP
            i := i + 1;
        END LOOP;
        IF p_cost > p_a THEN
            v_used := 0;
            FOR j IN i..n LOOP
                v_used := v_used + p_row.cs[j];
            END LOOP;
            o_allowed := false;
            o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
            o_wait := 'Infinity';
            o_remaining := greatest(0.0, p_a - v_used);
            o_reset_after := CASE WHEN i <= n THEN p_row.ts[n] - p_base + p_b - p_now ELSE 0.0 END;
            RETURN;
        END IF;
        v_t0 := CASE WHEN i <= n THEN greatest(p_now, p_row.ts[n] - p_base) ELSE p_now END;
        i1 := i;
        WHILE i1 <= n AND NOT (p_row.ts[i1] - p_base > v_t0 - p_b) LOOP
            i1 := i1 + 1;
        END LOOP;
        v_used := 0;
        FOR j IN i1..n LOOP
            v_used := v_used + p_row.cs[j];
        END LOOP;
        v_at := v_t0;
        IF v_used + p_cost > p_a THEN
            v_need := v_used + p_cost - p_a;
            v_freed := 0;
            FOR j IN i1..n LOOP
                v_freed := v_freed + p_row.cs[j];
                IF v_freed >= v_need THEN
                    v_at := p_row.ts[j] - p_base + p_b;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        v_w := v_at - p_now;
        IF v_w <= eps THEN
            v_w := 0.0;
        END IF;
        IF v_w <= p_max_wait + eps THEN
            i2 := i;
            WHILE i2 <= n AND NOT (p_row.ts[i2] - p_base > v_at - p_b) LOOP
                i2 := i2 + 1;
            END LOOP;
            v_used := 0;
            FOR j IN i2..n LOOP
                v_used := v_used + p_row.cs[j];
            END LOOP;
            o_allowed := true;
            o_wait := v_w;
            o_remaining := greatest(0.0, CASE WHEN v_w = 0.0 THEN p_a - v_used - p_cost ELSE 0.0 END);
            o_reset_after := v_at + p_b - p_now;
            o_row.kind := 2;
            IF i2 <= n THEN
                o_row.ts := p_row.ts[i2:n] || (v_at + p_base);
                o_row.cs := p_row.cs[i2:n] || p_cost;
            ELSE
                o_row.ts := ARRAY[v_at + p_base];
                o_row.cs := ARRAY[p_cost];
            END IF;
            o_row.expires_at := (p_base + p_ttl_now) + greatest(0.0, v_at + p_b - p_ttl_now);
        ELSE
            v_used := 0;
            FOR j IN i..n LOOP
                IF p_row.ts[j] - p_base <= p_now THEN
                    v_used := v_used + p_row.cs[j];
                END IF;
            END LOOP;
            o_allowed := false;
            o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
            o_wait := v_w;
            o_remaining := CASE WHEN v_t0 > p_now THEN 0.0 ELSE greatest(0.0, p_a - v_used) END;
            o_reset_after := CASE WHEN i <= n THEN p_row.ts[n] - p_base + p_b - p_now ELSE 0.0 END;
        END IF;
        RETURN;
    END IF;

    IF p_kind = 3 THEN
        -- Fixed window: (start, count); windows aligned to multiples of the absolute clock.
        o_limit := p_a;
        v_current := floor((p_base + p_now) / p_b) * p_b - p_base;
        IF has AND p_row.v1 - p_base >= v_current THEN
            v_start := p_row.v1 - p_base;
            v_count := p_row.v2;
        ELSE
            v_start := v_current;
            v_count := 0;
        END IF;
        v_room := CASE WHEN v_start <= p_now THEN greatest(0.0, p_a - v_count) ELSE 0.0 END;
        IF p_cost > p_a THEN
            o_allowed := false;
            o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
            o_wait := 'Infinity';
            o_remaining := v_room;
            o_reset_after := v_start + p_b - p_now;
            RETURN;
        END IF;
        IF v_count + p_cost > p_a THEN
            v_start := v_start + p_b;
            v_count := 0;
        END IF;
        v_w := greatest(0.0, v_start - p_now);
        IF v_w <= eps THEN
            v_w := 0.0;
        END IF;
        IF v_w <= p_max_wait + eps THEN
            o_allowed := true;
            o_wait := v_w;
            o_remaining := CASE WHEN v_w = 0.0 THEN p_a - v_count - p_cost ELSE 0.0 END;
            o_reset_after := v_start + p_b - p_now;
            o_row.kind := 3;
            o_row.v1 := v_start + p_base;
            o_row.v2 := v_count + p_cost;
            o_row.expires_at := (p_base + p_ttl_now) + greatest(0.0, v_start + p_b - p_ttl_now);
        ELSE
            o_allowed := false;
            o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
            o_wait := v_w;
            o_remaining := v_room;
            o_reset_after := v_w;
        END IF;
        RETURN;
    END IF;

    -- Quota: a learned mirror of an upstream's quota; with nothing learned it admits.
    IF NOT has THEN
        o_allowed := true; o_wait := 0.0; o_remaining := 'Infinity'; o_reset_after := 0.0; o_limit := 'Infinity';
        RETURN;
    END IF;
    v_reset_at := p_row.v1 - p_base;
    v_rem := p_row.v2;
    v_qlim := p_row.v3;
    v_qwin := p_row.v4;
    v_start := CASE WHEN v_qwin IS NOT NULL THEN v_reset_at - v_qwin ELSE '-Infinity'::float8 END;
    v_at := greatest(p_now, v_start);
    IF v_at >= v_reset_at THEN
        IF v_qlim IS NULL OR v_qwin IS NULL THEN
            -- The learned block is over and nothing says what comes next: admit, forget.
            o_allowed := true; o_wait := 0.0; o_remaining := 'Infinity'; o_reset_after := 0.0;
            o_limit := 'Infinity';
            RETURN;
        END IF;
        v_reset_at := v_reset_at + (floor((v_at - v_reset_at) / v_qwin) + 1) * v_qwin;
        v_rem := v_qlim;
    END IF;
    o_limit := coalesce(v_qlim, 'Infinity'::float8);
    IF v_rem >= p_cost THEN
        v_w := greatest(0.0, v_at - p_now);
        v_new_reset := v_reset_at;
        v_new_rem := v_rem - p_cost;
    ELSIF v_qlim IS NOT NULL AND v_qwin IS NOT NULL THEN
        v_w := v_reset_at - p_now;
        v_new_reset := v_reset_at + v_qwin;
        v_new_rem := greatest(0.0, v_qlim - p_cost);
    ELSE
        v_w := v_reset_at - p_now;
        v_new_reset := v_reset_at;
        v_new_rem := 0.0;
    END IF;
    IF v_w <= eps THEN
        v_w := 0.0;
    END IF;
    IF v_w <= p_max_wait + eps THEN
        o_allowed := true;
        o_wait := v_w;
        o_remaining := CASE WHEN v_w = 0.0 THEN v_new_rem ELSE 0.0 END;
        o_reset_after := greatest(0.0, v_new_reset - p_now);
        o_row.kind := 4;
        o_row.v1 := v_new_reset + p_base;
        o_row.v2 := v_new_rem;
        o_row.v3 := v_qlim;
        o_row.v4 := v_qwin;
        o_row.expires_at := (p_base + p_ttl_now) + greatest(0.0, v_new_reset + coalesce(v_qwin, 0.0) - p_ttl_now);
    ELSE
        o_allowed := false;
        o_row := {schema}.{prefix}unchanged(p_kind, p_b, p_row, p_base, p_ttl_now);
        o_wait := v_w;
        o_remaining := greatest(0.0, CASE WHEN v_at <= p_now THEN v_rem ELSE 0.0 END);
        o_reset_after := greatest(0.0, v_reset_at - p_now);
    END IF;
END
$fn$;

-- Writes one key's new state (o_row.kind NULL: the state is none, the row goes).
CREATE OR REPLACE FUNCTION {schema}.{prefix}put(p_key text, p_row {schema}.{prefix}state, p_found boolean)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    IF p_row.kind IS NULL THEN
        IF p_found THEN
            DELETE FROM {schema}.{prefix}state s WHERE s.key = p_key;
        END IF;
        RETURN;
    END IF;
    IF p_found THEN
        UPDATE {schema}.{prefix}state s
           SET kind = p_row.kind, v1 = p_row.v1, v2 = p_row.v2, v3 = p_row.v3, v4 = p_row.v4,
               ts = p_row.ts, cs = p_row.cs, expires_at = p_row.expires_at
         WHERE s.key = p_key;
        IF FOUND THEN
            RETURN;
        END IF;
        -- The row was swept away meanwhile (it had expired): insert it afresh.
    END IF;
    INSERT INTO {schema}.{prefix}state AS s (key, kind, v1, v2, v3, v4, ts, cs, expires_at)
    VALUES (p_key, p_row.kind, p_row.v1, p_row.v2, p_row.v3, p_row.v4, p_row.ts, p_row.cs, p_row.expires_at)
    ON CONFLICT (key) DO UPDATE
       SET kind = EXCLUDED.kind, v1 = EXCLUDED.v1, v2 = EXCLUDED.v2, v3 = EXCLUDED.v3, v4 = EXCLUDED.v4,
           ts = EXCLUDED.ts, cs = EXCLUDED.cs, expires_at = EXCLUDED.expires_at;
END
$fn$;

-- Deletes a bounded batch of expired rows: the next p_batch state rows after the cursor (in key
-- order) that have expired, and up to p_batch expired leases. Rows locked by a running call are
-- skipped, so a sweep never waits. Returns the number of rows deleted. Safe to call from cron.
CREATE OR REPLACE FUNCTION {schema}.{prefix}sweep(p_at float8 DEFAULT NULL, p_batch integer DEFAULT 64)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    v_at float8 := coalesce(p_at, date_part('epoch', clock_timestamp()));
    v_cursor text;
    v_last text;
    v_seen integer;
    v_state integer;
    v_leases integer;
BEGIN
    SELECT m.value INTO v_cursor FROM {schema}.{prefix}meta m WHERE m.name = 'sweep' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;  -- another call is sweeping
    END IF;
    SELECT max(b.key), count(*) INTO v_last, v_seen
      FROM (SELECT s.key FROM {schema}.{prefix}state s WHERE s.key > v_cursor ORDER BY s.key LIMIT p_batch) b;
    DELETE FROM {schema}.{prefix}state d
     WHERE d.key IN (SELECT s.key FROM {schema}.{prefix}state s
                      WHERE s.key > v_cursor AND s.key <= v_last AND s.expires_at <= v_at
                        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_state = ROW_COUNT;
    UPDATE {schema}.{prefix}meta m SET value = CASE WHEN v_seen < p_batch THEN '' ELSE v_last END
     WHERE m.name = 'sweep';
    DELETE FROM {schema}.{prefix}leases d
     WHERE d.ctid = ANY (ARRAY(SELECT l.ctid FROM {schema}.{prefix}leases l WHERE l.expires_at <= v_at
                               ORDER BY l.expires_at LIMIT p_batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_leases = ROW_COUNT;
    RETURN v_state + v_leases;
END
$fn$;

-- Several limits as one: a port of decide() (and, with p_peek, of peek()) over live states
-- p_rows (a NULL kind: no state). new_rows: the states to store if allowed. Pure.
CREATE OR REPLACE FUNCTION {schema}.{prefix}decide(
    p_kinds smallint[], p_a float8[], p_b float8[], p_rows {schema}.{prefix}state[],
    p_now float8, p_cost integer, p_max_wait float8, p_base float8, p_peek boolean,
    OUT allowed boolean, OUT wait float8, OUT remaining float8, OUT reset_after float8, OUT lim float8,
    OUT new_rows {schema}.{prefix}state[])
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    eps CONSTANT float8 := 1e-9;
    n integer := cardinality(p_kinds);
    v_cost integer := CASE WHEN p_peek THEN 1 ELSE p_cost END;
    v_max_wait float8 := CASE WHEN p_peek THEN 0.0 ELSE p_max_wait END;
    r record;
    i integer;
    v_at float8;
    v_rem float8;
    v_max_reset float8;
BEGIN
    new_rows := '{}';
    IF n = 1 THEN
        r := {schema}.{prefix}step(p_kinds[1], p_a[1], p_b[1], p_rows[1], p_now, v_cost, v_max_wait, p_base, p_now);
        allowed := r.o_allowed; wait := r.o_wait; remaining := r.o_remaining;
        reset_after := r.o_reset_after; lim := r.o_limit;
        new_rows[1] := r.o_row;
    ELSE
        -- Each limit says when it could admit the call; the call is placed at the latest of those
        -- times in every limit, or refused with nothing charged.
        FOR i IN 1..n LOOP
            r := {schema}.{prefix}step(p_kinds[i], p_a[i], p_b[i], p_rows[i], p_now, v_cost, 'Infinity', p_base, p_now);
            IF v_at IS NULL OR r.o_wait > v_at THEN
                v_at := r.o_wait;
                reset_after := r.o_reset_after;
                lim := r.o_limit;
            END IF;
        END LOOP;
        -- (An infinite wait, a cost above a capacity, is refused even with an infinite max_wait,
        -- where the reference would place the call at now + inf.)
        IF v_at > v_max_wait + eps OR v_at = 'Infinity' THEN
            FOR i IN 1..n LOOP
                r := {schema}.{prefix}step(p_kinds[i], p_a[i], p_b[i], p_rows[i], p_now, 1, 0.0, p_base, p_now);
                r.o_remaining := CASE WHEN r.o_allowed THEN r.o_remaining + 1 ELSE r.o_remaining END;
                IF v_rem IS NULL OR r.o_remaining < v_rem THEN
                    v_rem := r.o_remaining;
                END IF;
            END LOOP;
            allowed := false; wait := v_at; remaining := v_rem;
            RETURN;
        END IF;
        FOR i IN 1..n LOOP
            -- Expiry from the call's clock (p_now), as the reference's state_ttl(new_state, now).
            r := {schema}.{prefix}step(p_kinds[i], p_a[i], p_b[i], p_rows[i], p_now + v_at, v_cost, 0.0, p_base, p_now);
            new_rows[i] := r.o_row;
            IF v_rem IS NULL OR r.o_remaining < v_rem THEN
                v_rem := r.o_remaining;
                lim := r.o_limit;
            END IF;
            IF v_max_reset IS NULL OR r.o_reset_after > v_max_reset THEN
                v_max_reset := r.o_reset_after;
            END IF;
        END LOOP;
        allowed := true;
        wait := v_at;
        remaining := CASE WHEN v_at = 0.0 THEN v_rem ELSE 0.0 END;
        reset_after := v_max_reset + v_at;
    END IF;
    IF p_peek AND allowed THEN
        wait := 0.0;
        remaining := remaining + 1;
    END IF;
END
$fn$;

-- Acquire (or, with p_peek, look): decide() over the keys of one call, all or nothing, under the
-- keys' locks, with the database's clock. p_kinds/p_a/p_b give each key's limit (see step).
-- p_now/p_base are for tests: NULL (the default) means the database's clock.
CREATE OR REPLACE FUNCTION {schema}.{prefix}acquire(
    p_keys text[], p_kinds smallint[], p_a float8[], p_b float8[], p_cost integer, p_max_wait float8,
    p_peek boolean DEFAULT false, p_now float8 DEFAULT NULL, p_base float8 DEFAULT NULL,
    OUT allowed boolean, OUT wait float8, OUT remaining float8, OUT reset_after float8, OUT lim float8)
LANGUAGE plpgsql AS $fn$
DECLARE
    eps CONSTANT float8 := 1e-9;
    n integer := cardinality(p_keys);
    v_base float8;
    v_now float8;
    v_cost integer := CASE WHEN p_peek THEN 1 ELSE p_cost END;
    v_max_wait float8 := CASE WHEN p_peek THEN 0.0 ELSE p_max_wait END;
    v_h bigint;
    v_f boolean;
    v_same boolean;
    v_row {schema}.{prefix}state;
    v_out {schema}.{prefix}state;
    v_rows {schema}.{prefix}state[];
    v_found boolean[];
    v_locked boolean;
    r record;
    i integer;
    v_at float8;
    v_interval float8;
    v_span float8;
    v_tat float8;
    v_new_tat float8;
BEGIN
    IF NOT p_peek THEN
        IF n = 1 THEN
            -- An assignment, not PERFORM: a plain expression skips starting an executor (PERFORM
            -- runs a query), and this is on every call.
            v_locked := pg_advisory_xact_lock(hashtextextended(p_keys[1], {lock_space})) IS NOT NULL;
        ELSE
            FOR v_h IN SELECT DISTINCT hashtextextended(k, {lock_space}) FROM unnest(p_keys) k ORDER BY 1 LOOP
                PERFORM pg_advisory_xact_lock(v_h);
            END LOOP;
        END IF;
    END IF;
    -- The clock is read once the locks are held: calls are recorded in the order they happen.
    v_base := coalesce(p_base, CASE WHEN p_now IS NULL THEN date_part('epoch', clock_timestamp()) ELSE 0.0 END);
    v_now := coalesce(p_now, 0.0);

    IF n = 1 THEN
        IF p_kinds[1] = 1 AND NOT p_peek THEN
            -- The hot path: a token bucket alone whose row exists and admits the call is decided
            -- and written by this one UPDATE (GCRA, as in step, with tat the live state or now).
            -- Otherwise (no row, another kind, a refusal) it matches nothing and the general path
            -- below decides. Outputs are computed from the TAT it wrote, read back as written
            -- (relative to the clock that is within a float8's last bit, exact with p_now).
            v_interval := 1.0 / p_a[1];
            v_span := p_b[1] * v_interval;
            UPDATE {schema}.{prefix}state s
               SET v1 = (CASE WHEN s.expires_at - v_base > v_now AND s.v1 - v_base >= v_now
                              THEN s.v1 - v_base ELSE v_now END + v_cost * v_interval) + v_base,
                   expires_at = (v_base + v_now) + greatest(0.0,
                       (CASE WHEN s.expires_at - v_base > v_now AND s.v1 - v_base >= v_now
                             THEN s.v1 - v_base ELSE v_now END + v_cost * v_interval) - v_now)
             WHERE s.key = p_keys[1] AND s.kind = 1
               AND (CASE WHEN s.expires_at - v_base > v_now AND s.v1 - v_base >= v_now
                         THEN s.v1 - v_base ELSE v_now END + v_cost * v_interval) - v_span - v_now
                   <= v_max_wait + eps
            RETURNING s.v1 - v_base INTO v_new_tat;
            IF FOUND THEN
                v_at := v_new_tat - v_span - v_now;
                IF v_at <= eps THEN
                    v_at := 0.0;
                END IF;
                allowed := true;
                wait := v_at;
                remaining := CASE WHEN v_at = 0.0
                    THEN greatest(0.0, floor((v_span - (v_new_tat - v_now)) / v_interval + eps)) ELSE 0.0 END;
                reset_after := v_new_tat - v_now;
                lim := p_b[1];
                IF random() < 0.015625 THEN
                    PERFORM {schema}.{prefix}sweep(v_base + v_now);
                END IF;
                RETURN;
            END IF;
        END IF;
        SELECT s.* INTO v_row FROM {schema}.{prefix}state s WHERE s.key = p_keys[1];
        v_f := FOUND;
        v_same := v_f AND v_row.kind = p_kinds[1];
        IF NOT v_same OR NOT (v_row.expires_at - v_base > v_now) THEN
            v_row := NULL;
        END IF;
        IF p_kinds[1] = 1 THEN
            -- The hot path, a token bucket alone: step's GCRA inlined (a nested PL/pgSQL call
            -- costs as much as the algorithm, and this runs while the key's lock is held).
            v_interval := 1.0 / p_a[1];
            v_span := p_b[1] * v_interval;
            v_tat := v_row.v1 - v_base;
            IF v_tat IS NULL OR v_tat < v_now THEN
                v_tat := v_now;
            END IF;
            v_new_tat := v_tat + v_cost * v_interval;
            v_at := v_new_tat - v_span - v_now;
            IF v_at <= eps THEN
                v_at := 0.0;
            END IF;
            lim := p_b[1];
            IF v_at <= v_max_wait + eps THEN
                allowed := true;
                wait := v_at;
                remaining := CASE WHEN v_at = 0.0
                    THEN greatest(0.0, floor((v_span - (v_new_tat - v_now)) / v_interval + eps)) ELSE 0.0 END;
                reset_after := v_new_tat - v_now;
                v_out.kind := 1;
                v_out.v1 := v_new_tat + v_base;
                v_out.expires_at := (v_base + v_now) + greatest(0.0, v_new_tat - v_now);
            ELSE
                allowed := false;
                wait := v_at;
                remaining := greatest(0.0, floor((v_span - (v_tat - v_now)) / v_interval + eps));
                reset_after := v_tat - v_now;
            END IF;
        ELSE
            r := {schema}.{prefix}step(p_kinds[1], p_a[1], p_b[1], v_row, v_now, v_cost, v_max_wait, v_base, v_now);
            allowed := r.o_allowed; wait := r.o_wait; remaining := r.o_remaining;
            reset_after := r.o_reset_after; lim := r.o_limit;
            v_out := r.o_row;
        END IF;
        IF p_peek THEN
            IF allowed THEN
                wait := 0.0;
                remaining := remaining + 1;
            END IF;
            RETURN;
        END IF;
        IF NOT allowed THEN
            RETURN;
        END IF;
        -- put(), inlined for the same reason.
        IF v_out.kind IS NULL THEN
            IF v_f THEN
                DELETE FROM {schema}.{prefix}state s WHERE s.key = p_keys[1];
            END IF;
        ELSIF v_same AND v_out.kind = 1 THEN
            -- A token bucket's row stays a token bucket's: only the TAT and the expiry change.
            UPDATE {schema}.{prefix}state s SET v1 = v_out.v1, expires_at = v_out.expires_at WHERE s.key = p_keys[1];
            IF NOT FOUND THEN
                PERFORM {schema}.{prefix}put(p_keys[1], v_out, false);
            END IF;
        ELSE
            IF v_f THEN
                UPDATE {schema}.{prefix}state s
                   SET kind = v_out.kind, v1 = v_out.v1, v2 = v_out.v2, v3 = v_out.v3, v4 = v_out.v4,
                       ts = v_out.ts, cs = v_out.cs, expires_at = v_out.expires_at
                 WHERE s.key = p_keys[1];
                v_f := FOUND;
            END IF;
            IF NOT v_f THEN
                PERFORM {schema}.{prefix}put(p_keys[1], v_out, false);
            END IF;
        END IF;
        IF random() < 0.015625 THEN
            PERFORM {schema}.{prefix}sweep(v_base + v_now);
        END IF;
        RETURN;
    END IF;

    FOR i IN 1..n LOOP
        SELECT s.* INTO v_row FROM {schema}.{prefix}state s WHERE s.key = p_keys[i];
        v_found[i] := FOUND;
        IF NOT v_found[i] OR v_row.kind <> p_kinds[i] OR NOT (v_row.expires_at - v_base > v_now) THEN
            v_row := NULL;
        END IF;
        v_rows[i] := v_row;
    END LOOP;
    r := {schema}.{prefix}decide(p_kinds, p_a, p_b, v_rows, v_now, v_cost, v_max_wait, v_base, p_peek);
    allowed := r.allowed; wait := r.wait; remaining := r.remaining; reset_after := r.reset_after; lim := r.lim;
    IF p_peek OR NOT allowed THEN
        RETURN;
    END IF;
    FOR i IN 1..n LOOP
        PERFORM {schema}.{prefix}put(p_keys[i], r.new_rows[i], v_found[i]);
    END LOOP;
    IF random() < 0.015625 THEN
        PERFORM {schema}.{prefix}sweep(v_base + v_now);
    END IF;
END
$fn$;

-- Several acquires of the same keys and limits at once (calls that queued behind each other in
-- one client): the same as calling acquire for each in order at one instant, one row each, in
-- order. One lock, one read and one write per key for the whole batch.
CREATE OR REPLACE FUNCTION {schema}.{prefix}acquire_batch(
    p_keys text[], p_kinds smallint[], p_a float8[], p_b float8[], p_costs integer[], p_max_waits float8[],
    p_now float8 DEFAULT NULL, p_base float8 DEFAULT NULL)
RETURNS TABLE (allowed boolean, wait float8, remaining float8, reset_after float8, lim float8)
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer := cardinality(p_keys);
    v_base float8;
    v_now float8;
    v_h bigint;
    v_row {schema}.{prefix}state;
    v_rows {schema}.{prefix}state[] := '{}';
    v_live {schema}.{prefix}state[] := '{}';
    v_found boolean[] := '{}';
    v_changed boolean := false;
    r record;
    i integer;
    j integer;
BEGIN
    FOR v_h IN SELECT DISTINCT hashtextextended(k, {lock_space}) FROM unnest(p_keys) k ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(v_h);
    END LOOP;
    v_base := coalesce(p_base, CASE WHEN p_now IS NULL THEN date_part('epoch', clock_timestamp()) ELSE 0.0 END);
    v_now := coalesce(p_now, 0.0);
    FOR i IN 1..n LOOP
        SELECT s.* INTO v_row FROM {schema}.{prefix}state s WHERE s.key = p_keys[i];
        v_found[i] := FOUND;
        v_rows[i] := v_row;
    END LOOP;
    FOR j IN 1..cardinality(p_costs) LOOP
        FOR i IN 1..n LOOP
            -- As the reference store does on every call: a state of another kind, or expired, is none.
            v_row := v_rows[i];
            IF v_row.kind IS NULL OR v_row.kind <> p_kinds[i] OR NOT (v_row.expires_at - v_base > v_now) THEN
                v_row := NULL;
            END IF;
            v_live[i] := v_row;
        END LOOP;
        r := {schema}.{prefix}decide(p_kinds, p_a, p_b, v_live, v_now, p_costs[j], p_max_waits[j], v_base, false);
        IF r.allowed THEN
            v_rows := r.new_rows;
            v_changed := true;
        END IF;
        allowed := r.allowed; wait := r.wait; remaining := r.remaining; reset_after := r.reset_after; lim := r.lim;
        RETURN NEXT;
    END LOOP;
    IF v_changed THEN
        FOR i IN 1..n LOOP
            PERFORM {schema}.{prefix}put(p_keys[i], v_rows[i], v_found[i]);
        END LOOP;
        IF random() < 0.015625 THEN
            PERFORM {schema}.{prefix}sweep(v_base + v_now);
        END IF;
    END IF;
END
$fn$;

-- Folds one upstream response into a quota mirror: a port of quota_observe().
CREATE OR REPLACE FUNCTION {schema}.{prefix}observe(
    p_key text, p_max_cooldown float8, p_remaining float8, p_reset_after float8, p_limit float8, p_window float8,
    p_now float8 DEFAULT NULL, p_base float8 DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    v_base float8;
    v_now float8;
    v_row {schema}.{prefix}state;
    v_f boolean;
    v_reset_after float8;
    v_reset_at float8;
    v_rem float8;
    v_lim float8;
    v_win float8;
    v_tol float8;
    v_same_window boolean := false;
    s_reset_at float8;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, {lock_space}));
    v_base := coalesce(p_base, CASE WHEN p_now IS NULL THEN date_part('epoch', clock_timestamp()) ELSE 0.0 END);
    v_now := coalesce(p_now, 0.0);
    SELECT s.* INTO v_row FROM {schema}.{prefix}state s WHERE s.key = p_key;
    v_f := FOUND;
    IF NOT v_f OR v_row.kind <> 4 OR NOT (v_row.expires_at - v_base > v_now) THEN
        v_row := NULL;
    END IF;
    v_reset_after := least(greatest(0.0, p_reset_after), p_max_cooldown);
    v_reset_at := v_now + v_reset_after;
    v_rem := greatest(0.0, floor(p_remaining));
    v_lim := CASE WHEN p_limit IS NOT NULL AND p_limit >= v_rem THEN p_limit END;
    v_win := p_window;
    IF v_win IS NOT NULL AND v_win <= 0 THEN
        v_win := NULL;  -- a window of zero or less says nothing
    END IF;
    IF v_row.kind IS NOT NULL THEN
        s_reset_at := v_row.v1 - v_base;
        IF v_win IS NULL AND v_lim IS NOT NULL THEN
            -- A response just after a reset shows nearly the whole window: the largest reset seen
            -- is the best estimate of the window's length the headers allow.
            v_win := nullif(greatest(coalesce(v_row.v4, 0.0), v_reset_after), 0.0);
        END IF;
        IF v_lim IS NULL THEN
            v_lim := v_row.v3;
        END IF;
        IF v_win IS NULL THEN
            v_win := v_row.v4;
        END IF;
        v_tol := CASE WHEN coalesce(v_win, 0.0) <> 0.0 THEN least(1.0, 0.5 * v_win) ELSE 1.0 END;
        IF v_reset_at < s_reset_at - v_tol THEN
            -- About an earlier window than the mirror's (it has moved on): only what the response
            -- says of the limit and the window is kept.
            v_same_window := true;
            v_reset_at := s_reset_at;
            v_rem := v_row.v2;
        ELSIF v_reset_at <= s_reset_at + v_tol THEN
            -- The same window: a response can only lower what is left.
            v_same_window := true;
            v_reset_at := greatest(v_reset_at, s_reset_at);
            v_rem := least(v_rem, v_row.v2);
        END IF;
    ELSIF v_win IS NULL AND v_lim IS NOT NULL AND v_reset_after > 0 THEN
        v_win := v_reset_after;
    END IF;
    IF NOT v_same_window THEN
        IF v_reset_after <= 0 AND (v_lim IS NULL OR v_win IS NULL) THEN
            RETURN;  -- nothing learned: the state stays as it is
        END IF;
        IF v_win IS NOT NULL THEN
            v_win := least(v_win, p_max_cooldown);
        END IF;
    END IF;
    v_row := NULL;
    v_row.kind := 4;
    v_row.v1 := v_reset_at + v_base;
    v_row.v2 := v_rem;
    v_row.v3 := v_lim;
    v_row.v4 := v_win;
    v_row.expires_at := (v_base + v_now) + greatest(0.0, v_reset_at + coalesce(v_win, 0.0) - v_now);
    PERFORM {schema}.{prefix}put(p_key, v_row, v_f);
END
$fn$;

-- Takes (or renews) lease p_id, one of p_limit concurrency slots under p_key: a port of
-- lease_acquire(). The key's expired leases are deleted first.
CREATE OR REPLACE FUNCTION {schema}.{prefix}lease_acquire(
    p_key text, p_limit integer, p_seconds float8, p_id text, p_now float8 DEFAULT NULL, p_base float8 DEFAULT NULL,
    OUT acquired boolean, OUT active integer, OUT retry_after float8)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_base float8;
    v_now float8;
    v_mine boolean;
    v_min float8;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, {lock_space}));
    v_base := coalesce(p_base, CASE WHEN p_now IS NULL THEN date_part('epoch', clock_timestamp()) ELSE 0.0 END);
    v_now := coalesce(p_now, 0.0);
    DELETE FROM {schema}.{prefix}leases l WHERE l.key = p_key AND NOT (l.expires_at - v_base > v_now);
    SELECT count(*), coalesce(bool_or(l.lease_id = p_id), false), min(l.expires_at)
      INTO active, v_mine, v_min
      FROM {schema}.{prefix}leases l WHERE l.key = p_key;
    IF v_mine OR active < p_limit THEN
        INSERT INTO {schema}.{prefix}leases AS l (key, lease_id, expires_at)
        VALUES (p_key, p_id, (v_now + p_seconds) + v_base)
        ON CONFLICT (key, lease_id) DO UPDATE SET expires_at = EXCLUDED.expires_at;
        IF NOT v_mine THEN
            active := active + 1;
        END IF;
        acquired := true;
        retry_after := 0.0;
    ELSE
        acquired := false;
        retry_after := (v_min - v_base) - v_now;
    END IF;
    IF random() < 0.015625 THEN
        PERFORM {schema}.{prefix}sweep(v_base + v_now);
    END IF;
END
$fn$;

-- Forgets the state and leases under p_keys (under the same locks as acquire).
CREATE OR REPLACE FUNCTION {schema}.{prefix}reset(p_keys text[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    v_h bigint;
BEGIN
    FOR v_h IN SELECT DISTINCT hashtextextended(k, {lock_space}) FROM unnest(p_keys) k ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(v_h);
    END LOOP;
    DELETE FROM {schema}.{prefix}state s WHERE s.key = ANY (p_keys);
    DELETE FROM {schema}.{prefix}leases l WHERE l.key = ANY (p_keys);
END
$fn$;

INSERT INTO {schema}.{prefix}meta (name, value) VALUES ('version', '{version}')
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value;

"""Pure parser for rate-limit response headers.

:func:`parse_rate_limit_headers` turns the rate-limit headers of one HTTP response into a
:class:`RateLimitInfo`. It performs no I/O and reads no clock except ``time.time()`` as the
default for ``now``. It never raises for any header content: malformed values are ignored
and logged at DEBUG level on the ``ratesync_http`` logger.

Families read, in order of precedence (the first family that yields anything wins, fields are
never mixed between families; ``Retry-After`` combines with any of them):

1. IETF structured fields (draft-ietf-httpapi-ratelimit-headers-08 and later):
   ``RateLimit-Policy: "default";q=100;w=60`` and ``RateLimit: "default";r=50;t=30``.
2. Older IETF drafts: ``RateLimit: limit=100, remaining=50, reset=30`` (draft-07),
   ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` and
   ``RateLimit-Policy: 100;w=60`` (drafts -00 to -06).
3. Vendor headers: OpenAI, Anthropic, Shopify.
4. ``X-RateLimit-*`` / ``X-Rate-Limit-*`` (GitHub, X/Twitter, Discord, Reddit, ...).

See ``docs/http-headers.md`` for the full mapping.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Final, NamedTuple

import http_sf

__all__ = ["RateLimitInfo", "parse_rate_limit_headers"]

_log = logging.getLogger("ratesync_http")

#: A bare reset number above this is read as epoch *milliseconds* (1e12 ms is 2001-09-09).
EPOCH_MILLISECONDS_THRESHOLD: Final[float] = 1e12
#: A bare reset number above this (and not above the millisecond threshold) is read as epoch
#: *seconds* (1e9 s is 2001-09-09); at or below it, as seconds from now (at most ~31.7 years).
EPOCH_SECONDS_THRESHOLD: Final[float] = 1e9
#: Any number larger than this after conversion (limit, remaining, seconds) is garbage.
MAX_SANE_VALUE: Final[float] = 1e15

#: Statuses on which a positive Retry-After means "blocked".
RETRY_AFTER_STATUSES: Final[frozenset[int]] = frozenset({403, 429, 503})

_TOO_MANY_REQUESTS: Final = 429
_LOG_VALUE_MAX: Final = 80
_OWS: Final = " \t"  # HTTP optional whitespace: nothing else is stripped

# ASCII-only on purpose: int()/float() accept Arabic-Indic, fullwidth, ... digits, "nan",
# "inf", "1e3", "1_000" and surrounding whitespace; none of that is a valid header number.
_NUMBER_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")

# Go-style durations as sent by OpenAI: "6m0s", "1s", "20ms", "1h30m", "0.5s", "1m30.5s".
_DURATION_RE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:h|ms|us|µs|ns|m|s))+")
_DURATION_PART_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS: Final[Mapping[str, float]] = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}
# RFC 3339 date-time (Anthropic resets), e.g. 2026-11-22T20:00:00Z, ...T20:00:00.5+01:00.
# RFC 3339, and the ISO 8601 shapes vendors send in its place: Atlassian's "2021-05-14T12:39Z"
# (no seconds), offsets without the colon ("+0000").
_RFC3339_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)
# Shopify: "32/40" = 32 calls used out of a bucket of 40.
_SHOPIFY_RE: Final = re.compile(r"([0-9]+)[ \t]*/[ \t]*([0-9]+)")

_X_PREFIXES: Final = ("x-ratelimit-", "x-rate-limit-")
_OPENAI_KINDS: Final = ("requests", "tokens")
_ANTHROPIC_KINDS: Final = ("requests", "tokens", "input-tokens", "output-tokens")

# The (lower-case) names each family reads, as tuples of aliases, built once: a response is
# scanned once, keeping only these, and a family none of whose names came is not even called.
_RETRY_AFTER: Final = "retry-after"
_RATELIMIT: Final = "ratelimit"
_RATELIMIT_POLICY: Final = "ratelimit-policy"
_RATELIMIT_LIMIT: Final = ("ratelimit-limit",)
_RATELIMIT_REMAINING: Final = ("ratelimit-remaining",)
_RATELIMIT_RESET: Final = ("ratelimit-reset",)
_OPENAI_GROUPS: Final = tuple(
    ((f"x-ratelimit-limit-{kind}",), (f"x-ratelimit-remaining-{kind}",), (f"x-ratelimit-reset-{kind}",))
    for kind in _OPENAI_KINDS
)
_ANTHROPIC_GROUPS: Final = tuple(
    tuple((f"anthropic-ratelimit-{kind}-{field}",) for field in ("limit", "remaining", "reset"))
    for kind in _ANTHROPIC_KINDS
)
_SHOPIFY: Final = ("x-shopify-shop-api-call-limit",)
_X_LIMIT: Final = tuple(prefix + "limit" for prefix in _X_PREFIXES)
_X_REMAINING: Final = tuple(prefix + "remaining" for prefix in _X_PREFIXES)
_X_USED: Final = tuple(prefix + "used" for prefix in _X_PREFIXES)
_X_RESET_AFTER: Final = tuple(prefix + "reset-after" for prefix in _X_PREFIXES)
_X_RESET: Final = tuple(prefix + "reset" for prefix in _X_PREFIXES)
_XFields = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]
_X_FIELDS: Final[_XFields] = (_X_LIMIT, _X_REMAINING, _X_USED, _X_RESET_AFTER, _X_RESET)
_X_FIELDS_BY_PREFIX: Final[tuple[_XFields, ...]] = tuple(
    ((limit,), (remaining,), (used,), (reset_after,), (reset,))
    for limit, remaining, used, reset_after, reset in zip(*_X_FIELDS, strict=True)
)
_X_NAMES_BY_PREFIX: Final = tuple(frozenset(aliases[i] for aliases in _X_FIELDS) for i in range(len(_X_PREFIXES)))

_IETF_STRUCTURED_NAMES: Final = frozenset({_RATELIMIT, _RATELIMIT_POLICY})
_IETF_NAMES: Final = _IETF_STRUCTURED_NAMES | {*_RATELIMIT_LIMIT, *_RATELIMIT_REMAINING, *_RATELIMIT_RESET}
_OPENAI_NAMES: Final = frozenset(name for group in _OPENAI_GROUPS for (name,) in group)
_ANTHROPIC_NAMES: Final = frozenset(name for group in _ANTHROPIC_GROUPS for (name,) in group)
_SHOPIFY_NAMES: Final = frozenset(_SHOPIFY)
_X_NAMES: Final = frozenset(_X_LIMIT + _X_REMAINING + _X_USED + _X_RESET_AFTER + _X_RESET)
_KNOWN_NAMES: Final = frozenset(
    {_RETRY_AFTER} | _IETF_NAMES | _OPENAI_NAMES | _ANTHROPIC_NAMES | _SHOPIFY_NAMES | _X_NAMES
)


class RateLimitInfo(NamedTuple):
    """What one response said about the client's rate limit.

    All numbers are finite and non-negative, or ``None`` when the headers did not say.
    """

    # A NamedTuple (immutable, no per-instance dict): one is built for every response that says
    # something, and a frozen dataclass costs three times as much to construct.

    #: Requests (or units) allowed per window.
    limit: float | None = None
    #: Requests (or units) left in the current window.
    remaining: float | None = None
    #: Seconds from ``now`` until the quota resets (0 if the reset is in the past).
    reset_after: float | None = None
    #: Seconds from ``now`` the server asked the client to wait (``Retry-After``).
    retry_after: float | None = None
    #: Length of the quota window in seconds, when a header states it (IETF ``w=``).
    window: float | None = None
    #: True when no request should be sent now.
    blocked: bool = False
    #: Which header family matched: "ietf-structured", "ietf", "openai", "anthropic",
    #: "shopify", "x-ratelimit", "retry-after", or None.
    source: str | None = None

    @property
    def known(self) -> bool:
        """True when the headers taught anything (any numeric field is set)."""
        return (
            self.limit is not None
            or self.remaining is not None
            or self.reset_after is not None
            or self.retry_after is not None
            or self.window is not None
        )


HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]

_NOTHING: Final = RateLimitInfo()
_REFUSED: Final = RateLimitInfo(blocked=True)


def parse_rate_limit_headers(headers: HeadersLike, *, status: int = 200, now: float | None = None) -> RateLimitInfo:
    """Parse the rate-limit headers of an HTTP response.

    ``headers`` may be ``httpx.Headers`` (repeated headers are seen through
    ``multi_items()``), ``requests.structures.CaseInsensitiveDict``, a plain ``dict`` or a list
    of ``(name, value)`` pairs. Names are case-insensitive. ``status`` is the response status;
    ``now`` is the epoch time (seconds) that absolute resets and Retry-After dates are measured
    from, ``time.time()`` by default.

    Never raises for any header content; malformed values are ignored (logged at DEBUG).
    """
    if now is None:
        now = time.time()
    try:
        return _parse(_collect(headers), status, now)
    except Exception:  # pragma: no cover - last-resort safety net, logged
        _log.warning("unexpected error while parsing rate-limit headers; ignoring them", exc_info=True)
        return RateLimitInfo(blocked=status == _TOO_MANY_REQUESTS)


# The transports split the parse in two: collect the lines that matter (cheap, done for every
# response), then parse them only when there are any or the status asks for it.

#: The header lines a parse reads, by lower-cased name (what :func:`rate_limit_lines` returns).
RateLimitLines = dict[str, list[str]]


def rate_limit_lines(headers: HeadersLike) -> RateLimitLines:
    """The lines of ``headers`` that :func:`parse_rate_limit_headers` would read (never raises)."""
    try:
        return _collect(headers)
    except Exception:  # pragma: no cover - last-resort safety net, logged
        _log.warning("unexpected error while reading rate-limit headers; ignoring them", exc_info=True)
        return {}


_KNOWN_RAW_NAMES: Final = {name.encode("ascii"): name for name in _KNOWN_NAMES}
#: Raw header names as they came (any case) -> ours, or None for a plain name that is not ours.
#: A server sends the same few names on every response: each is looked at closely once.
_SEEN_RAW_NAMES: dict[bytes, str | None] = {}
_SEEN_RAW_NAMES_SIZE: Final = 1024
_UNSEEN: Final = ""  # no name of ours is empty: "not looked at yet"
_OWS_BYTES: Final = b" \t"


def rate_limit_lines_raw(raw: Iterable[tuple[bytes, bytes]]) -> RateLimitLines | None:
    """:func:`rate_limit_lines` of httpx's ``headers.raw``, without decoding every header.

    ``None`` when a header needs the general reading (a name that is not plain ASCII or has
    surrounding whitespace, a non-ASCII rate-limit value): call :func:`rate_limit_lines` then.
    """
    lines: RateLimitLines = {}
    seen = _SEEN_RAW_NAMES
    for key, value in raw:
        name = seen.get(key, _UNSEEN)
        if name is _UNSEEN:
            low = key.lower()  # ASCII-only, as httpx lowers names
            name = _KNOWN_RAW_NAMES.get(low)
            if name is None and (not low.isascii() or low.strip(_OWS_BYTES) != low):
                return None  # str.lower() or stripping might make it one of ours
            if len(seen) >= _SEEN_RAW_NAMES_SIZE:
                seen.clear()
            seen[key] = name
        if name is None:
            continue
        if not value.isascii():
            return None  # decoded as httpx decodes it, by the general reading
        text = value.decode("ascii").strip(_OWS)
        values = lines.get(name)
        if values is None:
            lines[name] = [text]
        else:
            values.append(text)
    return lines


#: Lower-cased header names as they came -> ours, or None for a name that is not ours.
_SEEN_LOWER_NAMES: dict[str, str | None] = {}


def rate_limit_lines_lower(items: Iterable[tuple[str, str]]) -> RateLimitLines | None:
    """:func:`rate_limit_lines` of ``(lower-cased name, value)`` pairs, as requests'
    ``CaseInsensitiveDict.lower_items()`` gives them.

    ``None`` when a pair needs the general reading (a name with surrounding whitespace, a value
    that is not a string): call :func:`rate_limit_lines` then.
    """
    lines: RateLimitLines = {}
    seen = _SEEN_LOWER_NAMES
    for low, value in items:
        name = seen.get(low, _UNSEEN)
        if name is _UNSEEN:
            if type(low) is not str:
                return None
            name = low if low in _KNOWN_NAMES else None
            if name is None and low.strip(_OWS) != low:
                return None  # stripped, it might be one of ours
            if len(seen) >= _SEEN_RAW_NAMES_SIZE:
                seen.clear()
            seen[low] = name
        if name is None:
            continue
        if type(value) is not str:
            return None
        text = value.strip(_OWS)
        values = lines.get(name)
        if values is None:
            lines[name] = [text]
        else:
            values.append(text)
    return lines


def parse_lines(lines: RateLimitLines, *, status: int = 200, now: float | None = None) -> RateLimitInfo:
    """:func:`parse_rate_limit_headers` of lines from :func:`rate_limit_lines` (never raises)."""
    if not lines:
        return _REFUSED if status == _TOO_MANY_REQUESTS else _NOTHING
    if now is None:
        now = time.time()
    try:
        return _parse(lines, status, now)
    except Exception:  # pragma: no cover - last-resort safety net, logged
        _log.warning("unexpected error while parsing rate-limit headers; ignoring them", exc_info=True)
        return RateLimitInfo(blocked=status == _TOO_MANY_REQUESTS)


# --------------------------------------------------------------------------------------------
# Assembly


class _Quota(NamedTuple):
    # A NamedTuple, not a dataclass: several are built per response, and a tuple is cheaper.
    limit: float | None = None
    remaining: float | None = None
    reset_after: float | None = None
    window: float | None = None

    @property
    def known(self) -> bool:
        return (
            self.limit is not None
            or self.remaining is not None
            or self.reset_after is not None
            or self.window is not None
        )


def _parse(lines: RateLimitLines, status: int, now: float) -> RateLimitInfo:
    if not lines:
        # Most responses of most APIs: nothing to read (a 429 is still a refusal).
        return _REFUSED if status == _TOO_MANY_REQUESTS else _NOTHING
    keys = lines.keys()
    for plain_set, plain_names in _X_PLAIN_SETS:
        if keys <= plain_set:
            info = _x_plain(lines, status, now, plain_names)
            if info is not None:
                return info
            break
    return _parse_general(lines, status, now)


#: Per X- spelling, its header names -> which field each is (the keys make a set view).
_X_PLAIN: Final = tuple(
    {limit: 0, remaining: 1, used: 2, reset_after: 3, reset: 4}
    for (limit,), (remaining,), (used,), (reset_after,), (reset,) in _X_FIELDS_BY_PREFIX
)
_X_PLAIN_SETS: Final = tuple((frozenset(names), names) for names in _X_PLAIN)


def _x_plain(lines: RateLimitLines, status: int, now: float, names: dict[str, int]) -> RateLimitInfo | None:
    """The X-RateLimit family when each header came once as plain ASCII digits, else None.

    GitHub, X, Okta and many others send exactly that on every response: this reads it in one
    pass, with the same arithmetic as ``_x_ratelimit`` and ``_parse`` (tests/http compare the two
    on generated headers). Anything else (a decimal, a repeat, a value out of range) goes to the
    general reading, which also logs what it ignores.
    """
    values: list[float | None] = [None, None, None, None, None]
    for name, found in lines.items():
        if len(found) != 1:
            return None
        text = found[0]
        if not (text.isdigit() and text.isascii()):
            return None
        value = float(text)
        if value > MAX_SANE_VALUE:
            return None
        values[names[name]] = value
    limit, remaining, used, reset_after, reset = values
    if reset_after is None and reset is not None:
        reset_after = max(0.0, _magnitude_delta(reset, now))
        if reset_after > MAX_SANE_VALUE:
            return None
    if used is not None:
        if limit is None and remaining is not None:
            limit = used + remaining
            if limit > MAX_SANE_VALUE:
                return None
        elif remaining is None and limit is not None and used <= limit:
            remaining = limit - used
    if limit is None and remaining is None and reset_after is None:
        return None  # nothing learned: the general reading says so (and logs nothing either)
    if limit is not None and remaining is not None and limit < remaining:
        return None  # logged there
    blocked = (remaining is not None and remaining < 1 and reset_after is not None and reset_after > 0) or (
        status == _TOO_MANY_REQUESTS
    )
    return RateLimitInfo(limit, remaining, reset_after, None, None, blocked, "x-ratelimit")


def _parse_general(lines: RateLimitLines, status: int, now: float) -> RateLimitInfo:
    fields = _Fields(lines)
    retry_after = _retry_after(fields, now) if _RETRY_AFTER in lines else None

    quota: _Quota | None = None
    source: str | None = None
    for name, family, names in _FAMILIES:
        if names.isdisjoint(lines):
            continue  # none of its headers came: it would yield nothing
        candidate = family(fields, now)
        if candidate is not None and candidate != _NO_QUOTA:  # it knows something
            quota, source = candidate, name
            break
    if quota is None:
        quota = _NO_QUOTA
        if retry_after is not None:
            source = "retry-after"

    limit, remaining, reset_after, window = quota
    if limit is not None and remaining is not None and limit < remaining:
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("ignoring limit %r: lower than remaining %r (source %s)", limit, remaining, source)
        limit = None

    blocked = (
        (remaining is not None and remaining < 1 and reset_after is not None and reset_after > 0)
        or (retry_after is not None and retry_after > 0 and status in RETRY_AFTER_STATUSES)
        # A 429 without a Retry-After is a refusal however much quota the headers claim; the
        # caller applies reset_after or its own default backoff.
        or (status == _TOO_MANY_REQUESTS and retry_after is None)
    )
    # Positional: a third cheaper than keywords, on every response that says something.
    return RateLimitInfo(limit, remaining, reset_after, retry_after, window, blocked, source)


_NO_QUOTA: Final = _Quota()


# --------------------------------------------------------------------------------------------
# Header collection


def _ignore(name: str, value: object, why: str = "malformed") -> None:
    if not _log.isEnabledFor(logging.DEBUG):
        return
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _LOG_VALUE_MAX:
        text = text[:_LOG_VALUE_MAX] + "..."
    _log.debug("ignoring %s %s header: %r", why, name, text)


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return None


def _collect(headers: object) -> RateLimitLines:
    """The values of the header names some family reads, by lower-cased name, in arrival order.

    One pass; every other header is looked at only long enough to tell it is not one of them.
    """
    lines: RateLimitLines = {}
    if headers is None:
        return lines
    pairs: object
    if type(headers) is dict:
        pairs = headers.items()
    else:
        multi_items = getattr(headers, "multi_items", None)
        if callable(multi_items):
            pairs = multi_items()
        else:
            items = getattr(headers, "items", None)
            pairs = items() if callable(items) else headers
    if not isinstance(pairs, Iterable) or isinstance(pairs, (str, bytes, bytearray)):
        _ignore("(all)", pairs, "non-iterable")
        return lines
    known = _KNOWN_NAMES
    for pair in pairs:
        if type(pair) is tuple and len(pair) == 2:
            name, value = pair
            if type(name) is str and type(value) is str:  # the usual: no checks beyond these
                key = name.strip(_OWS).lower()
                if key in known:
                    values = lines.get(key)
                    if values is None:
                        lines[key] = [value.strip(_OWS)]
                    else:
                        values.append(value.strip(_OWS))
                continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            _ignore("(pair)", pair, "non-pair")
            continue
        name, value = pair
        if not isinstance(name, str):
            name = _as_text(name)
        if not isinstance(value, str):
            value = _as_text(value)
        if name is None or value is None:
            _ignore("(pair)", pair, "non-text")
            continue
        key = name.strip(_OWS).lower()
        if key in known:
            values = lines.get(key)
            if values is None:
                lines[key] = [value.strip(_OWS)]
            else:
                values.append(value.strip(_OWS))
    return lines


class _Fields:
    """The rate-limit header lines of one response, by lower-cased name, in arrival order."""

    __slots__ = ("_lines", "_policies", "_ratelimit")

    def __init__(self, lines: dict[str, list[str]]) -> None:
        self._lines = lines
        self._ratelimit: _RateLimitField | None = None
        self._policies: _Policies | None = None

    def ratelimit(self) -> _RateLimitField:
        """The ``RateLimit`` field, parsed once and shared by both IETF families."""
        if self._ratelimit is None:
            self._ratelimit = _RateLimitField(self)
        return self._ratelimit

    def policies(self) -> _Policies:
        """The ``RateLimit-Policy`` field, parsed once and shared by both IETF families."""
        if self._policies is None:
            self._policies = _parse_policies(self)
        return self._policies

    def names(self) -> RateLimitLines:
        """The lines by name (for membership tests)."""
        return self._lines

    def values(self, name: str) -> list[str] | None:
        """The lines of one name, or None."""
        return self._lines.get(name)

    def lines(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """All (name, value) lines for the aliases ``names``."""
        found = self._lines
        return [(name, value) for name in names for value in found.get(name, ())]

    def single(self, names: tuple[str, ...]) -> tuple[str, str] | None:
        """The one value of a single-valued field (aliases merged), or None.

        Repeats that agree are fine, also when joined with commas ("60, 60", as
        ``requests`` does); values that disagree make the field ambiguous: ignored.
        """
        found = self._lines
        hit: tuple[str, list[str]] | None = None
        for name in names:
            values = found.get(name)
            if values is not None:
                if hit is not None:
                    return self._merged(names)  # several aliases came
                hit = (name, values)
        if hit is None:
            return None
        name, values = hit
        if len(values) == 1 and "," not in values[0]:
            return name, values[0]  # the usual case: one line, one value (already stripped)
        return self._merged(names)

    # The three readers below answer the usual case (one name, one line, a plain number) without
    # the merging of ``single`` and hand anything else to the general functions, which log what
    # they ignore.

    def _plain(self, names: tuple[str, ...]) -> float | None:
        """The value of the usual case: one name, which came once, as a plain decimal number."""
        if len(names) == 1:
            values = self._lines.get(names[0])
            if values is not None and len(values) == 1:
                text = values[0]
                # Most values are whole numbers: two C string checks answer before the regex
                # (isdigit alone would admit other scripts' digits and superscripts).
                if (text.isdigit() and text.isascii()) or _NUMBER_RE.fullmatch(text) is not None:
                    return float(text)
        return None

    def number(self, names: tuple[str, ...]) -> float | None:
        """``_number(self.single(names))``."""
        value = self._plain(names)
        if value is not None and value <= MAX_SANE_VALUE:
            return value
        return _number(self.single(names))

    def reset(self, names: tuple[str, ...], now: float) -> float | None:
        """``_reset(self.single(names), now)``."""
        value = self._plain(names)
        if value is not None:
            return _from_magnitude(names[0], value, value, now)
        return _reset(self.single(names), now)

    def duration(self, names: tuple[str, ...]) -> float | None:
        """``_duration(self.single(names))``."""
        value = self._plain(names)
        if value is not None and value <= MAX_SANE_VALUE:
            return value
        return _duration(self.single(names))

    def _merged(self, names: tuple[str, ...]) -> tuple[str, str] | None:
        lines = self.lines(names)
        parts = {part.strip(_OWS) for _, value in lines for part in value.split(",")}
        name = lines[0][0]
        if len(parts) != 1:
            _ignore(name, ", ".join(value for _, value in lines), "conflicting repeated")
            return None
        return name, parts.pop()

    def joined(self, name: str) -> str | None:
        """A list-valued field: distinct lines joined with ", " (RFC 9651 section 3.1)."""
        values = self._lines.get(name)
        if values is None:
            return None
        if len(values) == 1:
            return values[0]
        return ", ".join(dict.fromkeys(values))


# --------------------------------------------------------------------------------------------
# Scalar values


def _sane(name: str, raw: object, value: float) -> float | None:
    if 0.0 <= value <= MAX_SANE_VALUE:  # False for NaN too
        return value
    _ignore(name, raw, "out-of-range")
    return None


def _number(field: tuple[str, str] | None) -> float | None:
    """A non-negative decimal number written with ASCII digits."""
    if field is None:
        return None
    name, raw = field
    if not _NUMBER_RE.fullmatch(raw):
        _ignore(name, raw)
        return None
    return _sane(name, raw, float(raw))


def _magnitude_delta(value: float, now: float) -> float:
    """Seconds from ``now`` to a reset given as a bare number: epoch ms, epoch s or a delay, by magnitude."""
    if value > EPOCH_MILLISECONDS_THRESHOLD:
        return value / 1000.0 - now
    if value > EPOCH_SECONDS_THRESHOLD:
        return value - now
    return value


def _from_magnitude(name: str, raw: object, value: float, now: float) -> float | None:
    """Seconds until a reset given as a bare number, told apart by magnitude (past: 0)."""
    delta = _magnitude_delta(value, now)
    if math.isnan(delta):
        _ignore(name, raw, "out-of-range")
        return None
    return _sane(name, raw, max(0.0, delta))


def _until(name: str, raw: str, when: datetime, now: float) -> float | None:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delta = when.timestamp() - now
    except (OverflowError, ValueError):  # platform limits on extreme years
        _ignore(name, raw, "out-of-range")
        return None
    if math.isnan(delta):
        _ignore(name, raw, "out-of-range")
        return None
    return _sane(name, raw, max(0.0, delta))


def _rfc3339(name: str, raw: str, now: float) -> float | None:
    if not _RFC3339_RE.fullmatch(raw):
        return None
    text = raw[:10] + "T" + raw[11:]
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:  # e.g. month 13
        return None
    return _until(name, raw, when, now)


def _http_date(name: str, raw: str, now: float) -> float | None:
    # email.utils also int()s its parts, so it would accept non-ASCII digits: check first.
    if not raw.isascii() or not any(c.isalpha() for c in raw):
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return _until(name, raw, when, now)


def _reset(field: tuple[str, str] | None, now: float) -> float | None:
    """A reset: a bare number (magnitude rule), an RFC 3339 date-time or an HTTP date."""
    if field is None:
        return None
    name, raw = field
    if _NUMBER_RE.fullmatch(raw):
        return _from_magnitude(name, raw, float(raw), now)
    for parse in (_rfc3339, _http_date):
        seconds = parse(name, raw, now)
        if seconds is not None:
            return seconds
    _ignore(name, raw)
    return None


def _duration(field: tuple[str, str] | None) -> float | None:
    """A Go-style duration ("6m0s", "20ms", "1m30.5s") or bare seconds."""
    if field is None:
        return None
    name, raw = field
    if _NUMBER_RE.fullmatch(raw):
        return _sane(name, raw, float(raw))
    if not _DURATION_RE.fullmatch(raw):
        _ignore(name, raw)
        return None
    total = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION_PART_RE.findall(raw))
    return _sane(name, raw, total)


def _retry_after(fields: _Fields, now: float) -> float | None:
    """Retry-After: delay seconds (integer or decimal) or an HTTP date, measured from now."""
    lines = fields.values(_RETRY_AFTER)
    if not lines:
        return None
    values = set(lines)
    if len(values) != 1:
        _ignore(_RETRY_AFTER, ", ".join(lines), "conflicting repeated")
        return None
    raw = values.pop()
    if _NUMBER_RE.fullmatch(raw):
        return _sane(_RETRY_AFTER, raw, float(raw))
    seconds = _http_date(_RETRY_AFTER, raw, now)
    if seconds is not None:
        return seconds
    if "," in raw:  # "30, 30": a repeated header joined by the client library
        return _number(fields.single((_RETRY_AFTER,)))
    _ignore(_RETRY_AFTER, raw)
    return None


# --------------------------------------------------------------------------------------------
# Structured fields (RFC 9651), parsed by http_sf


def _sf_parse(name: str, raw: str, tltype: str, *, quiet: bool = False) -> object | None:
    """Parse a structured field; None (logged unless ``quiet``) when malformed or ambiguous."""
    try:
        data = raw.encode("ascii")
    except UnicodeEncodeError:
        if not quiet:
            _ignore(name, raw, "non-ASCII")
        return None
    duplicates: list[str] = []
    try:
        parsed = http_sf.parse(data, tltype=tltype, on_duplicate_key=lambda key, _ctx: duplicates.append(key))
    except (http_sf.StructuredFieldError, ValueError, ArithmeticError):
        if not quiet:
            _ignore(name, raw)
        return None
    if duplicates:
        # Repeated keys mean joined or contradictory lines: we can't tell which one is current.
        if not quiet:
            _ignore(name, raw, "duplicate-key")
        return None
    return parsed


def _sf_number(name: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        if value is not None:
            _ignore(name, value, "non-numeric")
        return None
    return _sane(name, value, float(value))


def _sf_reset(name: str, value: object, now: float) -> float | None:
    seconds = _sf_number(name, value)
    return None if seconds is None else _from_magnitude(name, value, seconds, now)


def _sf_members(parsed: object) -> list[tuple[object, dict[str, object]]]:
    """The (value, params) members of a parsed List; inner lists are skipped."""
    members: list[tuple[object, dict[str, object]]] = []
    if not isinstance(parsed, list):
        return members
    for member in parsed:
        if isinstance(member, tuple) and len(member) == 2 and isinstance(member[1], dict):
            value, params = member
            if not isinstance(value, list):
                members.append((value, dict(params)))
    return members


def _policy_name(value: object) -> str | None:
    if isinstance(value, (str, http_sf.Token)):
        return str(value)
    return None


def _is_numeric(value: object) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


def _unique_by_name(
    field: str, entries: list[tuple[str, tuple[float | None, float | None]]]
) -> dict[str, tuple[float | None, float | None]]:
    """Named entries; a name repeated with different values is ambiguous and dropped."""
    result: dict[str, tuple[float | None, float | None]] = {}
    conflicting: set[str] = set()
    for name, values in entries:
        if name in result and result[name] != values:
            conflicting.add(name)
        result.setdefault(name, values)
    for name in conflicting:
        _ignore(field, name, "conflicting policy")
        del result[name]
    return result


class _RateLimitField:
    """The ``RateLimit`` field, in whichever of its two shapes it came."""

    __slots__ = ("dictionary", "named")

    def __init__(self, fields: _Fields) -> None:
        #: structured (-08+): the (name, params) members, not yet validated
        self.named: list[tuple[object, dict[str, object]]] = []
        #: draft-07 dictionary: limit/remaining/reset
        self.dictionary: dict[str, object] = {}
        raw = fields.joined(_RATELIMIT)
        if raw is None:
            return
        # A List of named quotas (-08 and later), else the draft-07 Dictionary: the same text can
        # be both ("default;r=5" is a Dictionary too), and only the List reading names policies.
        members = _sf_members(_sf_parse(_RATELIMIT, raw, "list", quiet=True))
        if members and all(_policy_name(value) is not None for value, _ in members):
            self.named = members
            return
        as_dict = _sf_parse(_RATELIMIT, raw, "dictionary")
        if isinstance(as_dict, dict) and as_dict:
            for key, member in as_dict.items():
                if isinstance(member, tuple) and len(member) == 2:
                    self.dictionary[key] = member[0]
        elif as_dict is not None:
            _ignore(_RATELIMIT, raw)


_Quotas = dict[str, tuple[float | None, float | None]]


class _Policies(NamedTuple):
    """RateLimit-Policy members: named (-08 and later) and numeric (older drafts)."""

    named: tuple[tuple[str, dict[str, object]], ...]
    numeric: tuple[tuple[object, dict[str, object]], ...]
    #: The named policies' (quota, window) by name, when working them out logs nothing; else None.
    quotas: _Quotas | None = None


_NO_POLICIES: Final = _Policies((), (), {})

# RateLimit-Policy rarely changes from one response to the next: its well-formed values are
# parsed once. Only a value http_sf accepted with every member recognised is kept, so a
# cached answer is one whose parse logs nothing. Readers never change what they are given.
_POLICY_CACHE: dict[str, _Policies] = {}
_POLICY_CACHE_SIZE: Final = 256


def _quiet_quotas(named: list[tuple[str, dict[str, object]]]) -> _Quotas | None:
    """The named policies' (quota, window) by name, as ``_ietf_structured`` works them out, when
    that logs nothing (plain non-negative integers, no conflicting repeat); else None."""
    quotas: _Quotas = {}
    for name, params in named:
        q = params.get("q", params.get("l"))
        w = params.get("w")
        if not (q is None or (type(q) is int and q >= 0)) or not (w is None or (type(w) is int and w >= 0)):
            return None
        values = (None if q is None else float(q), None if w is None else float(w))
        if quotas.setdefault(name, values) != values:
            return None
    return quotas


def _parse_policies(fields: _Fields) -> _Policies:
    """RateLimit-Policy members split into (named -08+ policies, numeric older policies)."""
    raw = fields.joined(_RATELIMIT_POLICY)
    if raw is None:
        return _NO_POLICIES
    cached = _POLICY_CACHE.get(raw)
    if cached is not None:
        return cached
    named: list[tuple[str, dict[str, object]]] = []
    numeric: list[tuple[object, dict[str, object]]] = []
    parsed = _sf_parse(_RATELIMIT_POLICY, raw, "list")
    clean = parsed is not None
    for value, params in _sf_members(parsed):
        name = _policy_name(value)
        if name is not None:
            named.append((name, params))
        elif _is_numeric(value):
            numeric.append((value, params))
        else:
            _ignore(_RATELIMIT_POLICY, value, "unrecognised member")
            clean = False
    policies = _Policies(tuple(named), tuple(numeric), _quiet_quotas(named) if clean else None)
    if clean:
        if len(_POLICY_CACHE) >= _POLICY_CACHE_SIZE:
            _POLICY_CACHE.clear()
        _POLICY_CACHE[raw] = policies
    return policies


# --------------------------------------------------------------------------------------------
# Families


def _ietf_structured(fields: _Fields, now: float) -> _Quota | None:
    policy_field = fields.policies()
    named_policies = policy_field.named
    if not named_policies and fields.values(_RATELIMIT) is None:
        return None  # e.g. only older numeric policies: nothing of this family
    policies = policy_field.quotas
    if policies is None:
        policies = _unique_by_name(
            _RATELIMIT_POLICY,
            [
                (
                    name,
                    (
                        # "l" was the quota parameter in an intermediate editor's draft.
                        _sf_number(_RATELIMIT_POLICY, params.get("q", params.get("l"))),
                        _sf_number(_RATELIMIT_POLICY, params.get("w")),
                    ),
                )
                for name, params in named_policies
            ],
        )
    entries: list[tuple[str, tuple[float | None, float | None]]] = []
    for value, params in fields.ratelimit().named:
        name = _policy_name(value)
        r = params.get("r")
        # Plain integers (the usual) inline; anything else through the checks that log it.
        remaining = float(r) if type(r) is int and r >= 0 else _sf_number(_RATELIMIT, r)
        if name is None or remaining is None:
            _ignore(_RATELIMIT, (value, params), "incomplete policy")
            continue
        t = params.get("t")  # http_sf never gives None for a parameter that came
        if t is None:
            reset = None
        elif type(t) is int and 0 <= t <= EPOCH_SECONDS_THRESHOLD:
            reset = float(t)  # seconds from now, by the magnitude rule
        else:
            reset = _sf_reset(_RATELIMIT, t, now)
        entries.append((name, (remaining, reset)))
    states = _unique_by_name(_RATELIMIT, entries) if len(entries) > 1 else dict(entries)

    if states:
        if len(states) == 1:
            ((name, (remaining, reset)),) = states.items()
        else:
            # The binding policy: least remaining; on a tie, the longest wait until reset.
            def binding_key(item: tuple[str, tuple[float | None, float | None]]) -> tuple[float, float]:
                remaining, reset = item[1]
                return (remaining if remaining is not None else math.inf, -(reset if reset is not None else -1.0))

            name, (remaining, reset) = min(states.items(), key=binding_key)
        limit, window = policies.get(name, (None, None))
        return _Quota(limit, remaining, reset, window)
    if len(policies) == 1:
        # A lone policy without current state still tells the quota and the window.
        ((limit, window),) = policies.values()
        return _Quota(limit=limit, window=window)
    return None


def _ietf_older(fields: _Fields, now: float) -> _Quota | None:
    limit = remaining = reset = None
    if fields.values(_RATELIMIT) is not None:
        dictionary = fields.ratelimit().dictionary
        limit = _sf_number(_RATELIMIT, dictionary.get("limit"))
        remaining = _sf_number(_RATELIMIT, dictionary.get("remaining"))
        reset = _sf_reset(_RATELIMIT, dictionary["reset"], now) if "reset" in dictionary else None

    # Quota policies: RateLimit-Policy: 100;w=60, 1000;w=3600 ("window=" in the earliest drafts).
    numeric_policies = fields.policies().numeric
    policies: list[tuple[float | None, float | None]] = []

    limit_lines = fields.values(_RATELIMIT_LIMIT[0])
    if limit is None and limit_lines:
        if any(";" in value for value in limit_lines):
            # Drafts -00 to -03 allowed "RateLimit-Limit: 10, 10;w=1, 1000;w=3600": the first
            # member is the current limit, the others are quota policies.
            joined = ", ".join(limit_lines)
            members = _sf_members(_sf_parse(_RATELIMIT_LIMIT[0], joined, "list"))
            if members and _is_numeric(members[0][0]):
                limit = _sf_number(_RATELIMIT_LIMIT[0], members[0][0])
                numeric_policies = (*members[1:], *numeric_policies)
            elif members:
                _ignore(_RATELIMIT_LIMIT[0], joined)
        else:
            limit = fields.number(_RATELIMIT_LIMIT)
    if remaining is None:
        remaining = fields.number(_RATELIMIT_REMAINING)
    if reset is None:
        reset = fields.reset(_RATELIMIT_RESET, now)

    for value, params in numeric_policies:
        quota = _sf_number(_RATELIMIT_POLICY, value)
        policy_window = _sf_number(_RATELIMIT_POLICY, params.get("w", params.get("window")))
        if quota is not None:
            policies.append((quota, policy_window))

    window: float | None = None
    if limit is None and len(set(policies)) == 1:
        limit, window = policies[0]
    elif limit is not None:
        window = next((w for q, w in policies if q == limit and w is not None), None)
    return _Quota(limit, remaining, reset, window)


def _openai(fields: _Fields, now: float) -> _Quota | None:
    # Requests are the primary limit; tokens only when no request header says anything.
    for limit, remaining, reset in _OPENAI_GROUPS:
        quota = _Quota(
            limit=fields.number(limit),
            remaining=fields.number(remaining),
            reset_after=fields.duration(reset),
        )
        if quota.known:
            return quota
    return None


def _anthropic(fields: _Fields, now: float) -> _Quota | None:
    for limit, remaining, reset in _ANTHROPIC_GROUPS:
        quota = _Quota(
            limit=fields.number(limit),
            remaining=fields.number(remaining),
            reset_after=fields.reset(reset, now),
        )
        if quota.known:
            return quota
    return None


def _shopify(fields: _Fields, now: float) -> _Quota | None:
    field = fields.single(_SHOPIFY)
    if field is None:
        return None
    name, raw = field
    match = _SHOPIFY_RE.fullmatch(raw)
    if match is None:
        _ignore(name, raw)
        return None
    used = _sane(name, raw, float(match.group(1)))
    limit = _sane(name, raw, float(match.group(2)))
    if used is None or limit is None or used > limit:
        _ignore(name, raw, "inconsistent")
        return None
    return _Quota(limit=limit, remaining=limit - used)


def _x_ratelimit(fields: _Fields, now: float) -> _Quota | None:
    # Both spellings at once are merged (and conflicts dropped) field by field; one alone (the
    # usual) is read under its own names, which reads the same.
    if _X_NAMES_BY_PREFIX[1].isdisjoint(fields.names()):
        limit_name, remaining_name, used_name, reset_after_name, reset_name = _X_FIELDS_BY_PREFIX[0]
    elif _X_NAMES_BY_PREFIX[0].isdisjoint(fields.names()):
        limit_name, remaining_name, used_name, reset_after_name, reset_name = _X_FIELDS_BY_PREFIX[1]
    else:
        limit_name, remaining_name, used_name, reset_after_name, reset_name = _X_FIELDS
    limit = fields.number(limit_name)
    remaining = fields.number(remaining_name)
    used = fields.number(used_name)
    # Discord's Reset-After (seconds, relative) is immune to clock skew: prefer it.
    reset = fields.number(reset_after_name)
    if reset is None:
        reset = fields.reset(reset_name, now)
    if used is not None:
        if limit is None and remaining is not None:
            limit = _sane("x-ratelimit-used", used, used + remaining)
        elif remaining is None and limit is not None and used <= limit:
            remaining = limit - used
    return _Quota(limit=limit, remaining=remaining, reset_after=reset)


#: The families in order of precedence, each with the header names it reads.
_FAMILIES: Final[tuple[tuple[str, Callable[[_Fields, float], _Quota | None], frozenset[str]], ...]] = (
    ("ietf-structured", _ietf_structured, _IETF_STRUCTURED_NAMES),
    ("ietf", _ietf_older, _IETF_NAMES),
    ("openai", _openai, _OPENAI_NAMES),
    ("anthropic", _anthropic, _ANTHROPIC_NAMES),
    ("shopify", _shopify, _SHOPIFY_NAMES),
    ("x-ratelimit", _x_ratelimit, _X_NAMES),
)

"""The parser's fast paths agree with the general ones they stand in for.

``ratesync_http._headers`` decodes the common shapes of structured fields itself and leaves the
rest to ``http_sf``: whatever the fast path accepts must decode exactly as ``http_sf`` decodes it,
and whatever it declares invalid ``http_sf`` must reject.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import http_sf
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ratesync_http import _headers
from ratesync_http._headers import RateLimitInfo, parse_rate_limit_headers

pytestmark = pytest.mark.http

NOW = 1_700_000_000.0


def canon(value: Any) -> Any:
    """A comparable form that keeps the types apart (Token vs str, int vs bool vs Decimal)."""
    if isinstance(value, list):
        return ["list", [canon(v) for v in value]]
    if isinstance(value, tuple):
        return ["tuple", [canon(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", [(k, canon(v)) for k, v in value.items()]]
    if isinstance(value, http_sf.Token):
        return ["token", str(value)]
    return [type(value).__name__, value]


def reference(raw: str, tltype: str) -> Any:
    """What http_sf makes of ``raw``: the structure, or None when it rejects it or finds a duplicate."""
    duplicates: list[str] = []
    try:
        parsed = http_sf.parse(
            raw.encode("ascii"), tltype=tltype, on_duplicate_key=lambda key, _ctx: duplicates.append(key)
        )
    except (UnicodeEncodeError, http_sf.StructuredFieldError, ValueError, ArithmeticError):
        return None
    return None if duplicates else parsed


def check(raw: str, tltype: str) -> bool:
    """Asserts agreement; True when the fast path answered (so the tests can tell it was exercised)."""
    fast = _headers._sf_fast(raw, tltype)
    if fast is None:
        return False  # left to http_sf
    expected = reference(raw, tltype)
    if fast is _headers._SF_INVALID:
        assert expected is None, (raw, tltype, expected)
    else:
        assert expected is not None, (raw, tltype, fast)
        assert canon(fast) == canon(expected), (raw, tltype)
    return True


pieces = st.sampled_from(
    [
        '"default"',
        "default",
        "Default",
        '"a b"',
        '"x,y"',
        '"x;y"',
        '"x=y"',
        '""',
        "100",
        "-5",
        "-0",
        "007",
        "999999999999999",
        "1000000000000000",
        "1.5",
        "?1",
        ":cHs=:",
        "*t",
        "a:b/c",
        "@1",
        '"\u00e9"',
        '"q\\"x"',
        "(1 2)",
        "",
        "=",
    ]
)
keys = st.sampled_from(["q", "w", "r", "t", "l", "pk", "A", "*x", "window", "limit", "a.b-c_1", "1a", ""])
param = st.builds(
    lambda key, form, value: {0: f";{key}", 1: f";{key}={value}", 2: f"; {key}={value}", 3: f";\t{key}={value}"}[form],
    keys,
    st.integers(0, 3),
    pieces,
)
member = st.builds(lambda bare, params: bare + "".join(params), pieces, st.lists(param, max_size=3))
separators = st.sampled_from([", ", ",", " , ", "\t,\t", ",,", ";", " ", ", \t"])
edges = st.sampled_from(["", " ", "  ", "\t"])
sf_list = st.builds(
    lambda lead, members, sep, trail: lead + sep.join(members) + trail,
    edges,
    st.lists(member, max_size=4),
    separators,
    edges,
)
dict_member = st.builds(lambda key, eq, value: f"{key}={value}" if eq else key + value, keys, st.booleans(), member)
sf_dict = st.builds(
    lambda lead, members, sep, trail: lead + sep.join(members) + trail,
    edges,
    st.lists(dict_member, max_size=4),
    separators,
    edges,
)

# Mostly well-formed fields, so that the fast path answers often, with the same ambiguities.
clean_pieces = st.sampled_from(['"default"', "default", "100", "-5", "007", '"a b"', '"x=y"', "*t", "a:b/c", '""'])
clean_param = st.builds(
    lambda key, eq, space, value: ";" + " " * space + key + (f"={value}" if eq else ""),
    st.sampled_from(["q", "w", "r", "t", "window", "*x", "a.b-c_1"]),
    st.booleans(),
    st.integers(0, 1),
    clean_pieces,
)
clean_member = st.builds(lambda bare, params: bare + "".join(params), clean_pieces, st.lists(clean_param, max_size=3))
clean_separators = st.sampled_from([", ", ",", " , ", "\t,\t"])
clean_list = st.builds(
    lambda members, sep: sep.join(members), st.lists(clean_member, min_size=1, max_size=4), clean_separators
)
clean_dict = st.builds(
    lambda members, sep: sep.join(members),
    st.lists(
        st.builds(
            lambda key, value: f"{key}={value}", st.sampled_from(["limit", "remaining", "reset", "*k"]), clean_member
        ),
        min_size=1,
        max_size=4,
    ),
    clean_separators,
)

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.one_of(clean_list, clean_dict, sf_list, sf_dict), st.sampled_from(["list", "dictionary"]))
@example('"default";q=100;w=60, "daily";q=1000;w=86400', "list")
@example("default;r=0;t=5", "list")
@example("100;w=60, 1000;w=3600", "list")
@example('100;w=60;comment="fixed window"', "list")
@example("limit=10, remaining=1, reset=7", "dictionary")
@example("limit=10, remaining=1, reset=7", "list")
@example('"a";r=5;r=6', "list")
@example("limit=10, limit=20", "dictionary")
@example("a=1,", "dictionary")
@example(" \t1", "list")
@example("1 ;w=1", "list")
def test_fast_structured_fields_agree_with_http_sf(raw: str, tltype: str) -> None:
    check(raw, tltype)


def test_fast_path_covers_the_common_shapes() -> None:
    common = [
        ('"default";q=100;w=60', "list"),
        ('"burst";r=1;t=30, "daily";r=999;t=3600', "list"),
        ("default;r=0;t=5", "list"),
        ("1000000000;w=3600", "list"),
        ("10, 10;w=1, 1000;w=3600", "list"),
        ("limit=10, remaining=1, reset=7", "dictionary"),
    ]
    for raw, tltype in common:
        assert _headers._sf_fast(raw, tltype) is not None, raw
        assert check(raw, tltype)
    # A draft-07 dictionary is never a List: answered without asking http_sf.
    assert _headers._sf_fast("limit=10, remaining=1, reset=7", "list") is _headers._SF_INVALID
    # Anything outside the common shapes is http_sf's.
    for raw in ('"a";r=5;r=6', "1.5;w=60", '"default";pk=:cHM=:', "?1", '"a\\"b"'):
        assert _headers._sf_fast(raw, "list") is None, raw


def test_fast_numbers_keep_their_types() -> None:
    parsed = _headers._sf_fast('-0;w=007, "x";q=999999999999999', "list")
    assert canon(parsed) == canon([(0, {"w": 7}), ("x", {"q": 999999999999999})])
    assert isinstance(reference("1.5", "list")[0][0], Decimal)  # decimals stay http_sf's


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["X-RateLimit-Remaining", "x-ratelimit-limit", " Retry-After", "ratelimit", "Server"]),
            st.sampled_from(["5", "5, 5", "5, 6", "", " 7 ", "abc"]),
        ),
        max_size=6,
    )
)
def test_single_value_fast_path_matches_the_merged_reading(pairs: list[tuple[str, str]]) -> None:
    fields = _headers._Fields(_headers._collect(pairs))
    for names in (_headers._X_REMAINING, _headers._X_LIMIT, (_headers._RETRY_AFTER,), (_headers._RATELIMIT,)):
        assert fields.single(names) == (fields._merged(names) if fields.lines(names) else None)


# -- the transports' split parse: lines first, then the parse ------------------------------------

raw_names = st.one_of(
    st.sampled_from(["X-RateLimit-Remaining", "x-ratelimit-limit", "RateLimit", "ratelimit-policy", "Retry-After"]),
    st.sampled_from(["Server", "Content-Type", " X-RateLimit-Remaining", "X-RateLimit-Remaining\t"]),
    st.sampled_from(["x-ratelimit-limit-to\u212aens", "Ratelimit-Remaining\u00e9"]),  # KELVIN SIGN lowers to "k"
    st.text(max_size=12),
)
raw_values = st.one_of(
    st.sampled_from(["5", " 5 ", "5, 6", '"default";r=5;t=2', "caf\u00e9", "\u20ac", ""]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(raw_names, raw_values), max_size=6), st.sampled_from(["utf-8", "latin-1"]))
def test_raw_lines_are_the_general_lines(pairs: list[tuple[str, str]], encoding: str) -> None:
    encoded = []
    for name, value in pairs:
        try:
            encoded.append((name.encode(encoding), value.encode(encoding)))
        except UnicodeEncodeError:
            continue
    headers = httpx.Headers(encoded)
    fast = _headers.rate_limit_lines_raw(headers.raw)
    if fast is not None:
        assert fast == _headers.rate_limit_lines(headers)
    if all(name.isascii() and name == name.strip(" \t") for name, _ in pairs):
        values = [value for name, value in pairs if name.lower() in _headers._KNOWN_NAMES]
        if all(value.isascii() for value in values):
            assert fast is not None  # plain headers never need the general reading


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(raw_names, raw_values), max_size=6), st.sampled_from([200, 403, 429, 503]))
def test_parse_of_lines_is_the_parse_of_headers(pairs: list[tuple[str, str]], status: int) -> None:
    lines = _headers.rate_limit_lines(pairs)
    assert set(lines) <= _headers._KNOWN_NAMES
    assert _headers.parse_lines(lines, status=status, now=NOW) == parse_rate_limit_headers(
        pairs, status=status, now=NOW
    )


def test_raw_lines_of_a_typical_response() -> None:
    headers = httpx.Headers(
        [
            (b"Content-Type", b"application/json"),
            (b"X-RateLimit-Limit", b"5000"),
            (b"X-RateLimit-Remaining", b" 4999 "),
            (b"x-ratelimit-remaining", b"4999"),
            (b"X-RateLimit-Resource", b"core"),
        ]
    )
    assert _headers.rate_limit_lines_raw(headers.raw) == {
        "x-ratelimit-limit": ["5000"],
        "x-ratelimit-remaining": ["4999", "4999"],
    }
    assert _headers.rate_limit_lines_raw(httpx.Headers({"Server": "x"}).raw) == {}
    # A non-ASCII rate-limit value is decoded by the general reading, as httpx decodes it.
    assert _headers.rate_limit_lines_raw(httpx.Headers([(b"RateLimit", "\u20ac".encode())]).raw) is None


# -- the X-RateLimit family read in one pass -----------------------------------------------------

x_names = st.sampled_from(
    [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "x-rate-limit-limit",
        "x-rate-limit-remaining",
        "x-rate-limit-reset",
    ]
)
x_values = st.one_of(
    st.integers(0, 10**6).map(str),
    st.sampled_from(["0", "1", "60", "5000", "1700000030", "1700000030000", "99999999999999999", "1" * 30]),
    st.sampled_from(["1.5", "598.0", "-1", "nan", "inf", "", "\u0661\u0662", "1e3", " 5"]),
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(x_names, st.lists(x_values, min_size=1, max_size=2), min_size=1, max_size=5),
    st.sampled_from([200, 403, 429, 503]),
    st.sampled_from([NOW, 0.0, 1e12]),
)
def test_plain_x_ratelimit_reading_is_the_general_reading(lines: dict[str, list[str]], status: int, now: float) -> None:
    assert _headers._parse(lines, status, now) == _headers._parse_general(lines, status, now)


def test_plain_x_ratelimit_reading_takes_the_usual_responses() -> None:
    # The one-pass reading answers these itself (no _Fields built), with the general answer.
    github = {
        "x-ratelimit-limit": ["5000"],
        "x-ratelimit-remaining": ["0"],
        "x-ratelimit-used": ["5000"],
        "x-ratelimit-reset": ["1700000030"],
    }
    okta = {"x-rate-limit-limit": ["600"], "x-rate-limit-remaining": ["599"], "x-rate-limit-reset": ["1700000045"]}
    for lines in (github, okta):
        plain = _headers._X_PLAIN[0] if "x-ratelimit-limit" in lines else _headers._X_PLAIN[1]
        info = _headers._x_plain(lines, 200, NOW, plain)
        assert info is not None and info == _headers._parse_general(lines, 200, NOW)
    assert _headers._x_plain(github, 200, NOW, _headers._X_PLAIN[0]) == RateLimitInfo(
        5000.0, 0.0, 30.0, None, None, True, "x-ratelimit"
    )

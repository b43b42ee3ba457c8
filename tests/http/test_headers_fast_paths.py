"""The parser's fast paths agree with the general readings they stand in for.

The transports read the rate-limit lines out of httpx's raw header bytes, single-valued fields
answer the usual case inline, and the X-RateLimit family is read in one pass when its values are
plain numbers: each must give what the general reading gives. (Structured fields always go
through ``http_sf``.)
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from ratesync_http import _headers
from ratesync_http._headers import RateLimitInfo, parse_rate_limit_headers

pytestmark = pytest.mark.http

NOW = 1_700_000_000.0


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
@given(st.lists(st.tuples(raw_names, raw_values), max_size=6))
def test_lower_lines_are_the_general_lines(pairs: list[tuple[str, str]]) -> None:
    # requests' headers: a CaseInsensitiveDict (the last of names equal but for case wins).
    headers = CaseInsensitiveDict(dict(pairs))
    fast = _headers.rate_limit_lines_lower(headers.lower_items())
    if fast is not None:
        assert fast == _headers.rate_limit_lines(headers)
    if all(name == name.strip(" \t") for name in headers):
        assert fast is not None  # names without surrounding whitespace never need the general reading


def test_lower_lines_of_a_typical_response() -> None:
    headers = CaseInsensitiveDict(
        {"Content-Type": "application/json", "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": " 4999 "}
    )
    assert _headers.rate_limit_lines_lower(headers.lower_items()) == {
        "x-ratelimit-limit": ["5000"],
        "x-ratelimit-remaining": ["4999"],
    }
    assert _headers.rate_limit_lines_lower(CaseInsensitiveDict({"Server": "x"}).lower_items()) == {}
    assert _headers.rate_limit_lines_lower([(" retry-after", "5")]) is None
    assert _headers.rate_limit_lines_lower([("retry-after", b"5")]) is None  # type: ignore[list-item]


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

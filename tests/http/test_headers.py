"""Tests for ratesync_http._headers.parse_rate_limit_headers.

The corpus below follows the header shapes documented by each provider; the absolute times are
chosen so every expected value is exact.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from ratesync_http import _headers
from ratesync_http._headers import (
    EPOCH_MILLISECONDS_THRESHOLD,
    EPOCH_SECONDS_THRESHOLD,
    MAX_SANE_VALUE,
    RateLimitInfo,
    parse_rate_limit_headers,
)

pytestmark = pytest.mark.http


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ANTHROPIC_NOW = epoch("2026-11-22T19:59:00")

FIELDS = ("limit", "remaining", "reset_after", "retry_after", "window", "blocked", "source")

Headers = dict[str, str] | list[tuple[str, str]]

# (id, headers, status, now, expected) -- fields missing from ``expected`` must be None/False.
CORPUS: list[tuple[str, Headers, int, float, dict[str, Any]]] = [
    # --- GitHub REST API -------------------------------------------------------------------
    (
        "github-core",
        {
            "x-ratelimit-limit": "60",
            "x-ratelimit-remaining": "56",
            "x-ratelimit-used": "4",
            "x-ratelimit-reset": "1372700873",
            "x-ratelimit-resource": "core",
        },
        200,
        1_372_697_452.0,
        {"limit": 60, "remaining": 56, "reset_after": 3421, "source": "x-ratelimit"},
    ),
    (
        "github-primary-exhausted-403",
        {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-used": "5000",
            "x-ratelimit-reset": "1691591363",
            "x-ratelimit-resource": "core",
        },
        403,
        1_691_590_000.0,
        {"limit": 5000, "remaining": 0, "reset_after": 1363, "blocked": True, "source": "x-ratelimit"},
    ),
    (
        "github-secondary-403-retry-after",
        {
            "retry-after": "60",
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4990",
            "x-ratelimit-used": "10",
            "x-ratelimit-reset": "1691591363",
        },
        403,
        1_691_590_000.0,
        {
            "limit": 5000,
            "remaining": 4990,
            "reset_after": 1363,
            "retry_after": 60,
            "blocked": True,
            "source": "x-ratelimit",
        },
    ),
    (
        "github-search-used-only",  # limit derived from used + remaining
        {"x-ratelimit-remaining": "28", "x-ratelimit-used": "2", "x-ratelimit-reset": "1691590060"},
        200,
        1_691_590_000.0,
        {"limit": 30, "remaining": 28, "reset_after": 60, "source": "x-ratelimit"},
    ),
    # --- X / Twitter -----------------------------------------------------------------------
    (
        "x-twitter",
        {"x-rate-limit-limit": "900", "x-rate-limit-remaining": "847", "x-rate-limit-reset": "1705420590"},
        200,
        1_705_419_690.0,
        {"limit": 900, "remaining": 847, "reset_after": 900, "source": "x-ratelimit"},
    ),
    (
        "x-twitter-429",
        {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": "1705420590"},
        429,
        1_705_420_000.0,
        {"limit": 15, "remaining": 0, "reset_after": 590, "blocked": True, "source": "x-ratelimit"},
    ),
    # --- Discord ---------------------------------------------------------------------------
    (
        "discord-bucket",  # Reset-After (relative) wins over Reset (absolute)
        {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1470173023.123",
            "X-RateLimit-Reset-After": "1.123",
            "X-RateLimit-Bucket": "abcd1234",
        },
        200,
        1_470_173_000.0,
        {"limit": 5, "remaining": 0, "reset_after": 1.123, "blocked": True, "source": "x-ratelimit"},
    ),
    (
        "discord-reset-epoch-float",
        {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1470173023.5"},
        200,
        1_470_173_022.0,
        {"limit": 5, "remaining": 4, "reset_after": 1.5, "source": "x-ratelimit"},
    ),
    (
        "discord-429-global",
        {"Retry-After": "65", "X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"},
        429,
        NOW,
        {"retry_after": 65, "blocked": True, "source": "retry-after"},
    ),
    # --- Reddit ----------------------------------------------------------------------------
    (
        "reddit",
        {"x-ratelimit-used": "2", "x-ratelimit-remaining": "598.0", "x-ratelimit-reset": "540"},
        200,
        NOW,
        {"limit": 600, "remaining": 598, "reset_after": 540, "source": "x-ratelimit"},
    ),
    # --- OpenAI ----------------------------------------------------------------------------
    (
        "openai",
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        200,
        NOW,
        {"limit": 60, "remaining": 59, "reset_after": 1, "source": "openai"},
    ),
    (
        "openai-tokens-only",
        {
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        200,
        NOW,
        {"limit": 150000, "remaining": 149984, "reset_after": 360, "source": "openai"},
    ),
    (
        "openai-429-ms",
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "20ms",
        },
        429,
        NOW,
        {"limit": 500, "remaining": 0, "reset_after": 0.02, "blocked": True, "source": "openai"},
    ),
    (
        "openai-hours",
        {"x-ratelimit-limit-requests": "10000", "x-ratelimit-reset-requests": "1h30m"},
        200,
        NOW,
        {"limit": 10000, "reset_after": 5400, "source": "openai"},
    ),
    (
        "openai-fractional",
        {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1m30.5s"},
        200,
        NOW,
        {"remaining": 3, "reset_after": 90.5, "source": "openai"},
    ),
    (
        "openai-half-second",
        {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "0.5s"},
        200,
        NOW,
        {"remaining": 3, "reset_after": 0.5, "source": "openai"},
    ),
    # --- Anthropic -------------------------------------------------------------------------
    (
        "anthropic",
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2026-11-22T20:00:00Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2026-11-22T19:59:30Z",
        },
        200,
        ANTHROPIC_NOW,
        {"limit": 50, "remaining": 49, "reset_after": 60, "source": "anthropic"},
    ),
    (
        "anthropic-429-offset-fraction",
        {
            "retry-after": "30",
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-11-22T21:00:30.250+01:00",
        },
        429,
        epoch("2026-11-22T20:00:00"),
        {
            "limit": 50,
            "remaining": 0,
            "reset_after": 30.25,
            "retry_after": 30,
            "blocked": True,
            "source": "anthropic",
        },
    ),
    # --- Atlassian (Jira, Confluence): ISO 8601 resets without seconds -------------------------
    (
        "atlassian-iso-minutes",
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2023-11-14T22:14Z"},
        200,
        NOW,
        {"limit": 100, "remaining": 0, "reset_after": 40, "blocked": True, "source": "x-ratelimit"},
    ),
    (
        "iso-offset-without-colon",
        {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "2023-11-14T21:14:20-0100"},
        200,
        NOW,
        {"remaining": 3, "reset_after": 60, "source": "x-ratelimit"},
    ),
    (
        "anthropic-tokens-only",
        {
            "anthropic-ratelimit-input-tokens-limit": "20000",
            "anthropic-ratelimit-input-tokens-remaining": "19000",
            "anthropic-ratelimit-input-tokens-reset": "2026-11-22T19:59:01Z",
        },
        200,
        ANTHROPIC_NOW,
        {"limit": 20000, "remaining": 19000, "reset_after": 1, "source": "anthropic"},
    ),
    # --- Shopify ---------------------------------------------------------------------------
    (
        "shopify",
        {"X-Shopify-Shop-Api-Call-Limit": "32/40"},
        200,
        NOW,
        {"limit": 40, "remaining": 8, "source": "shopify"},
    ),
    (
        "shopify-429",
        {"X-Shopify-Shop-Api-Call-Limit": "40/40", "Retry-After": "2.0"},
        429,
        NOW,
        {"limit": 40, "remaining": 0, "retry_after": 2, "blocked": True, "source": "shopify"},
    ),
    # --- Stripe-style 429: only a Retry-After --------------------------------------------
    (
        "stripe-429-retry-after",
        {"Retry-After": "1", "Stripe-Should-Retry": "true", "Request-Id": "req_123"},
        429,
        NOW,
        {"retry_after": 1, "blocked": True, "source": "retry-after"},
    ),
    # --- Retry-After on its own ---------------------------------------------------------
    (
        "retry-after-http-date-503",
        {"Retry-After": "Tue, 14 Nov 2023 22:15:20 GMT"},
        503,
        NOW,
        {"retry_after": 120, "blocked": True, "source": "retry-after"},
    ),
    (
        "retry-after-date-in-past",
        {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        503,
        NOW,
        {"retry_after": 0, "source": "retry-after"},
    ),
    (
        "retry-after-on-200-not-blocking",
        {"Retry-After": "30"},
        200,
        NOW,
        {"retry_after": 30, "source": "retry-after"},
    ),
    (
        "retry-after-decimal",
        {"Retry-After": "1.5"},
        429,
        NOW,
        {"retry_after": 1.5, "blocked": True, "source": "retry-after"},
    ),
    ("429-no-headers", {}, 429, NOW, {"blocked": True}),
    ("429-unrelated-headers", {"Content-Type": "application/json"}, 429, NOW, {"blocked": True}),
    ("200-no-headers", {}, 200, NOW, {}),
    # --- IETF older drafts --------------------------------------------------------------
    (
        "ietf-07-dictionary",
        {"RateLimit": "limit=10, remaining=1, reset=7", "RateLimit-Policy": "10;w=1, 50;w=60;burst=1000"},
        200,
        NOW,
        {"limit": 10, "remaining": 1, "reset_after": 7, "window": 1, "source": "ietf"},
    ),
    (
        "ietf-06-separate-fields",
        {
            "RateLimit-Limit": "100",
            "RateLimit-Remaining": "50",
            "RateLimit-Reset": "50",
            "RateLimit-Policy": "100;w=60",
        },
        200,
        NOW,
        {"limit": 100, "remaining": 50, "reset_after": 50, "window": 60, "source": "ietf"},
    ),
    (
        "ietf-03-inline-policies",
        {"RateLimit-Limit": "10, 10;w=1, 1000;w=3600", "RateLimit-Remaining": "9", "RateLimit-Reset": "1"},
        200,
        NOW,
        {"limit": 10, "remaining": 9, "reset_after": 1, "window": 1, "source": "ietf"},
    ),
    (
        "ietf-older-policy-with-comment-exhausted",
        {
            "RateLimit-Policy": '100;w=60;comment="fixed window"',
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": "10",
        },
        200,
        NOW,
        {"limit": 100, "remaining": 0, "reset_after": 10, "window": 60, "blocked": True, "source": "ietf"},
    ),
    (
        "ietf-older-several-policies-no-limit",  # ambiguous: no limit, no window
        {"RateLimit-Policy": "10;w=1, 1000;w=3600", "RateLimit-Remaining": "5"},
        200,
        NOW,
        {"remaining": 5, "source": "ietf"},
    ),
    # --- IETF structured fields (-08 and later) -----------------------------------------
    (
        "ietf-08-single-policy",
        {"RateLimit-Policy": '"default";q=100;w=10', "RateLimit": '"default";r=50;t=5'},
        200,
        NOW,
        {"limit": 100, "remaining": 50, "reset_after": 5, "window": 10, "source": "ietf-structured"},
    ),
    (
        "ietf-09-two-policies-binding-least-remaining",
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=1;t=30, "daily";r=999;t=3600',
        },
        200,
        NOW,
        {"limit": 100, "remaining": 1, "reset_after": 30, "window": 60, "source": "ietf-structured"},
    ),
    (
        "ietf-09-binding-is-daily",
        {
            "RateLimit-Policy": '"default";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"default";r=50;t=30, "daily";r=10;t=3600',
        },
        200,
        NOW,
        {"limit": 1000, "remaining": 10, "reset_after": 3600, "window": 86400, "source": "ietf-structured"},
    ),
    (
        "ietf-09-tie-longest-reset",
        {
            "RateLimit-Policy": '"default";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"default";r=0;t=30, "daily";r=0;t=3600',
        },
        429,
        NOW,
        {
            "limit": 1000,
            "remaining": 0,
            "reset_after": 3600,
            "window": 86400,
            "blocked": True,
            "source": "ietf-structured",
        },
    ),
    (
        "ietf-token-names-and-partition-key",
        {"RateLimit-Policy": "default;q=100;w=60;pk=:cHsdsRa894==:", "RateLimit": "default;r=0;t=5"},
        200,
        NOW,
        {
            "limit": 100,
            "remaining": 0,
            "reset_after": 5,
            "window": 60,
            "blocked": True,
            "source": "ietf-structured",
        },
    ),
    (
        "ietf-structured-with-retry-after",
        {"RateLimit-Policy": '"default";q=10;w=1', "RateLimit": '"default";r=0;t=1', "Retry-After": "1"},
        429,
        NOW,
        {
            "limit": 10,
            "remaining": 0,
            "reset_after": 1,
            "retry_after": 1,
            "window": 1,
            "blocked": True,
            "source": "ietf-structured",
        },
    ),
    (
        "ietf-structured-lines-split",  # a List may be split over several field lines
        [
            ("RateLimit-Policy", '"burst";q=100;w=60'),
            ("RateLimit-Policy", '"daily";q=1000;w=86400'),
            ("RateLimit", '"daily";r=5;t=600'),
        ],
        200,
        NOW,
        {"limit": 1000, "remaining": 5, "reset_after": 600, "window": 86400, "source": "ietf-structured"},
    ),
    (
        "ietf-structured-policy-only",
        {"RateLimit-Policy": '"default";q=100;w=60'},
        200,
        NOW,
        {"limit": 100, "window": 60, "source": "ietf-structured"},
    ),
    (
        "ietf-structured-unmatched-name",
        {"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"other";r=3;t=2'},
        200,
        NOW,
        {"remaining": 3, "reset_after": 2, "source": "ietf-structured"},
    ),
    # --- Precedence -----------------------------------------------------------------------
    (
        "precedence-structured-over-everything",
        {
            "RateLimit": '"default";r=7;t=3',
            "RateLimit-Remaining": "8",
            "x-ratelimit-remaining-requests": "9",
            "X-RateLimit-Remaining": "10",
        },
        200,
        NOW,
        {"remaining": 7, "reset_after": 3, "source": "ietf-structured"},
    ),
    (
        "precedence-older-ietf-over-vendor-and-x",
        {"RateLimit-Remaining": "8", "x-ratelimit-remaining-requests": "9", "X-RateLimit-Remaining": "10"},
        200,
        NOW,
        {"remaining": 8, "source": "ietf"},
    ),
    (
        "precedence-vendor-over-x",
        {"x-ratelimit-remaining-requests": "9", "X-RateLimit-Remaining": "10", "X-RateLimit-Limit": "20"},
        200,
        NOW,
        {"remaining": 9, "source": "openai"},
    ),
    (
        "precedence-garbage-structured-falls-through",
        {"RateLimit": '"default";t=3', "X-RateLimit-Remaining": "10"},
        200,
        NOW,
        {"remaining": 10, "source": "x-ratelimit"},
    ),
    # --- Magnitude rule for bare resets --------------------------------------------------
    (
        "reset-epoch-milliseconds",
        {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "1700000030500"},
        200,
        NOW,
        {"remaining": 1, "reset_after": 30.5, "source": "x-ratelimit"},
    ),
    (
        "reset-epoch-seconds",
        {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "1700000030"},
        200,
        NOW,
        {"remaining": 1, "reset_after": 30, "source": "x-ratelimit"},
    ),
    (
        "reset-delta-seconds",
        {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "30"},
        200,
        NOW,
        {"remaining": 1, "reset_after": 30, "source": "x-ratelimit"},
    ),
    (
        "reset-epoch-in-past-is-zero",
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1600000000"},
        200,
        NOW,
        {"remaining": 0, "reset_after": 0, "source": "x-ratelimit"},
    ),
    (
        "reset-epoch-ms-in-past-is-zero",
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1600000000000"},
        200,
        NOW,
        {"remaining": 0, "reset_after": 0, "source": "x-ratelimit"},
    ),
    (
        "reset-zero-not-blocking",
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"},
        200,
        NOW,
        {"remaining": 0, "reset_after": 0, "source": "x-ratelimit"},
    ),
    (
        "reset-rfc3339-fallback",
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2023-11-14T22:14:20Z"},
        200,
        NOW,
        {"remaining": 0, "reset_after": 60, "blocked": True, "source": "x-ratelimit"},
    ),
    # --- Consistency -----------------------------------------------------------------------
    (
        "limit-below-remaining-drops-limit",
        {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "50"},
        200,
        NOW,
        {"remaining": 50, "source": "x-ratelimit"},
    ),
    (
        "structured-quota-below-remaining-drops-limit",
        {"RateLimit-Policy": '"default";q=10;w=60', "RateLimit": '"default";r=50;t=5'},
        200,
        NOW,
        {"remaining": 50, "reset_after": 5, "window": 60, "source": "ietf-structured"},
    ),
    (
        "limit-from-used-plus-remaining-only-when-missing",
        {"X-RateLimit-Limit": "100", "X-RateLimit-Used": "5", "X-RateLimit-Remaining": "90"},
        200,
        NOW,
        {"limit": 100, "remaining": 90, "source": "x-ratelimit"},
    ),
    (
        "remaining-from-limit-minus-used",
        {"X-RateLimit-Limit": "100", "X-RateLimit-Used": "5"},
        200,
        NOW,
        {"limit": 100, "remaining": 95, "source": "x-ratelimit"},
    ),
    (
        "fractional-remaining-below-one-is-exhausted",
        {"X-RateLimit-Remaining": "0.5", "X-RateLimit-Reset-After": "2"},
        200,
        NOW,
        {"remaining": 0.5, "reset_after": 2, "blocked": True, "source": "x-ratelimit"},
    ),
]


def check(info: RateLimitInfo, expected: dict[str, Any]) -> None:
    assert set(expected) <= set(FIELDS)
    for name in FIELDS:
        got = getattr(info, name)
        want = expected.get(name, False if name == "blocked" else None)
        if isinstance(want, bool) or want is None or isinstance(want, str):
            assert got == want, (name, info)
        else:
            assert got == pytest.approx(want, abs=1e-6), (name, info)


@pytest.mark.parametrize(("headers", "status", "now", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus(headers: Headers, status: int, now: float, expected: dict[str, Any]) -> None:
    check(parse_rate_limit_headers(headers, status=status, now=now), expected)


@pytest.mark.parametrize(("headers", "status", "now", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus_case_insensitive_and_container_types(
    headers: Headers, status: int, now: float, expected: dict[str, Any]
) -> None:
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    variants: list[Any] = [
        [(name.upper(), value) for name, value in pairs],
        httpx.Headers(pairs),
    ]
    if isinstance(headers, dict):
        variants.append(CaseInsensitiveDict({name.title(): value for name, value in pairs}))
    for variant in variants:
        check(parse_rate_limit_headers(variant, status=status, now=now), expected)


# --------------------------------------------------------------------------------------------
# Garbage teaches nothing and never raises

GARBAGE_NUMBERS = [
    "-1",
    "-0.5",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e3",
    "1E3",
    "0x10",
    "1_000",
    "+5",
    "5 5",
    "5.",
    "1.2.3",
    "",
    " ",
    "abc",
    "\u0665",  # ARABIC-INDIC DIGIT FIVE: int() accepts it as 5
    "\uff15\uff10",  # FULLWIDTH DIGITS FIVE, ZERO: float() accepts them as 50.0
    "\u0968",  # DEVANAGARI DIGIT TWO
    "5\u00a0",  # NO-BREAK SPACE is not HTTP whitespace: not stripped
    "\u20075",  # FIGURE SPACE
    "9" * 30,  # > MAX_SANE_VALUE
    "1" + "0" * 400,  # float() overflows to inf
    "\x00",
    "12\u200b",  # zero-width space
]


NUMERIC_HEADERS = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-Rate-Limit-Remaining",
    "X-RateLimit-Used",
    "X-RateLimit-Reset",
    "X-RateLimit-Reset-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "Retry-After",
]


@pytest.mark.parametrize("value", GARBAGE_NUMBERS)
def test_garbage_numbers_are_ignored(value: str) -> None:
    for name in NUMERIC_HEADERS:
        info = parse_rate_limit_headers({name: value}, status=429, now=NOW)
        assert info == RateLimitInfo(blocked=True), (name, value, info)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-ratelimit-reset-requests", "6m0"),
        ("x-ratelimit-reset-requests", "1d"),
        ("x-ratelimit-reset-requests", "s"),
        ("x-ratelimit-reset-requests", "-1s"),
        ("x-ratelimit-reset-requests", "1.s"),
        ("x-ratelimit-reset-requests", "\u0661s"),
        ("x-ratelimit-reset-requests", "1 s"),
        ("x-ratelimit-reset-requests", "nans"),
        ("anthropic-ratelimit-requests-reset", "2026-13-01T00:00:00Z"),
        ("anthropic-ratelimit-requests-reset", "2026-11-22"),
        ("anthropic-ratelimit-requests-reset", "2026-11-22T20:00:00+99:99"),
        ("anthropic-ratelimit-requests-reset", "\u0662\u0660\u0662\u0666-11-22T20:00:00Z"),
        ("anthropic-ratelimit-requests-reset", "tomorrow"),
        ("Retry-After", "Wed, 32 Oct 2015 07:28:00 GMT"),
        ("Retry-After", "Wed, 21 Oct 99999 07:28:00 GMT"),
        ("Retry-After", "Wed, \u0662\u0661 Oct 2015 07:28:00 GMT"),
        ("Retry-After", "soon"),
        ("X-Shopify-Shop-Api-Call-Limit", "41/40"),
        ("X-Shopify-Shop-Api-Call-Limit", "32"),
        ("X-Shopify-Shop-Api-Call-Limit", "a/b"),
        ("X-Shopify-Shop-Api-Call-Limit", "-1/40"),
        ("X-Shopify-Shop-Api-Call-Limit", "\u0663\u0662/\u0664\u0660"),
        ("RateLimit", "limit=-1, remaining=nan"),
        ("RateLimit", "limit=10, limit=20"),
        ("RateLimit", '"default";r=-1;t=5'),
        ("RateLimit", '"default";r=1.5.5'),
        ("RateLimit", '"default";r=?1'),
        ("RateLimit", '"default";r="5"'),
        ("RateLimit", '"default";r=5;r=6'),
        ("RateLimit", '"défaut";r=5'),
        ("RateLimit", "100"),
        ("RateLimit", "(1 2);r=5"),
        ("RateLimit", ""),
        ("RateLimit-Policy", '"default";q=-100;w=-60'),
        ("RateLimit-Policy", '"a";q=1;w=1, "b";q=2;w=2'),  # several policies, no state
        ("RateLimit-Policy", "100;w=60, 200;w=60;;"),
        ("RateLimit-Limit", "abc;w=60"),
        ("RateLimit-Limit", "-10;w=1"),
    ],
)
def test_garbage_formats_are_ignored(name: str, value: str) -> None:
    assert parse_rate_limit_headers({name: value}, status=200, now=NOW) == RateLimitInfo()


def test_garbage_structured_does_not_mask_reset_and_remaining_elsewhere() -> None:
    info = parse_rate_limit_headers(
        {"RateLimit": '"default";r=5;t=5x', "X-RateLimit-Remaining": "1"}, status=200, now=NOW
    )
    # "5x" is not a structured-field value, so the whole field is malformed: the X- family answers.
    assert (info.remaining, info.source) == (1, "x-ratelimit")


def test_structured_item_with_bad_reset_keeps_remaining() -> None:
    info = parse_rate_limit_headers({"RateLimit": '"default";r=5;t=-3'}, now=NOW)
    assert (info.remaining, info.reset_after, info.source) == (5, None, "ietf-structured")


def test_huge_values_are_garbage_but_large_sane_values_pass() -> None:
    assert parse_rate_limit_headers({"X-RateLimit-Remaining": "1e16"}, now=NOW).remaining is None
    assert parse_rate_limit_headers({"X-RateLimit-Remaining": "10000000000000000"}, now=NOW).remaining is None
    assert parse_rate_limit_headers({"Retry-After": "9" * 20}, now=NOW).retry_after is None
    assert parse_rate_limit_headers({"X-RateLimit-Reset": "9" * 20}, now=NOW).reset_after is None
    assert parse_rate_limit_headers({"X-RateLimit-Remaining": "999999999999999"}, now=NOW).remaining == 999999999999999
    # Ten years of Retry-After is not "garbage": capping is the caller's business.
    assert parse_rate_limit_headers({"Retry-After": "315360000"}, now=NOW).retry_after == 315360000


def test_magnitude_thresholds_are_documented_constants() -> None:
    assert EPOCH_SECONDS_THRESHOLD == 1e9
    assert EPOCH_MILLISECONDS_THRESHOLD == 1e12
    assert MAX_SANE_VALUE == 1e15
    at_threshold = parse_rate_limit_headers({"X-RateLimit-Reset": "1000000000"}, now=0.0)
    assert at_threshold.reset_after == 1e9  # not above: still seconds from now
    just_above = parse_rate_limit_headers({"X-RateLimit-Reset": "1000000001"}, now=1e9)
    assert just_above.reset_after == 1  # epoch seconds


# --------------------------------------------------------------------------------------------
# Repeated headers


def test_repeated_identical_headers_are_fine() -> None:
    pairs = [("X-RateLimit-Remaining", "5"), ("x-ratelimit-remaining", "5")]
    assert parse_rate_limit_headers(pairs, now=NOW).remaining == 5
    assert parse_rate_limit_headers(httpx.Headers(pairs), now=NOW).remaining == 5


def test_conflicting_repeated_headers_are_ignored() -> None:
    pairs = [("X-RateLimit-Remaining", "5"), ("x-ratelimit-remaining", "6"), ("X-RateLimit-Limit", "10")]
    for headers in (pairs, httpx.Headers(pairs)):
        info = parse_rate_limit_headers(headers, now=NOW)
        assert (info.limit, info.remaining) == (10, None)


def test_conflicting_aliases_are_ignored() -> None:
    info = parse_rate_limit_headers({"X-RateLimit-Remaining": "5", "X-Rate-Limit-Remaining": "6"}, now=NOW)
    assert info.remaining is None


def test_comma_joined_repeats_from_requests() -> None:
    assert parse_rate_limit_headers(CaseInsensitiveDict({"X-RateLimit-Remaining": "5, 5"})).remaining == 5
    assert parse_rate_limit_headers(CaseInsensitiveDict({"X-RateLimit-Remaining": "5, 6"})).remaining is None
    assert parse_rate_limit_headers({"Retry-After": "30, 30"}, status=429, now=NOW).retry_after == 30
    assert parse_rate_limit_headers({"Retry-After": "30, 31"}, status=429, now=NOW).retry_after is None


def test_conflicting_retry_after_lines_are_ignored() -> None:
    info = parse_rate_limit_headers([("Retry-After", "1"), ("Retry-After", "2")], status=429, now=NOW)
    assert info.retry_after is None
    assert info.blocked  # still a 429


def test_conflicting_structured_policy_states_are_dropped() -> None:
    headers = [
        ("RateLimit-Policy", '"a";q=10;w=1, "b";q=100;w=60'),
        ("RateLimit", '"a";r=0;t=1'),
        ("RateLimit", '"a";r=5;t=1, "b";r=50;t=30'),
    ]
    info = parse_rate_limit_headers(headers, now=NOW)
    assert (info.limit, info.remaining, info.reset_after, info.window) == (100, 50, 30, 60)


def test_conflicting_draft07_dictionary_lines_are_ignored() -> None:
    headers = [
        ("RateLimit", "limit=10, remaining=5, reset=1"),
        ("RateLimit", "limit=10, remaining=4, reset=1"),
    ]
    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitInfo()
    same = [("RateLimit", "limit=10, remaining=5, reset=1")] * 2
    assert parse_rate_limit_headers(same, now=NOW).remaining == 5


# --------------------------------------------------------------------------------------------
# Inputs, logging, purity, the dataclass


def test_accepts_bytes_pairs_and_odd_entries() -> None:
    headers: list[Any] = [
        (b"X-RateLimit-Limit", b"10"),
        ("X-RateLimit-Remaining", 3),  # not text: skipped
        ("lonely",),
        None,
        (1, 2),
    ]
    info = parse_rate_limit_headers(headers, now=NOW)
    assert (info.limit, info.remaining) == (10, None)


def test_odd_header_objects_never_raise() -> None:
    for weird in (None, "X-RateLimit-Limit: 5", b"", 42, object(), [[]], {"a": None}):
        assert parse_rate_limit_headers(weird, status=429, now=NOW) == RateLimitInfo(blocked=True)  # type: ignore[arg-type]


def test_malformed_values_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ratesync_http")
    parse_rate_limit_headers({"X-RateLimit-Remaining": "nan" + "x" * 500}, now=NOW)
    records = [r for r in caplog.records if r.name == "ratesync_http"]
    assert records
    assert all(r.levelno == logging.DEBUG for r in records)
    message = records[0].getMessage()
    assert "x-ratelimit-remaining" in message
    assert "nan" in message
    assert len(message) < 200  # the value is truncated


def test_pure_with_explicit_now(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("the clock must not be read when now is given")

    monkeypatch.setattr(_headers.time, "time", no_clock)
    info = parse_rate_limit_headers({"X-RateLimit-Reset": "1700000030"}, now=NOW)
    assert info.reset_after == 30


def test_default_now_is_time_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_headers.time, "time", lambda: NOW)
    assert parse_rate_limit_headers({"X-RateLimit-Reset": "1700000030"}).reset_after == 30
    assert parse_rate_limit_headers({"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}).retry_after == 60


def test_info_shape() -> None:
    info = parse_rate_limit_headers({"X-RateLimit-Limit": "5"}, now=NOW)
    assert RateLimitInfo._fields == tuple(FIELDS)
    with pytest.raises(AttributeError):
        info.limit = 6  # type: ignore[misc]
    assert not hasattr(info, "__dict__")
    assert info._replace(limit=6.0).limit == 6.0 and info.limit == 5.0
    assert info.known
    assert not RateLimitInfo().known
    assert not RateLimitInfo(blocked=True, source="x").known
    assert RateLimitInfo(retry_after=0.0).known
    assert _headers.__all__ == ["RateLimitInfo", "parse_rate_limit_headers"]


def test_blocked_rules() -> None:
    # A Retry-After blocks only on 429, 503 and 403.
    for status, blocked in ((429, True), (503, True), (403, True), (200, False), (500, False), (404, False)):
        assert parse_rate_limit_headers({"Retry-After": "5"}, status=status, now=NOW).blocked is blocked
    # A 429 is blocked even when the headers claim quota remains, unless Retry-After says 0.
    assert parse_rate_limit_headers({"X-RateLimit-Remaining": "5"}, status=429, now=NOW).blocked
    assert not parse_rate_limit_headers({"Retry-After": "0"}, status=429, now=NOW).blocked
    # Exhausted with no known reset: not blocked (nothing says when to come back).
    assert not parse_rate_limit_headers({"X-RateLimit-Remaining": "0"}, now=NOW).blocked


# --------------------------------------------------------------------------------------------
# Properties

KNOWN_NAMES = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-after",
    "x-ratelimit-used",
    "x-rate-limit-limit",
    "x-rate-limit-remaining",
    "x-rate-limit-reset",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "x-shopify-shop-api-call-limit",
    "retry-after",
]

number_text = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(min_value=0, max_value=2e12).map(lambda f: f"{f:.3f}"),
    st.sampled_from(["0", "1", "598.0", "1700000030", "1700000030500", "nan", "inf", "\u0665", "\uff15"]),
)
structured_text = st.builds(
    lambda name, r, t, q, w, sep: f'"{name}";r={r};t={t}{sep}"{name}";q={q};w={w}',
    st.sampled_from(["default", "daily", "", "a b"]),
    st.integers(-5, 10**16),
    st.integers(-5, 10**16),
    st.integers(-5, 10**16),
    st.one_of(st.integers(-5, 10**16), st.just("?1"), st.just('"x"'), st.just("1.5")),
    st.sampled_from([", ", ";", ""]),
)
other_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "6m0s",
            "1m30.5s",
            "20ms",
            "1h30m",
            "2026-11-22T20:00:00Z",
            "2026-11-22T20:00:00.123+05:30",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "32/40",
            "limit=100, remaining=50, reset=30",
            "100;w=60",
            "10, 10;w=1, 1000;w=3600",
        ]
    ),
)
header_value = st.one_of(number_text, structured_text, other_text)
header_name = st.one_of(
    st.sampled_from(KNOWN_NAMES).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()])),
    st.text(max_size=30),
)
statuses = st.one_of(st.sampled_from([200, 403, 429, 503]), st.integers(100, 599))
nows = st.floats(min_value=0, max_value=4e9)


def assert_sane(info: RateLimitInfo, status: int) -> None:
    assert isinstance(info, RateLimitInfo)
    for name in ("limit", "remaining", "reset_after", "retry_after", "window"):
        value = getattr(info, name)
        assert value is None or (isinstance(value, float) and math.isfinite(value) and 0 <= value <= MAX_SANE_VALUE)
    if info.limit is not None and info.remaining is not None:
        assert info.limit >= info.remaining
    expected_blocked = (
        (info.remaining is not None and info.remaining < 1 and (info.reset_after or 0) > 0)
        or ((info.retry_after or 0) > 0 and status in (403, 429, 503))
        or (status == 429 and info.retry_after is None)
    )
    assert info.blocked is expected_blocked
    assert info.source is None or isinstance(info.source, str)
    if info.source is None:
        assert not info.known


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(st.text(max_size=40), st.text(max_size=60), max_size=8), statuses, nows)
def test_property_arbitrary_text_dicts(headers: dict[str, str], status: int, now: float) -> None:
    assert_sane(parse_rate_limit_headers(headers, status=status, now=now), status)


@FAST
@given(st.lists(st.tuples(header_name, header_value), max_size=10), statuses, nows)
def test_property_known_names_with_hostile_values(headers: list[tuple[str, str]], status: int, now: float) -> None:
    assert_sane(parse_rate_limit_headers(headers, status=status, now=now), status)


@FAST
@given(
    st.dictionaries(st.sampled_from(KNOWN_NAMES), header_value, max_size=12),
    statuses,
    nows,
)
def test_property_dicts_and_containers_agree(headers: dict[str, str], status: int, now: float) -> None:
    info = parse_rate_limit_headers(headers, status=status, now=now)
    assert_sane(info, status)
    assert parse_rate_limit_headers(list(headers.items()), status=status, now=now) == info
    assert parse_rate_limit_headers(CaseInsensitiveDict(headers), status=status, now=now) == info


def test_http_whitespace_is_stripped() -> None:
    info = parse_rate_limit_headers({" X-RateLimit-Remaining\t": " \t5 "}, now=NOW)
    assert info.remaining == 5

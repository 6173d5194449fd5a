"""``spool.upload``: the answer classifier (SPEC 7's table) and ``Retry-After``, table-driven.

``classify`` is a pure function, so its table is tested as a table: every row of SPEC 7,
each boundary of a range, and the transport errors that carry no status.
"""

from __future__ import annotations

import email.utils
import time

import pytest
import requests

from spool.upload import MAX_RETRY_AFTER, Verdict, classify, retry_after

ACK, SPLIT, AUTH, MISCONFIGURED, RETRY = (
    Verdict.ACK,
    Verdict.SPLIT,
    Verdict.AUTH,
    Verdict.MISCONFIGURED,
    Verdict.RETRY,
)

STATUS_TABLE = [
    # 2xx: acknowledged, the whole range is committed
    (200, ACK),
    (201, ACK),
    (202, ACK),
    (204, ACK),
    (299, ACK),
    # 3xx: redirects are not followed, the endpoint is misconfigured
    (300, MISCONFIGURED),
    (301, MISCONFIGURED),
    (302, MISCONFIGURED),
    (307, MISCONFIGURED),
    (308, MISCONFIGURED),
    # 400 and 413: refused events inside, split until each is alone
    (400, SPLIT),
    (413, SPLIT),
    # 401 and 403: the write key
    (401, AUTH),
    (403, AUTH),
    # 408 and 429: try again later
    (408, RETRY),
    (429, RETRY),
    # any other 4xx: misconfigured
    (402, MISCONFIGURED),
    (404, MISCONFIGURED),
    (405, MISCONFIGURED),
    (410, MISCONFIGURED),
    (411, MISCONFIGURED),
    (414, MISCONFIGURED),
    (415, MISCONFIGURED),
    (422, MISCONFIGURED),
    (499, MISCONFIGURED),
    # 5xx: retried, except 501 (not implemented) and 505 (HTTP version) which never heal
    (500, RETRY),
    (502, RETRY),
    (503, RETRY),
    (504, RETRY),
    (507, RETRY),
    (599, RETRY),
    (501, MISCONFIGURED),
    (505, MISCONFIGURED),
    # outside HTTP's ranges
    (100, MISCONFIGURED),
    (199, MISCONFIGURED),
    (600, MISCONFIGURED),
]


@pytest.mark.parametrize(("status", "verdict"), STATUS_TABLE, ids=[str(s) for s, _ in STATUS_TABLE])
def test_each_status_has_the_verdict_of_the_contract(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


ERROR_TABLE: list[tuple[str, BaseException | None, Verdict]] = [
    ("tls certificate", requests.exceptions.SSLError("certificate verify failed"), MISCONFIGURED),
    ("invalid url", requests.exceptions.InvalidURL("http://"), MISCONFIGURED),
    ("invalid schema", requests.exceptions.InvalidSchema("ftp://x"), MISCONFIGURED),
    ("connection refused", requests.exceptions.ConnectionError("refused"), RETRY),
    ("read timeout", requests.exceptions.ReadTimeout("slow"), RETRY),
    ("connect timeout", requests.exceptions.ConnectTimeout("slow"), RETRY),
    ("garbage answer", requests.exceptions.ChunkedEncodingError("bad"), RETRY),
    ("reset", ConnectionResetError(104, "reset by peer"), RETRY),
    ("no error at all", None, RETRY),
]


@pytest.mark.parametrize(
    ("error", "verdict"), [(e, v) for _, e, v in ERROR_TABLE], ids=[n for n, _, _ in ERROR_TABLE]
)
def test_an_answer_without_a_status_is_judged_by_its_error(
    error: BaseException | None, verdict: Verdict
) -> None:
    assert classify(None, error) is verdict


NOW = 1_800_000_000.0
RETRY_AFTER_TABLE: list[tuple[dict[str, str], float | None]] = [
    ({}, None),
    ({"Retry-After": "120"}, 120.0),
    ({"Retry-After": " 7 "}, 7.0),
    ({"Retry-After": "0"}, 0.0),  # "retry now", not "never"
    ({"Retry-After": str(10 * 3600)}, MAX_RETRY_AFTER),  # capped at an hour
    ({"Retry-After": email.utils.formatdate(NOW + 90, usegmt=True)}, 90.0),
    ({"Retry-After": email.utils.formatdate(NOW - 90, usegmt=True)}, 0.0),  # past: now
    ({"Retry-After": "soon"}, None),
    # The three HTTP date forms a recipient must accept (RFC 9110, 5.6.7), all GMT:
    # RFC 850 and asctime, which names no zone at all.
    ({"Retry-After": time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(NOW + 300))}, 300.0),
    ({"Retry-After": time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(NOW + 600))}, 600.0),
    # A zone Python does not know, or "-0000", is no HTTP date: ignored, not taken as GMT.
    ({"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S CET", time.gmtime(NOW + 300))}, None),
    ({"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(NOW + 300))}, None),
]


@pytest.mark.parametrize(
    ("headers", "seconds"),
    RETRY_AFTER_TABLE,
    ids=[h.get("Retry-After", "absent").strip() or "blank" for h, _ in RETRY_AFTER_TABLE],
)
def test_retry_after_reads_seconds_and_dates(
    headers: dict[str, str], seconds: float | None
) -> None:
    got = retry_after(headers, now=NOW)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds, abs=1.0)

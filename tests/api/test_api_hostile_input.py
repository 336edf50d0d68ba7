"""Hostile and oversized input to the dialog API: a 4xx with a reason, never a 500.

Long report edits (413, and a bounded diff), chunked bodies over the limit (413 from the
real server), images with bad pixel attributes or an absurd claimed size (422), and
clients that keep presenting invalid tokens (429 with Retry-After).
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from apihelpers import (
    JANE_TOKEN,
    PATIENT_ID,
    PATIENT_NAME,
    ApiUnderTest,
    all_text,
    api_settings,
    auth,
    state_counts,
)
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.api import ApiServer, DialogService, TooManyFailuresError, create_app
from dicom_node.api._ratelimit import FailedTokenLimiter, client_key
from dicom_node.store import Database


def _edit(api: ApiUnderTest, findings: str, version: int = 1) -> Any:
    return api.client.put(
        api.path("/report"),
        json={"based_on_version": version, "findings_text": findings,
              "impression_text": "Normal chest."},
        headers=auth(),
    )


# --------------------------------------------------------------------------- report text
def test_an_edit_over_the_report_limit_gets_413_and_changes_nothing(api: ApiUnderTest) -> None:
    limit = api.settings.api.max_report_chars
    before = state_counts(api.db)
    response = _edit(api, "x" * (limit + 1))
    assert response.status_code == 413
    assert f"the limit is {limit}" in response.json()["detail"]
    assert state_counts(api.db) == before


def test_edits_at_the_limit_that_differ_everywhere_are_shown_quickly(api: ApiUnderTest) -> None:
    # Word and space alternating: difflib took minutes on two such texts.
    limit = api.settings.api.max_report_chars
    texts = ["a " * (limit // 2 - 1) + "a.", "b " * (limit // 2 - 1) + "b."]
    for version, text in enumerate(texts, start=1):
        assert _edit(api, text, version).status_code == 201
    started = time.perf_counter()
    detail = api.client.get(api.path(), headers=auth())
    assert detail.status_code == 200 and time.perf_counter() - started < 10
    diff = detail.json()["versions"][-1]["diff"]["findings"]
    assert "".join(s["text"] for s in diff if s["op"] != "insert") == texts[0]
    assert "".join(s["text"] for s in diff if s["op"] != "delete") == texts[1]


# --------------------------------------------------------------------------- request body
@pytest.mark.network
def test_a_chunked_body_over_the_limit_gets_413_from_the_server(
    tmp_path: Path, tiny_bundle: Path, start_api_server: Callable[..., ApiServer]
) -> None:
    server = start_api_server(api_settings(tmp_path / "node", tiny_bundle))
    host, port = server.address
    chunks = [b"x" * 65536] * (server.settings.api.max_body_bytes // 65536 + 1)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(
            "PUT", "/api/studies/1.2.3/report", body=iter(chunks), encode_chunked=True,
            headers={**auth(), "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 413
        assert b"larger than" in response.read()
    finally:
        connection.close()


# --------------------------------------------------------------------------- images
Change = Callable[[Dataset], Dataset]


def _raw(keyword: str, vr: str, value: bytes) -> Change:
    """Store `value` as the raw bytes of `keyword` (pydicom converts them when read)."""

    def change(ds: Dataset) -> Dataset:
        tag = Tag(keyword)
        ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        return ds

    return change


def _set(keyword: str, value: object) -> Change:
    def change(ds: Dataset) -> Dataset:
        setattr(ds, keyword, value)
        return ds

    return change


def _claims_65535_squared(ds: Dataset) -> Dataset:
    """A 3.5 KB JPEG 2000 that claims 65535 x 65535 16-bit pixels (8 GiB decoded)."""
    j2k = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    j2k.Rows = j2k.Columns = 65535
    return j2k


BAD_IMAGES = [
    ("rows-unreadable", _raw("Rows", "US", b"\x01\x02\x03"), "Rows cannot be read"),
    ("frames-not-a-number", _raw("NumberOfFrames", "IS", b"abc "), "NumberOfFrames"),
    ("slope-nan", _raw("RescaleSlope", "DS", b"nan "), "RescaleSlope is not a finite"),
    ("bits-stored-over-allocated", _set("BitsStored", 20), "BitsStored"),
    ("pixel-data-short", _set("PixelData", b"\0" * 1000), "cannot be decoded"),
    ("8-GiB-jpeg-2000", _claims_65535_squared, "more than the limit of 134217728"),
]


@pytest.mark.parametrize(("change", "reason"), [case[1:] for case in BAD_IMAGES],
                         ids=[case[0] for case in BAD_IMAGES])
def test_an_image_with_bad_pixel_attributes_gets_422_with_the_reason(
    api: ApiUnderTest, change: Change, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(api.study.image_path)
    ds.RescaleIntercept = 0  # pydicom applies a slope only with an intercept
    change(ds).save_as(api.study.image_path, enforce_file_format=False)
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    for suffix in ("", ".png"):
        response = api.client.get(api.path(f"/images/{image_id}{suffix}"), headers=auth())
        assert response.status_code == 422, response.text
        assert reason in response.json()["detail"]
    logged = all_text(caplog.records)
    assert PATIENT_ID not in logged and PATIENT_NAME not in logged


def test_an_unusable_window_falls_back_to_the_percentile_window(api: ApiUnderTest) -> None:
    ds = pydicom.dcmread(api.study.image_path)
    _raw("WindowWidth", "DS", b"inf ")(ds)
    ds.save_as(api.study.image_path, enforce_file_format=False)
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    info = api.client.get(api.path(f"/images/{image_id}"), headers=auth())
    assert info.status_code == 200 and 1 <= info.json()["default_width"] < 65536
    for query in ("center=nan", "width=inf"):
        png = api.client.get(api.path(f"/images/{image_id}.png?{query}"), headers=auth())
        assert png.status_code == 422 and "finite" in png.json()["detail"], query


# --------------------------------------------------------------------------- tokens
@pytest.fixture
def guarded(tmp_path: Path, tiny_bundle: Path) -> Iterator[Callable[[str], TestClient]]:
    """Factory of clients (by address) of an app that allows 3 failed tokens in 60 s."""
    settings = api_settings(tmp_path / "node", tiny_bundle,
                            api={"auth_failure_limit": 3, "auth_failure_window_s": 60})
    db = Database(settings.database_url)
    db.create_all()
    service = DialogService(settings, db, None)
    app = create_app(service)
    try:
        yield lambda host: TestClient(app, client=(host, 50000))
    finally:
        service.close()
        db.dispose()


def test_invalid_tokens_lock_the_client_out_with_retry_after(
    guarded: Callable[[str], TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    attacker, colleague = guarded("10.0.0.9"), guarded("10.0.0.10")
    wrong = {"Authorization": "Bearer guess-0123456789-secret"}
    for _ in range(20):  # valid tokens never count
        assert attacker.get("/api/me", headers=auth()).status_code == 200
    assert attacker.get("/api/me").status_code == 401  # no token: nothing guessed
    assert [attacker.get("/api/me", headers=wrong).status_code for _ in range(3)] == [401] * 3
    refused = attacker.get("/api/me", headers=auth())  # locked out: not even checked
    assert refused.status_code == 429 and "too many invalid tokens" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert colleague.get("/api/me", headers=auth()).status_code == 200
    logged = all_text(caplog.records)
    assert "10.0.0.9" in logged and "guess-0123456789" not in logged
    assert JANE_TOKEN not in logged


def test_failures_expire_after_the_window_and_ipv6_counts_per_64() -> None:
    now = [0.0]
    limiter = FailedTokenLimiter(2, 60.0, clock=lambda: now[0])
    limiter.record_failure("2001:db8::1")
    limiter.record_failure("2001:db8::2")  # same /64: the same client
    with pytest.raises(TooManyFailuresError, match="too many") as refused:
        limiter.check("2001:db8::3")
    assert refused.value.retry_after == 60
    limiter.check("2001:db8:0:1::1")  # another /64
    now[0] = 60.5
    limiter.check("2001:db8::3")
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"

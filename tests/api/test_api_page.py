"""The reader page end to end in a real headless Chromium (Debian's `chromium`, Playwright).

The page is served by ApiServer on a free port; the reader logs in with a token, opens the
drafted study, asks a question, requests a correction, accepts it,
chooses the codes where text and codes disagree and signs off. Orthanc then holds the
study's chain of SRs, and the tests read what the PACS holds, not what the page says.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apihelpers import (
    JANE_TOKEN,
    PATIENT_NAME,
    READING_SIZES,
    api_settings,
    screenshot,
    seed_drafted_study,
)
from support.orthanc import Orthanc
from test_api_pacs import check_chain, deliver_draft, pacs_settings

from dicom_node.api import ApiServer
from dicom_node.store import Database

pytestmark = pytest.mark.network

CHROMIUM = "/usr/bin/chromium"
#: Set to a PNG path to keep a screenshot of the page after the accepted amendment.
SCREENSHOT_ENV = "READER_PAGE_SCREENSHOT"
#: Milliseconds Playwright waits for the page (the model answers in well under a second).
TIMEOUT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
# Assertions wait as long as actions do (the default 5 s is short on a loaded 2-core machine).
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium driven by Playwright (skipped only when chromium is not installed)."""
    executable = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class ReaderPage:
    """A drafted study in Orthanc, the API serving it, and a logged-in page showing it."""

    page: Any
    study: Any
    server: ApiServer
    errors: list[str]


@dataclass
class ServedStudy:
    """A drafted study whose draft is in Orthanc, and the API serving it."""

    study: Any
    server: ApiServer


@pytest.fixture
def served_study(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path, orthanc: Orthanc,
    start_api_server: Callable[..., ApiServer],
) -> Iterator[ServedStudy]:
    settings = pacs_settings(tmp_path / "node", tiny_bundle, orthanc)
    db = Database(settings.database_url)
    db.create_all()
    try:
        study = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        orthanc.upload(study.image)
        deliver_draft(settings, db, study.draft)
        yield ServedStudy(study, start_api_server(settings, db))
    finally:
        db.dispose()


@pytest.fixture
def reader_page(served_study: ServedStudy, browser: Any) -> Iterator[ReaderPage]:
    """Jane logged in, the drafted study open at version 1; its draft is in Orthanc."""
    study, server = served_study.study, served_study.server
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(server.url)
        page.fill("#token", JANE_TOKEN)
        page.click("#login-button")
        page.locator(f'#worklist tbody tr[data-uid="{study.study_uid}"]').click()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        yield ReaderPage(page, study, server, errors)
    finally:
        context.close()


@dataclass
class TwoStudies:
    """Two drafted studies (the first received first) and the API serving them."""

    first: Any
    second: Any
    server: ApiServer


@pytest.fixture
def two_studies(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
    start_api_server: Callable[..., ApiServer],
) -> Iterator[TwoStudies]:
    settings = api_settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    try:
        first = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        second = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        yield TwoStudies(first, second, start_api_server(settings, db))
    finally:
        db.dispose()


def _logged_in(context: Any, url: str, token: str = JANE_TOKEN) -> Any:
    """A new page of `context`, logged in at `url`."""
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.fill("#token", token)
    page.click("#login-button")
    return page


def test_reader_page_asks_corrects_accepts_and_signs(
    served_study: ServedStudy, orthanc: Orthanc, browser: Any
) -> None:
    study = served_study.study
    _drive_the_page(browser, served_study.server.url, study.study_uid)
    check_chain(orthanc, study.study_uid, "Doe^Jane", count=4)


def _drive_the_page(browser: Any, url: str, study_uid: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(url)
        # Before login only the login form shows: no empty reader behind it.
        sync_api.expect(page.locator("#login")).to_be_visible()
        sync_api.expect(page.locator("#main")).to_be_hidden()
        page.fill("#token", "wrong-token-0123456789")
        page.click("#login-button")
        sync_api.expect(page.locator("#login-error")).to_have_text("This token is not valid.")
        page.fill("#token", JANE_TOKEN)
        page.click("#login-button")
        sync_api.expect(page.locator("#user")).to_contain_text("Doe Jane (jane)")

        # Worklist -> study: patient, report, findings and the rendered image.
        row = page.locator(f'#worklist tbody tr[data-uid="{study_uid}"]')
        sync_api.expect(row).to_contain_text("drafted")
        # A keyboard-only reader: Tab reaches the row, Enter opens the study.
        row.focus()
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#patient")).to_contain_text(PATIENT_NAME.replace("^", " "))
        # Dates in the reader's locale, not DICOM's 19400305.
        patient_line = page.inner_text("#patient")
        assert "1940" in patient_line and "19400305" not in patient_line
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        sync_api.expect(page.locator("#report-findings")).to_contain_text(
            "Small left pleural effusion."
        )
        sync_api.expect(page.locator("#findings tbody tr")).to_have_count(14)
        # The viewer shows the study's image with its window (its own tests:
        # test_api_viewer.py).
        sync_api.expect(page.locator('#viewer .vp-cell[data-state="ready"]')).to_have_count(1)
        sync_api.expect(page.locator("#viewer .vp-wl")).to_contain_text("W 30000")

        # A question: streamed by SSE, answered, the report stays at version 1.
        page.fill("#message-input", "Is the heart enlarged?")
        with page.expect_response(lambda r: "/messages?stream=true" in r.url) as streamed:
            page.press("#message-input", "Control+Enter")  # Enter alone is a new line
        assert streamed.value.headers["content-type"].startswith("text/event-stream")
        sync_api.expect(page.locator("#status")).to_have_text("Answered")
        sync_api.expect(page.locator("#messages .message.assistant")).to_have_count(1)
        sync_api.expect(page.locator("#messages .message.streaming")).to_have_count(0)
        assert page.inner_text("#messages .message.assistant .body").strip()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")

        # A correction: a proposal with its diff, accepted as version 2.
        page.fill("#message-input", "There is no pleural effusion.")
        page.click("#send")
        sync_api.expect(page.locator("#status")).to_have_text("Proposal 1 ready")
        proposal = page.locator('.proposal[data-status="open"]')
        sync_api.expect(proposal).to_have_count(1)
        sync_api.expect(proposal.locator("del").first).to_be_visible()
        proposal.locator("button.accept").click()
        sync_api.expect(page.locator("#status")).to_have_text(
            "Version 2 stored and queued for orthanc"
        )
        sync_api.expect(page.locator("#report-version")).to_have_text("2")
        sync_api.expect(page.locator("#report-status")).to_have_text("amended")
        # The report reads as clean text; "Show changes" marks what version 2 changed.
        sync_api.expect(page.locator("#report-findings del")).to_have_count(0)
        page.check("#show-changes")
        sync_api.expect(page.locator("#report-findings del").first).to_be_visible()
        page.uncheck("#show-changes")
        sync_api.expect(page.locator("#report-findings del")).to_have_count(0)
        # An earlier version opens read-only from the list; nothing can be signed meanwhile.
        version_2_text = page.inner_text("#report-findings")
        page.locator('#versions li[data-version="1"]').click()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        note = page.locator("#version-note")
        sync_api.expect(note).to_contain_text("current report is version 2")
        sync_api.expect(page.locator("#report-findings")).to_contain_text(
            "Small left pleural effusion.")
        sync_api.expect(page.locator("#sign-button")).to_be_disabled()
        sync_api.expect(page.locator("#edit-button")).to_be_disabled()
        page.click("#version-back")
        sync_api.expect(page.locator("#report-version")).to_have_text("2")
        sync_api.expect(page.locator("#version-note")).to_be_hidden()
        assert page.inner_text("#report-findings") == version_2_text
        sync_api.expect(page.locator("#sign-button")).to_be_enabled()
        sync_api.expect(page.locator('.proposal[data-status="accepted"]')).to_have_count(1)
        if os.environ.get(SCREENSHOT_ENV):  # a picture of the page for a person to look at
            page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)

        # The tiny model's proposal kept the effusion the reader denied: the row is marked,
        # and sign-off asks which code the SR holds before it shows the confirmation.
        sync_api.expect(page.locator('#findings tr.disagrees')).to_have_count(1)
        page.click("#sign-button")
        sync_api.expect(page.locator("#resolve-review")).to_be_visible()
        sync_api.expect(page.locator("#sign-review")).to_be_hidden()
        page.check('#resolve-table input[value="code"]')
        page.click("#resolve-apply")
        sync_api.expect(page.locator("#sign-review")).to_be_visible()
        sync_api.expect(page.locator("#review-version")).to_have_text("3")
        sync_api.expect(page.locator("#review-codes")).to_contain_text(
            "Pleural Effusion: absent (you)")
        page.click("#sign-confirm")
        sync_api.expect(page.locator("#status")).to_have_text("Signed off as version 4")
        sync_api.expect(page.locator("#report-version")).to_have_text("4")
        sync_api.expect(page.locator("#report-status")).to_have_text("signed")
        sync_api.expect(page.locator("#sign-button")).to_be_disabled()
        sync_api.expect(page.locator("#versions li")).to_have_count(4)
        assert errors == [], errors
    finally:
        context.close()


EDITED_FINDINGS = "Right upper lobe nodule, 2 cm. Recommend CT."


def test_an_unsaved_edit_blocks_sign_off_and_the_signed_sr_holds_the_saved_edit(
    reader_page: ReaderPage, orthanc: Orthanc
) -> None:
    from sr_templates import VERIFIED_SERIES_DESCRIPTION, read_report

    page, study, errors = reader_page.page, reader_page.study, reader_page.errors
    page.click("#edit-button")
    page.fill("#edit-findings", EDITED_FINDINGS)
    # unsaved: sign-off is refused, and says why
    sync_api.expect(page.locator("#sign-button")).to_be_disabled()
    sync_api.expect(page.locator("#sign-hint")).to_be_visible()
    # a reload of the study (the worklist's refresh, a colleague's change) keeps it
    page.click("#refresh-button")
    page.locator(f'#worklist tbody tr[data-uid="{study.study_uid}"]').click()
    sync_api.expect(page.locator("#edit-findings")).to_have_value(EDITED_FINDINGS)
    page.click("#save-edit")
    sync_api.expect(page.locator("#report-version")).to_have_text("2")
    sync_api.expect(page.locator("#sign-button")).to_be_enabled()
    # the confirmation shows exactly what the SR will hold
    page.click("#sign-button")
    sync_api.expect(page.locator("#review-findings")).to_have_text(EDITED_FINDINGS)
    sync_api.expect(page.locator("#review-codes li")).to_have_count(14)
    shown = page.inner_text("#review-findings")
    page.click("#sign-confirm")
    sync_api.expect(page.locator("#status")).to_have_text("Signed off as version 3")
    assert errors == [], errors
    srs = orthanc.wait_for_srs(study.study_uid, 3)
    (signed,) = [sr for sr in srs if sr.SeriesDescription == VERIFIED_SERIES_DESCRIPTION]
    assert signed.VerificationFlag == "VERIFIED"
    assert read_report(signed).findings_text == shown == EDITED_FINDINGS


def _sr_codes(sr: Any) -> dict[str, str]:
    from sr_templates import read_report

    return {f.label: f.presence.value for f in read_report(sr).findings}


def _by_version(orthanc: Orthanc, study_uid: str, count: int) -> list[Any]:
    """The study's SRs in Orthanc, oldest first (each names all its predecessors)."""
    from apihelpers import predecessor_uids

    srs = orthanc.wait_for_srs(study_uid, count)
    assert len(srs) == count, f"Orthanc holds {len(srs)} SR(s), expected {count}"
    return sorted(srs, key=lambda sr: len(predecessor_uids(sr)))


def test_codes_follow_the_reader_into_the_pacs_and_stale_proposals_are_refused(
    reader_page: ReaderPage, orthanc: Orthanc
) -> None:
    page, study, server, errors = (
        reader_page.page, reader_page.study, reader_page.server, reader_page.errors)
    effusion = page.locator('#findings tr[data-label="Pleural Effusion"]')
    sync_api.expect(effusion.locator("select")).to_have_value("present")

    # Two proposals on version 1; accepting the correction outdates the rewrite.
    page.fill("#message-input", "Please rephrase the findings.")
    page.click("#send")
    sync_api.expect(page.locator("#status")).to_have_text("Proposal 1 ready")
    page.fill("#message-input", "There is no pleural effusion.")
    page.click("#send")
    sync_api.expect(page.locator("#status")).to_have_text("Proposal 2 ready")
    page.locator('.proposal[data-id="2"] button.accept').click()
    sync_api.expect(page.locator("#report-version")).to_have_text("2")
    outdated = page.locator('.proposal[data-id="1"]')
    sync_api.expect(outdated).to_contain_text("open, outdated")
    sync_api.expect(outdated.locator("button.accept")).to_have_count(0)
    # The page offers no accept; the API refuses one all the same.
    stale = page.request.post(
        f"{server.url}/api/studies/{study.study_uid}/proposals/1/accept",
        headers={"Authorization": f"Bearer {JANE_TOKEN}"},
    )
    assert stale.status == 409 and "latest_version" in stale.json()

    # The accepted correction codes the effusion absent, as the reader's.
    sync_api.expect(effusion.locator("select")).to_have_value("absent")
    sync_api.expect(effusion).to_contain_text("you")

    # A presence set by hand: saved at once as version 3 (once the accept's reloads
    # are done: a change made while a request runs is refused and shown undone).
    page.wait_for_function("() => !document.body.classList.contains('busy')")
    fracture = page.locator('#findings tr[data-label="Fracture"] select')
    fracture.select_option("uncertain")
    sync_api.expect(page.locator("#report-version")).to_have_text("3")
    sync_api.expect(page.locator('#findings tr[data-label="Fracture"] select')
                    ).to_have_value("uncertain")

    # The proposal's text still states the effusion: sign-off asks for a choice,
    # and refuses to go on without one.
    sync_api.expect(effusion).to_have_class("absent disagrees")
    page.click("#sign-button")
    sync_api.expect(page.locator("#resolve-review")).to_be_visible()
    page.click("#resolve-apply")
    sync_api.expect(page.locator("#status")).to_contain_text("Choose for Pleural Effusion")
    sync_api.expect(page.locator("#report-version")).to_have_text("3")
    page.check('#resolve-table input[value="text"]')
    page.click("#resolve-apply")
    sync_api.expect(page.locator("#sign-review")).to_be_visible()
    sync_api.expect(page.locator("#review-version")).to_have_text("4")
    sync_api.expect(page.locator("#review-codes")).to_contain_text(
        "Pleural Effusion: present (you)")
    sync_api.expect(page.locator("#review-codes")).to_contain_text(
        "Fracture: uncertain (you)")
    page.click("#sign-confirm")
    sync_api.expect(page.locator("#status")).to_have_text("Signed off as version 5")
    sync_api.expect(page.locator("#findings select:enabled")).to_have_count(0)
    assert errors == [], errors

    draft, corrected, by_hand, chosen, signed = _by_version(orthanc, study.study_uid, 5)
    assert _sr_codes(draft)["Pleural Effusion"] == "present"
    assert _sr_codes(corrected)["Pleural Effusion"] == "absent"
    assert _sr_codes(by_hand)["Fracture"] == "uncertain"
    assert _sr_codes(draft)["Fracture"] == "not_assessed"
    final = _sr_codes(signed)
    assert signed.VerificationFlag == "VERIFIED"
    assert final["Pleural Effusion"] == "present" and final["Fracture"] == "uncertain"
    assert final == _sr_codes(chosen)


ADDENDUM = "Compared with the prior study, the effusion is unchanged."


def test_an_addendum_chain_reaches_orthanc_with_its_predecessors(
    reader_page: ReaderPage, orthanc: Orthanc, tmp_path: Path
) -> None:
    import subprocess

    from apihelpers import predecessor_uids

    from sr_templates import read_report

    page, study, errors = reader_page.page, reader_page.study, reader_page.errors
    sync_api.expect(page.locator("#addendum-button")).to_be_hidden()
    page.click("#sign-button")
    page.click("#sign-confirm")
    sync_api.expect(page.locator("#status")).to_have_text("Signed off as version 2")
    # Signed: no edit, no presence change, no proposal; an addendum only.
    sync_api.expect(page.locator("#edit-button")).to_be_disabled()
    sync_api.expect(page.locator("#findings select:enabled")).to_have_count(0)
    page.click("#addendum-button")
    page.fill("#addendum-text", ADDENDUM)
    page.click("#addendum-review")
    sync_api.expect(page.locator("#addendum-shown")).to_have_text(ADDENDUM)
    page.click("#addendum-sign")
    sync_api.expect(page.locator("#status")).to_have_text(
        "Addendum signed as version 3")
    sync_api.expect(page.locator("#addenda li")).to_have_count(1)
    page.click("#addendum-button")
    page.fill("#addendum-text", "Discussed with the referring physician.")
    page.click("#addendum-review")
    page.click("#addendum-sign")
    sync_api.expect(page.locator("#status")).to_have_text(
        "Addendum signed as version 4")
    sync_api.expect(page.locator("#addenda li")).to_have_count(2)
    sync_api.expect(page.locator("#addenda")).to_contain_text(ADDENDUM)
    assert errors == [], errors

    draft, signed, first, second = _by_version(orthanc, study.study_uid, 4)
    assert predecessor_uids(first) == [str(draft.SOPInstanceUID),
                                   str(signed.SOPInstanceUID)]
    assert predecessor_uids(second) == [str(draft.SOPInstanceUID),
                                    str(signed.SOPInstanceUID),
                                    str(first.SOPInstanceUID)]
    assert [sr.VerificationFlag for sr in (signed, first, second)] == ["VERIFIED"] * 3
    # The signed report's content is carried unchanged, the addenda after it.
    assert read_report(second).findings_text == read_report(signed).findings_text
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    dump = subprocess.run(["dsrdump", "+Pl", "+Pc", str(path)], capture_output=True, text=True,
                      check=True, timeout=60).stdout
    assert dump.count("Addendum") >= 2 and ADDENDUM in dump
    assert "Predecessor Docs    : 3" in dump and "Verification Flag   : VERIFIED" in dump
    # One verifying observer per signature: the sign-off, then each addendum.
    assert len(second.VerifyingObserverSequence) == 3


def test_a_reader_who_may_not_sign_is_told_why_sign_off_is_greyed_out(
    reader_page: ReaderPage, browser: Any
) -> None:
    from apihelpers import BOB_TOKEN

    context = browser.new_context()
    try:
        page = _logged_in(context, reader_page.server.url, BOB_TOKEN)
        page.locator(f'#worklist tbody tr[data-uid="{reader_page.study.study_uid}"]').click()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        sync_api.expect(page.locator("#sign-button")).to_be_disabled()
        sync_api.expect(page.locator("#sign-hint")).to_be_visible()
        sync_api.expect(page.locator("#sign-hint")).to_contain_text("may not sign")
    finally:
        context.close()


@pytest.mark.parametrize("size", list(READING_SIZES))
def test_switching_studies_mid_request_keeps_each_answer_and_typed_text_in_its_study(
    two_studies: TwoStudies, browser: Any, size: str
) -> None:
    first, second = two_studies.first, two_studies.second
    context = browser.new_context(viewport=READING_SIZES[size])
    try:
        page = _logged_in(context, two_studies.server.url)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        row = '#worklist tbody tr[data-uid="{}"]'
        page.locator(row.format(first.study_uid)).click()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        page.fill("#message-input", "Is the heart enlarged?")
        # Send, and open the other study while the answer is still being written.
        page.evaluate(
            """([rowSelector]) => {
                document.querySelector('#send').click();
                setTimeout(() => document.querySelector(rowSelector).click(), 20);
            }""",
            [row.format(second.study_uid)],
        )
        sync_api.expect(page.locator(row.format(second.study_uid))).to_have_class(
            re.compile("selected"))
        sync_api.expect(page.locator("#message-input")).to_have_value("")
        page.fill("#message-input", "A note for the second study")
        sync_api.expect(page.locator("#status")).to_contain_text("in the study you left",
                                                                 timeout=60_000)
        # The second study shows none of the first one's dialog, and keeps its typed text.
        sync_api.expect(page.locator("#messages")).not_to_contain_text("Is the heart enlarged?")
        sync_api.expect(page.locator("#message-input")).to_have_value(
            "A note for the second study")
        # Back in the first study: the question and its answer are there, the box is empty.
        page.locator(row.format(first.study_uid)).click()
        sync_api.expect(page.locator("#messages")).to_contain_text("Is the heart enlarged?")
        sync_api.expect(page.locator("#message-input")).to_have_value("")
        page.locator(row.format(second.study_uid)).click()
        sync_api.expect(page.locator("#message-input")).to_have_value(
            "A note for the second study")
        screenshot(page, f"switched-mid-request-{size}")
        assert errors == []
    finally:
        context.close()


def test_after_several_turns_send_stays_on_screen_and_the_newest_answer_shows(
    served_study: ServedStudy, browser: Any
) -> None:
    """A laptop screen (1366 x 768): the message box is pinned to the bottom of the dialog
    pane, and the conversation scrolls to the newest message."""
    study, server = served_study.study, served_study.server
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        page = _logged_in(context, server.url)
        page.locator(f'#worklist tbody tr[data-uid="{study.study_uid}"]').click()
        sync_api.expect(page.locator("#report-version")).to_have_text("1")
        page.select_option("#intent", "question")
        for turn in range(5):
            page.fill("#message-input", f"Question {turn}: is the heart enlarged? " + (
                "Compare it with the prior study and describe the cardiac silhouette, the "
                "mediastinum and both costophrenic angles in detail."))
            page.click("#send")
            sync_api.expect(page.locator("#status")).to_have_text("Answered")
            sync_api.expect(page.locator("#messages .message.assistant")).to_have_count(turn + 1)
            sync_api.expect(page.locator("#messages .message.streaming")).to_have_count(0)
        send = page.locator("#send").bounding_box()
        assert send is not None and send["y"] + send["height"] <= 768
        sync_api.expect(page.locator("#send")).to_be_in_viewport()
        sync_api.expect(page.locator("#messages .message.assistant").last).to_be_in_viewport()
        scrolled = page.eval_on_selector(
            "#conversation", "(el) => el.scrollHeight - el.scrollTop - el.clientHeight")
        assert scrolled < 2
        assert page.eval_on_selector("#conversation",
                                     "(el) => el.scrollHeight > el.clientHeight")
    finally:
        context.close()


def test_the_worklist_is_searched_and_sorted_by_the_reader(
    two_studies: TwoStudies, browser: Any
) -> None:
    older, newer = two_studies.first, two_studies.second
    context = browser.new_context()
    try:
        page = _logged_in(context, two_studies.server.url)
        rows = page.locator("#worklist tbody tr")
        sync_api.expect(rows).to_have_count(2)
        # Priority, then the longest waiting first; the Received header sorts by age, and
        # a second click turns the order round.
        sync_api.expect(rows.first).to_have_attribute("data-uid", older.study_uid)
        sync_api.expect(page.locator('#worklist th[data-sort="priority"]')).to_have_attribute(
            "aria-sort", "ascending")
        page.click('#worklist th[data-sort="received"] button')
        sync_api.expect(rows.first).to_have_attribute("data-uid", older.study_uid)
        page.click('#worklist th[data-sort="received"] button')
        sync_api.expect(rows.first).to_have_attribute("data-uid", newer.study_uid)
        sync_api.expect(page.locator('#worklist th[data-sort="received"]')).to_have_attribute(
            "aria-sort", "descending")
        page.fill("#worklist-search", "no such accession")
        sync_api.expect(rows).to_have_count(0)
        sync_api.expect(page.locator("#worklist-nomatch")).to_be_visible()
        page.fill("#worklist-search", "DRAFTED")
        sync_api.expect(rows).to_have_count(2)
        sync_api.expect(page.locator("#worklist-nomatch")).to_be_hidden()
    finally:
        context.close()

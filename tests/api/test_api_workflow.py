"""The reader page's workflow in a real headless Chromium: every worklist state, priority,
live updates between two readers, failures with a retry, keyboard shortcuts.

The page is served by ApiServer on a free port over a SQLite node database; studies are
seeded as the node would leave them (a drafted report, or a draft job queued, running or
failed) and changed behind the page's back as another process (a worker, a colleague's
``serve``) would: the page must show it without a reload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apihelpers import (
    ANN_TOKEN,
    JANE_TOKEN,
    READING_SIZES,
    SCREENS,
    api_settings,
    audit_rows,
    screenshot,
    seed_drafted_study,
)
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from test_api_page import TwoStudies, _logged_in, browser, two_studies  # noqa: F401

from dicom_node.api import ApiServer
from dicom_node.store import Database, InstanceRecord, Job, JobState, Study

pytestmark = pytest.mark.network

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
expect = sync_api.expect

ROW = '#worklist tbody tr[data-uid="{}"]'


def _seed_job(db: Database, state: JobState, error: str | None = None) -> str:
    """A study of one instance whose draft job is in `state` (no report yet)."""
    study_uid = generate_uid()
    now = datetime.now(UTC)
    db.record_instance(InstanceRecord(
        sop_instance_uid=generate_uid(), study_instance_uid=study_uid,
        series_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality="CR", body_part="CHEST", view_position="PA", accession_number="ACC9",
        patient_key=None, path="none.dcm", size_bytes=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="ORTHANC", received_at=now,
    ))
    with db.session() as session:
        study_id = session.scalars(
            select(Study.id).where(Study.study_instance_uid == study_uid)).one()
        session.add(Job(
            study_id=study_id, instance_set_hash=study_uid[-40:].rjust(64, "0"),
            instance_count=1, instances_until=now, state=state, attempts=1, error=error,
            created_at=now, updated_at=now,
            started_at=now if state is not JobState.QUEUED else None,
            finished_at=now if state is JobState.FAILED else None,
        ))
    return study_uid


@dataclass
class Worklist:
    """Studies in every state, and the API serving them."""

    drafted: Any
    queued: str
    running: str
    failed: str
    server: ApiServer
    db: Database


@pytest.fixture
def worklist(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
    start_api_server: Callable[..., ApiServer],
) -> Iterator[Worklist]:
    settings = api_settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    try:
        drafted = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        queued = _seed_job(db, JobState.QUEUED)
        running = _seed_job(db, JobState.RUNNING)
        failed = _seed_job(db, JobState.FAILED, "time limit exceeded")
        yield Worklist(drafted, queued, running, failed, start_api_server(settings, db), db)
    finally:
        db.dispose()


@pytest.mark.parametrize("size", list(READING_SIZES))
def test_the_worklist_shows_every_state_and_a_failed_study_with_its_reason(
    worklist: Worklist, browser: Any, size: str  # noqa: F811
) -> None:
    from dicom_node.dicom.worklist import WorklistItem, store_items

    # The RIS ordered the queued study STAT: it heads the worklist.
    store_items(worklist.db, [WorklistItem(
        accession_number=None, study_instance_uid=worklist.queued, patient_key=None,
        requested_procedure_id=None, requested_procedure_description=None, indication=None,
        indication_source=None, modality="CR", scheduled_date=None,
        fetched_at=datetime.now(UTC), priority="STAT")])
    context = browser.new_context(viewport=READING_SIZES[size])
    try:
        page = _logged_in(context, worklist.server.url)
        expect(page.locator("#worklist tbody tr")).to_have_count(4)
        first = page.locator("#worklist tbody tr").first
        expect(first).to_have_attribute("data-uid", worklist.queued)
        expect(first.locator("td").first).to_have_text("stat")
        expect(page.locator(ROW.format(worklist.queued))).to_contain_text("queued")
        expect(page.locator(ROW.format(worklist.running))).to_contain_text("drafting")
        expect(page.locator(ROW.format(worklist.drafted.study_uid))).to_contain_text("drafted")
        failed = page.locator(ROW.format(worklist.failed))
        # The reason in plain words, not the worker's "time limit exceeded".
        expect(failed).to_contain_text(
            "failed: drafting took longer than the node allows; it was stopped")
        # A study without a report opens and says why there is none.
        failed.click()
        expect(page.locator("#report-findings")).to_contain_text("no report yet: failed")
        expect(page.locator("#sign-button")).to_be_disabled()
        screenshot(page, f"failed-study-{size}")
    finally:
        context.close()


def test_a_study_marked_urgent_heads_the_worklist_and_the_mark_is_audited(
    two_studies: TwoStudies, browser: Any  # noqa: F811
) -> None:
    older, newer = two_studies.first, two_studies.second
    context = browser.new_context()
    try:
        page = _logged_in(context, two_studies.server.url)
        rows = page.locator("#worklist tbody tr")
        expect(rows).to_have_count(2)
        # Priority, then age: the longest waiting first while none is urgent.
        expect(rows.first).to_have_attribute("data-uid", older.study_uid)
        expect(rows.first.locator("td").first).to_have_text("routine")
        page.locator(ROW.format(newer.study_uid)).click()
        expect(page.locator("#report-version")).to_have_text("1")
        page.click("#urgent-button")
        expect(page.locator("#urgent-button")).to_have_attribute("aria-pressed", "true")
        expect(rows.first).to_have_attribute("data-uid", newer.study_uid)
        expect(rows.first.locator("td").first).to_have_text("urgent")
        # Stored: a new page shows it too.
        page.reload()
        expect(page.locator("#worklist tbody tr").first).to_have_attribute(
            "data-uid", newer.study_uid)
    finally:
        context.close()
    server = two_studies.server
    assert server.service is not None
    marks = [(row.user, row.detail) for row in audit_rows(server.service.db)
             if row.action == "set_priority"]
    assert marks == [("jane", "marked urgent")]


@pytest.mark.parametrize("size", list(READING_SIZES))
def test_a_colleagues_proposal_and_sign_off_appear_live(
    two_studies: TwoStudies, browser: Any, size: str  # noqa: F811
) -> None:
    """Reader A (Jane) keeps the study open; reader B (Ann) works on it in her own browser.
    A sees B's proposal and B's sign-off without reloading."""
    study = two_studies.first
    context_a = browser.new_context(viewport=READING_SIZES[size])
    context_b = browser.new_context(viewport=READING_SIZES[size])
    try:
        page_a = _logged_in(context_a, two_studies.server.url, JANE_TOKEN)
        errors: list[str] = []
        page_a.on("pageerror", lambda error: errors.append(str(error)))
        page_a.locator(ROW.format(study.study_uid)).click()
        expect(page_a.locator("#report-version")).to_have_text("1")
        expect(page_a.locator("#live")).to_have_text("Live")
        page_a.fill("#message-input", "A draft of my own, not sent")

        page_b = _logged_in(context_b, two_studies.server.url, ANN_TOKEN)
        page_b.locator(ROW.format(study.study_uid)).click()
        expect(page_b.locator("#report-version")).to_have_text("1")
        page_b.select_option("#intent", "amend")
        page_b.fill("#message-input", "There is no pleural effusion.")
        page_b.click("#send")
        expect(page_b.locator("#status")).to_have_text("Proposal 1 ready")
        # A: the colleague's proposal, without a reload.
        expect(page_a.locator('.proposal[data-status="open"]')).to_have_count(1)
        page_b.locator('.proposal[data-status="open"] button.reject').click()
        expect(page_b.locator("#status")).to_have_text("Proposal 1 rejected")
        expect(page_a.locator('.proposal[data-status="rejected"]')).to_have_count(1)

        page_b.click("#sign-button")
        page_b.click("#sign-confirm")
        expect(page_b.locator("#status")).to_have_text("Signed off as version 2")
        # A: status badge, worklist row and a disabled Sign off that says why.
        expect(page_a.locator("#report-status")).to_have_text("signed")
        expect(page_a.locator("#report-version")).to_have_text("2")
        expect(page_a.locator(ROW.format(study.study_uid))).to_contain_text("signed")
        expect(page_a.locator("#sign-button")).to_be_disabled()
        expect(page_a.locator("#sign-hint")).to_be_visible()
        expect(page_a.locator("#sign-hint")).to_contain_text("Signed off by ann")
        screenshot(page_a, f"live-colleague-signed-{size}")
        # What A typed is still there.
        expect(page_a.locator("#message-input")).to_have_value("A draft of my own, not sent")
        assert errors == [], errors
    finally:
        context_a.close()
        context_b.close()


def test_a_job_state_written_by_another_process_reaches_the_worklist_live(
    worklist: Worklist, browser: Any  # noqa: F811
) -> None:
    """A worker (another process) fails a running job: only the database changes; the
    page's stream learns it from the database watcher."""
    context = browser.new_context()
    try:
        page = _logged_in(context, worklist.server.url)
        row = page.locator(ROW.format(worklist.running))
        expect(row).to_contain_text("drafting")
        expect(page.locator("#live")).to_have_text("Live")
        with worklist.db.session() as session:
            study_id = session.scalars(select(Study.id).where(
                Study.study_instance_uid == worklist.running)).one()
            session.execute(update(Job).where(Job.study_id == study_id).values(
                state=JobState.FAILED, error="not drafted: the image is not a chest radiograph",
                finished_at=datetime.now(UTC)))
        expect(row).to_contain_text(
            "failed: not drafted: the image is not a chest radiograph")
        expect(row).to_have_class(re.compile("status-failed"))
    finally:
        context.close()



def test_with_the_node_down_the_page_says_so_keeps_the_text_and_retries(
    two_studies: TwoStudies, browser: Any  # noqa: F811
) -> None:
    study = two_studies.first
    context = browser.new_context()
    try:
        page = _logged_in(context, two_studies.server.url)
        page.locator(ROW.format(study.study_uid)).click()
        expect(page.locator("#report-version")).to_have_text("1")
        page.select_option("#intent", "question")
        page.fill("#message-input", "Is the heart enlarged?")
        # The node goes away: every request to the API fails at the network level.
        page.route("**/api/**", lambda route: route.abort("connectionrefused"))
        page.click("#send")
        failure = page.locator("#failure")
        expect(failure).to_be_visible()
        expect(failure).to_contain_text("The node is not answering; your text is kept.")
        expect(failure).not_to_contain_text("TypeError")
        # No endless spinner, nothing half-sent on screen, the text still in the box.
        expect(page.locator("#messages .message")).to_have_count(0)
        expect(page.locator("body.busy")).to_have_count(0)
        expect(page.locator("#send")).to_be_enabled()
        expect(page.locator("#message-input")).to_have_value("Is the heart enlarged?")
        screenshot(page, "node-down-retry")
        # Retry while still down: the same plain message again.
        page.click("#retry-button")
        expect(failure).to_be_visible()
        expect(page.locator("#message-input")).to_have_value("Is the heart enlarged?")
        # The node is back: Retry sends what was typed, once.
        page.unroute("**/api/**")
        page.click("#retry-button")
        expect(page.locator("#status")).to_have_text("Answered")
        expect(failure).to_be_hidden()
        expect(page.locator("#messages .message.user")).to_have_count(1)
        expect(page.locator("#messages .message.assistant")).to_have_count(1)
        expect(page.locator("#message-input")).to_have_value("")
        # Opening a study while the node is down: said, and retried the same way.
        page.route("**/api/**", lambda route: route.abort("connectionrefused"))
        page.locator(ROW.format(two_studies.second.study_uid)).click()
        expect(failure).to_contain_text("The node is not answering")
        page.unroute("**/api/**")
        page.click("#retry-button")
        expect(page.locator(ROW.format(two_studies.second.study_uid))).to_have_class(
            re.compile("selected"))
        expect(page.locator("#report-version")).to_have_text("1")
        expect(failure).to_be_hidden()
    finally:
        context.close()


def _blur(page: Any) -> None:
    """Focus on nothing in particular (the keys then go to the page, not a text field)."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


@pytest.mark.parametrize("size", list(READING_SIZES))
def test_keyboard_shortcuts_open_studies_decide_proposals_sign_and_list_themselves(
    two_studies: TwoStudies, browser: Any, size: str  # noqa: F811
) -> None:
    first, second = two_studies.first, two_studies.second  # the worklist's order
    context = browser.new_context(viewport=READING_SIZES[size])
    try:
        page = _logged_in(context, two_studies.server.url)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        expect(page.locator("#worklist tbody tr")).to_have_count(2)
        selected = "#worklist tbody tr.selected"
        # j / k outside text fields: next and previous study.
        _blur(page)
        page.keyboard.press("j")
        expect(page.locator(selected)).to_have_attribute("data-uid", first.study_uid)
        expect(page.locator("#report-version")).to_have_text("1")
        page.keyboard.press("j")
        expect(page.locator(selected)).to_have_attribute("data-uid", second.study_uid)
        page.keyboard.press("k")
        expect(page.locator(selected)).to_have_attribute("data-uid", first.study_uid)
        # In the message box the bare key types; Alt+Down moves on and keeps the text.
        page.fill("#message-input", "")
        page.press("#message-input", "j")
        expect(page.locator("#message-input")).to_have_value("j")
        expect(page.locator(selected)).to_have_attribute("data-uid", first.study_uid)
        page.press("#message-input", "Alt+ArrowDown")
        expect(page.locator(selected)).to_have_attribute("data-uid", second.study_uid)
        page.press("#message-input", "Alt+ArrowUp")
        expect(page.locator(selected)).to_have_attribute("data-uid", first.study_uid)
        expect(page.locator("#message-input")).to_have_value("j")

        # Ctrl+Enter sends; r rejects the open proposal, Alt+A accepts the next one.
        page.select_option("#intent", "amend")
        page.fill("#message-input", "There is no pleural effusion.")
        page.press("#message-input", "Control+Enter")
        expect(page.locator("#status")).to_have_text("Proposal 1 ready")
        _blur(page)
        page.keyboard.press("r")
        expect(page.locator('.proposal[data-id="1"]')).to_have_attribute(
            "data-status", "rejected")
        page.fill("#message-input", "There is no pleural effusion.")
        expect(page.locator("#status")).to_have_text("Proposal 1 rejected")
        page.press("#message-input", "Control+Enter")
        expect(page.locator("#status")).to_have_text("Proposal 2 ready")
        page.press("#message-input", "Alt+a")
        expect(page.locator("#report-version")).to_have_text("2")
        expect(page.locator('.proposal[data-id="2"]')).to_have_attribute(
            "data-status", "accepted")

        # s opens the sign-off confirmation, focused on Confirm; Enter signs.
        _blur(page)
        page.keyboard.press("j")
        expect(page.locator(selected)).to_have_attribute("data-uid", second.study_uid)
        expect(page.locator("#report-version")).to_have_text("1")
        _blur(page)
        page.keyboard.press("s")
        expect(page.locator("#sign-review")).to_be_visible()
        expect(page.locator("#sign-confirm")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text("Signed off as version 2")
        expect(page.locator("#report-status")).to_have_text("signed")

        # ? lists the shortcuts in a modal dialog; Tab stays inside it; Escape closes it.
        _blur(page)
        page.keyboard.press("?")
        help_dialog = page.locator("#help")
        expect(help_dialog).to_be_visible()
        expect(help_dialog).to_contain_text("Next study")
        expect(help_dialog).to_contain_text("Ctrl")
        screenshot(page, f"shortcuts-help-{size}")
        for _ in range(4):
            page.keyboard.press("Tab")
            assert page.evaluate(
                "() => document.getElementById('help').contains(document.activeElement)")
        page.keyboard.press("Escape")
        expect(help_dialog).to_be_hidden()
        assert errors == [], errors
    finally:
        context.close()

#: Window sizes the layout is checked at: a laptop, a reading-room monitor, and the laptop at
#: 150 % browser zoom (the same CSS pixels a 911 x 512 window has, drawn 1.5 times larger).
SIZES = {
    "1366x768": ({"width": 1366, "height": 768}, 1),
    "2560x1440": ({"width": 2560, "height": 1440}, 1),
    "1366x768-zoom150": ({"width": 911, "height": 512}, 1.5),
}


def _box(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return dict(box)


@pytest.mark.parametrize("size", list(SIZES))
def test_the_layout_keeps_every_pane_usable_and_the_findings_one_line_each(
    two_studies: TwoStudies, browser: Any, size: str  # noqa: F811
) -> None:
    viewport, scale = SIZES[size]
    context = browser.new_context(viewport=viewport, device_scale_factor=scale)
    try:
        page = _logged_in(context, two_studies.server.url)
        page.locator(ROW.format(two_studies.first.study_uid)).click()
        expect(page.locator("#report-version")).to_have_text("1")
        rows = page.locator("#findings tbody tr")
        expect(rows).to_have_count(14)
        # The screenshot shows the image (when the viewer is built; else the page around it).
        page.wait_for_function(
            "() => !window.cxrViewer || ['ready', 'failed', 'empty'].includes("
            "document.getElementById('viewer').dataset.state)")
        screenshot(page, size)
        if size == "1366x768-zoom150":
            SCREENS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENS / f"{size}-full.png"), full_page=True)
        heights = [rows.nth(i).bounding_box()["height"] for i in range(14)]  # type: ignore[index]
        # One line per finding: no row wraps (a wrapped row is twice as high).
        assert max(heights) < 1.5 * min(heights) and max(heights) < 30, heights
        table = _box(page, "#findings")
        report = _box(page, "#report-panel")
        assert table["width"] <= report["width"], (table, report)
        viewer = _box(page, "#viewer-panel")
        if size == "1366x768-zoom150":
            # The viewer keeps a usable size: across the page, most of the window high.
            assert viewer["width"] >= 0.9 * viewport["width"] - 40, viewer
            assert viewer["height"] >= 280, viewer
        else:
            assert viewer["width"] >= 300 and viewer["height"] >= 0.7 * viewport["height"]
            # The whole findings table fits in the report pane's height.
            assert table["height"] < report["height"], (table, report)
            sync_api.expect(page.locator("#send")).to_be_in_viewport()
    finally:
        context.close()


def test_the_panes_resize_by_keyboard_and_pointer_and_keep_their_size(
    two_studies: TwoStudies, browser: Any  # noqa: F811
) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        page = _logged_in(context, two_studies.server.url)
        expect(page.locator("#worklist tbody tr")).to_have_count(2)
        separator = page.locator('.separator[data-pane="worklist"]')
        expect(separator).to_have_attribute("role", "separator")
        before = _box(page, "#worklist-panel")["width"]
        separator.focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        after = _box(page, "#worklist-panel")["width"]
        assert after == pytest.approx(before + 32, abs=1)
        assert int(separator.get_attribute("aria-valuenow") or 0) == pytest.approx(after, abs=1)
        # The report's separator dragged 40 px to the left: the report is 40 px wider.
        report_before = _box(page, "#report-panel")["width"]
        handle = _box(page, '.separator[data-pane="report"]')
        x, y = handle["x"] + handle["width"] / 2, handle["y"] + 200
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x - 20, y)
        page.mouse.move(x - 40, y)
        page.mouse.up()
        assert _box(page, "#report-panel")["width"] == pytest.approx(report_before + 40, abs=2)
        # The viewer never gets narrower than its minimum, however far a pane is pushed.
        page.locator('.separator[data-pane="dialog"]').focus()
        page.keyboard.press("End")
        assert _box(page, "#viewer-panel")["width"] >= 295
        page.keyboard.press("Home")
        # Kept for the next visit (localStorage of this browser).
        page.reload()
        expect(page.locator("#worklist tbody tr")).to_have_count(2)
        assert _box(page, "#worklist-panel")["width"] == pytest.approx(after, abs=1)
        assert _box(page, "#report-panel")["width"] == pytest.approx(report_before + 40, abs=2)
    finally:
        context.close()


#: axe-core, installed by the viewer's npm build (frontend/package.json devDependencies).
AXE = Path(__file__).resolve().parents[2] / "frontend" / "node_modules" / "axe-core" / "axe.min.js"


def _axe_violations(page: Any) -> list[str]:
    """What axe-core finds on the page as it is now: rule, impact and the first nodes."""
    if not page.evaluate("() => Boolean(window.axe)"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => (await axe.run(document)).violations.map((v) => "
                           "[v.id, v.impact, v.nodes.slice(0, 3).map((n) => n.target.join(' '))])")
    return [f"{rule} ({impact}): {nodes}" for rule, impact, nodes in result]


def _assert_accessible(page: Any, where: str) -> None:
    violations = _axe_violations(page)
    assert not violations, f"{where}:\n" + "\n".join(violations)


@pytest.mark.parametrize("size", ["1366x768", "2560x1440"])
def test_axe_finds_no_violations_and_every_control_is_reached_by_keyboard(
    two_studies: TwoStudies, browser: Any, size: str  # noqa: F811
) -> None:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: cd frontend && npm ci", pytrace=False)
    viewport, scale = SIZES[size]
    # The page's CSP admits no inline script; axe-core is injected as one.
    context = browser.new_context(viewport=viewport, device_scale_factor=scale, bypass_csp=True)
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(two_studies.server.url)
        _assert_accessible(page, "the login screen")
        page.fill("#token", JANE_TOKEN)
        page.click("#login-button")
        page.locator(ROW.format(two_studies.first.study_uid)).click()
        expect(page.locator("#report-version")).to_have_text("1")
        page.select_option("#intent", "amend")
        page.fill("#message-input", "There is no pleural effusion.")
        page.click("#send")
        expect(page.locator("#status")).to_have_text("Proposal 1 ready")
        page.wait_for_function(
            "() => !window.cxrViewer || ['ready', 'failed', 'empty'].includes("
            "document.getElementById('viewer').dataset.state)")
        page.click("#sign-button")
        expect(page.locator("#sign-review")).to_be_visible()
        page.route("**/api/studies", lambda route: route.abort("connectionrefused"))
        page.click("#refresh-button")
        expect(page.locator("#failure")).to_be_visible()
        page.unroute("**/api/studies")
        _assert_accessible(page, "a study, its dialog, an open proposal, the sign-off "
                                 "confirmation and a failure")
        page.click("#failure-dismiss")
        page.keyboard.press("Escape")
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        _assert_accessible(page, "the shortcuts overlay")
        page.keyboard.press("Escape")

        # Every visible control gets the focus by Tab alone, in one round of the page.
        controls = page.evaluate("""() => [...document.querySelectorAll(
            'button, input, select, textarea, a[href], [tabindex]:not([tabindex="-1"])')]
            .filter((node) => !node.disabled && node.getClientRects().length
                    && getComputedStyle(node).visibility !== 'hidden'
                    && !node.closest('dialog:not([open])'))
            .map((node, index) => { node.dataset.kbd = String(index); return index; })""")
        assert len(controls) > 30  # worklist rows, panes, report, findings, dialog, viewer
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        reached: set[str] = set()
        for _ in range(len(controls) * 2 + 10):
            page.keyboard.press("Tab")
            mark = page.evaluate("() => document.activeElement && document.activeElement.dataset"
                                 " ? document.activeElement.dataset.kbd || null : null")
            if mark is not None:
                reached.add(mark)
        missing = page.evaluate("""(reached) => [...document.querySelectorAll('[data-kbd]')]
            .filter((node) => !reached.includes(node.dataset.kbd))
            .map((node) => node.id || node.outerHTML.slice(0, 80))""", sorted(reached))
        assert missing == []
    finally:
        context.close()

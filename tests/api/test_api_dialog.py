"""The dialog API over a real SQLite database and the tiny model (FastAPI TestClient).

Each test starts from one study whose draft (version 1) is stored as the draft job stores it;
the SRs written by accepting, editing and signing are read back from the reports folder and
validated with dciodvfy and dsrdump.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import pydicom
import pytest
from apihelpers import (
    BOB_TOKEN,
    DRAFT_FINDINGS,
    DRAFT_IMPRESSION,
    JANE_TOKEN,
    MAX_MESSAGE_CHARS,
    PATIENT_ID,
    PATIENT_NAME,
    ApiUnderTest,
    all_text,
    audit_rows,
    auth,
    latest_version_row,
    post_message,
    predecessor_uids,
    propose,
    state_counts,
    version_sr,
)
from PIL import Image
from support.validators import validate_sr_file

from dicom_node.api._text import clean_generated, report_context
from dicom_node.store import MessageKind
from report_language import choose_correction, unmet_statements
from sr_templates import read_report


def validated(api: ApiUnderTest, sr: pydicom.Dataset, name: str) -> str:
    path = api.settings.storage.folder / f"{name}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return validate_sr_file(path)


def joined(segments: list[dict[str, str]], *ops: str) -> str:
    return "".join(segment["text"] for segment in segments if segment["op"] in ops)


# --------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": JANE_TOKEN}, {"Authorization": "Basic amFuZTpzZWNyZXQ="},
     {"Authorization": "Bearer not-a-configured-token"}, {"Authorization": "Bearer "}],
    ids=["none", "no-scheme", "basic", "unknown-token", "empty-token"],
)
def test_requests_without_a_valid_token_get_401_and_change_nothing(
    api: ApiUnderTest, headers: dict[str, str]
) -> None:
    before = state_counts(api.db)
    requests = [
        ("GET", "/api/me", None),
        ("GET", "/api/studies", None),
        ("GET", api.path(), None),
        ("POST", api.path("/messages"), {"text": "there is no effusion"}),
        ("POST", api.path("/proposals/1/accept"), None),
        ("PUT", api.path("/report"), {"based_on_version": 1, "findings_text": "x",
                                      "impression_text": "y"}),
        ("POST", api.path("/signoff"), {"based_on_version": 1}),
        ("GET", api.path("/images/1.png"), None),
    ]
    for method, path, body in requests:
        response = api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]
    assert state_counts(api.db) == before
    assert audit_rows(api.db) == []


def test_both_configured_users_authenticate_and_the_page_needs_no_token(
    api: ApiUnderTest,
) -> None:
    jane = api.client.get("/api/me", headers=auth(JANE_TOKEN))
    assert jane.status_code == 200
    assert jane.json() == {"name": "jane", "display_name": "Doe^Jane",
                           "organization": "General Hospital", "may_sign": True}
    bob = api.client.get("/api/me", headers=auth(BOB_TOKEN))  # configured by its SHA-256
    assert bob.json()["name"] == "bob" and bob.json()["may_sign"] is False
    page = api.client.get("/")
    assert page.status_code == 200 and "CXR report dialog" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api.client.get("/static/app.js").status_code == 200


# --------------------------------------------------------------------------- list / get
def test_list_and_get_a_drafted_study(api: ApiUnderTest, tiny_model: Any) -> None:
    listed = api.client.get("/api/studies?drafted=true", headers=auth())
    assert listed.status_code == 200
    (summary,) = listed.json()
    assert summary["study_instance_uid"] == api.study.study_uid
    assert summary["status"] == "drafted"
    assert summary["latest_version"] == 1 and summary["latest_kind"] == "draft"
    assert summary["accession_number"] == "ACC4711"
    assert summary["open_proposals"] == 0

    response = api.client.get(api.path(), headers=auth())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    detail = response.json()
    current = detail["current"]
    assert current["version"] == 1 and current["kind"] == "draft" and current["author"] is None
    assert current["findings_text"] == DRAFT_FINDINGS
    assert current["impression_text"] == DRAFT_IMPRESSION
    assert current["verified"] is False and current["diff"] is None
    analysis = tiny_model.analyse([api.study.image_path])
    expected = {f.label: (f.probability, f.threshold) for f in analysis.findings}
    shown = {f["label"]: (f["probability"], f["threshold"]) for f in current["findings"]}
    assert shown.keys() == expected.keys() and len(shown) == 14
    for label, (probability, threshold) in expected.items():
        assert shown[label][0] == pytest.approx(probability, abs=1e-6)
        assert shown[label][1] == pytest.approx(threshold)
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["messages"] == [] and detail["proposals"] == []
    assert detail["patient"]["name"] == PATIENT_NAME
    assert detail["patient"]["patient_id"] == PATIENT_ID
    assert [image["view_position"] for image in detail["images"]] == ["PA"]


# --------------------------------------------------------------------------- messages
def test_a_question_is_answered_by_the_model_and_the_report_stays(
    api: ApiUnderTest, tiny_model: Any
) -> None:
    before = state_counts(api.db)
    response = post_message(api, "Is the heart enlarged?")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "question"
    assert result["proposal"] is None
    assert result["message"]["text"] == "Is the heart enlarged?"
    assert result["message"]["author"] == "jane" and result["message"]["based_on_version"] == 1
    # The answer is the model's, with the current report, the indication and the findings
    # the current version codes present (the draft's text states a pleural effusion).
    analysis = tiny_model.analyse([api.study.image_path])
    context = report_context(DRAFT_FINDINGS, DRAFT_IMPRESSION, MessageKind.QUESTION)
    expected = clean_generated(
        tiny_model.chat(analysis, context, [], "Is the heart enlarged?",
                        indication="Cough and fever.", findings=("Pleural Effusion",))
    )
    assert expected and result["answer"]["text"] == expected
    assert result["answer"]["role"] == "assistant" and result["answer"]["author"] is None
    after = state_counts(api.db)
    assert after["messages"] == before["messages"] + 2
    assert after["versions"] == before["versions"] and after["proposals"] == before["proposals"]

    # A second turn reuses the vision analysis of the study.
    assert post_message(api, "any pneumothorax?").json()["kind"] == "question"
    assert (api.service._analyses.misses, api.service._analyses.hits) == (1, 1)
    messages = api.client.get(api.path(), headers=auth()).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_a_correction_gives_a_proposal_with_a_diff_against_the_current_version(
    api: ApiUnderTest,
) -> None:
    before = state_counts(api.db)
    response = post_message(api, "There is no pleural effusion.")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "correction"
    proposal = result["proposal"]
    assert proposal["status"] == "open" and proposal["stale"] is False
    assert proposal["based_on_version"] == 1 and proposal["requested_by"] == "jane"
    assert result["answer"]["proposal_id"] == proposal["id"]
    diff = proposal["diff"]
    assert diff["from_version"] == 1
    assert joined(diff["findings"], "equal", "delete") == DRAFT_FINDINGS
    assert joined(diff["findings"], "equal", "insert") == proposal["findings_text"]
    assert joined(diff["impression"], "equal", "insert") == proposal["impression_text"]
    assert diff["unified"].startswith("--- version 1\n+++ proposal ")
    assert "-Small left pleural effusion." in diff["unified"]
    after = state_counts(api.db)
    assert after["proposals"] == before["proposals"] + 1
    assert after["versions"] == before["versions"]  # nothing changes until accepted
    listed = api.client.get("/api/studies", headers=auth()).json()
    assert listed[0]["open_proposals"] == 1


@pytest.mark.parametrize(
    ("text", "kind"),
    [("Make it easier to read.", "easy_language"), ("summarise", "summary"),
     ("Please rephrase the findings.", "rewrite")],
)
def test_requests_are_classified_and_answered_with_proposals(
    api: ApiUnderTest, text: str, kind: str
) -> None:
    result = post_message(api, text).json()
    assert result["kind"] == kind and result["proposal"]["kind"] == kind
    proposal = result["proposal"]
    if kind == "summary":  # a summary is proposed as the new impression
        assert proposal["findings_text"] == DRAFT_FINDINGS
    # A rewording's codes follow its own text, read by the labeler; none is carried over
    # from the draft. (The tiny model's words mention few findings: not assessed.)
    from dicom_node.pipeline.finding_codes import text_presence

    read = text_presence(proposal["findings_text"], proposal["impression_text"])
    for finding in proposal["findings"]:
        assert finding["source"] == "text"
        if finding["label"] != "No Finding":
            assert finding["presence"] == read.get(finding["label"], "not_assessed")
        assert not finding["disagrees"]


def test_answers_stream_as_server_sent_events(api: ApiUnderTest) -> None:
    events = []
    with api.client.stream(
        "POST", api.path("/messages?stream=true"),
        json={"text": "there is no effusion"}, headers=auth(),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
        for raw in buffer.strip().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in raw.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert names.count("token") >= 2 and set(names[1:-1]) == {"token"}
    assert events[0][1] == {"kind": "correction", "based_on_version": 1}
    done = events[-1][1]
    streamed = "".join(data["text"] for name, data in events if name == "token")
    assert streamed.strip() == done["answer"]["text"]
    assert done["proposal"]["status"] == "open"
    stored = api.client.get(api.path(), headers=auth()).json()
    assert [p["id"] for p in stored["proposals"]] == [done["proposal"]["id"]]


def test_a_correction_the_answer_ignores_is_redrafted_from_the_corrected_findings(
    api: ApiUnderTest,
) -> None:
    """The tiny model's answer does not state the finding the reader adds, so the node
    redrafts from the corrected findings (streamed after a notice) and proposes whichever
    text meets more of the reader's statements."""
    text = "You missed cardiomegaly."
    with api.client.stream(
        "POST", api.path("/messages?stream=true"), json={"text": text}, headers=auth(),
    ) as response:
        assert response.status_code == 200
        buffer = "".join(response.iter_text())
    events = []
    for raw in buffer.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in raw.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    streamed = "".join(data["text"] for name, data in events if name == "token")
    answer, notice, redraft = streamed.partition("[redrafting from the corrected findings]")
    assert notice, streamed
    assert unmet_statements(answer, text) == ("Cardiomegaly",)
    chosen, _ = choose_correction(answer.strip(), redraft.strip(), text)
    done = events[-1][1]
    assert done["answer"]["text"] == chosen
    assert done["proposal"]["status"] == "open"
    # The proposal says which of the reader's statements it still leaves unmet, in the turn's
    # answer and in the study the page loads.
    expected = list(unmet_statements(chosen, text))
    assert expected == ["Cardiomegaly"]  # the tiny model writes no such finding
    assert done["proposal"]["unmet_statements"] == expected
    (listed,) = api.client.get(api.path(), headers=auth()).json()["proposals"]
    assert listed["unmet_statements"] == expected


# --------------------------------------------------------------------------- accept
def test_accepting_a_proposal_stores_version_2_naming_version_1(api: ApiUnderTest) -> None:
    proposal = propose(api)
    other = propose(api, "The heart is enlarged.")
    response = api.client.post(api.path(f"/proposals/{proposal['id']}/accept"), headers=auth())
    assert response.status_code == 201, response.text
    version = response.json()["version"]
    assert version["version"] == 2 and version["kind"] == "amendment"
    assert version["author"] == "jane" and version["verified"] is False
    assert version["findings_text"] == proposal["findings_text"]
    assert version["diff"]["from_version"] == 1
    assert response.json()["destinations"] == []  # no PACS configured here

    sr, row = version_sr(api, 2)
    draft, _ = version_sr(api, 1)
    assert predecessor_uids(sr) == [str(draft.SOPInstanceUID)]
    assert sr.StudyInstanceUID == api.study.study_uid
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    report = read_report(sr)
    assert report.findings_text == proposal["findings_text"]
    assert report.impression_text == proposal["impression_text"]
    assert [person.name for person in report.observers] == ["Doe^Jane"]
    assert row.author == "jane"
    validated(api, sr, "amendment")

    detail = api.client.get(api.path(), headers=auth()).json()
    assert detail["current"]["version"] == 2 and detail["study"]["status"] == "amended"
    by_id = {p["id"]: p for p in detail["proposals"]}
    assert by_id[proposal["id"]]["status"] == "accepted"
    assert by_id[proposal["id"]]["accepted_version"] == 2
    assert by_id[other["id"]]["stale"] is True

    # The other proposal revised version 1: accepting it now is refused and changes nothing.
    before = state_counts(api.db)
    stale = api.client.post(api.path(f"/proposals/{other['id']}/accept"), headers=auth())
    assert stale.status_code == 409
    assert stale.json()["latest_version"] == 2
    assert "version 1" in stale.json()["detail"]
    assert state_counts(api.db) == before
    assert latest_version_row(api).version == 2
    again = api.client.post(api.path(f"/proposals/{proposal['id']}/accept"), headers=auth())
    assert again.status_code == 409 and "already accepted" in again.json()["detail"]


def test_rejecting_a_proposal_keeps_the_report(api: ApiUnderTest) -> None:
    proposal = propose(api)
    response = api.client.post(api.path(f"/proposals/{proposal['id']}/reject"), headers=auth())
    assert response.status_code == 200
    assert response.json()["status"] == "rejected" and response.json()["decided_by"] == "jane"
    assert latest_version_row(api).version == 1
    accept = api.client.post(api.path(f"/proposals/{proposal['id']}/accept"), headers=auth())
    assert accept.status_code == 409 and "already rejected" in accept.json()["detail"]


# --------------------------------------------------------------------------- edit, sign-off
def test_edit_then_sign_off_gives_a_verified_sr_with_the_verifying_observer(
    api: ApiUnderTest,
) -> None:
    draft = api.client.get(api.path(), headers=auth()).json()["current"]
    devices = {f["label"]: f["presence"] for f in draft["findings"]}["Support Devices"]
    flipped = "absent" if devices == "present" else "present"
    edit = api.client.put(
        api.path("/report"),
        json={"based_on_version": 1, "findings_text": "No pleural effusion. Heart normal.",
              "impression_text": "No acute abnormality.",
              "findings": {"Support Devices": flipped}},
        headers=auth(),
    )
    assert edit.status_code == 201, edit.text
    version = edit.json()["version"]
    assert version["version"] == 2 and version["kind"] == "edit"
    codes = {f["label"]: f["presence"] for f in version["findings"]}
    assert codes["Pleural Effusion"] == "absent"  # read from the new text
    assert codes["Support Devices"] == flipped  # set explicitly
    changes = {c["label"]: (c["before"], c["after"]) for c in version["diff"]["findings_changes"]}
    assert changes["Support Devices"] == (devices, flipped)
    edited_sr, _ = version_sr(api, 2)
    validated(api, edited_sr, "edit")

    before = state_counts(api.db)
    stale = api.client.put(
        api.path("/report"),
        json={"based_on_version": 1, "findings_text": "x.", "impression_text": "y."},
        headers=auth(),
    )
    assert stale.status_code == 409 and stale.json()["latest_version"] == 2
    forbidden = api.client.post(api.path("/signoff"), json={"based_on_version": 2},
                                headers=auth(BOB_TOKEN))
    assert forbidden.status_code == 403
    assert state_counts(api.db) == before

    # The sign-off must hold what the confirmation showed: another content hash is refused.
    shown = api.client.get(api.path(), headers=auth()).json()["current"]
    assert shown["version"] == 2 and len(shown["content_sha256"]) == 64
    not_shown = api.client.post(
        api.path("/signoff"),
        json={"based_on_version": 2, "shown_sha256": "0" * 64}, headers=auth(),
    )
    assert not_shown.status_code == 409
    assert "not the one that would be signed" in not_shown.json()["detail"]
    assert state_counts(api.db) == before
    signed = api.client.post(
        api.path("/signoff"),
        json={"based_on_version": 2, "shown_sha256": shown["content_sha256"]}, headers=auth(),
    )
    assert signed.status_code == 201, signed.text
    assert signed.json()["version"]["version"] == 3
    assert signed.json()["version"]["verified"] is True
    sr, row = version_sr(api, 3)
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.PreliminaryFlag == "FINAL"
    (observer,) = sr.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "Doe^Jane"
    assert observer.VerifyingOrganization == "General Hospital"
    draft, _ = version_sr(api, 1)
    assert predecessor_uids(sr) == [str(draft.SOPInstanceUID), str(edited_sr.SOPInstanceUID)]
    assert read_report(sr).findings_text == "No pleural effusion. Heart normal."
    dump = validated(api, sr, "signed")
    assert "VERIFIED" in dump

    # A signed report is final: no more changes, but questions are still answered.
    for response in (
        api.client.post(api.path("/signoff"), json={"based_on_version": 3}, headers=auth()),
        api.client.put(api.path("/report"), json={"based_on_version": 3, "findings_text": "a.",
                                                  "impression_text": "b."}, headers=auth()),
        post_message(api, "there is no effusion"),
    ):
        assert response.status_code == 409 and "signed off" in response.json()["detail"]
    assert post_message(api, "Is there a pneumothorax?").status_code == 200
    listed = api.client.get("/api/studies", headers=auth()).json()
    assert listed[0]["status"] == "signed"


# --------------------------------------------------------------------------- bad input
BAD_REQUESTS = [
    # (id, method, path suffix, body, expected status, words of the reason, audited)
    ("unknown-study", "POST", "/messages", {"text": "is it normal?"}, 404, "no such study", True),
    ("empty-message", "POST", "/messages", {"text": ""}, 422, "empty", True),
    ("blank-message", "POST", "/messages", {"text": "  \n\t "}, 422, "empty", True),
    ("too-long", "POST", "/messages", {"text": "x" * (MAX_MESSAGE_CHARS + 1)}, 413,
     f"limit is {MAX_MESSAGE_CHARS}", True),
    ("no-text", "POST", "/messages", {"intent": "auto"}, 422, "text", False),
    ("bad-intent", "POST", "/messages", {"text": "hi", "intent": "shout"}, 422, "intent", False),
    ("unknown-proposal", "POST", "/proposals/999/accept", None, 404, "no proposal 999", True),
    ("reject-unknown", "POST", "/proposals/999/reject", None, 404, "no proposal 999", True),
    ("empty-edit", "PUT", "/report",
     {"based_on_version": 1, "findings_text": " ", "impression_text": "x"}, 422,
     "must not be empty", True),
    ("unknown-label", "PUT", "/report",
     {"based_on_version": 1, "findings_text": "a.", "impression_text": "b.",
      "findings": {"Broken Heart": "present"}}, 422, "unknown finding label", True),
    ("control-character", "PUT", "/report",
     {"based_on_version": 1, "findings_text": "a\x07b.", "impression_text": "b."}, 422,
     "character U+0007", True),
    ("stale-sign-off", "POST", "/signoff", {"based_on_version": 7}, 409, "latest version is 1",
     True),
    ("unknown-image", "GET", "/images/999.png", None, 404, "no image 999", False),
]


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status", "reason", "audited"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_is_refused_with_a_reason_and_changes_nothing(
    api: ApiUnderTest, method: str, suffix: str, body: dict[str, Any] | None, status: int,
    reason: str, audited: bool,
) -> None:
    propose(api)  # an open proposal must stay open
    before = state_counts(api.db)
    audits = len(audit_rows(api.db))
    study_uid = "1.2.3.999" if reason == "no such study" else None
    response = api.client.request(
        method, api.path(suffix, study_uid), json=body, headers=auth()
    )
    assert response.status_code == status, response.text
    assert reason in json.dumps(response.json()["detail"])
    assert state_counts(api.db) == before
    rows = audit_rows(api.db)
    if audited:
        assert len(rows) == audits + 1
        assert rows[-1].outcome == "refused" and rows[-1].status_code == status
        assert rows[-1].user == "jane"
        assert rows[-1].study_instance_uid == (study_uid or api.study.study_uid)
    else:
        assert len(rows) == audits


def test_a_body_over_the_limit_is_refused_before_it_is_read(api: ApiUnderTest) -> None:
    before = state_counts(api.db)
    huge = json.dumps({"text": "x" * (api.settings.api.max_body_bytes + 10)})
    response = api.client.post(api.path("/messages"), content=huge,
                               headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    assert state_counts(api.db) == before


def test_a_missing_model_bundle_gives_503_and_changes_nothing(
    api: ApiUnderTest, tmp_path: Any
) -> None:
    from fastapi.testclient import TestClient

    from dicom_node.api import DialogService, create_app
    from dicom_node.models.model_cache import get_model
    from dicom_node.settings import InferenceSettings

    missing = InferenceSettings(bundle=tmp_path / "no-such-bundle", device="cpu")
    service = DialogService(api.settings, api.db, lambda: get_model(missing))
    before = state_counts(api.db)
    try:
        with TestClient(create_app(service)) as client:
            response = client.post(api.path("/messages"), json={"text": "is it normal?"},
                                   headers=auth())
    finally:
        service.close()
    assert response.status_code == 503
    assert response.json()["detail"] == "the model cannot be loaded; see the node's log"
    assert state_counts(api.db) == before
    last = audit_rows(api.db)[-1]
    assert (last.action, last.outcome, last.status_code) == ("post_message", "failed", 503)


# --------------------------------------------------------------------------- audit, privacy
def test_every_action_is_audited_and_the_log_names_no_patient(
    api: ApiUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert api.client.get(api.path(), headers=auth()).status_code == 200
    assert post_message(api, "Is the heart enlarged?").status_code == 200
    proposal = propose(api)
    assert api.client.post(api.path(f"/proposals/{proposal['id']}/accept"),
                           headers=auth()).status_code == 201
    rejected = propose(api, "the heart is enlarged")
    assert api.client.post(api.path(f"/proposals/{rejected['id']}/reject"),
                           headers=auth()).status_code == 200
    # The tiny model's proposal still states the effusion the reader denied: sign-off waits
    # for the reader's choice, which is a saved version of its own.
    refused = api.client.post(api.path("/signoff"), json={"based_on_version": 2}, headers=auth())
    assert refused.status_code == 409 and refused.json()["disagreements"] == ["Pleural Effusion"]
    version = api.client.get(api.path(), headers=auth()).json()["versions"][-1]
    assert api.client.put(api.path("/report"), headers=auth(), json={
        "based_on_version": 2, "findings_text": version["findings_text"],
        "impression_text": version["impression_text"], "confirm": ["Pleural Effusion"],
    }).status_code == 201
    assert api.client.post(api.path("/signoff"), json={"based_on_version": 3},
                           headers=auth()).status_code == 201
    assert api.client.get("/api/studies/1.2.3.4.5", headers=auth()).status_code == 404

    rows = audit_rows(api.db)
    actions = [(r.action, r.outcome, r.status_code) for r in rows if r.action != "change_code"]
    assert actions == [
        ("view_study", "ok", 200),
        ("post_message", "ok", 200),
        ("post_message", "ok", 200),
        ("accept_proposal", "ok", 201),
        ("post_message", "ok", 200),
        ("reject_proposal", "ok", 200),
        ("sign_off", "refused", 409),
        ("view_study", "ok", 200),
        ("edit_report", "ok", 201),
        ("sign_off", "ok", 201),
        ("view_study", "refused", 404),
    ]
    assert {r.user for r in rows} == {"jane"}
    assert all(r.study_instance_uid == api.study.study_uid for r in rows[:-1])
    assert rows[-1].study_instance_uid == "1.2.3.4.5" and rows[-1].study_id is None
    assert rows[3].detail == f"proposal {proposal['id']} -> version 2"
    assert rows[1].at <= rows[-1].at
    # Every code change is audited with who, when and which version: the accepted
    # correction made Pleural Effusion the reader's "absent", the edit confirmed it.
    changes = [r.detail for r in rows if r.action == "change_code"]
    assert "version 2: Pleural Effusion present -> absent (reader)" in changes
    assert "version 3: Pleural Effusion absent -> absent (reader, confirmed against the text)" \
        in changes
    assert all(r.user == "jane" and r.at is not None for r in rows if r.action == "change_code")

    logged = all_text(caplog.records)
    assert caplog.records, "the API logs its requests"
    for secret in (PATIENT_ID, "Zyxwvu", "Qwertina", "ACC4711"):
        assert secret not in logged
    ours = all_text([r for r in caplog.records if r.name.startswith("dicom_node")])
    assert api.study.study_uid not in ours
    assert "POST /api/studies/{study_uid}/messages -> 200" in ours


# --------------------------------------------------------------------------- image
def test_the_image_is_rendered_with_window_and_level(api: ApiUnderTest) -> None:
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    info = api.client.get(api.path(f"/images/{image_id}"), headers=auth()).json()
    assert info["photometric"] == "MONOCHROME1"
    assert (info["default_center"], info["default_width"]) == (15000.0, 30000.0)
    assert (info["rows"], info["columns"]) == (1955, 1841)

    response = api.client.get(api.path(f"/images/{image_id}.png?size=512"), headers=auth())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    picture = Image.open(io.BytesIO(response.content))
    assert max(picture.size) == 512 and picture.mode == "L"

    def pixels(query: str) -> set[int]:
        got = api.client.get(api.path(f"/images/{image_id}.png?size=64&{query}"), headers=auth())
        assert got.status_code == 200, got.text
        return set(np.asarray(Image.open(io.BytesIO(got.content))).ravel().tolist())

    # Every value below the window: black, shown white because MONOCHROME1 is inverted.
    assert pixels(f"center={info['maximum'] + 10_000}&width=2") == {255}
    assert pixels(f"center={info['minimum'] - 10_000}&width=2") == {0}
    assert len(pixels("center=15000&width=4000")) > 50
    for query in ("width=0", "size=4", "center=abc"):
        bad = api.client.get(api.path(f"/images/{image_id}.png?{query}"), headers=auth())
        assert bad.status_code == 422, query


# --------------------------------------------------------------------------- PostgreSQL
def test_the_dialog_runs_on_postgresql(pg_api: ApiUnderTest) -> None:
    api = pg_api
    assert api.db.backend == "postgresql"
    assert post_message(api, "Is the heart enlarged?").json()["kind"] == "question"
    first, second = propose(api), propose(api, "the heart is enlarged")
    accepted = api.client.post(api.path(f"/proposals/{first['id']}/accept"), headers=auth())
    assert accepted.status_code == 201 and accepted.json()["version"]["version"] == 2
    before = state_counts(api.db)
    stale = api.client.post(api.path(f"/proposals/{second['id']}/accept"), headers=auth())
    assert stale.status_code == 409 and state_counts(api.db) == before
    assert post_message(api, "").status_code == 422 and state_counts(api.db) == before
    # The proposal still states the effusion the reader denied: the reader lets the code
    # follow the text before signing.
    assert api.client.post(api.path("/signoff"), json={"based_on_version": 2},
                           headers=auth()).status_code == 409
    version = api.client.get(api.path(), headers=auth()).json()["versions"][-1]
    assert api.client.put(api.path("/report"), headers=auth(), json={
        "based_on_version": 2, "findings_text": version["findings_text"],
        "impression_text": version["impression_text"],
        "findings": {"Pleural Effusion": "present"},
    }).status_code == 201
    signed = api.client.post(api.path("/signoff"), json={"based_on_version": 3}, headers=auth())
    assert signed.status_code == 201
    sr, _ = version_sr(api, 4)
    assert sr.VerificationFlag == "VERIFIED"
    listed = api.client.get("/api/studies?drafted=true", headers=auth()).json()
    assert [s["status"] for s in listed] == ["signed"]
    assert [r.outcome for r in audit_rows(api.db)][-1] == "ok"


def test_the_live_watcher_names_each_changed_study_and_the_priority_is_validated(
    api: ApiUnderTest,
) -> None:
    """What another ``serve`` process or a worker wrote is found in the database: each
    proposal, decision and version names its study; a quiet database names none."""
    from apihelpers import propose

    from dicom_node.api._events import changed_studies, read_mark

    mark = read_mark(api.db)
    assert changed_studies(api.db, mark) == []
    proposal = propose(api)
    after_proposal = read_mark(api.db)
    assert after_proposal != mark
    assert changed_studies(api.db, mark) == [api.study.study_uid]
    response = api.client.post(api.path(f"/proposals/{proposal['id']}/reject"), headers=auth())
    assert response.status_code == 200, response.text
    assert changed_studies(api.db, after_proposal) == [api.study.study_uid]
    marked = read_mark(api.db)
    response = api.client.put(api.path("/priority"), json={"urgent": True}, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json() == {"study_instance_uid": api.study.study_uid, "urgent": True}
    assert read_mark(api.db) != marked  # the worklist changed: an urgent study
    listed = api.client.get("/api/studies", headers=auth()).json()
    assert [s["urgent"] for s in listed] == [True]
    bad = api.client.put(api.path("/priority"), json={"urgent": "very"}, headers=auth())
    assert bad.status_code == 422
    unknown = api.client.put(api.path("/priority", "1.2.3.999"), json={"urgent": True},
                             headers=auth())
    assert unknown.status_code == 404


def test_the_ris_priority_is_parsed_stored_and_listed_with_the_study(api: ApiUnderTest) -> None:
    """Requested Procedure Priority (0040,1003) of the study's worklist entry reaches the
    worklist; a value PS3.3 does not define is not stored."""
    from datetime import UTC, datetime

    from pydicom.dataset import Dataset

    from dicom_node.dicom.worklist import parse_identifier, store_items

    def identifier(priority: str) -> Dataset:
        ds = Dataset()
        ds.AccessionNumber = "ACC4711"
        ds.StudyInstanceUID = api.study.study_uid
        ds.RequestedProcedurePriority = priority
        return ds

    now = datetime.now(UTC)
    odd = parse_identifier(identifier("SOON"), now)
    assert odd is not None and odd.priority is None
    item = parse_identifier(identifier("stat"), now)
    assert item is not None and item.priority == "STAT"
    listed = api.client.get("/api/studies", headers=auth()).json()
    assert [s["ris_priority"] for s in listed] == [None]
    store_items(api.db, [item])
    listed = api.client.get("/api/studies", headers=auth()).json()
    assert [s["ris_priority"] for s in listed] == ["STAT"]
    detail = api.client.get(api.path(), headers=auth()).json()
    assert detail["study"]["ris_priority"] == "STAT"

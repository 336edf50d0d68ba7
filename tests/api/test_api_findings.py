"""Coded findings follow the reader: the text, read by the labeler, and the reader's choices.

Each test reads the SR the node stores for a version back with ``sr_templates.read_report``:
what the PACS receives, not what the API says.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from apihelpers import (
    DRAFT_FINDINGS,
    DRAFT_IMPRESSION,
    PATIENT_ID,
    ApiUnderTest,
    audit_rows,
    auth,
    propose,
    version_sr,
)

from sr_templates import read_report


def sr_codes(api: ApiUnderTest, version: int) -> dict[str, str]:
    sr, _ = version_sr(api, version)
    return {f.label: f.presence.value for f in read_report(sr).findings}


def edit(api: ApiUnderTest, based_on: int, **body: Any) -> Any:
    current = api.client.get(api.path(), headers=auth()).json()["versions"][-1]
    payload = {
        "based_on_version": based_on,
        "findings_text": current["findings_text"],
        "impression_text": current["impression_text"],
        **body,
    }
    return api.client.put(api.path("/report"), json=payload, headers=auth())


def findings_of(response: Any) -> dict[str, dict[str, Any]]:
    return {f["label"]: f for f in response.json()["version"]["findings"]}


def test_the_draft_codes_what_its_text_says_and_nothing_else(api: ApiUnderTest) -> None:
    codes = sr_codes(api, 1)
    # "Small left pleural effusion. Heart size is normal. No pneumothorax."
    assert codes["Pleural Effusion"] == "present"
    assert codes["Cardiomegaly"] == "absent" and codes["Pneumothorax"] == "absent"
    assert codes["No Finding"] == "absent"
    assert codes["Pneumonia"] == "not_assessed" and codes["Fracture"] == "not_assessed"
    assert len(codes) == 14


def test_an_edited_impression_recodes_the_findings_it_states(api: ApiUnderTest) -> None:
    response = edit(
        api, 1, findings_text="Lungs are clear. No pleural effusion. No pneumothorax.",
        impression_text="No acute cardiopulmonary abnormality.",
    )
    assert response.status_code == 201, response.text
    codes = sr_codes(api, 2)
    assert codes["Pleural Effusion"] == "absent" and codes["Pneumothorax"] == "absent"
    assert codes["No Finding"] == "present"
    # Nothing the new text no longer states stays coded from the draft.
    assert "present" not in {v for k, v in codes.items() if k != "No Finding"}


def test_a_presence_set_by_hand_is_the_readers_and_reaches_the_next_srs(
    api: ApiUnderTest,
) -> None:
    response = edit(api, 1, findings={"Fracture": "uncertain"})
    assert response.status_code == 201, response.text
    fracture = findings_of(response)["Fracture"]
    assert (fracture["presence"], fracture["source"]) == ("uncertain", "reader")
    # The model's probability stays with the label, as the model's.
    assert fracture["probability"] is not None
    assert sr_codes(api, 2)["Fracture"] == "uncertain"
    # The SR records the choice as the reader's observation; text codes name no person.
    sr, _ = version_sr(api, 2)
    observers = {f.label: f.observer for f in read_report(sr).findings}
    assert observers["Fracture"] is not None and observers["Fracture"].name == "Doe^Jane"
    assert observers["Pleural Effusion"] is None
    # A later change of text keeps the reader's choice; the text's codes follow the text.
    response = edit(api, 2, findings_text="Small left pleural effusion. Old rib fracture "
                    "cannot be excluded.", impression_text="Small left pleural effusion.")
    assert response.status_code == 201, response.text
    assert sr_codes(api, 3)["Fracture"] == "uncertain"
    assert findings_of(response)["Fracture"]["source"] == "reader"


def test_a_correction_applies_the_findings_it_states(api: ApiUnderTest) -> None:
    proposal = propose(api, "There is no pleural effusion.")
    effusion = {f["label"]: f for f in proposal["findings"]}["Pleural Effusion"]
    assert (effusion["presence"], effusion["source"]) == ("absent", "reader")
    accepted = api.client.post(api.path(f"/proposals/{proposal['id']}/accept"), headers=auth())
    assert accepted.status_code == 201, accepted.text
    assert sr_codes(api, 2)["Pleural Effusion"] == "absent"


def test_a_disagreement_blocks_sign_off_until_the_reader_chooses(api: ApiUnderTest) -> None:
    # The reader codes the effusion absent; the text still describes one.
    response = edit(api, 1, findings={"Pleural Effusion": "absent"})
    effusion = findings_of(response)["Pleural Effusion"]
    assert effusion["disagrees"] and effusion["text_presence"] == "present"
    refused = api.client.post(api.path("/signoff"), json={"based_on_version": 2},
                              headers=auth())
    assert refused.status_code == 409
    assert refused.json()["disagreements"] == ["Pleural Effusion"]
    assert "Pleural Effusion" in refused.json()["detail"]
    # Confirming the code is an explicit choice, stored as a version, and signing goes on.
    confirmed = edit(api, 2, confirm=["Pleural Effusion"])
    assert confirmed.status_code == 201
    assert not findings_of(confirmed)["Pleural Effusion"]["disagrees"]
    signed = api.client.post(api.path("/signoff"), json={"based_on_version": 3},
                             headers=auth())
    assert signed.status_code == 201, signed.text
    assert sr_codes(api, 4)["Pleural Effusion"] == "absent"


def test_a_confirmation_holds_for_the_text_it_was_made_against(api: ApiUnderTest) -> None:
    # "Heart size is normal." reads absent; the reader codes and confirms present.
    response = edit(api, 1, findings={"Cardiomegaly": "present"}, confirm=["Cardiomegaly"])
    assert response.status_code == 201, response.text
    assert not findings_of(response)["Cardiomegaly"]["disagrees"]
    # New words, same reading of the heart: the confirmation holds.
    response = edit(api, 2, findings_text=DRAFT_FINDINGS + " Lungs are clear.",
                    impression_text=DRAFT_IMPRESSION)
    assert not findings_of(response)["Cardiomegaly"]["disagrees"]
    # The text now reads the heart otherwise: the reader must choose again.
    response = edit(api, 3, findings_text="Small left pleural effusion. Possible cardiomegaly.",
                    impression_text=DRAFT_IMPRESSION)
    heart = findings_of(response)["Cardiomegaly"]
    assert heart["disagrees"] and heart["text_presence"] == "uncertain"
    refused = api.client.post(api.path("/signoff"), json={"based_on_version": 4},
                              headers=auth())
    assert refused.status_code == 409 and refused.json()["disagreements"] == ["Cardiomegaly"]


def test_unknown_labels_and_presences_are_refused_with_the_reason(api: ApiUnderTest) -> None:
    bad = edit(api, 1, findings={"Pleural Effusion": "maybe"})
    assert bad.status_code == 422 and "not_assessed" in bad.json()["detail"]
    bad = edit(api, 1, findings={"Dragons": "present"})
    assert bad.status_code == 422 and "Dragons" in bad.json()["detail"]
    bad = edit(api, 1, confirm=["Dragons"])
    assert bad.status_code == 422 and "Dragons" in bad.json()["detail"]


def test_an_addendum_names_the_signed_sr_and_never_changes_it(
    api: ApiUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    from apihelpers import all_text, predecessor_uids

    caplog.set_level(logging.DEBUG)
    path = api.path("/addenda")
    refused = api.client.post(path, json={"based_on_version": 1, "text": "Late note."},
                              headers=auth())
    assert refused.status_code == 409 and "not signed off" in refused.json()["detail"]
    assert api.client.post(api.path("/signoff"), json={"based_on_version": 1},
                           headers=auth()).status_code == 201
    signed_sr, signed_row = version_sr(api, 2)
    signed_file = (api.settings.storage.reports_dir / signed_row.sr_path).read_bytes()
    # No proposal and no edit on a signed report: only an addendum.
    assert api.client.post(api.path("/messages"), json={"text": "There is no effusion."},
                           headers=auth()).status_code == 409
    assert edit(api, 2, findings={"Fracture": "present"}).status_code == 409
    assert api.client.post(path, json={"based_on_version": 2, "text": "  "},
                           headers=auth()).status_code == 422
    first = api.client.post(path, json={"based_on_version": 2, "text": "Prior reviewed."},
                            headers=auth())
    assert first.status_code == 201, first.text
    stale = api.client.post(path, json={"based_on_version": 2, "text": "Again."},
                            headers=auth())
    assert stale.status_code == 409 and stale.json()["latest_version"] == 3
    second = api.client.post(path, json={"based_on_version": 3, "text": "Called Dr. X."},
                             headers=auth())
    assert second.status_code == 201
    assert [a["text"] for a in second.json()["version"]["addenda"]] == [
        "Prior reviewed.", "Called Dr. X."]

    first_sr, _ = version_sr(api, 3)
    second_sr, _ = version_sr(api, 4)
    assert predecessor_uids(second_sr)[-2:] == [
        str(signed_sr.SOPInstanceUID), str(first_sr.SOPInstanceUID)]
    assert second_sr.VerificationFlag == "VERIFIED"
    report = read_report(second_sr)
    assert report.findings_text == read_report(signed_sr).findings_text
    assert [a.text for a in report.addenda] == ["Prior reviewed.", "Called Dr. X."]
    # The signed SR's file is the same bytes as before any addendum.
    assert (api.settings.storage.reports_dir / signed_row.sr_path).read_bytes() == signed_file
    actions = [r.action for r in audit_rows(api.db)]
    assert actions.count("add_addendum") == 5  # 2 stored, 3 refused, all audited
    # The application log names neither the patient nor what the reader wrote.
    logged = all_text(caplog.records)
    assert "add_addendum by jane" in logged
    for secret in ("Prior reviewed", "Called Dr. X", PATIENT_ID, "Zyxwvu"):
        assert secret not in logged

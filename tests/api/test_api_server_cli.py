"""The API served by ApiServer (uvicorn in a thread) and the `ask`/`amend` commands."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from apihelpers import (
    BOB_TOKEN,
    JANE_TOKEN,
    api_settings,
    auth,
    seed_drafted_study,
    state_counts,
)
from support.peers import free_port
from typer.testing import CliRunner

from dicom_node.api import ApiServer
from dicom_node.cli import app
from dicom_node.cli.amend import EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE, TOKEN_ENV
from dicom_node.errors import ServiceError, SettingsError
from dicom_node.settings import load_settings
from dicom_node.store import Database

pytestmark = pytest.mark.network

runner = CliRunner()


@pytest.fixture
def served(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
    start_api_server: Callable[..., ApiServer], monkeypatch: pytest.MonkeyPatch,
) -> tuple[ApiServer, str, Database]:
    """A drafted study and the API serving it on a free port (model from the bundle)."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    settings = api_settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    study = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
    server = start_api_server(settings, db)
    return server, study.study_uid, db


def test_the_server_binds_a_free_port_and_stops(
    tmp_path: Path, tiny_bundle: Path, start_api_server: Callable[..., ApiServer]
) -> None:
    settings = api_settings(tmp_path / "node", tiny_bundle)
    server = start_api_server(settings)
    host, port = server.address
    assert host == "127.0.0.1" and port > 0 and server.url == f"http://127.0.0.1:{port}"
    me = httpx.get(f"{server.url}/api/me", headers=auth(), timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "jane"
    assert httpx.get(f"{server.url}/api/me", timeout=10).status_code == 401
    # The port is taken: a second server on it cannot start.
    busy = ApiServer(api_settings(tmp_path / "other", tiny_bundle, api={"port": port}))
    try:
        with pytest.raises(ServiceError, match=f"cannot listen on 127.0.0.1:{port}"):
            busy.start()
    finally:
        busy.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/me", timeout=5)


def test_ask_prints_the_models_answer(served: tuple[ApiServer, str, Database]) -> None:
    server, study_uid, db = served
    result = runner.invoke(
        app, ["ask", study_uid, "Is the heart enlarged?", "--url", server.url,
              "--token", JANE_TOKEN],
    )
    assert result.exit_code == 0, result.output
    detail = httpx.get(f"{server.url}/api/studies/{study_uid}", headers=auth(), timeout=10).json()
    (question, answer) = detail["messages"]
    assert question["kind"] == "question" and question["text"] == "Is the heart enlarged?"
    assert result.stdout.strip() == answer["text"].strip()
    assert state_counts(db)["versions"] == 1


def test_amend_prints_the_diff_and_accept_stores_version_2(
    served: tuple[ApiServer, str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, study_uid, db = served
    monkeypatch.setenv(TOKEN_ENV, JANE_TOKEN)
    shown = runner.invoke(app, ["amend", study_uid, "there is no effusion", "--url", server.url])
    assert shown.exit_code == 0, shown.output
    assert "proposal 1 (correction) revising version 1:" in shown.stdout
    assert "--- version 1" in shown.stdout and "+++ proposal 1" in shown.stdout
    assert "-Small left pleural effusion." in shown.stdout
    assert state_counts(db)["versions"] == 1

    # An instruction phrased as a question is still a change request for `amend`.
    accepted = runner.invoke(
        app, ["amend", study_uid, "Is it easier to read this way?", "--accept", "--url",
              server.url],
    )
    assert accepted.exit_code == 0, accepted.output
    assert "proposal 2 (easy_language)" in accepted.stdout
    assert "accepted: report version 2, no PACS destination" in accepted.stdout
    assert state_counts(db)["versions"] == 2

    # Proposal 1 revised version 1: accepting it now is refused.
    stale = httpx.post(f"{server.url}/api/studies/{study_uid}/proposals/1/accept",
                       headers=auth(), timeout=10)
    assert stale.status_code == 409


def test_amend_addendum_adds_a_verified_sr_after_sign_off_only(
    served: tuple[ApiServer, str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, study_uid, db = served
    monkeypatch.setenv(TOKEN_ENV, JANE_TOKEN)
    text = "Compared with the prior of 2024-01-02, the effusion is unchanged."
    early = runner.invoke(app, ["amend", study_uid, text, "--addendum", "--url", server.url])
    assert early.exit_code == EXIT_REFUSED
    assert "not signed off" in early.output and state_counts(db)["versions"] == 1
    signed = httpx.post(f"{server.url}/api/studies/{study_uid}/signoff",
                        json={"based_on_version": 1}, headers=auth(), timeout=30)
    assert signed.status_code == 201, signed.text
    added = runner.invoke(app, ["amend", study_uid, text, "--addendum", "--url", server.url])
    assert added.exit_code == 0, added.output
    assert "addendum stored: report version 3" in added.stdout
    detail = httpx.get(f"{server.url}/api/studies/{study_uid}", headers=auth(), timeout=10).json()
    current = detail["current"]
    assert current["kind"] == "addendum" and current["verified"]
    assert [a["text"] for a in current["addenda"]] == [text]
    assert current["addenda"][0]["author"] == "Doe^Jane"
    both = runner.invoke(app, ["amend", study_uid, "x", "--addendum", "--accept",
                               "--url", server.url])
    assert both.exit_code == EXIT_USAGE


def test_two_readers_accepting_on_one_version_at_once_one_wins(
    served: tuple[ApiServer, str, Database],
) -> None:
    server, study_uid, db = served
    base = f"{server.url}/api/studies/{study_uid}"
    ids = [
        httpx.post(f"{base}/messages", json={"text": text}, headers=auth(token),
                   timeout=60).json()["proposal"]["id"]
        for text, token in (("there is no effusion", JANE_TOKEN),
                            ("the heart is enlarged", BOB_TOKEN))
    ]
    barrier = threading.Barrier(2)
    statuses: dict[str, int] = {}

    def accept(proposal_id: int, token: str, who: str) -> None:
        barrier.wait()
        statuses[who] = httpx.post(f"{base}/proposals/{proposal_id}/accept",
                                   headers=auth(token), timeout=60).status_code

    threads = [threading.Thread(target=accept, args=(ids[0], JANE_TOKEN, "jane")),
               threading.Thread(target=accept, args=(ids[1], BOB_TOKEN, "bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses.values()) == [201, 409], statuses
    assert state_counts(db)["versions"] == 2
    detail = httpx.get(base, headers=auth(), timeout=10).json()
    winner = "jane" if statuses["jane"] == 201 else "bob"
    assert detail["current"]["author"] == winner
    assert sorted(p["status"] for p in detail["proposals"]) == ["accepted", "open"]


def test_command_errors_have_clear_messages_and_exit_codes(
    served: tuple[ApiServer, str, Database],
) -> None:
    server, study_uid, db = served
    before = state_counts(db)
    unknown = runner.invoke(app, ["ask", "1.2.3.999", "hello?", "--url", server.url,
                                  "--token", JANE_TOKEN])
    assert unknown.exit_code == EXIT_REFUSED
    assert "404 Not Found: no such study" in unknown.output
    empty = runner.invoke(app, ["amend", study_uid, "   ", "--url", server.url,
                                "--token", JANE_TOKEN])
    assert empty.exit_code == EXIT_REFUSED and "the message is empty" in empty.output
    wrong = runner.invoke(app, ["ask", study_uid, "hello?", "--url", server.url,
                                "--token", "not-the-token-at-all"])
    assert wrong.exit_code == EXIT_REFUSED and "401" in wrong.output
    down = runner.invoke(app, ["ask", study_uid, "hello?", "--url",
                               f"http://127.0.0.1:{free_port()}", "--token", JANE_TOKEN])
    assert down.exit_code == EXIT_UNAVAILABLE and "cannot reach the API" in down.output
    assert state_counts(db) == before


def test_without_a_token_the_command_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = tmp_path / "node.toml"
    config.write_text(
        '[api.users.jane]\ntoken_sha256 = "' + "0" * 64 + '"\n'
        'display_name = "Doe^Jane"\norganization = "General Hospital"\n'
    )
    result = runner.invoke(app, ["ask", "1.2.3", "hello?", "--config", str(config)])
    assert result.exit_code == EXIT_USAGE
    assert f"--token or ${TOKEN_ENV}" in result.output


def test_api_settings_refuse_unusable_users() -> None:
    with pytest.raises(SettingsError, match="at least one user is required"):
        load_settings(None, api={"enabled": True})
    user = {"display_name": "Doe^Jane", "organization": "General Hospital"}
    with pytest.raises(SettingsError, match="exactly one of token_sha256 and token"):
        load_settings(None, api={"users": {"jane": user}})
    with pytest.raises(SettingsError, match="at least 16 characters"):
        load_settings(None, api={"users": {"jane": {**user, "token": "short"}}})
    with pytest.raises(SettingsError, match=r"api\.users\.jane\.token_sha256"):
        load_settings(None, api={"users": {"jane": {**user, "token_sha256": "abc"}}})
    with pytest.raises(SettingsError, match="may hold ASCII letters"):
        load_settings(None, api={"users": {"ja ne": {**user, "token": "x" * 20}}})
    with pytest.raises(SettingsError, match="display_name"):
        load_settings(None, api={"users": {"jane": {**user, "token": "x" * 20,
                                                    "display_name": "Doe\\Jane"}}})
    settings = load_settings(None, api={"users": {"jane": {**user, "token": "x" * 20}}})
    assert settings.api.enabled is False and settings.api.bind_address == "127.0.0.1"
    assert "x" * 20 not in settings.model_dump_json()  # the token is not printed


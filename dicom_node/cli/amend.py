"""The dialog commands of the ``dicom_node`` CLI: ``ask``, ``amend`` and ``api``.

``ask`` and ``amend`` are HTTP clients of a running dialog API (``dicom_node serve`` with
``api.enabled``, or ``dicom_node api``), for scripted use::

    dicom_node ask 1.2.3.4 "Is the heart enlarged?"
    dicom_node amend 1.2.3.4 "there is no effusion" --accept
    dicom_node amend 1.2.3.4 "Compared with the prior, unchanged." --addendum

The URL defaults to ``http://<api.bind_address>:<api.port>`` of the settings; the token comes
from ``--token``, ``$DICOM_NODE_API_TOKEN``, or the one user of ``[api.users]`` configured
with a clear-text token. Exit codes: 0 done, 1 the API refused the request (4xx: unknown
study, empty or too long message, stale version, ...; the reason is printed), 2 bad options
or settings, 3 the API cannot be reached or failed (5xx).

Registered on the main app by :mod:`dicom_node.cli`, like the node's commands; neither the
inference stack nor the web framework is imported until a command needs it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from dicom_node.cli._app import ConfigOption, _fail, _node_settings, app, console, stop_on_signal
from dicom_node.errors import NodeError
from dicom_node.settings import Settings

if TYPE_CHECKING:
    import httpx

#: Environment variable with the bearer token of ``ask`` and ``amend``.
TOKEN_ENV = "DICOM_NODE_API_TOKEN"
#: Exit code: the API refused the request (a 4xx answer).
EXIT_REFUSED = 1
#: Exit code: bad options or settings.
EXIT_USAGE = 2
#: Exit code: the API cannot be reached, or it failed (5xx).
EXIT_UNAVAILABLE = 3
#: Line printed (and flushed) once ``dicom_node api`` serves; tests read the port from it.
API_LISTENING_PREFIX = "dicom_node api listening on"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="Base URL of the API (default http://<api.bind_address>:<api.port>)."
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar=TOKEN_ENV, help=f"Bearer token (or ${TOKEN_ENV})."),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1.0, help="Seconds to wait for the model's answer.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]


def _base_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host = settings.api.bind_address
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{settings.api.port}"


def _token(settings: Settings, token: str | None) -> str:
    if token:
        return token
    clear = [user.token for user in settings.api.users.values() if user.token is not None]
    if len(clear) == 1 and clear[0] is not None:
        return clear[0].get_secret_value()
    raise _fail(f"give the API token with --token or ${TOKEN_ENV}", EXIT_USAGE)


def _request(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send one request; 4xx -> exit 1 with the API's reason, unreachable/5xx -> exit 3."""
    import httpx

    try:
        response = client.request(method, path, json=body)
    except httpx.TimeoutException as exc:
        raise _fail(f"the API did not answer in time ({type(exc).__name__})",
                    EXIT_UNAVAILABLE) from exc
    except httpx.TransportError as exc:
        raise _fail(f"cannot reach the API at {client.base_url}: {exc}", EXIT_UNAVAILABLE) from exc
    try:
        data = response.json()
    except ValueError:
        data = {"detail": response.text.strip() or response.reason_phrase}
    if response.is_success:
        return dict(data)
    detail = data.get("detail") if isinstance(data, dict) else data
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    code = EXIT_REFUSED if 400 <= response.status_code < 500 else EXIT_UNAVAILABLE
    raise _fail(f"{response.status_code} {response.reason_phrase}: {detail}", code)


def _client(config: Path | None, url: str | None, token: str | None,
            timeout: float) -> httpx.Client:
    import httpx

    settings = _node_settings(config)
    # httpx logs every request URL at INFO, and the URLs hold Study Instance UIDs.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return httpx.Client(
        base_url=_base_url(settings, url),
        headers={"Authorization": f"Bearer {_token(settings, token)}"},
        timeout=httpx.Timeout(timeout, connect=10.0),
    )


def _messages_path(study_uid: str) -> str:
    return f"/api/studies/{quote(study_uid, safe='')}/messages"


@app.command("ask")
def ask(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    question: Annotated[str, typer.Argument(help="The question.")],
    url: UrlOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Ask the model a question about a study's report (the report does not change)."""
    with _client(config, url, token, timeout) as client:
        result = _request(
            client, "POST", _messages_path(study_uid), {"text": question, "intent": "question"}
        )
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    sys.stdout.write(f"{result['answer']['text']}\n")


def _print_proposal(proposal: dict[str, Any]) -> None:
    console.print(
        f"proposal {proposal['id']} ({proposal['kind']}) revising version "
        f"{proposal['based_on_version']}:",
        highlight=False,
    )
    diff = proposal.get("diff") or {}
    sys.stdout.write(diff.get("unified") or "(no change to the text)\n")
    for change in diff.get("findings_changes") or []:
        sys.stdout.write(
            f"coded finding {change['label']}: {change['before']} -> {change['after']}\n"
        )
    unmet = proposal.get("unmet_statements") or []
    if unmet:
        sys.stdout.write(f"not as you stated: {', '.join(unmet)}\n")
    sys.stdout.flush()


def _print_stored(what: str, result: dict[str, Any]) -> None:
    """One line for a stored version: its number and where its SR is queued."""
    sent = result["destinations"]
    console.print(
        f"{what}: report version {result['version']['version']}"
        + (f", queued for {', '.join(sent)}" if sent else ", no PACS destination"),
        highlight=False,
    )


@app.command("amend")
def amend(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    instruction: Annotated[
        str,
        typer.Argument(help="The change, e.g. 'there is no effusion', 'summarise'; with "
                       "--addendum, the addendum's text."),
    ],
    accept: Annotated[
        bool,
        typer.Option("--accept", help="Accept the proposal: a new SR version goes to the PACS."),
    ] = False,
    addendum: Annotated[
        bool,
        typer.Option(
            "--addendum",
            help="Add the text as an addendum to the signed report: a new verified SR that "
            "names the signed one (the model is not asked).",
        ),
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Ask the model to revise a study's report; print the proposal as a diff.

    With --accept the proposal becomes the report's next version at once (exit 1, and no
    change, when the report changed meanwhile). With --addendum the text is appended to the
    signed report as an addendum (exit 1 when the report is not signed off).
    """
    if addendum and accept:
        raise _fail("--addendum and --accept exclude each other", EXIT_USAGE)
    study_path = f"/api/studies/{quote(study_uid, safe='')}"
    if addendum:
        with _client(config, url, token, timeout) as client:
            detail = _request(client, "GET", study_path)
            current = detail.get("current") or {}
            added = _request(client, "POST", f"{study_path}/addenda", {
                "based_on_version": int(current.get("version") or 0) or 1,
                "text": instruction,
            })
        if as_json:
            sys.stdout.write(json.dumps(added, indent=2) + "\n")
            return
        _print_stored("addendum stored", added)
        return
    with _client(config, url, token, timeout) as client:
        result = _request(
            client, "POST", _messages_path(study_uid), {"text": instruction, "intent": "amend"}
        )
        proposal = result.get("proposal")
        if proposal is None:
            raise _fail("the API answered without a proposal", EXIT_UNAVAILABLE)
        accepted = None
        if accept:
            accepted = _request(
                client,
                "POST",
                f"{study_path}/proposals/{proposal['id']}/accept",
            )
    if as_json:
        sys.stdout.write(json.dumps({"turn": result, "accepted": accepted}, indent=2) + "\n")
        return
    _print_proposal(proposal)
    if accepted is not None:
        _print_stored("accepted", accepted)


@app.command("api")
def api(
    port: Annotated[
        int | None, typer.Option(help="API port (api.port; 0 = any free port).")
    ] = None,
    bind_address: Annotated[
        str | None, typer.Option(help="Listen address (api.bind_address).")
    ] = None,
    storage: Annotated[
        Path | None, typer.Option(help="Storage folder (storage.folder).", file_okay=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the dialog API and reader page alone (development; `serve` runs it with the node).

    Runs until SIGINT or SIGTERM. Prints 'dicom_node api listening on URL' when ready.
    """
    settings = _node_settings(
        config, api={"port": port, "bind_address": bind_address}, storage={"folder": storage}
    )
    if not settings.api.users:
        raise _fail("api.users is empty: configure at least one user and token", EXIT_USAGE)
    from dicom_node.api import ApiServer

    with stop_on_signal() as stop:
        server = ApiServer(settings)
        try:
            server.start()
        except NodeError as exc:
            raise _fail(str(exc)) from exc
        try:
            sys.stdout.write(f"{API_LISTENING_PREFIX} {server.url}\n")
            sys.stdout.flush()
            stop.wait()
        finally:
            server.stop()


__all__ = [
    "API_LISTENING_PREFIX",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "TOKEN_ENV",
    "amend",
    "api",
    "ask",
]

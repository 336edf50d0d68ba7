"""Dialog turns: the reader's message, the model's answer or proposed revision.

A **question** is answered by the model (:meth:`ChestXrayVLM.stream_chat`) with the current
report in context; the exchange is stored, the report stays. A **correction, rewrite,
summary or easy-language request** makes the model propose a revised report: stored as an
open :class:`~dicom_node.store.Proposal` based on the current version and shown with a diff
against it; a correction whose answer leaves a stated finding unmet may be redrafted
(:meth:`DialogTurns._checked_correction`). Rejecting a proposal closes it here too; accepting
one makes a version (:mod:`~dicom_node.api.dialog.versions`).

Turns run in :attr:`DialogTurns.executor`, off the event loop. Their text comes from a
:class:`~dicom_node.api.dialog.generators.TurnGenerator`: the one model of the process
(:func:`dicom_node.models.model_cache.get_model`, shared with the embedded worker's drafts;
generations run side by side, there is no global model lock), or, with a Redis broker, a
worker consuming the ``dialog`` queue (``serve`` then loads no LLM). The vision side runs
once per study and image set, then its result comes from an LRU cache
(:attr:`DialogTurns.analyses`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from dicom_node.api._analysis import AnalysisCache
from dicom_node.api._auth import Reader
from dicom_node.api._classify import Intent, classify_message
from dicom_node.api._findings import prompt_findings
from dicom_node.api._schemas import ProposalOut, TurnResult
from dicom_node.api._text import clean_generated, parse_revision, report_context
from dicom_node.api.dialog.audit import AuditLog
from dicom_node.api.dialog.generators import ModelProvider, TurnGenerator, turn_generator
from dicom_node.api.dialog.lookups import StudyLookups, check_open_for_changes
from dicom_node.api.dialog.views import StudyViews
from dicom_node.api.errors import (
    ConflictError,
    InvalidInputError,
    ModelOutputError,
    NoReportError,
    PayloadTooLargeError,
)
from dicom_node.jobqueue.dialog import TurnRequest
from dicom_node.pipeline.assembly import model_images
from dicom_node.pipeline.finding_codes import code_findings, correction_choices
from dicom_node.pipeline.reports import findings_from_json, findings_to_json, version_history
from dicom_node.settings import Settings
from dicom_node.store import (
    Database,
    DialogMessage,
    MessageKind,
    MessageRole,
    Proposal,
    ProposalStatus,
)

if TYPE_CHECKING:
    from inference import Turn

logger = logging.getLogger(__name__)

#: Threads running dialog turns (each waits for its model's or its worker's text).
MODEL_THREADS = 4


def _as_tuple(findings: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if findings is None else tuple(findings)


@dataclasses.dataclass(frozen=True)
class PreparedTurn:
    """A checked message, ready for the model (see :meth:`DialogTurns.prepare_turn`)."""

    reader: Reader
    study_id: int
    study_uid: str
    text: str
    kind: MessageKind
    based_on_version: int


class DialogTurns:
    """The dialog's turns: check a message, let the model answer or propose, store both;
    and close a proposal the reader rejects.

    Parameters
    ----------
    settings
        The node's settings (``[api]``: message limits, history, cache size; ``[storage]``).
    db
        The node's database.
    lookups
        Finds the study, its latest version, its images and its proposals.
    views
        Maps the stored messages and proposals to the API's response models.
    audit
        Records each turn and decision.
    model_provider
        Returns the model; default the registry's active version
        (:func:`dicom_node.models.registry.active_bundle`), loaded once per process by
        :func:`~dicom_node.models.model_cache.get_model` with ``settings.inference``; or,
        with a Redis ``broker.url``, no model here: the workers answer
        (:func:`~dicom_node.api.dialog.generators.turn_generator`).
    generator
        Answers the turns instead (tests; overrides `model_provider`).
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        lookups: StudyLookups,
        views: StudyViews,
        audit: AuditLog,
        model_provider: ModelProvider | None = None,
        generator: TurnGenerator | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.lookups = lookups
        self.views = views
        self.audit = audit
        #: The vision side's results of the most recently used studies (this process's
        #: model only).
        self.analyses = AnalysisCache(settings.api.analysis_cache_size)
        #: Answers the turns: this process's model, or the workers.
        self.generator = generator or turn_generator(settings, db, self.analyses,
                                                     model_provider)
        #: Runs dialog turns (model work) off the event loop.
        self.executor = ThreadPoolExecutor(MODEL_THREADS, "dicom-node-dialog")

    def close(self) -> None:
        """Wait for the running turns, then stop their threads."""
        self.executor.shutdown(wait=True)

    # ------------------------------------------------------------------ turns
    def prepare_turn(
        self, reader: Reader, study_uid: str, text: str, intent: Intent = "auto"
    ) -> PreparedTurn:
        """Check a message and classify it; nothing is written unless it is refused (audit).

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        InvalidInputError
            For an empty message (422).
        PayloadTooLargeError
            For a message over ``api.max_message_chars`` (413).
        NoReportError
            When the study has no report version yet (409).
        ConflictError
            For a revision request on a signed-off report (409).
        """
        with self.audit.audited(reader, "post_message", study_uid, record_success=False) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            message = text.strip()
            if not message:
                raise InvalidInputError("the message is empty")
            limit = self.settings.api.max_message_chars
            if len(message) > limit:
                raise PayloadTooLargeError(
                    f"the message has {len(message)} characters; the limit is {limit}"
                )
            kind = classify_message(message, intent)
            latest = self.lookups.latest(study.id)
            if kind is not MessageKind.QUESTION:
                check_open_for_changes(latest)
            return PreparedTurn(reader, study.id, study_uid, message, kind, latest.version)

    def _history(self, study_id: int, version: int) -> list[Turn]:
        from inference import Turn

        turns = self.settings.api.history_turns
        if turns == 0:
            return []
        with self.db.session() as session:
            messages = list(
                session.scalars(
                    select(DialogMessage)
                    .where(
                        DialogMessage.study_id == study_id,
                        DialogMessage.based_on_version == version,
                    )
                    .order_by(DialogMessage.id)
                )
            )
        pairs: list[tuple[str, str]] = []
        pending: str | None = None
        for message in messages:
            if message.role is MessageRole.USER:
                pending = message.text
            elif pending is not None:
                pairs.append((pending, message.text or "-"))
                pending = None
        history: list[Turn] = []
        for question, answer in pairs[-turns:]:
            history.extend([Turn("user", question), Turn("assistant", answer)])
        return history

    def run_turn(
        self, turn: PreparedTurn, on_text: Callable[[str], None] | None = None
    ) -> TurnResult:
        """Let the model answer or propose a revision, then store the exchange.

        Runs the model (call it from :attr:`executor`, not from an event loop).

        Parameters
        ----------
        turn
            From :meth:`prepare_turn`.
        on_text
            Called with each piece of generated text as it appears (control characters
            removed).

        Returns
        -------
        TurnResult
            The stored message, the model's answer and, for a revision request, the
            proposal with its diff against the current version.

        Raises
        ------
        ModelUnavailableError
            When the bundle cannot be loaded or the images cannot be analysed (503).
        ModelOutputError
            When a revision has an empty findings or impression section (502); nothing is
            stored.
        """

        with self.audit.audited(turn.reader, "post_message", turn.study_uid) as note:
            note.study_id = turn.study_id
            history_rows = version_history(self.db, turn.study_id)
            base = next((v for v in history_rows if v.version == turn.based_on_version), None)
            if base is None:
                raise NoReportError(f"report version {turn.based_on_version} is gone")
            # The images the draft job gives the model, by the same rule.
            images = model_images(self.lookups.image_instances(turn.study_id))
            if not images:
                raise ConflictError("the study has no frontal CR/DX chest image in the spool")
            history = self._history(turn.study_id, turn.based_on_version)
            request = TurnRequest(
                study_uid=turn.study_uid,
                images=tuple(row.path for row in images),
                context=report_context(base.findings_text, base.impression_text, turn.kind),
                history=tuple((t.role, t.content) for t in history),
                instruction=turn.text,
                indication=base.indication,
                findings=_as_tuple(prompt_findings(
                    findings_from_json(base.findings_json), turn.kind, turn.text
                )),
                correction=turn.kind is MessageKind.CORRECTION,
            )
            pieces = self.generator.generate(
                request,
                None if on_text is None else lambda piece: on_text(
                    clean_generated(piece, strip=False)
                ),
            )
            answer = clean_generated("".join(pieces))
            proposal: Proposal | None = None
            if turn.kind is not MessageKind.QUESTION:
                findings_text, impression_text = parse_revision(
                    answer, turn.kind, base.findings_text, base.impression_text
                )
                if not findings_text or not impression_text:
                    raise ModelOutputError(
                        "the model's revision has an empty findings or impression section; "
                        "nothing was stored, please rephrase"
                    )
                # A correction's statements are the reader's choices; every proposal's other
                # codes follow its own text.
                records = code_findings(
                    findings_text, impression_text,
                    previous=findings_from_json(base.findings_json),
                    choices=correction_choices(turn.text)
                    if turn.kind is MessageKind.CORRECTION else None,
                    reader=turn.reader.display_name,
                )
                proposal = Proposal(
                    study_id=turn.study_id,
                    kind=turn.kind,
                    based_on_version=base.version,
                    findings_text=findings_text,
                    impression_text=impression_text,
                    findings_json=findings_to_json(records),
                    status=ProposalStatus.OPEN,
                    requested_by=turn.reader.name,
                    created_at=datetime.now(UTC),
                )
            now = datetime.now(UTC)
            with self.db.session() as session:
                asked = DialogMessage(
                    study_id=turn.study_id, role=MessageRole.USER, kind=turn.kind,
                    text=turn.text, based_on_version=base.version, author=turn.reader.name,
                    created_at=now,
                )
                session.add(asked)
                if proposal is not None:
                    session.add(proposal)
                    session.flush()
                answered = DialogMessage(
                    study_id=turn.study_id, role=MessageRole.ASSISTANT, kind=turn.kind,
                    text=answer, based_on_version=base.version, author=None,
                    created_at=now, proposal_id=None if proposal is None else proposal.id,
                )
                session.add(answered)
                session.flush()
                for row in (asked, answered) + (() if proposal is None else (proposal,)):
                    session.expunge(row)
            note.detail = f"{turn.kind.value} " + (
                "answered" if proposal is None else f"proposal {proposal.id}"
            )
            latest = history_rows[-1]
            return TurnResult(
                kind=turn.kind,
                message=self.views.message_out(asked),
                answer=self.views.message_out(answered),
                proposal=None
                if proposal is None
                else self.views.proposal_out(proposal, base, latest, turn.text),
            )

    # ------------------------------------------------------------------ proposals
    def reject(self, reader: Reader, study_uid: str, proposal_id: int) -> ProposalOut:
        """Close an open proposal without changing the report.

        Raises
        ------
        StudyNotFoundError, NotFoundError
            For an unknown study or proposal (404).
        ConflictError
            When the proposal is not open (409).
        """
        with self.audit.audited(reader, "reject_proposal", study_uid) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            proposal = self.lookups.open_proposal(study.id, proposal_id)
            with self.db.session() as session:
                changed = session.execute(
                    update(Proposal)
                    .where(Proposal.id == proposal_id, Proposal.status == ProposalStatus.OPEN)
                    .values(
                        status=ProposalStatus.REJECTED, decided_by=reader.name,
                        decided_at=datetime.now(UTC),
                    )
                )
                if not getattr(changed, "rowcount", 1):
                    raise ConflictError(f"proposal {proposal_id} was decided meanwhile")
            note.detail = f"proposal {proposal_id} rejected"
            history = version_history(self.db, study.id)
            by_number = {v.version: v for v in history}
            return self.views.proposal_out(
                self.lookups.proposal(study.id, proposal_id),
                by_number.get(proposal.based_on_version),
                history[-1] if history else None,
            )


__all__ = ["MODEL_THREADS", "DialogTurns", "ModelProvider", "PreparedTurn"]

"""The node's C-STORE / C-ECHO SCP: receives instances into the spool and the database.

:func:`handle_store` is a plain pynetdicom handler bound with its dependencies
(``evt_handlers=[(evt.EVT_C_STORE, handle_store, [spool, db])]``); it never raises and
answers with a named :class:`~dicom_node.dicom.dimse.StoreStatus`. On receipt it

1. refuses SOP classes the node does not store (also over another service's presentation
   context), data sets larger than ``node.max_instance_bytes`` (a deflated one is measured
   inflated, in chunks), and refuses when the disk is (nearly) full;
2. parses the data set (its whole structure, so that structurally corrupt data is refused),
   checks its identifying UIDs and, for images, what the node will need from them
   (:mod:`~dicom_node.dicom.image_check`: pixel data within ``node.max_pixel_bytes`` and as long
   as its header claims; for CR/DX images the model reads, parseable display attributes and
   valid patient dates);
3. acknowledges, without storing, SRs the node wrote itself (a PACS that auto-forwards
   everything sends them back) and instances it already holds byte for byte; a copy with
   different content (a corrected re-send) replaces the stored one and the study is
   drafted again;
4. writes the instance atomically to the spool, records it in the database, and only then
   answers success.

The spooled file is the data set exactly as the peer encoded it, behind file meta
information the node writes itself: the data set is never re-encoded, and the handler reads
only the raw text of the few attributes it needs (pydicom's value conversion and its file
meta writer took about 0.6 ms per instance; see ``docs/benchmarks.md``).

:class:`StoreSCP` owns the pynetdicom application entity and its server thread.
"""

from __future__ import annotations

import logging
import re
import ssl
import struct
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import patient_key, uid_digest
from dicom_node.dicom.dimse import ERROR_COMMENT_MAX_CHARS, StoreStatus
from dicom_node.dicom.files import raw_text
from dicom_node.dicom.guarded_server import GuardedAssociationServer
from dicom_node.dicom.image_check import (
    check_image,
    inflated_size_within,
    is_deflated,
    is_model_image,
)
from dicom_node.errors import DiskFullError, ServiceError, SpoolError
from dicom_node.settings import NodeSettings
from dicom_node.store import Database, InstanceRecord
from dicom_node.store.spool import Spool
from sr_templates import (
    ADDENDUM_SERIES_DESCRIPTION,
    AMENDED_SERIES_DESCRIPTION,
    DEFAULT_MANUFACTURER,
    DRAFT_SERIES_DESCRIPTION,
    VERIFIED_SERIES_DESCRIPTION,
)

logger = logging.getLogger(__name__)

#: Image storage SOP classes the node accepts: CR, DX for presentation and for processing,
#: Secondary Capture.
IMAGE_STORAGE_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
#: SR storage SOP classes the node accepts (its own SRs among them are ignored).
SR_STORAGE_CLASSES: tuple[str, ...] = (
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
)
#: Every storage SOP class of the SCP.
STORAGE_SOP_CLASSES: tuple[str, ...] = IMAGE_STORAGE_CLASSES + SR_STORAGE_CLASSES
#: Transfer syntaxes accepted for storage: uncompressed, deflated, JPEG baseline, JPEG
#: lossless (SV1 and any predictor), JPEG 2000 (lossless and lossy) and RLE.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
#: Transfer syntaxes of the Verification service.
VERIFICATION_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Series Descriptions of the SR series the node writes (drafts, amendments, sign-offs).
OWN_SR_SERIES_DESCRIPTIONS = frozenset(
    {
        DRAFT_SERIES_DESCRIPTION,
        AMENDED_SERIES_DESCRIPTION,
        VERIFIED_SERIES_DESCRIPTION,
        ADDENDUM_SERIES_DESCRIPTION,
    }
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX_CHARS = 64
_IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class _Refusal(Exception):
    """Internal: stop handling an instance with this status (never leaves the handler)."""

    def __init__(self, status: StoreStatus, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _status(status: StoreStatus, comment: str | None = None) -> Dataset:
    reply = Dataset()
    reply.Status = int(status)
    if comment:
        reply.ErrorComment = comment[:ERROR_COMMENT_MAX_CHARS]
    return reply


def _text(ds: Dataset, keyword: str) -> str | None:
    """An attribute's raw text (:func:`~dicom_node.dicom.files.raw_text`).

    The node validates the UIDs itself (:func:`_check_identity`) and only compares or stores
    the other values as text.
    """
    return raw_text(ds, keyword)


def _code(ds: Dataset, keyword: str) -> str | None:
    text = _text(ds, keyword)
    return text.upper() if text else None


def is_own_sr(ds: Dataset) -> bool:
    """Whether a data set is an SR this product wrote (draft, amendment or signed report).

    Recognised by an SR storage SOP class together with the SR writer's Manufacturer or one
    of its Series Descriptions (constants of :mod:`sr_templates`).
    """
    if str(ds.get("SOPClassUID", "")) not in SR_STORAGE_CLASSES:
        return False
    return (
        _text(ds, "Manufacturer") == DEFAULT_MANUFACTURER
        or _text(ds, "SeriesDescription") in OWN_SR_SERIES_DESCRIPTIONS
    )


def _check_identity(ds: Dataset, request: Any) -> None:
    """Refuse a data set whose identifying UIDs are missing, invalid or not the request's."""
    for keyword in _IDENTIFYING_UIDS:
        value = _text(ds, keyword)
        if value is None:
            raise _Refusal(StoreStatus.INVALID_IDENTIFIER, f"missing {keyword}")
        if len(value) > _UID_MAX_CHARS or not _UID.match(value):
            raise _Refusal(StoreStatus.INVALID_IDENTIFIER, f"invalid {keyword}")
    if _text(ds, "SOPClassUID") != str(request.AffectedSOPClassUID):
        raise _Refusal(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPClassUID differs from the request",
        )
    if _text(ds, "SOPInstanceUID") != str(request.AffectedSOPInstanceUID):
        raise _Refusal(StoreStatus.INVALID_IDENTIFIER, "SOPInstanceUID differs from the request")


def _decode(event: Event) -> Dataset:
    """Parse the data set: every element's tag, VR and length, down to the last element.

    Values stay raw (:func:`_text` reads the few the node needs), but the whole structure is
    walked, pixel data and what follows included, so a data set whose structure is corrupt
    (a sequence that never ends, a tag cut short) fails here and becomes ``CANNOT_DECODE``
    instead of a stored file that cannot be read later. pydicom reads a value cut short at
    the very end of the data set without complaint; nothing here checks value lengths.
    """
    try:
        return event.dataset
    # Decoding untrusted bytes: pydicom raises many exception types (struct.error,
    # ValueError, EOFError, KeyError, NotImplementedError, ...) for corrupt input.
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot decode a data set: %s", type(exc).__name__)
        raise _Refusal(StoreStatus.CANNOT_DECODE, "the data set cannot be decoded") from exc


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the file meta group (PS3.5 7.1.2)."""
    group, element = tag >> 16, tag & 0xFFFF
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` prefix and file meta information of a received instance (PS3.10 7.1).

    The same elements as pynetdicom's ``create_file_meta`` (group length, version, media
    storage SOP class and instance, transfer syntax, implementation class UID and version
    name), byte for byte, encoded directly: pydicom's generic writer takes about 0.4 ms
    for these seven elements, a tenth of the handler's processor time per instance.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid, transfer_syntax_uid
        Valid UIDs (ASCII, at most 64 characters), as checked by the handler.

    Returns
    -------
    bytes
        The file's first bytes; the encoded data set follows them.
    """
    elements = b"".join((
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x00020003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x00020010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _element(0x00020012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    group_length = _element(0x00020000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements


@dataclass(frozen=True)
class IntakeLimits:
    """Sizes the SCP accepts (``node.max_instance_bytes``, ``node.max_pixel_bytes``)."""

    max_instance_bytes: int = 256 * 2**20
    max_pixel_bytes: int = 128 * 2**20

    @classmethod
    def from_settings(cls, node: NodeSettings) -> IntakeLimits:
        """The limits of the ``[node]`` settings."""
        return cls(node.max_instance_bytes, node.max_pixel_bytes)


def _store(event: Event, spool: Spool, db: Database, limits: IntakeLimits) -> Dataset:
    request = event.request
    sop_class = str(request.AffectedSOPClassUID)
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    if sop_class not in STORAGE_SOP_CLASSES:
        # pynetdicom already rejects the presentation context; this guards the handler
        # if the contexts and the list above ever disagree.
        return _status(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "SOP class not stored here")

    context_class = str(event.context.abstract_syntax)
    if context_class != sop_class:
        # A C-STORE sent over another service's presentation context (Verification).
        return _status(
            StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"C-STORE over the context of {context_class}"
        )

    # The data set exactly as the peer encoded it (no decoding, no re-encoding).
    body = event.encoded_dataset(include_meta=False)
    if not spool.has_room(len(body)):
        logger.error("refusing an instance from %s: the spool disk is full", calling_ae)
        return _status(StoreStatus.OUT_OF_RESOURCES, "disk full")
    transfer_syntax = str(event.context.transfer_syntax)
    too_large = len(body) > limits.max_instance_bytes or (
        is_deflated(transfer_syntax)
        and not inflated_size_within(body, limits.max_instance_bytes)
    )
    if too_large:
        raise _Refusal(
            StoreStatus.TOO_LARGE, f"data set larger than limit {limits.max_instance_bytes} bytes"
        )

    ds = _decode(event)
    _check_identity(ds, request)
    if sop_class in IMAGE_STORAGE_CLASSES:
        problem = check_image(
            ds,
            transfer_syntax,
            for_model=is_model_image(sop_class) and _code(ds, "Modality") in ("CR", "DX"),
            max_pixel_bytes=limits.max_pixel_bytes,
        )
        if problem is not None:
            status = (
                StoreStatus.TOO_LARGE if problem.kind == "too large"
                else StoreStatus.UNUSABLE_IMAGE
            )
            raise _Refusal(status, problem.reason)
    sop_uid = str(ds.SOPInstanceUID)
    study_uid = str(ds.StudyInstanceUID)
    series_uid = str(ds.SeriesInstanceUID)
    if is_own_sr(ds):
        logger.info(
            "ignoring our own SR %s of study %s from %s",
            uid_digest(sop_uid),
            uid_digest(study_uid),
            calling_ae,
        )
        return _status(StoreStatus.SUCCESS)
    try:
        stored = db.stored_instance(sop_uid)
    except SQLAlchemyError as exc:
        logger.error("cannot read the database: %s", type(exc).__name__)
        return _status(StoreStatus.PROCESSING_FAILURE, "database unavailable")
    data = file_meta_bytes(sop_class, sop_uid, transfer_syntax) + body
    if stored is not None:
        stored_path, stored_study = stored
        if stored_study != study_uid:
            raise _Refusal(
                StoreStatus.INVALID_IDENTIFIER, "SOPInstanceUID already stored in another study"
            )
        if spool.read(Path(stored_path)) == data:
            logger.info(
                "instance %s of study %s from %s already stored",
                uid_digest(sop_uid),
                uid_digest(study_uid),
                calling_ae,
            )
            return _status(StoreStatus.SUCCESS)
        return _replace(spool, db, stored_path, data, _record(ds, event, sop_class,
                        transfer_syntax, calling_ae, Path(stored_path), len(data)))

    relative = spool.relative_path(study_uid, series_uid, sop_uid)
    try:
        spool.write(relative, data)
    except DiskFullError:
        logger.error("refusing an instance from %s: the spool disk is full", calling_ae)
        return _status(StoreStatus.OUT_OF_RESOURCES, "disk full")
    except SpoolError as exc:
        logger.error("cannot spool instance %s: %s", uid_digest(sop_uid), exc)
        return _status(StoreStatus.PROCESSING_FAILURE, "cannot write the instance")

    record = _record(ds, event, sop_class, transfer_syntax, calling_ae, relative, len(data))
    try:
        is_new = db.record_instance(record)
    except SQLAlchemyError as exc:
        logger.error(
            "cannot record instance %s: %s", uid_digest(sop_uid), type(exc).__name__
        )
        _remove_unrecorded(spool, db, relative, sop_uid)
        return _status(StoreStatus.PROCESSING_FAILURE, "cannot record the instance")
    if is_new:
        logger.info(
            "stored instance %s of study %s from %s (%d bytes)",
            uid_digest(sop_uid),
            uid_digest(study_uid),
            calling_ae,
            len(data),
        )
    return _status(StoreStatus.SUCCESS)


def _record(
    ds: Dataset,
    event: Event,
    sop_class: str,
    transfer_syntax: str,
    calling_ae: str,
    relative: Path,
    size: int,
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=sop_class,
        modality=_code(ds, "Modality"),
        body_part=_code(ds, "BodyPartExamined"),
        view_position=_code(ds, "ViewPosition"),
        accession_number=_text(ds, "AccessionNumber"),
        patient_key=patient_key(_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")),
        path=relative.as_posix(),
        size_bytes=size,
        transfer_syntax_uid=transfer_syntax,
        calling_ae=calling_ae,
        received_at=datetime.now(UTC),
    )


def _replace(
    spool: Spool, db: Database, stored_path: str, data: bytes, record: InstanceRecord
) -> Dataset:
    """Put a corrected copy of a stored instance in place of the first one (same path),
    then record it: the study is assembled again and its new job supersedes the old one."""
    try:
        spool.write(Path(stored_path), data)
    except DiskFullError:
        return _status(StoreStatus.OUT_OF_RESOURCES, "disk full")
    except SpoolError as exc:
        logger.error("cannot spool instance %s: %s", uid_digest(record.sop_instance_uid), exc)
        return _status(StoreStatus.PROCESSING_FAILURE, "cannot write the instance")
    try:
        db.replace_instance(record)
    except SQLAlchemyError as exc:
        # The file is the corrected one already; the row keeps the first copy's arrival
        # time, so the study is not drafted again until the sender retries.
        logger.error("cannot record the corrected instance %s: %s",
                     uid_digest(record.sop_instance_uid), type(exc).__name__)
        return _status(StoreStatus.PROCESSING_FAILURE, "cannot record the instance")
    logger.warning(
        "instance %s of study %s from %s replaced by a copy with different content "
        "(%d bytes); the study is drafted again",
        uid_digest(record.sop_instance_uid), uid_digest(record.study_instance_uid),
        record.calling_ae, record.size_bytes,
    )
    return _status(StoreStatus.SUCCESS)


def _remove_unrecorded(spool: Spool, db: Database, relative: Path, sop_uid: str) -> None:
    """Delete a file whose row could not be written, unless a concurrent copy recorded it."""
    try:
        recorded = db.has_instance(sop_uid)
    except SQLAlchemyError:
        recorded = False
    if not recorded:
        spool.remove(relative)


def handle_store(
    event: Event, spool: Spool, db: Database, limits: IntakeLimits | None = None
) -> Dataset:
    """Handle ``EVT_C_STORE``: check the instance, spool it, record it, then answer.

    Parameters
    ----------
    event
        The pynetdicom C-STORE event.
    spool
        Where instances are written.
    db
        Where instances are recorded.
    limits
        Largest data set and decoded pixel data accepted (defaults of :class:`IntakeLimits`).

    Returns
    -------
    pydicom.dataset.Dataset
        The response status (a :class:`~dicom_node.dicom.dimse.StoreStatus`), with an Error
        Comment on failures. The handler never raises.
    """
    try:
        return _store(event, spool, db, limits or IntakeLimits())
    except _Refusal as refusal:
        logger.warning(
            "refused an instance (0x%04X): %s", int(refusal.status), refusal.comment
        )
        return _status(refusal.status, refusal.comment)
    # Last resort, so that no bug turns into pynetdicom's anonymous 0xC211.
    except Exception:  # noqa: BLE001
        logger.exception("unexpected error while storing an instance")
        return _status(StoreStatus.PROCESSING_FAILURE, "internal error")


def _log_rejection(event: Event) -> None:
    logger.warning(
        "rejected an association from AE %r at %s",
        str(event.assoc.requestor.ae_title).strip(),
        event.assoc.requestor.address,
    )


def build_ae(node: NodeSettings, calling_aes: Collection[str] = ()) -> AE:
    """The application entity of the SCP: contexts, limits, timeouts and the allow-list.

    Parameters
    ----------
    node
        The ``[node]`` settings.
    calling_aes
        Calling AE titles allowed to associate; empty = any.
    """
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu
    ae.acse_timeout = node.acse_timeout
    ae.dimse_timeout = node.dimse_timeout
    ae.network_timeout = node.network_timeout
    ae.maximum_associations = node.max_associations
    ae.require_called_aet = node.require_called_ae
    ae.require_calling_aet = sorted(calling_aes)
    ae.add_supported_context(Verification, list(VERIFICATION_TRANSFER_SYNTAXES))
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


class StoreSCP:
    """The node's C-STORE/C-ECHO server, run in a background thread.

    Parameters
    ----------
    node
        The ``[node]`` settings (AE title, address, port, limits).
    spool
        Where received instances are written.
    db
        Where received instances are recorded.
    calling_aes
        Allowed calling AE titles; empty = any (``calling_aes`` keys of the settings).
    ssl_context
        Serve over TLS with this context (see :func:`dicom_node.dicom.tls.server_context`).
    """

    def __init__(
        self,
        node: NodeSettings,
        spool: Spool,
        db: Database,
        *,
        calling_aes: Collection[str] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._node = node
        self._spool = spool
        self._db = db
        self._ssl_context = ssl_context
        self._ae = build_ae(node, calling_aes)
        self._server: GuardedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address and port the server listens on (the real port when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Start listening; returns the bound address and port.

        Raises
        ------
        ServiceError
            When the address cannot be bound (port in use, no such address, ...).
        """
        if self._server is not None:
            raise RuntimeError("the SCP is already running")
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store,
             [self._spool, self._db, IntakeLimits.from_settings(self._node)]),
            (evt.EVT_REJECTED, _log_rejection),
        ]
        try:
            server = self._ae.make_server(
                (self._node.bind_address, self._node.port),
                ssl_context=self._ssl_context,
                evt_handlers=handlers,
                server_class=GuardedAssociationServer,
            )
        except OSError as exc:
            raise ServiceError(
                f"cannot listen on {self._node.bind_address}:{self._node.port}: {exc}"
            ) from exc
        assert isinstance(server, GuardedAssociationServer)
        server.max_per_peer = self._node.max_connections_per_peer
        server.first_pdu_timeout = self._node.first_pdu_timeout
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="dicom-node-scp", daemon=True
        )
        self._thread.start()
        host, port = self.address
        logger.info(
            "SCP %s listening on %s:%d%s",
            self._node.ae_title,
            host,
            port,
            " (TLS)" if self._ssl_context else "",
        )
        return host, port

    def is_alive(self) -> bool:
        """Whether the server is started and its accept thread runs."""
        return self._server is not None and self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop accepting associations, end the open ones and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._ae.shutdown()
        logger.info("SCP %s stopped", self._node.ae_title)

    def __enter__(self) -> StoreSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = [
    "IMAGE_STORAGE_CLASSES",
    "OWN_SR_SERIES_DESCRIPTIONS",
    "SR_STORAGE_CLASSES",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "VERIFICATION_TRANSFER_SYNTAXES",
    "IntakeLimits",
    "StoreSCP",
    "build_ae",
    "file_meta_bytes",
    "handle_store",
    "is_own_sr",
]

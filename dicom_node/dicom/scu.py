"""The C-STORE client: associations with a PACS and the outcome of each C-STORE.

The SR outbox (:mod:`dicom_node.pipeline.delivery`) decides what to send and records the
outcomes; this module only speaks DIMSE.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.dicom.dimse import StatusCategory, StoreResponseStatus, classify_store_status
from dicom_node.settings import PacsDestination

logger = logging.getLogger(__name__)

#: Transfer syntaxes proposed for each SR SOP class.
DELIVERY_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DeliveryOutcome(StrEnum):
    """How one delivery attempt of one outbox row ended."""

    #: The PACS stored the SR.
    SENT = "sent"
    #: A transient failure: the row is pending again, due at ``next_attempt_at``.
    RETRY = "retry"
    #: A permanent failure: the row is failed and not retried.
    FAILED = "failed"

@dataclass
class StoreAttempt:
    """The outcome of one C-STORE attempt, with the reason when it did not succeed."""

    outcome: DeliveryOutcome
    error: str | None = None

def status_text(code: int) -> str:
    """A C-STORE status for a message: ``status 0xA700 (out of resources)``."""
    try:
        name = StoreResponseStatus(code).name.lower().replace("_", " ")
    except ValueError:
        name = classify_store_status(code).value + " failure"
    return f"status 0x{code:04X} ({name})"

def associate(
    ae_title: str, name: str, dest: PacsDestination, sop_classes: Iterable[str],
    tls: ssl.SSLContext | None, timeout: float,
) -> Association | StoreAttempt:
    """Open an association with a PACS for the given storage SOP classes.

    Parameters
    ----------
    ae_title
        The node's own AE title (calling AE).
    name
        The destination's name in the settings (``[pacs.<name>]``), for messages.
    dest
        Where the PACS listens and its AE title.
    sop_classes
        The SOP classes to propose, each with :data:`DELIVERY_TRANSFER_SYNTAXES`.
    tls
        A client TLS context, or ``None`` for plain TCP.
    timeout
        Seconds for connecting, ACSE, DIMSE and network reads.

    Returns
    -------
    Association or StoreAttempt
        The established association, or a RETRY attempt saying why there is none.
    """
    ae = AE(ae_title=ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for sop_class in sorted(set(sop_classes)):
        ae.add_requested_context(sop_class, list(DELIVERY_TRANSFER_SYNTAXES))
    tls_args = (tls, dest.host) if tls is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    where = f"PACS {name} ({dest.ae_title} at {dest.host}:{dest.port})"
    if assoc.is_rejected:
        return StoreAttempt(DeliveryOutcome.RETRY, f"{where} rejected the association")
    if not assoc.is_established:
        return StoreAttempt(
            DeliveryOutcome.RETRY,
            f"{where} cannot be reached (connection refused or timed out, or aborted)",
        )
    return assoc

def send_one(assoc: Association, dataset: Dataset, name: str, timeout: float) -> StoreAttempt:
    """Send one data set over an association: SENT, RETRY (transient) or FAILED (permanent),
    by the C-STORE status category (:mod:`dicom_node.dicom.dimse`)."""
    sop_class = str(dataset.SOPClassUID)
    if not any(context.abstract_syntax == sop_class for context in assoc.accepted_contexts):
        return StoreAttempt(
            DeliveryOutcome.FAILED, f"PACS {name} does not accept the SOP class {sop_class}"
        )
    try:
        status = assoc.send_c_store(dataset)
    except (ValueError, AttributeError) as exc:
        # pynetdicom refuses to encode or send the data set: it will not get better.
        return StoreAttempt(
            DeliveryOutcome.FAILED, f"the SR cannot be sent ({type(exc).__name__})"
        )
    except (OSError, RuntimeError) as exc:
        return StoreAttempt(DeliveryOutcome.RETRY, f"sending failed ({type(exc).__name__})")
    if "Status" not in status:
        return StoreAttempt(
            DeliveryOutcome.RETRY,
            f"PACS {name} did not answer within {timeout:g} s (or aborted the association)",
        )
    code = int(status.Status)
    category = classify_store_status(code)
    if category is StatusCategory.SUCCESS:
        if code != StoreResponseStatus.SUCCESS:
            logger.info("PACS %s stored an SR with warning %s", name, status_text(code))
        return StoreAttempt(DeliveryOutcome.SENT)
    outcome = (
        DeliveryOutcome.RETRY if category is StatusCategory.TRANSIENT else DeliveryOutcome.FAILED
    )
    return StoreAttempt(outcome, f"PACS {name} answered {status_text(code)}")


__all__ = [
    "DELIVERY_TRANSFER_SYNTAXES",
    "DeliveryOutcome",
    "StoreAttempt",
    "associate",
    "send_one",
    "status_text",
]

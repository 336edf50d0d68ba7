"""The amend dialog's operations, independent of HTTP: :class:`DialogService`.

Every operation takes the authenticated :class:`~dicom_node.api._auth.Reader` and a Study
Instance UID, reads the study's state from the database and either answers or changes it:
a **question** is answered by the model; a **correction, rewrite, summary or easy-language
request** comes back as an open proposal with a diff; **accepting** a proposal, **editing**
the text, **signing off** and adding an **addendum** each store a new SR version that names
its predecessor and go to the study's PACS destinations. A request based on a version that
is no longer the latest is refused (409) and changes nothing. Refused requests raise an
:class:`~dicom_node.api.errors.ApiError` before anything is written; every request that
names a study is audited (``audit_events``); log messages carry UID digests only.

Modules, one job each, each importing only those listed before it:

* ``audit``: the audit log;
* ``lookups``: the study's rows and the checks a change must pass;
* ``views``: the worklist, one study, its images, and the response models;
* ``turns``: dialog turns, the model and its analysis cache, rejecting a proposal;
* ``versions``: new report versions (accept, edit, sign-off, addendum) and their delivery;
* ``priority``: a reader's urgent mark on a study;
* ``priors``: the patient's earlier studies on this node, for the viewer;
* ``service``: :class:`DialogService`, the entry point that composes them.
"""

from dicom_node.api.dialog.lookups import SIGNED_KINDS
from dicom_node.api.dialog.service import DialogService
from dicom_node.api.dialog.turns import MODEL_THREADS, ModelProvider, PreparedTurn
from dicom_node.api.dialog.views import report_content_sha256

__all__ = [
    "MODEL_THREADS",
    "SIGNED_KINDS",
    "DialogService",
    "ModelProvider",
    "PreparedTurn",
    "report_content_sha256",
]

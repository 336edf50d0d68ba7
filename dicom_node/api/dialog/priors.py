"""Earlier studies of the same patient on this node, for the viewer: :class:`PriorStudies`.

Studies are matched by their pseudonymous ``patient_key`` (never by name or ID). A prior is a
study of the same patient whose Study Date (from its first image's header) comes before the
current study's, so a prior fetched from the PACS after the current one arrived still counts;
where either date is missing the time each study first reached the node decides. Only studies
with images are listed, newest first.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from dicom_node.api._schemas import ImageOut, PriorStudyOut
from dicom_node.api.dialog.lookups import StudyLookups
from dicom_node.settings import Settings
from dicom_node.store import Database, Instance, Study

logger = logging.getLogger(__name__)

#: Most priors listed for one study.
MAX_PRIORS = 10


def _study_date(path: Path) -> date | None:
    """The Study Date of a spooled image's header, or None when it is missing or unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyDate"])
        value = str(ds.get("StudyDate", "") or "").strip()
        return datetime.strptime(value, "%Y%m%d").date() if value else None
    except (OSError, InvalidDicomError, ValueError, TypeError) as exc:
        logger.warning("a prior's Study Date cannot be read (%s)", type(exc).__name__)
        return None


class PriorStudies:
    """Lists a study's priors.

    Parameters
    ----------
    settings
        The node's settings (the spool, where the images are read from).
    db
        The node's database.
    lookups
        Finds the study and its images.
    """

    def __init__(self, settings: Settings, db: Database, lookups: StudyLookups) -> None:
        self.settings = settings
        self.db = db
        self.lookups = lookups

    def _dated(self, study: Study) -> tuple[date | None, list[Instance]]:
        images = self.lookups.image_instances(study.id)
        if not images:
            return None, images
        return _study_date(self.settings.storage.spool_dir / images[0].path), images

    def priors(self, study_uid: str) -> list[PriorStudyOut]:
        """The earlier studies of the patient of `study_uid` that have images, newest first.

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        """
        study = self.lookups.study(study_uid)
        if study.patient_key is None:
            return []
        with self.db.session() as session:
            others = list(
                session.scalars(
                    select(Study)
                    .where(Study.patient_key == study.patient_key, Study.id != study.id)
                    .order_by(Study.first_received_at.desc())
                    .limit(4 * MAX_PRIORS)
                )
            )
            for other in others:
                session.expunge(other)
        current_date, _ = self._dated(study)
        found: list[tuple[tuple[date, datetime], PriorStudyOut]] = []
        for other in others:
            other_date, images = self._dated(other)
            if not images:
                continue
            if current_date is not None and other_date is not None:
                earlier = other_date < current_date
            else:
                earlier = other.first_received_at < study.first_received_at
            if not earlier:
                continue
            out = PriorStudyOut(
                study_instance_uid=other.study_instance_uid,
                study_date=other_date,
                accession_number=other.accession_number,
                received_at=other.first_received_at,
                images=[
                    ImageOut(id=row.id, modality=row.modality, view_position=row.view_position)
                    for row in images
                ],
            )
            found.append(((other_date or other.first_received_at.date(),
                           other.first_received_at), out))
        found.sort(key=lambda item: item[0], reverse=True)
        return [out for _, out in found[:MAX_PRIORS]]


__all__ = ["MAX_PRIORS", "PriorStudies"]

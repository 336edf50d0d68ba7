"""Who and what a report is about, besides its text: algorithm, people and the order.

These small frozen dataclasses are the inputs of the writer that are not part of the report
content itself. Each one validates its fields when it is built, so a value that would not fit
its DICOM attribute is reported with the field's name here and not as an encoding error later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from highdicom.sr import CodedConcept
from pydicom.uid import generate_uid

from sr_templates._vr import TEXT_CONTROLS, check_lo, check_person_name, check_sh
from sr_templates._vr import disallowed_character as _disallowed_character

__all__ = ["AlgorithmInfo", "PersonInfo", "VerifierInfo", "WorklistInfo"]

# Entropy prefix for the device observer UID; keeps our UIDs apart from other users of
# pydicom's UID root who hash the same algorithm name and version.
_DEVICE_UID_NAMESPACE = "cxr-dicom-node/sr_templates/device-observer"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that drafted a report: the SR's device observer (TID 1004, TID 4019).

    Instances are not hashable (``parameters`` is a dict).

    Parameters
    ----------
    name
        Name of the algorithm (model), e.g. ``"cxr-vlm"``. Written as Algorithm Name, Device
        Observer Name and Model Name, and as the SR's Manufacturer's Model Name (LO, at most
        64 characters).
    version
        Version of the algorithm, e.g. the model bundle version or a git revision. Written as
        Algorithm Version and as the SR's Software Versions (LO, at most 64 characters).
    parameters
        Settings that influenced the output (decoding settings, thresholds, adapter id, ...).
        Each pair is written as one Algorithm Parameters item ``"key=value"``, sorted by key.
        Keys must not contain ``=``.
    manufacturer
        Who makes the algorithm; written as Algorithm Manufacturer and Device Observer
        Manufacturer when given.
    """

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    manufacturer: str | None = None

    def __post_init__(self) -> None:
        for name, value in (("name", self.name), ("version", self.version)):
            check_lo(f"AlgorithmInfo.{name}", value)
            if not value.strip():
                raise ValueError(f"AlgorithmInfo.{name} must not be empty")
        if self.manufacturer is not None:
            check_lo("AlgorithmInfo.manufacturer", self.manufacturer)
        if not isinstance(self.parameters, Mapping):
            raise TypeError("AlgorithmInfo.parameters must be a mapping of str to str")
        for key, value in self.parameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("AlgorithmInfo.parameters must map str to str")
            if not key or "=" in key:
                raise ValueError(
                    f"AlgorithmInfo.parameters key {key!r} must be non-empty and contain no '='"
                )
            for text in (key, value):
                index = _disallowed_character(text, TEXT_CONTROLS)
                if index is not None:
                    raise ValueError(
                        f"AlgorithmInfo.parameters[{key!r}] contains the control character "
                        f"U+{ord(text[index]):04X}"
                    )
        # Sorted, so the SR and its provenance are the same whatever order the caller used.
        object.__setattr__(self, "parameters", dict(sorted(self.parameters.items())))

    @property
    def device_uid(self) -> str:
        """Device Observer UID of this algorithm version.

        Derived from name and version, so every SR drafted by one version of the algorithm
        names the same device, and a new version is a new device.
        """
        return str(generate_uid(entropy_srcs=[_DEVICE_UID_NAMESPACE, self.name, self.version]))

    @property
    def parameter_items(self) -> tuple[str, ...]:
        """The parameters as written to the SR, ``"key=value"``, sorted by key."""
        return tuple(f"{key}={value}" for key, value in self.parameters.items())


@dataclass(frozen=True)
class PersonInfo:
    """A person observer (TID 1003): who amended a report.

    Parameters
    ----------
    name
        Name in DICOM person name format, ``"Family^Given"``; ideographic and phonetic
        component groups may follow after ``=``.
    organization
        Name of the person's organization, if known.
    login_name
        The person's login name in the reporting system, if known.
    """

    name: str
    organization: str | None = None
    login_name: str | None = None

    def __post_init__(self) -> None:
        check_person_name("PersonInfo.name", self.name)
        if self.organization is not None:
            check_lo("PersonInfo.organization", self.organization)
        if self.login_name is not None:
            check_lo("PersonInfo.login_name", self.login_name)


@dataclass(frozen=True)
class VerifierInfo:
    """The person who signs a report off (Verifying Observer Sequence).

    Parameters
    ----------
    name
        Name in DICOM person name format, ``"Family^Given"``.
    organization
        Organization accountable for the verification (Verifying Organization, LO); DICOM
        requires it for a verified document.
    """

    name: str
    organization: str

    def __post_init__(self) -> None:
        check_person_name("VerifierInfo.name", self.name)
        check_lo("VerifierInfo.organization", self.organization)
        if not self.organization.strip():
            raise ValueError("VerifierInfo.organization must not be empty")


@dataclass(frozen=True)
class WorklistInfo:
    """The order (modality worklist entry) the images were acquired for.

    Written as the SR's Referenced Request Sequence, so the RIS can match the report to the
    order.

    Parameters
    ----------
    accession_number
        Accession Number of the order (SH, at most 16 characters), required.
    requested_procedure_id
        Requested Procedure ID (SH), empty when unknown.
    requested_procedure_description
        Requested Procedure Description (LO), empty when unknown.
    requested_procedure_code
        Requested Procedure Code, if the RIS sends one.
    study_instance_uid
        Study Instance UID the RIS assigned to the order, if known. When given it must equal
        the images' Study Instance UID.
    placer_order_number
        Placer Order Number / Imaging Service Request (LO), empty when unknown.
    filler_order_number
        Filler Order Number / Imaging Service Request (LO), empty when unknown.
    """

    accession_number: str
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code: CodedConcept | None = None
    study_instance_uid: str | None = None
    placer_order_number: str = ""
    filler_order_number: str = ""

    def __post_init__(self) -> None:
        check_sh("WorklistInfo.accession_number", self.accession_number)
        if not self.accession_number.strip():
            raise ValueError("WorklistInfo.accession_number must not be empty")
        check_sh("WorklistInfo.requested_procedure_id", self.requested_procedure_id)
        check_lo(
            "WorklistInfo.requested_procedure_description", self.requested_procedure_description
        )
        check_lo("WorklistInfo.placer_order_number", self.placer_order_number)
        check_lo("WorklistInfo.filler_order_number", self.filler_order_number)
        if self.requested_procedure_code is not None and not isinstance(
            self.requested_procedure_code, CodedConcept
        ):
            raise TypeError("WorklistInfo.requested_procedure_code must be a CodedConcept")

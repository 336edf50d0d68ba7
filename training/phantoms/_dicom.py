"""Phantoms as standard DICOM radiographs: CR Image and Digital X-Ray (For Presentation).

highdicom has no CR or DX image class, so the datasets are built with pydicom, module by
module as PS3.3 lists them (Patient, General Study, General/CR/DX Series, General Equipment,
General/CR/DX Image, DX Anatomy Imaged, DX Detector, Image Pixel, VOI LUT, SOP Common).
``dciodvfy`` accepts them without errors. Every UID derives from the seed and index.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from training.phantoms._generate import Phantom

#: CR Image Storage.
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: Digital X-Ray Image Storage - For Presentation.
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"

#: View codes (CID 4010) for the DX View Code Sequence.
_VIEW_CODES = {"PA": ("399348003", "postero-anterior"), "AP": ("399182004", "antero-posterior")}

Modality = Literal["CR", "DX"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]


@dataclass(frozen=True)
class DicomVariant:
    """How one phantom is encoded: modality, photometric interpretation, bit depth, range."""

    modality: Modality
    photometric: Photometric
    bits_stored: int
    low_fraction: float
    high_fraction: float

    def __post_init__(self) -> None:
        if self.modality not in ("CR", "DX"):
            raise ValueError(f"modality must be CR or DX, got {self.modality!r}")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got "
                             f"{self.photometric!r}")
        if not 12 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 12 to 16, got {self.bits_stored}")
        if not 0.0 <= self.low_fraction < self.high_fraction <= 1.0:
            raise ValueError("need 0 <= low_fraction < high_fraction <= 1")


def sample_variant(seed: int, index: int) -> DicomVariant:
    """The encoding of image ``index``: CR or DX, MONOCHROME1 or 2, 12 to 16 bits stored."""
    rng = np.random.default_rng([seed, 3, index])
    return DicomVariant(
        modality="CR" if rng.random() < 0.5 else "DX",
        photometric="MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2",
        bits_stored=int(rng.choice([12, 14, 15, 16])),
        low_fraction=float(rng.uniform(0.02, 0.12)),
        high_fraction=float(rng.uniform(0.75, 0.98)),
    )


def _uid(seed: int, kind: str, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["cxr-dicom-node phantom", str(seed), kind,
                                          *map(str, parts)]))


def stored_pixels(image: np.ndarray, variant: DicomVariant) -> tuple[np.ndarray, float, float]:
    """Quantise a display image to stored values, with the window that shows it.

    Returns
    -------
    tuple of (numpy.ndarray, float, float)
        ``uint16`` pixels, window centre and window width (in stored values).
    """
    top = 2**variant.bits_stored - 1
    lo, hi = variant.low_fraction * top, variant.high_fraction * top
    values = lo + np.clip(image, 0.0, 1.0).astype(np.float64) * (hi - lo)
    if variant.photometric == "MONOCHROME1":
        values = top - values
        lo, hi = top - hi, top - lo
    pixels = np.clip(np.rint(values), 0, top).astype(np.uint16)
    return pixels, (lo + hi) / 2.0, max(hi - lo, 2.0)


def phantom_dataset(phantom: Phantom, variant: DicomVariant | None = None) -> Dataset:
    """Encode a phantom as a CR or DX (For Presentation) image dataset with file meta.

    Parameters
    ----------
    phantom
        The generated phantom.
    variant
        Encoding; default :func:`sample_variant` for the phantom's seed and index.

    Returns
    -------
    pydicom.dataset.Dataset
        Ready for ``save_as(path, enforce_file_format=True)``.
    """
    v = variant or sample_variant(phantom.seed, phantom.index)
    pixels, centre, width = stored_pixels(phantom.image, v)
    seed, index = phantom.seed, phantom.index
    sop_class = CR_IMAGE_STORAGE if v.modality == "CR" else DX_PRESENTATION_STORAGE
    sop_uid = _uid(seed, "image", index)
    study_time = _dt.time(8 + index % 10, (index * 7) % 60, (index * 13) % 60)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = phantom.study_date
    # Patient (synthetic, obviously so)
    ds.PatientName = f"PHANTOM^P{phantom.subject_index:05d}"
    ds.PatientID = phantom.subject_id
    ds.PatientBirthDate = ""
    ds.PatientSex = phantom.sex
    # General Study
    ds.StudyInstanceUID = _uid(seed, "study", index)
    ds.StudyDate = phantom.study_date
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{index:06d}"
    ds.AccessionNumber = f"PH{seed % 1000:03d}{index:07d}"
    ds.StudyDescription = f"XR CHEST {phantom.view}"
    # General Series, CR/DX Series
    ds.Modality = v.modality
    ds.SeriesInstanceUID = _uid(seed, "series", index)
    ds.SeriesNumber = 1
    ds.SeriesDate = phantom.study_date
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = f"CHEST {phantom.view}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = phantom.view
    ds.PatientPosition = ""
    # General Equipment
    ds.Manufacturer = "cxr-dicom-node"
    ds.ManufacturerModelName = "Synthetic chest phantom"
    ds.SoftwareVersions = "training.phantoms"
    ds.InstitutionName = "SYNTHETIC DATA - NOT A PATIENT"
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ContentDate = phantom.study_date
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDate = phantom.study_date
    ds.AcquisitionTime = ds.StudyTime
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if v.modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    ds.ImageComments = "Synthetic phantom generated by cxr-dicom-node; not a patient image."
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = v.bits_stored
    ds.HighBit = v.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    spacing = f"{phantom.pixel_spacing_mm:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    # VOI LUT
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.KVP = "110" if phantom.view == "PA" else "90"
    if v.modality == "CR":
        ds.PixelSpacing = [spacing, spacing]
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    else:
        _dx_modules(ds, v)
    return ds


def _dx_modules(ds: Dataset, v: DicomVariant) -> None:
    """DX Series, DX Anatomy Imaged, DX Image, DX Detector and Acquisition Context."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = "43799004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([region])
    view = Dataset()
    view.CodeValue, view.CodeMeaning = _VIEW_CODES[str(ds.ViewPosition)]
    view.CodingSchemeDesignator = "SCT"
    view.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view])
    ds.PixelIntensityRelationship = "LIN"
    # MONOCHROME2 stores bone (less beam intensity) high: higher values, less intensity.
    ds.PixelIntensityRelationshipSign = -1 if v.photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if v.photometric == "MONOCHROME2" else "INVERSE"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = Sequence([])
    ds.PositionerType = "NONE"

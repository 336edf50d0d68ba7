"""Preprocessing of real radiographs: display chain, photometry, codecs and bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from inference import PreprocessConfig, PreprocessingError, dataset_to_display, preprocess_dataset
from inference.preprocessing import read_dicom, resize_square


def _regions(display: np.ndarray) -> tuple[float, float]:
    """Mean of both mid-lung fields and of the spine/mediastinum column of a PA chest."""
    h, w = display.shape
    rows = slice(int(0.30 * h), int(0.50 * h))
    right_lung = display[rows, int(0.20 * w) : int(0.35 * w)]
    left_lung = display[rows, int(0.65 * w) : int(0.80 * w)]
    spine = display[rows, int(0.46 * w) : int(0.54 * w)]
    return float(np.concatenate([right_lung.ravel(), left_lung.ravel()]).mean()), float(
        spine.mean()
    )


def _as_monochrome2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same image stored the other way round: inverted values, MONOCHROME2."""
    inverted = copy.deepcopy(ds)
    top = 2**ds.BitsStored - 1
    pixels = (top - ds.pixel_array.astype(np.int32)).astype(np.uint16)
    inverted.PixelData = pixels.tobytes()
    inverted.PhotometricInterpretation = "MONOCHROME2"
    inverted.WindowCenter = top - float(ds.WindowCenter)
    return inverted


def test_monochrome1_chest_has_dark_lungs_and_bright_spine(chest_cr_path: Path) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    lungs, spine = _regions(dataset_to_display(ds, PreprocessConfig()))
    assert lungs < spine - 0.1, (lungs, spine)


@pytest.mark.parametrize("voi", ["dicom", "percentile", "minmax"])
def test_lungs_dark_whatever_the_photometric_interpretation(chest_cr_path: Path, voi: str) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    config = PreprocessConfig(voi=voi)  # type: ignore[arg-type]
    mono1 = dataset_to_display(ds, config)
    mono2 = dataset_to_display(_as_monochrome2(ds), config)
    for display in (mono1, mono2):
        lungs, spine = _regions(display)
        assert lungs < spine - 0.1, (voi, lungs, spine)
    assert np.abs(mono1 - mono2).mean() < 0.01


def test_encoder_input_shape_range_and_normalisation(chest_cr_path: Path) -> None:
    config = PreprocessConfig(image_size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    pixels = preprocess_dataset(pydicom.dcmread(chest_cr_path), config)
    assert pixels.shape == (3, 96, 96) and pixels.dtype == np.float32
    assert np.array_equal(pixels[0], pixels[2])
    assert pixels.min() >= (0 - 0.5) / 0.25 - 1e-6 and pixels.max() <= (1 - 0.5) / 0.25 + 1e-6


def test_pad_keeps_whole_image_and_crop_fills_square() -> None:
    tall = np.ones((200, 100), dtype=np.float32)
    padded = resize_square(tall, 50, "pad")
    cropped = resize_square(tall, 50, "crop")
    assert padded.shape == cropped.shape == (50, 50)
    assert padded[:, :10].max() == 0.0 and padded[:, 20:30].min() > 0.99  # side bands padded
    assert cropped.min() > 0.99  # no padding at all


def test_lossless_jpeg2000_decodes_to_the_uncompressed_pixels(chest_cr_path: Path) -> None:
    reference = pydicom.dcmread(chest_cr_path)
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    assert j2k.file_meta.TransferSyntaxUID != reference.file_meta.TransferSyntaxUID
    assert np.array_equal(j2k.pixel_array, reference.pixel_array)
    config = PreprocessConfig(image_size=64)
    assert np.array_equal(preprocess_dataset(j2k, config), preprocess_dataset(reference, config))


def test_lossy_jpeg2000_is_close_to_the_uncompressed_image(chest_cr_path: Path) -> None:
    config = PreprocessConfig(image_size=128)
    lossy = dataset_to_display(pydicom.dcmread(get_testdata_file("RG1_J2KI.dcm")), config)
    reference = dataset_to_display(pydicom.dcmread(chest_cr_path), config)
    assert np.abs(lossy - reference).mean() < 0.01
    lungs, spine = _regions(lossy)
    assert lungs < spine - 0.1


def test_structured_report_is_refused_as_not_an_image() -> None:
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    with pytest.raises(PreprocessingError, match="no pixel data"):
        preprocess_dataset(sr, PreprocessConfig())


def test_empty_pixel_data_is_refused(chest_cr_path: Path) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    ds.PixelData = b""
    with pytest.raises(PreprocessingError, match="empty"):
        preprocess_dataset(ds, PreprocessConfig())


def test_truncated_pixel_data_is_refused(chest_cr_path: Path) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(PreprocessingError, match="cannot be decoded"):
        preprocess_dataset(ds, PreprocessConfig())


@pytest.mark.parametrize("photometric", ["RGB", "PALETTE COLOR", "YBR_FULL", ""])
def test_unsupported_photometric_interpretation_is_refused(
    chest_cr_path: Path, photometric: str
) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    ds.PhotometricInterpretation = photometric
    with pytest.raises(PreprocessingError, match="unsupported photometric interpretation"):
        preprocess_dataset(ds, PreprocessConfig())


def test_colour_image_from_pydicom_test_files_is_refused() -> None:
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    with pytest.raises(PreprocessingError, match="'RGB'"):
        preprocess_dataset(rgb, PreprocessConfig())


def test_constant_image_is_refused(chest_cr_path: Path) -> None:
    ds = pydicom.dcmread(chest_cr_path)
    ds.PixelData = np.full(ds.pixel_array.shape, 1000, dtype=np.uint16).tobytes()
    with pytest.raises(PreprocessingError, match="no contrast"):
        dataset_to_display(ds, PreprocessConfig(voi="percentile"))


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a DICOM file")
    with pytest.raises(PreprocessingError, match="not a readable DICOM file"):
        read_dicom(junk)


def test_uncompressed_rewrite_of_j2k_round_trips(tmp_path: Path) -> None:
    """A decoded JPEG 2000 image re-encoded uncompressed gives identical model input."""
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    j2k.decompress()
    assert j2k.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    out = tmp_path / "decoded.dcm"
    j2k.save_as(out)
    config = PreprocessConfig(image_size=64)
    assert np.array_equal(
        preprocess_dataset(pydicom.dcmread(out), config),
        preprocess_dataset(pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")), config),
    )

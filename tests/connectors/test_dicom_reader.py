"""DICOM files/folders -> Study objects; pixel decoding for every locally available transfer syntax.

Test files come from pydicom's own test data (``pydicom/data/test_files``), used
only when present locally: nothing is downloaded.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from connectors import (
    DicomLimits,
    InvalidDicomInput,
    NoInputFound,
    PixelDataTooLarge,
    UnsupportedTransferSyntax,
    read_dicom,
    read_dicom_folder,
)
from connectors.dicom import decode_pixels

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def data_file(name: str) -> Path:
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in the local pydicom test data")
    return path


def pixels_of(name: str) -> np.ndarray:
    (study,) = read_dicom(data_file(name))
    return study.instances[0].pixels()


# -- transfer syntaxes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",  # Implicit VR Little Endian
        "MR_small_padded.dcm",
        "MR_small_RLE.dcm",  # RLE Lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    ],
)
def test_mr_small_variants_decode_to_the_reference(name: str) -> None:
    reference = pixels_of("MR_small.dcm")  # Explicit VR Little Endian
    decoded = pixels_of(name)
    assert decoded.dtype == np.float32 and decoded.shape == (64, 64)
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("rtdose_rle.dcm", "rtdose.dcm"),  # multi-frame RLE
        ("rtdose_expb.dcm", "rtdose.dcm"),  # multi-frame big endian
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG Lossless (Process 14 SV1) vs RLE
        ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm"),  # JPEG 2000
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
        ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
    ],
)
def test_lossless_syntaxes_match_their_reference(name: str, reference: str) -> None:
    np.testing.assert_array_equal(pixels_of(name), pixels_of(reference))


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm"],  # JPEG Baseline
)
def test_lossy_jpeg_baseline_is_close_to_lossless(name: str) -> None:
    lossy, lossless = pixels_of(name), pixels_of("SC_rgb_rle.dcm")
    assert lossy.shape == lossless.shape == (100, 100, 3)
    assert float(np.abs(lossy - lossless).mean()) < 5.0


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("JPGExtended.dcm", (1024, 256)),  # JPEG Extended (Process 2 & 4)
        ("JPEG2000.dcm", (1024, 256)),  # JPEG 2000 (lossy)
        ("image_dfl.dcm", (512, 512)),  # Deflated Explicit VR Little Endian
        ("rtdose.dcm", (15, 10, 10)),  # multi-frame: (frames, rows, columns)
        ("SC_rgb_rle_2frame.dcm", (2, 100, 100, 3)),  # colour multi-frame
        ("examples_ybr_color.dcm", (30, 240, 320, 3)),  # JPEG Baseline YBR_FULL_422, 30 frames
        ("examples_palette.dcm", (350, 800, 3)),  # PALETTE COLOR -> RGB
    ],
)
def test_other_syntaxes_decode_with_the_right_shape(name: str, shape: tuple[int, ...]) -> None:
    decoded = pixels_of(name)
    assert decoded.shape == shape and decoded.dtype == np.float32
    assert float(decoded.max()) > float(decoded.min())


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "SC_rgb_jls_lossy_line.dcm"])
def test_jpeg_ls_near_lossless_decodes(name: str) -> None:
    # these fragments have no StudyInstanceUID, so they go through decode_pixels directly
    decoded = decode_pixels(pydicom.dcmread(data_file(name)), source=name)
    assert decoded.size > 0 and decoded.dtype == np.float32


def test_non_conformant_12bit_jpeg_gives_a_specific_error() -> None:
    # pydicom's JPEG-lossy.dcm is 12-bit JPEG Extended with a scan that breaks the
    # sequential-mode rules: libjpeg rejects it and GDCM has no 12-bit Extended decoder.
    # Whatever plugins are installed, the answer is a specific error naming the file.
    path = data_file("JPEG-lossy.dcm")
    (study,) = read_dicom(path)
    with pytest.raises((InvalidDicomInput, UnsupportedTransferSyntax)) as info:
        study.instances[0].pixels()
    assert "JPEG-lossy.dcm" in str(info.value) and "could not be decoded" in str(info.value)


def test_transfer_syntax_without_any_decoder(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: pydicom has no decoder
    ds.save_as(tmp_path / "jxl.dcm")
    (study,) = read_dicom(tmp_path / "jxl.dcm")
    with pytest.raises(UnsupportedTransferSyntax, match=r"1\.2\.840\.10008\.1\.2\.4\.100.*convert"):
        study.instances[0].pixels()


# -- physical units ----------------------------------------------------------------------------


def test_ct_is_in_hounsfield_units() -> None:
    path = data_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    hu = pixels_of("CT_small.dcm")
    np.testing.assert_array_equal(hu, raw - 1024.0)  # RescaleSlope 1, RescaleIntercept -1024
    assert -1100.0 <= float(hu.min()) < -500.0 and 500.0 < float(hu.max()) < 3100.0


def _write_image(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **attrs: object
) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", "1.2.3.4.5")
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", "1.2.3.4.5.1")
    ds.PatientID = attrs.pop("PatientID", "PID-1")
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    path = _write_image(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    (study,) = read_dicom(path)
    np.testing.assert_array_equal(study.instances[0].pixels(), [[4095, 3995], [95, 0]])
    path2 = _write_image(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2")
    np.testing.assert_array_equal(read_dicom(path2)[0].instances[0].pixels(), stored)


# -- limits ------------------------------------------------------------------------------------


def test_huge_header_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_image(tmp_path / "huge.dcm", np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)

    def no_decoding(self: Dataset) -> None:
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoding))
    with pytest.raises(PixelDataTooLarge, match="60000 x 60000"):
        read_dicom(path)
    with pytest.raises(PixelDataTooLarge, match="max_pixels_per_frame"):
        decode_pixels(pydicom.dcmread(path), source="huge.dcm")


def test_frame_and_study_byte_limits(tmp_path: Path) -> None:
    with pytest.raises(PixelDataTooLarge, match="15 frames"):
        read_dicom(data_file("rtdose.dcm"), limits=DicomLimits(max_frames=10))
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(2):  # two 8 KiB instances of one study: 16 KiB
        ds = pydicom.dcmread(data_file("MR_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(folder / f"mr{n}.dcm")
    shutil.copy(data_file("SC_rgb_small_odd.dcm"), folder / "small.dcm")
    limits = DicomLimits(max_bytes_per_study=12_000)
    result = read_dicom_folder(folder, limits=limits)
    assert [s.modalities for s in result.studies] == [("OT",)]
    assert sorted(s.path.name for s in result.skipped) == ["mr0.dcm", "mr1.dcm"]
    with pytest.raises(PixelDataTooLarge, match="max_bytes_per_study"):
        read_dicom_folder(folder, limits=limits, strictness="raise")
    with pytest.raises(ValueError, match="positive"):
        DicomLimits(max_frames=0)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fraction"), [("MR_small.dcm", 0.5), ("MR_small_jp2klossless.dcm", 0.9)])
def test_truncated_pixel_data_is_caught_when_reading(tmp_path: Path, name: str, fraction: float) -> None:
    data = data_file(name).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InvalidDicomInput, match="truncated") as info:
        read_dicom(path)
    assert "cut.dcm" in str(info.value)


def test_truncated_header_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "head.dcm"
    path.write_bytes(data_file("CT_small.dcm").read_bytes()[:400])
    with pytest.raises(InvalidDicomInput, match=r"head\.dcm"):
        read_dicom(path)


def test_file_truncated_after_reading_fails_at_decode(tmp_path: Path) -> None:
    path = tmp_path / "later.dcm"
    shutil.copy(data_file("MR_small.dcm"), path)
    (study,) = read_dicom(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    with pytest.raises(InvalidDicomInput, match="truncated"):
        study.instances[0].pixels()


def test_non_dicom_file_and_empty_folders(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not DICOM\n" * 20)
    with pytest.raises(InvalidDicomInput, match=r"notes\.txt: not a DICOM file"):
        read_dicom(text)
    with pytest.raises(NoInputFound, match="no readable DICOM"):
        read_dicom(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoInputFound):
        read_dicom(empty)
    with pytest.raises(NoInputFound):
        read_dicom(tmp_path / "missing")


def test_folder_skips_bad_files_under_each_strictness(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(data_file("CT_small.dcm"), nested / "ct.dcm")
    (tmp_path / "readme.txt").write_text("not DICOM")
    (tmp_path / "DICOMDIR").write_bytes(b"ignored")
    with caplog.at_level(logging.WARNING, logger="connectors"):
        result = read_dicom_folder(tmp_path)
    assert len(result.studies) == 1
    assert [s.path.name for s in result.skipped] == ["readme.txt"]
    assert any("not usable DICOM" in r.getMessage() for r in caplog.records)
    assert not any("readme" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="connectors"):
        quiet = read_dicom_folder(tmp_path, strictness="ignore")
    assert len(quiet.skipped) == 1 and not caplog.records
    with pytest.raises(InvalidDicomInput, match="readme"):
        read_dicom_folder(tmp_path, strictness="raise")


# -- header fields and grouping ----------------------------------------------------------------


def test_ct_small_header_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    path = data_file("CT_small.dcm")
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda self: pytest.fail("decoded while reading")))
    (study,) = read_dicom(path)
    monkeypatch.undo()
    (series,) = study.series
    (inst,) = series.instances
    assert study.study_instance_uid == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert study.patient.patient_id == "1CT1" and study.patient.family == "CompressedSamples"
    assert study.patient.sex == "O"
    # StudyTime 072730 with TimezoneOffsetFromUTC -0500 -> 12:27:30 UTC
    assert study.study_datetime == datetime(2004, 1, 19, 12, 27, 30, tzinfo=UTC)
    assert series.modality == "CT" and series.equipment.manufacturer == "GE MEDICAL SYSTEMS"
    assert inst.rows == inst.columns == 128 and inst.bits_stored == 16
    assert inst.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert inst.image_position == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert (inst.rescale_slope, inst.rescale_intercept) == (1.0, -1024.0)
    assert inst.acquisition["KVP"] == 120.0 and inst.acquisition["ConvolutionKernel"] == "STANDARD"
    assert "MagneticFieldStrength" not in inst.acquisition
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1" and inst.has_pixels
    assert study.source == str(path)


def test_sorting_timezone_laterality_and_patient_conflicts(tmp_path: Path) -> None:
    px = np.zeros((2, 2), dtype=np.uint16)
    common = {"StudyDate": "20200101", "StudyTime": "120000", "TimezoneOffsetFromUTC": "+0200"}
    for n, z in [(3, 30.0), (1, 10.0), (2, 20.0)]:
        _write_image(
            tmp_path / f"i{n}.dcm",
            px,
            InstanceNumber=n,
            ImagePositionPatient=[0, 0, z],
            ImageLaterality="L",
            Laterality="R",
            **common,
        )
    for z in (5.0, -5.0):  # no InstanceNumber: sorted by position
        _write_image(
            tmp_path / f"s{z}.dcm",
            px,
            SeriesInstanceUID="1.2.3.4.5.2",
            ImagePositionPatient=[0, 0, z],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            **common,
        )
    _write_image(tmp_path / "other.dcm", px, PatientID="PID-2", PatientBirthDate="19700102")
    studies = read_dicom(tmp_path)
    assert len(studies) == 2 and {s.study_instance_uid for s in studies} == {"1.2.3.4.5"}
    main = next(s for s in studies if s.patient.patient_id == "PID-1")
    first, second = main.series
    assert [i.instance_number for i in first.instances] == [1, 2, 3]
    assert [i.image_position[2] for i in second.instances] == [-5.0, 5.0]  # type: ignore[index]
    assert first.instances[0].laterality == "L"
    assert main.study_datetime == datetime(2020, 1, 1, 10, 0, tzinfo=UTC)
    other = next(s for s in studies if s.patient.patient_id == "PID-2")
    assert other.patient.birth_date == date(1970, 1, 2) and other.study_datetime is None


def test_a_study_decoding_once_reads_each_file_once(tmp_path: Path) -> None:
    path = tmp_path / "mr.dcm"
    shutil.copy(data_file("MR_small.dcm"), path)
    (study,) = read_dicom(path)
    once = study.decoding_once()
    first = once.instances[0].pixels()
    np.testing.assert_array_equal(first, study.instances[0].pixels())
    path.unlink()  # decoded already: the file is not read again
    assert once.instances[0].pixels() is first
    with pytest.raises(ValueError):
        first[0, 0] = 0  # shared by every caller: read-only
    with pytest.raises(InvalidDicomInput):
        study.decoding_once().instances[0].pixels()  # an error is not kept: each call tries

"""DICOM in: files and folders -> `Study` / `Series` / `Instance` (DICOMweb and DIMSE to come).

`reader` reads headers and groups instances; `pixels` decodes pixel data on
demand; `limits` caps sizes before anything is decoded.
"""

from connectors.dicom.limits import DicomLimits
from connectors.dicom.pixels import decode_pixels, install_hint, load_pixels
from connectors.dicom.reader import (
    ACQUISITION_KEYWORDS,
    DicomReadResult,
    SkippedFile,
    read_dicom,
    read_dicom_file,
    read_dicom_folder,
)

__all__ = [
    "ACQUISITION_KEYWORDS",
    "DicomLimits",
    "DicomReadResult",
    "SkippedFile",
    "decode_pixels",
    "install_hint",
    "load_pixels",
    "read_dicom",
    "read_dicom_file",
    "read_dicom_folder",
]

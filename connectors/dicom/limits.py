"""Size limits checked from DICOM headers before any pixel data is decoded.

A header can claim 60000 x 60000 pixels, or a compressed frame can expand to
gigabytes (a decompression bomb). ``DicomLimits`` caps what the reader accepts;
the checks use only Rows, Columns, NumberOfFrames, SamplesPerPixel and
BitsAllocated, so they run before decoding and cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.errors import PixelDataTooLarge

__all__ = ["DicomLimits", "decoded_bytes"]


@dataclass(frozen=True)
class DicomLimits:
    """Upper bounds on what one frame, one instance and one study may hold.

    ``max_bytes_per_study`` counts decoded bytes (Rows x Columns x frames x
    samples x BitsAllocated / 8, summed over the study's instances).
    """

    max_pixels_per_frame: int = 100_000_000  # 10000 x 10000
    max_frames: int = 20_000
    max_bytes_per_study: int = 8 * 1024**3

    def __post_init__(self) -> None:
        for name in ("max_pixels_per_frame", "max_frames", "max_bytes_per_study"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DicomLimits.{name} must be a positive int, got {value!r}")

    def check_instance(
        self,
        *,
        rows: int,
        columns: int,
        frames: int,
        samples_per_pixel: int,
        bits_allocated: int,
        source: str,
    ) -> int:
        """Raise `PixelDataTooLarge` when the header is over a limit; return the decoded bytes."""
        pixels = rows * columns
        if pixels > self.max_pixels_per_frame:
            raise PixelDataTooLarge(
                f"{source}: a frame of {rows} x {columns} = {pixels} pixels is over the limit of "
                f"{self.max_pixels_per_frame} (DicomLimits.max_pixels_per_frame); raise the limit "
                "if the image is genuine"
            )
        if frames > self.max_frames:
            raise PixelDataTooLarge(
                f"{source}: {frames} frames is over the limit of {self.max_frames} (DicomLimits.max_frames)"
            )
        nbytes = decoded_bytes(rows, columns, frames, samples_per_pixel, bits_allocated)
        if nbytes > self.max_bytes_per_study:
            raise PixelDataTooLarge(
                f"{source}: one instance decodes to {nbytes} bytes, over the study limit of "
                f"{self.max_bytes_per_study} (DicomLimits.max_bytes_per_study)"
            )
        return nbytes

    def check_study(self, nbytes: int, *, study_instance_uid: str) -> None:
        """Raise `PixelDataTooLarge` when a whole study decodes to more than the limit."""
        if nbytes > self.max_bytes_per_study:
            raise PixelDataTooLarge(
                f"study {study_instance_uid} decodes to {nbytes} bytes, over the limit of "
                f"{self.max_bytes_per_study} (DicomLimits.max_bytes_per_study)"
            )


def decoded_bytes(rows: int, columns: int, frames: int, samples_per_pixel: int, bits_allocated: int) -> int:
    """Bytes the native (uncompressed) pixel data needs; 1-bit data is packed."""
    bits = rows * columns * max(frames, 1) * max(samples_per_pixel, 1) * max(bits_allocated, 1)
    return (bits + 7) // 8

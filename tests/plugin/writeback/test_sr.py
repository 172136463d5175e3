"""`plugin.writeback.sr`: the TID 1500 Measurement Report of a result, read back by pydicom and highdicom."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fusion.result import ModelInfo
from plugin.errors import UnsuitableResult
from plugin.writeback.codes import (
    CODING_SCHEME,
    IMAGE_CONSISTENT_WITH_RECORD,
    PROBABILITY_INCONSISTENT,
    PROBABILITY_REGION_TAMPERED,
    PROBABILITY_SYNTHETIC,
    REVIEW_RECOMMENDED,
    REVIEW_SCORE,
    SYNTHETIC_OR_TAMPERED,
    TAMPER_REGION,
)
from plugin.writeback.sr import SERIES_NUMBER, TamperHeatmap, encode_structured_report, structured_report

YES, NO, UNKNOWN = "373066001", "373067005", "261665006"


def _heatmap(
    shape: tuple[int, int] = (16, 16), hot: tuple[int, int] = (2, 13), value: float = 3.0
) -> np.ndarray:
    logits = np.full(shape, -4.0, np.float32)
    logits[hot] = value
    return logits


def _read_back(sr: hd.sr.Comprehensive3DSR) -> tuple[Dataset, hd.sr.Comprehensive3DSR]:
    """The report written to bytes, read back by pydicom (``dcmread``) and by highdicom (``srread``)."""
    data = encode_structured_report(sr)
    return pydicom.dcmread(BytesIO(data)), hd.sr.srread(BytesIO(data))


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _named(ds: Dataset, concept: hd.sr.CodedConcept) -> list[Dataset]:
    return [
        i
        for i in _items(ds)
        if i.ConceptNameCodeSequence[0].CodeValue == concept.value
        and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme_designator
    ]


def _answer(ds: Dataset, concept: hd.sr.CodedConcept) -> str:
    (item,) = _named(ds, concept)
    return str(item.ConceptCodeSequence[0].CodeValue)


def _number(ds: Dataset, concept: hd.sr.CodedConcept) -> float:
    (item,) = _named(ds, concept)
    return float(item.MeasuredValueSequence[0].NumericValue)


def test_flagged_report_round_trips_with_its_evaluations_algorithm_and_region(
    make_result, make_header
) -> None:
    image, lateral = make_header(), make_header()
    result = make_result(consistency=0.9, synthetic=0.97)
    when = datetime(2024, 3, 1, 12, 30, 5)
    sr = structured_report(
        result, [image, lateral], heatmap=TamperHeatmap(_heatmap(), image), content_datetime=when
    )
    ds, _ = _read_back(sr)

    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == image.StudyInstanceUID and ds.PatientID == image.PatientID
    assert ds.SeriesInstanceUID not in {image.SeriesInstanceUID, lateral.SeriesInstanceUID}
    assert ds.SeriesNumber == SERIES_NUMBER and ds.InstanceNumber == 1
    assert (ds.ContentDate, ds.ContentTime[:6]) == ("20240301", "123005")
    assert ds.Manufacturer == "imaging-crosscheck" and ds.ManufacturerModelName == "crosscheck-fusion-small"
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"

    # qualitative evaluations and probabilities
    assert _answer(ds, IMAGE_CONSISTENT_WITH_RECORD) == YES  # p(inconsistent) 0.1 < 0.5
    assert _answer(ds, SYNTHETIC_OR_TAMPERED) == YES
    assert _answer(ds, REVIEW_RECOMMENDED) == YES
    assert _number(ds, PROBABILITY_SYNTHETIC) == pytest.approx(0.97)
    assert _number(ds, PROBABILITY_INCONSISTENT) == pytest.approx(0.1)
    assert _number(ds, REVIEW_SCORE) == pytest.approx(0.98)

    # the algorithm (TID 4019) and the device observer (TID 1004)
    names = {str(i.TextValue) for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "111001"}
    versions = {str(i.TextValue) for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "111003"}
    assert names == {"crosscheck-fusion-small"} and versions == {"0.2.0"}
    device = [
        i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "121014"
    ]  # observer manufacturer
    assert [str(i.TextValue) for i in device] == ["imaging-crosscheck"]

    # the region: the hot cell (row 2, column 13) of a 16x16 map over the central 256x256 of 512x512
    (roi_group,) = [g for g in _items(ds) if _is_group(g, "1410")]
    (finding_type,) = [
        i for i in roi_group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071"
    ]
    assert finding_type.ConceptCodeSequence[0].CodeValue == TAMPER_REGION.value
    (scoord,) = [i for i in _items(roi_group) if i.ValueType == "SCOORD"]
    assert scoord.GraphicType == "POLYLINE"
    points = np.asarray(scoord.GraphicData, float).reshape(-1, 2)
    x0, y0 = 128 + 13 * 16, 128 + 2 * 16
    assert points.tolist() == [[x0, y0], [x0 + 16, y0], [x0 + 16, y0 + 16], [x0, y0 + 16], [x0, y0]]
    (source,) = scoord.ContentSequence
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert _number(roi_group, PROBABILITY_REGION_TAMPERED) == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-4)


def _is_group(item: Dataset, template: str) -> bool:
    return item.get("ValueType") == "CONTAINER" and any(
        t.TemplateIdentifier == template for t in item.get("ContentTemplateSequence", [])
    )


def test_highdicom_reads_the_measurement_report_back(make_result, make_header) -> None:
    image = make_header()
    _, report = _read_back(
        structured_report(make_result(), [image], heatmap=TamperHeatmap(_heatmap(), image))
    )
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    planar = report.content.get_planar_roi_measurement_groups()
    (group,) = planar
    assert group.finding_type == TAMPER_REGION
    assert group.roi.value.shape == (5, 2)
    assert group.get_measurements(name=PROBABILITY_REGION_TAMPERED)
    (evaluations,) = report.content.get_image_measurement_groups()
    assert evaluations.tracking_identifier == "Image-record cross-check"
    (name,) = hd.sr.utils.find_content_items(evaluations[0], name=codes.DCM.AlgorithmName)
    (version,) = hd.sr.utils.find_content_items(evaluations[0], name=codes.DCM.AlgorithmVersion)
    assert (name.value, version.value) == ("crosscheck-fusion-small", "0.2.0")
    assert {e.name for e in evaluations.get_qualitative_evaluations()} == {
        IMAGE_CONSISTENT_WITH_RECORD,
        SYNTHETIC_OR_TAMPERED,
        REVIEW_RECOMMENDED,
    }


def test_a_clean_study_gets_a_consistent_report_without_a_region(make_result, make_header) -> None:
    image = make_header()
    ds, _ = _read_back(
        structured_report(make_result(flagged=False, consistency=0.93, synthetic=0.04), [image])
    )
    assert _answer(ds, IMAGE_CONSISTENT_WITH_RECORD) == YES
    assert _answer(ds, SYNTHETIC_OR_TAMPERED) == NO
    assert _answer(ds, REVIEW_RECOMMENDED) == NO
    assert not [i for i in _items(ds) if i.get("ValueType") == "SCOORD"]
    assert [g for g in _items(ds) if _is_group(g, "1501")]


def test_an_inconsistent_study_and_unscored_heads(make_result, make_header) -> None:
    image = make_header()
    ds, _ = _read_back(structured_report(make_result(consistency=0.2, synthetic=None), [image]))
    assert _answer(ds, IMAGE_CONSISTENT_WITH_RECORD) == NO
    assert _answer(ds, SYNTHETIC_OR_TAMPERED) == UNKNOWN
    assert not _named(ds, PROBABILITY_SYNTHETIC)
    ds, _ = _read_back(structured_report(make_result(consistency=None, synthetic=0.1), [image]))
    assert _answer(ds, IMAGE_CONSISTENT_WITH_RECORD) == UNKNOWN


def test_every_private_code_is_declared(make_result, make_header) -> None:
    image = make_header()
    ds, _ = _read_back(structured_report(make_result(), [image], heatmap=TamperHeatmap(_heatmap(), image)))
    declared = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    used = {
        code.CodingSchemeDesignator
        for item in _items(ds)
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence")
        for code in item.get(key, [])
    }
    assert CODING_SCHEME in used
    assert {s for s in used if s.startswith("99")} <= declared


def test_region_skips_cells_over_the_padding_of_a_small_image(make_result, make_header) -> None:
    image = make_header(rows=200, columns=300)  # smaller than the 256 crop in rows: padded above and below
    logits = _heatmap(hot=(0, 8), value=9.0)  # row 0 lies wholly in the padding (rows -28..-12)
    logits[5, 8] = 2.0
    polygon, probability = TamperHeatmap(logits, image).peak()
    top, left = (200 - 256) // 2, (300 - 256) // 2
    assert polygon[0].tolist() == [left + 8 * 16, top + 5 * 16]
    assert probability == pytest.approx(1 / (1 + np.exp(-2.0)))
    edge = _heatmap(hot=(1, 0))  # row 1 straddles the image's top edge: clipped to it
    polygon, _ = TamperHeatmap(edge, image).peak()
    assert polygon[:, 1].min() == 0.0 and polygon[:, 1].max() == top + 2 * 16


def test_multiframe_images_need_their_frame(make_result, make_header) -> None:
    image = make_header(frames=3)
    with pytest.raises(UnsuitableResult, match="frame_number"):
        structured_report(make_result(), [image], heatmap=TamperHeatmap(_heatmap(), image))
    with pytest.raises(UnsuitableResult, match="not a frame"):
        structured_report(make_result(), [image], heatmap=TamperHeatmap(_heatmap(), image, frame_number=4))


@pytest.mark.parametrize(
    "problem",
    ["other study", "no source", "heatmap image not in source", "3-D heatmap", "no finite value", "no model"],
)
def test_inputs_that_do_not_fit_together_are_unsuitable(make_result, make_header, problem: str) -> None:
    image = make_header()
    result = make_result(model=None) if problem == "no model" else make_result()
    source = [image]
    heatmap = TamperHeatmap(_heatmap(), image)
    if problem == "other study":
        source = [make_header(study="1.2.3.4")]
        heatmap = None
    elif problem == "no source":
        source, heatmap = [], None
    elif problem == "heatmap image not in source":
        heatmap = TamperHeatmap(_heatmap(), make_header())
    elif problem == "3-D heatmap":
        heatmap = TamperHeatmap(np.zeros((2, 4, 4)), image)
    elif problem == "no finite value":
        heatmap = TamperHeatmap(np.full((4, 4), np.nan), image)
    with pytest.raises(UnsuitableResult):
        structured_report(result, source, heatmap=heatmap)


def test_each_report_is_a_new_instance_and_the_algorithm_the_same_device(make_result, make_header) -> None:
    image = make_header()
    first, second = (_read_back(structured_report(make_result(), [image]))[0] for _ in range(2))
    assert (
        first.SOPInstanceUID != second.SOPInstanceUID and first.SeriesInstanceUID != second.SeriesInstanceUID
    )

    def device_uid(ds: Dataset) -> str:
        (item,) = [i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "121012"]
        return str(item.UID)

    assert device_uid(first) == device_uid(second)
    other = make_result(model=ModelInfo("crosscheck-fusion-small", "0.3.0", "cd" * 32))
    assert device_uid(_read_back(structured_report(other, [image]))[0]) != device_uid(first)


def test_observer_is_a_device(make_result, make_header) -> None:
    ds, _ = _read_back(structured_report(make_result(), [make_header()]))
    (observer_type,) = [i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer_type.ConceptCodeSequence[0].CodeValue == codes.DCM.Device.value

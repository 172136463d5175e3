from dataclasses import replace

import pytest

from connectors.domain import DeviceRecord, SiteProfile
from fusion.checks import device


def run_all(case, ctx):
    return [
        f
        for check in (
            device.check_device_known,
            device.check_device_in_record,
            device.check_uid_roots,
            device.check_written_by_toolkit,
            device.check_acquisition_attributes,
        )
        for f in check(case, ctx)
    ]


@pytest.mark.parametrize("modality", ["DX", "CT", "MR"])
def test_consistent_case_has_no_device_finding(cf, modality):
    assert run_all(cf.make_case(modality, n_instances=2), cf.ctx()) == []


def test_unknown_device_is_critical(cf):
    case = cf.with_equipment(cf.make_case(), serial_number="DX-9999")
    findings = device.check_device_known(case, cf.ctx())
    assert cf.codes(findings) == {("device.unknown", "critical")}
    assert any(e.reference == "DeviceSerialNumber" and e.value == "DX-9999" for e in findings[0].evidence)


def test_device_match_ignores_case_and_spaces(cf):
    case = cf.with_equipment(cf.make_case(), manufacturer=" ACME MEDICAL ", model="radix 500")
    assert device.check_device_known(case, cf.ctx()) == []


def test_known_device_of_another_modality(cf):
    ct = cf.DEVICES["CT"]
    case = cf.with_equipment(cf.make_case("DX"), manufacturer=ct.manufacturer, model=ct.model,
                             serial_number=ct.serial_number)  # fmt: skip
    assert cf.codes(device.check_device_known(case, cf.ctx())) == {("device.modality-mismatch", "critical")}


def test_unidentified_device(cf):
    case = cf.with_equipment(cf.make_case(), manufacturer=None, model=None, serial_number=None)
    assert cf.codes(device.check_device_known(case, cf.ctx())) == {("device.unidentified", "warning")}


def test_without_site_the_site_checks_are_skipped(cf):
    case = cf.with_equipment(cf.make_case(), serial_number="DX-9999")
    case = cf.with_study(case, study_instance_uid="2.25.1")
    assert device.check_device_known(case, cf.ctx(site=None)) == []
    assert device.check_uid_roots(case, cf.ctx(site=SiteProfile(name="x"))) == []


def test_device_not_in_record(cf):
    case = cf.make_case()
    other = DeviceRecord(id="dev-1", manufacturer="Acme Medical", model="Radix 500", serial_number="DX-0002")
    case = replace(case, record=replace(case.record, devices=(other,)))
    findings = device.check_device_in_record(case, cf.ctx())
    assert cf.codes(findings) == {("device.not-in-record", "warning")}
    assert any(e.reference == "ImagingStudy/ims-1" for e in findings[0].evidence)


def test_some_uids_foreign_is_a_warning(cf):
    case = cf.with_study(cf.make_case(), study_instance_uid="2.25.123456")
    findings = device.check_uid_roots(case, cf.ctx())
    assert cf.codes(findings) == {("device.uid-root-foreign", "warning")}


def test_all_uids_foreign_is_critical(cf):
    case = cf.make_case()
    old = cf.ROOT
    study = case.study
    series = tuple(
        replace(
            s,
            series_instance_uid=s.series_instance_uid.replace(old, "1.2.826.0.1.3680043.8.498"),
            instances=tuple(
                replace(i, sop_instance_uid=i.sop_instance_uid.replace(old, "1.2.826.0.1.3680043.8.498"))
                for i in s.instances
            ),
        )
        for s in study.series
    )
    case = cf.with_study(case, study_instance_uid="1.2.826.0.1.3680043.8.498.77", series=series)
    assert cf.codes(device.check_uid_roots(case, cf.ctx())) == {("device.uid-root-foreign", "critical")}
    # the UIDs were generated with pydicom's root: the toolkit check names it
    findings = device.check_written_by_toolkit(case, cf.ctx())
    assert cf.codes(findings) == {("device.written-by-toolkit", "warning")}
    assert "pydicom" in findings[0].message


def test_uid_under_is_component_wise():
    assert device.uid_under("1.2.3.4", "1.2.3")
    assert device.uid_under("1.2.3", "1.2.3.")
    assert not device.uid_under("1.2.34.5", "1.2.3")


@pytest.mark.parametrize(("uid", "version", "name"), [
    ("1.2.276.0.7230010.3.0.3.6.7", "OFFIS_DCMTK_367", "DCMTK"),
    ("1.2.826.0.1.3680043.8.498.1", "PYDICOM 3.0.1", "pydicom"),
    ("1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.0", "GDCM 3.0.0", "GDCM"),
    ("9.9.9", "fo-dicom 5.1.0", "fo-dicom"),
])  # fmt: skip
def test_written_by_toolkit_is_a_warning_with_attributes_present(cf, uid, version, name):
    case = cf.with_instances(
        cf.make_case("CT"), implementation_class_uid=uid, implementation_version_name=version
    )
    findings = device.check_written_by_toolkit(case, cf.ctx())
    assert cf.codes(findings) == {("device.written-by-toolkit", "warning")}
    assert name in findings[0].message


def test_written_by_toolkit_without_acquisition_attributes_is_critical(cf):
    case = cf.with_instances(cf.make_case("DX"), implementation_class_uid="1.2.826.0.1.3680043.8.498.1",
                             acquisition={})  # fmt: skip
    assert cf.codes(run_all(case, cf.ctx())) == {
        ("device.written-by-toolkit", "critical"),
        ("device.acquisition-attributes-missing", "warning"),
    }


def test_toolkit_on_a_non_acquisition_modality_is_fine(cf):
    case = cf.with_series(cf.make_case("DX"), modality="SR")
    case = cf.with_instances(case, implementation_class_uid="1.2.826.0.1.3680043.8.498.1")
    assert device.check_written_by_toolkit(case, cf.ctx()) == []


@pytest.mark.parametrize(("modality", "drop", "expected"), [
    ("DX", ["KVP"], "KVP"),
    ("DX", ["ExposureTime"], "ExposureTime"),
    ("CT", ["ConvolutionKernel"], "ConvolutionKernel"),
    ("MR", ["EchoTime", "RepetitionTime"], "EchoTime, RepetitionTime"),
])  # fmt: skip
def test_acquisition_attributes_missing(cf, modality, drop, expected):
    kept = {k: v for k, v in cf.ACQUISITION[modality].items() if k not in drop}
    case = cf.with_instances(cf.make_case(modality), acquisition=kept)
    findings = device.check_acquisition_attributes(case, cf.ctx())
    assert cf.codes(findings) == {("device.acquisition-attributes-missing", "warning")}
    assert findings[0].message.endswith(f": {expected}.")


def test_exposure_alternatives_are_accepted(cf):
    attrs = {"KVP": 80, "Exposure": 4, "DistanceSourceToDetector": 1500}
    case = cf.with_instances(cf.make_case("DX"), acquisition=attrs)
    assert device.check_acquisition_attributes(case, cf.ctx()) == []

from datetime import date, datetime, timedelta, timezone

from fusion.checks import dates


def run_all(case, ctx):
    return [
        f
        for check in (
            dates.check_study_before_birth,
            dates.check_study_after_death,
            dates.check_study_before_order,
            dates.check_study_after_report,
            dates.check_study_in_future,
            dates.check_acquisition_times,
        )
        for f in check(case, ctx)
    ]


def test_consistent_case_has_no_date_finding(cf):
    assert run_all(cf.make_case(n_instances=3), cf.ctx()) == []


def test_study_before_birth(cf):
    case = cf.with_fhir_patient(cf.make_case(), birth_date=date(2025, 1, 1))
    assert cf.codes(dates.check_study_before_birth(case, cf.ctx())) == {
        ("dates.study-before-birth", "critical")
    }


def test_study_after_death(cf):
    case = cf.with_fhir_patient(cf.make_case(), deceased=cf.STUDY_AT - timedelta(days=30))
    findings = dates.check_study_after_death(case, cf.ctx())
    assert cf.codes(findings) == {("dates.study-after-death", "critical")}
    assert "30 days" in findings[0].message


def test_study_on_day_of_death_is_tolerated(cf):
    case = cf.with_fhir_patient(cf.make_case(), deceased=cf.STUDY_AT + timedelta(hours=2))
    assert dates.check_study_after_death(case, cf.ctx()) == []


def test_study_before_order_beyond_tolerance(cf):
    case = cf.with_order(cf.make_case(), authored=cf.STUDY_AT + timedelta(hours=5))
    findings = dates.check_study_before_order(case, cf.ctx())
    assert cf.codes(findings) == {("dates.study-before-order", "critical")}
    assert any(e.reference == "ServiceRequest/ord-1" for e in findings[0].evidence)


def test_order_entered_shortly_after_the_study_is_tolerated(cf):
    case = cf.with_order(cf.make_case(), authored=cf.STUDY_AT + timedelta(minutes=30))
    assert dates.check_study_before_order(case, cf.ctx()) == []


def test_aware_fhir_time_against_naive_dicom_time(cf):
    aware = (cf.STUDY_AT + timedelta(hours=5)).replace(tzinfo=timezone(timedelta(hours=1)))
    case = cf.with_order(cf.make_case(), authored=aware)
    assert cf.codes(dates.check_study_before_order(case, cf.ctx())) == {
        ("dates.study-before-order", "critical")
    }


def test_study_after_report(cf):
    case = cf.with_report(cf.make_case(), issued=cf.STUDY_AT - timedelta(days=2))
    findings = dates.check_study_after_report(case, cf.ctx())
    assert cf.codes(findings) == {("dates.study-after-report", "critical")}
    assert any(e.reference == "DiagnosticReport/rep-1" for e in findings[0].evidence)


def test_study_in_future(cf):
    case = cf.make_case()
    assert cf.codes(dates.check_study_in_future(case, cf.ctx(now=cf.STUDY_AT - timedelta(days=10)))) == {
        ("dates.study-in-future", "critical")
    }
    assert dates.check_study_in_future(case, cf.ctx(now=None)) == []


def test_acquisition_outside_study_day(cf):
    case = cf.with_instances(
        cf.make_case(n_instances=2), acquisition_datetime=cf.STUDY_AT + timedelta(days=3)
    )
    findings = dates.check_acquisition_times(case, cf.ctx())
    assert cf.codes(findings) == {("dates.acquisition-outside-study", "warning")}
    assert "2 image(s)" in findings[0].message


def test_acquisition_late_the_same_night_is_tolerated(cf):
    case = cf.with_instances(cf.make_case(), acquisition_datetime=datetime(2024, 3, 6, 1, 30))
    assert dates.check_acquisition_times(case, cf.ctx()) == []


def test_study_datetime_falls_back_to_series(cf):
    case = cf.with_study(cf.make_case(), study_datetime=None)
    assert dates.study_datetime(case.study) == cf.STUDY_AT

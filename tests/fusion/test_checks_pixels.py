import numpy as np
import pytest

from fusion.checks import pixels


@pytest.mark.parametrize("modality", ["DX", "CT", "MR"])
def test_consistent_case_has_no_pixel_finding(cf, modality):
    assert pixels.check_pixels(cf.make_case(modality, n_instances=5), cf.ctx()) == []


def test_ct_without_padding_is_fine(cf):
    case = cf.with_pixels(cf.make_case("CT"), cf.ct_slice(padding=None))
    assert pixels.check_pixels(case, cf.ctx()) == []


def test_ct_values_far_below_air_are_critical(cf):
    img = cf.ct_slice(padding=None)
    img[20:40, 20:40] = -3000.0 + np.random.default_rng(0).normal(0, 50, (20, 20))  # not one padding value
    findings = pixels.check_pixels(cf.with_pixels(cf.make_case("CT"), img), cf.ctx())
    assert ("pixels.ct-hu-out-of-range", "critical") in cf.codes(findings)


def test_ct_values_above_bone_are_critical(cf):
    img = cf.ct_slice()
    img[20:30, 20:30] = 9000.0
    findings = pixels.check_pixels(cf.with_pixels(cf.make_case("CT"), img), cf.ctx())
    assert cf.codes(findings) == {("pixels.ct-hu-out-of-range", "critical")}


def test_a_few_metal_pixels_are_tolerated(cf):
    img = cf.ct_slice()
    img[30, 30:33] = 8000.0
    assert pixels.check_pixels(cf.with_pixels(cf.make_case("CT"), img), cf.ctx()) == []


def test_ct_shifted_scale_has_no_air(cf):
    img = cf.ct_slice() + 1024.0  # rescale intercept dropped: air at +24 HU
    findings = pixels.check_pixels(cf.with_pixels(cf.make_case("CT"), img), cf.ctx())
    assert ("pixels.ct-air-not-air", "warning") in cf.codes(findings)


def test_constant_image(cf):
    case = cf.with_pixels(cf.make_case("DX"), np.full((64, 64), 100.0, dtype=np.float32))
    assert cf.codes(pixels.check_pixels(case, cf.ctx())) == {("pixels.constant", "warning")}


def test_nan_pixels(cf):
    img = cf.smooth_image(0)
    img[5, 5] = np.nan
    case = cf.with_pixels(cf.make_case("DX"), img)
    assert cf.codes(pixels.check_pixels(case, cf.ctx())) == {("pixels.non-finite", "critical")}


def test_values_beyond_bits_stored(cf):
    img = cf.smooth_image(0)
    img[0, 0] = 5000.0  # BitsStored 12, unsigned: at most 4095
    case = cf.with_pixels(cf.make_case("DX"), img)
    findings = pixels.check_pixels(case, cf.ctx())
    assert cf.codes(findings) == {("pixels.outside-bits-stored", "warning")}
    assert pixels.check_pixels(cf.with_instances(case, bits_stored=16), cf.ctx()) == []


def test_monochrome1_inverted_within_span_is_fine(cf):
    img = 4095.0 - cf.smooth_image(0) - 4095.0  # inverted as negatives: span still fits 12 bits
    case = cf.with_instances(
        cf.with_pixels(cf.make_case("DX"), img), photometric_interpretation="MONOCHROME1"
    )
    assert pixels.check_pixels(case, cf.ctx()) == []


def test_decoder_error_is_a_finding(cf):
    def boom():
        raise RuntimeError("JPEG 2000 codestream truncated")

    case = cf.with_instances(cf.make_case("CT", n_instances=3), loader=boom)
    findings = pixels.check_pixels(case, cf.ctx())
    assert cf.codes(findings) == {("pixels.undecodable", "critical")}
    assert "3 image(s)" in findings[0].message
    assert "truncated" in str(findings[0].evidence[0].value)


def test_only_a_sample_is_decoded(cf):
    calls = []
    case = cf.make_case("CT", n_instances=20)

    def counting(i):
        def load():
            calls.append(i)
            return cf.ct_slice()

        return load

    from dataclasses import replace

    series = case.study.series[0]
    series = replace(
        series, instances=tuple(replace(x, loader=counting(k)) for k, x in enumerate(series.instances))
    )
    case = cf.with_study(case, series=(series,))
    assert pixels.check_pixels(case, cf.ctx()) == []
    assert sorted(calls) == [0, 10, 19]


def test_air_clipped_at_minus_1024_is_air_not_padding(cf):
    img = np.maximum(cf.ct_slice(padding=None), -1024.0)  # scanner clips air at stored value 0
    img[:, :2] = -1024.0
    assert pixels.check_pixels(cf.with_pixels(cf.make_case("CT"), img), cf.ctx()) == []

"""The fusion model: tiny-config shapes per tower, bad arguments, separate heads, no I/O, configs."""

from __future__ import annotations

import builtins
import socket
from dataclasses import replace

import pytest
import torch

from fusion.features import MODALITIES, NUM_TOKEN_KINDS
from fusion.model import (
    CrossCheckModel,
    ForensicTower,
    FusionConfig,
    ImageTower,
    RecordTower,
    create_model,
    named_config,
)
from fusion.model.towers import srm_residuals

TINY = named_config("tiny")
F = TINY.features
B = 3


def _batch(seed: int = 0, *, n_tokens: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = F.max_tokens if n_tokens is None else n_tokens
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate((T, T // 2, 1)):
        mask[i, :n] = True
    return {
        "image": torch.rand(B, 3, F.image_size, F.image_size, generator=g),
        "modality": torch.eye(len(MODALITIES))[:B],
        "forensic": torch.randn(B, 1, F.forensic_crop, F.forensic_crop, generator=g),
        "token_kind": torch.randint(1, NUM_TOKEN_KINDS, (B, T), generator=g) * mask,
        "token_code": torch.randint(1, F.code_buckets, (B, T), generator=g) * mask,
        "token_value": torch.randn(B, T, generator=g),
        "token_time": torch.randn(B, T, generator=g),
        "token_present": torch.ones(B, T),
        "token_mask": mask,
    }


@pytest.fixture
def model() -> CrossCheckModel:
    torch.manual_seed(0)
    return create_model("tiny")[0].eval()


def test_image_tower_shapes() -> None:
    torch.manual_seed(0)
    tower = ImageTower(TINY.image, F.image_size, TINY.d_model, len(MODALITIES))
    tokens, pooled = tower(torch.rand(2, 3, F.image_size, F.image_size), torch.eye(4)[:2])
    grid = F.image_size // TINY.image.patch_size // 2 ** (len(TINY.image.depths) - 1)
    assert tokens.shape == (2, grid * grid, TINY.d_model)
    assert pooled.shape == (2, TINY.d_model)


def test_forensic_tower_shapes() -> None:
    torch.manual_seed(0)
    tower = ForensicTower(TINY.forensic, F.forensic_crop, TINY.d_model)
    emb, heat = tower(torch.randn(2, 1, F.forensic_crop, F.forensic_crop))
    h = TINY.forensic.heatmap_size
    assert emb.shape == (2, TINY.d_model) and heat.shape == (2, h, h)
    assert torch.isfinite(emb).all() and torch.isfinite(heat).all()


def test_record_tower_shapes() -> None:
    torch.manual_seed(0)
    tower = RecordTower(TINY.record, F, TINY.d_model)
    b = _batch()
    out = tower(
        b["token_kind"],
        b["token_code"],
        b["token_value"],
        b["token_time"],
        b["token_present"],
        b["token_mask"],
    )
    assert out.shape == (B, F.max_tokens, TINY.d_model)


def test_srm_residuals_vanish_on_smooth_ramps() -> None:
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]  # linear in x
    r = srm_residuals(ramp)
    assert r.shape == (1, 4, 16, 16)
    assert torch.allclose(r[0, 0, :, :-1], torch.ones(16, 15))  # first order sees the slope
    assert torch.allclose(r[0, 2:], torch.zeros(2, 16, 16))  # second order does not
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    assert srm_residuals(spike)[0, 3, 4, 4] == pytest.approx(-1.0)  # centre of the 3x3 edge kernel


def test_forward_shapes(model: CrossCheckModel) -> None:
    with torch.no_grad():
        out = model(_batch())
    h = TINY.forensic.heatmap_size
    assert out.consistency_logit.shape == (B,)
    assert out.synthetic_logit.shape == (B,)
    assert out.contributions.shape == (B, F.max_tokens)
    assert out.tamper_heatmap.shape == (B, h, h)
    assert out.attention.shape[:2] == (B, F.max_tokens)
    assert torch.isfinite(out.consistency_logit).all()


def test_contributions_are_zero_on_padding_and_additive_in_the_logit(model: CrossCheckModel) -> None:
    b = _batch()
    with torch.no_grad():
        out = model(b)
        assert (out.contributions[~b["token_mask"]] == 0).all()
        tokens, pooled = model.encode_image(b["image"], b["modality"])
        rec = model.encode_record(
            b["token_kind"],
            b["token_code"],
            b["token_value"],
            b["token_time"],
            b["token_present"],
            b["token_mask"],
        )
        fused, _ = model.fuse(rec, b["token_mask"], tokens)
        m = b["token_mask"].float()
        mean = (fused * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        pool_term = model.pool_head(torch.cat([mean, pooled], 1))[:, 0]
    torch.testing.assert_close(out.consistency_logit, pool_term - out.contributions.sum(1))


def test_heads_are_callable_separately_and_match_forward(model: CrossCheckModel) -> None:
    b = _batch(1)
    with torch.no_grad():
        out = model(b)
        tokens, pooled = model.encode_image(b["image"], b["modality"])
        forensic, _heat = model.encode_forensic(b["forensic"])
        rec = model.encode_record(
            b["token_kind"],
            b["token_code"],
            b["token_value"],
            b["token_time"],
            b["token_present"],
            b["token_mask"],
        )
        fused, attention = model.fuse(rec, b["token_mask"], tokens)
        logit, contributions = model.consistency_logit(fused, b["token_mask"], pooled)
        torch.testing.assert_close(logit, out.consistency_logit)
        torch.testing.assert_close(contributions, model.token_contributions(fused, b["token_mask"]))
        torch.testing.assert_close(model.synthetic_logit(forensic, pooled), out.synthetic_logit)
        torch.testing.assert_close(model.tamper_heatmap(b["forensic"]), out.tamper_heatmap)
        torch.testing.assert_close(attention, out.attention)


def test_record_only_changes_consistency_not_synthetic(model: CrossCheckModel) -> None:
    a, b = _batch(2), _batch(2)
    b["token_code"] = (b["token_code"] * 7 + 3) % F.code_buckets * b["token_mask"]
    with torch.no_grad():
        oa, ob = model(a), model(b)
    torch.testing.assert_close(oa.synthetic_logit, ob.synthetic_logit)
    assert not torch.allclose(oa.consistency_logit, ob.consistency_logit)


def test_row_without_tokens_does_not_produce_nan(model: CrossCheckModel) -> None:
    b = _batch()
    b["token_mask"][2] = False
    with torch.no_grad():
        out = model(b)
    assert torch.isfinite(out.consistency_logit).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image", torch.rand(B, 1, F.image_size, F.image_size), "image must be"),
        ("image", torch.rand(B, 3, F.image_size + 1, F.image_size + 1), "image must be"),
        ("forensic", torch.randn(B, 1, 8, 8), "forensic crop"),
        ("modality", torch.ones(B, 2), "modality must be"),
        ("token_kind", torch.full((B, F.max_tokens), NUM_TOKEN_KINDS), "token kind"),
        ("token_code", torch.full((B, F.max_tokens), F.code_buckets), "token code"),
    ],
)
def test_bad_arguments_raise_value_error(
    model: CrossCheckModel, key: str, value: torch.Tensor, message: str
) -> None:
    b = _batch()
    b[key] = value
    with pytest.raises(ValueError, match=message):
        model(b)


def test_too_many_tokens_raise_value_error(model: CrossCheckModel) -> None:
    with pytest.raises(ValueError, match="more than max_tokens"):
        model(_batch(n_tokens=F.max_tokens + 1))


def test_missing_batch_key_raises_value_error(model: CrossCheckModel) -> None:
    b = _batch()
    del b["forensic"]
    with pytest.raises(ValueError, match="missing forensic"):
        model(b)


def test_constructors_do_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers  # noqa: F401  (imports may read files; constructing must not)

    ImageTower(TINY.image, F.image_size, TINY.d_model, 4)  # warm up lazy imports inside the constructor

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"I/O in a constructor: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, preprocess = create_model("tiny")
    assert isinstance(model, CrossCheckModel) and preprocess.config == TINY.features


def test_config_json_roundtrip_and_named_configs() -> None:
    for name in ("tiny", "small"):
        cfg = named_config(name)
        assert FusionConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown model config"):
        named_config("huge")
    with pytest.raises(ValueError, match="not a FusionConfig"):
        FusionConfig.from_json({"d_model": 8})
    with pytest.raises(ValueError, match="divisible"):
        replace(TINY, d_model=15)


def test_small_config_stays_small() -> None:
    torch.manual_seed(0)
    model, _ = create_model("small")
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 5_000_000, f"small model has {n} parameters ({n * 4 / 1e6:.1f} MB)"

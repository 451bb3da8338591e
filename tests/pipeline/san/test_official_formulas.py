"""Check the functional SAN oracle (``official_formulas``) against outputs of the official implementation.

The fixtures in ``tests/data/parity/`` were produced by MendelXu/SAN (commit e19262d, ``san_vit_b_16``
config) with every weight set by the deterministic ``sanref-v2`` rule (see ``tests/data/parity/README.md``).
Rebuilding those weights here and running the oracle must reproduce the official arrays to about 1e-4 of
their scale.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np
import pytest
import torch

from tests.pipeline.san import official_formulas as of
from tests.pipeline.san.parity_fixtures import CASES, DATA, key_rows, manifest
from tests.pipeline.san.parity_fixtures import case_arrays as _case
from tests.pipeline.san.parity_fixtures import case_meta as _case_meta
from tests.pipeline.san.parity_fixtures import sanref_v2_numpy as _sanref_v2_numpy
from tests.pipeline.san.parity_fixtures import sanref_v2_state as _sanref_v2_state_fresh

REL_TOL = 1e-4  # max |ours - official| relative to max |official|


def _manifest() -> dict[str, Any]:
    return manifest()


def _sanref_v2_rows() -> list[dict[str, Any]]:
    return key_rows()


@functools.cache
def _sanref_v2_state() -> dict[str, torch.Tensor]:
    return _sanref_v2_state_fresh()


@functools.cache
def _tokens(name: str) -> torch.Tensor:
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    vocab = _case_meta(name)["vocabulary"]
    return torch.stack([tokenizer([t.format(c) for c in vocab]) for t in of.VILD_TEMPLATES])


@functools.cache
def _run(name: str) -> dict[str, Any]:
    """Run the whole oracle on one case; cached so each case's forward runs once per session."""
    torch.manual_seed(0)
    case = _case(name)
    cfg = of.config_for("san_vit_b_16")
    state = _sanref_v2_state()
    with torch.no_grad():
        padded, resized_hw = of.preprocess(case["image_uint8"])
        classifier = of.text_classifier(state, cfg, _tokens(name))
        out = of.forward(state, cfg, padded, classifier)
        sem_seg = of.postprocess(
            out["mask_preds"],
            out["class_logits"],
            tuple(padded.shape[-2:]),
            resized_hw,
            tuple(case["image_uint8"].shape[:2]),
        )
    return {
        "padded": padded,
        "resized_hw": resized_hw,
        "classifier_weight": classifier,
        "sem_seg": sem_seg,
        **out,
    }


def _rel_err(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    if isinstance(ours, torch.Tensor):
        ours = ours.detach().double().numpy()
    ours_np = np.asarray(ours, np.float64)
    ref64 = np.asarray(ref, np.float64)
    assert ours_np.shape == ref64.shape, (ours_np.shape, ref64.shape)
    return float(np.abs(ours_np - ref64).max() / max(np.abs(ref64).max(), 1e-30))


def _assert_close(label: str, ours: torch.Tensor | np.ndarray, ref: np.ndarray, tol: float = REL_TOL) -> None:
    err = _rel_err(ours, ref)
    print(f"{label}: max rel err {err:.3e}")
    assert err <= tol, f"{label}: max |diff| / max |ref| = {err:.3e} > {tol:.1e}"


def _chan_stats(x: torch.Tensor) -> np.ndarray:
    """mean, unbiased std, min, max per channel of ``[1, C, H, W]`` -> ``[4, C]`` (float64)."""
    flat = x[0].double().flatten(1)
    return torch.stack([flat.mean(1), flat.std(1), flat.amin(1), flat.amax(1)]).numpy()


# ----------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["san_vit_b_16", "san_vit_large_14"])
def test_state_dict_shapes_match_checkpoint_keys(name: str) -> None:
    official = json.loads((DATA / "checkpoint_keys.json").read_text())[name]
    ours = of.official_state_dict_shapes(of.config_for(name))
    assert list(ours.items()) == [(k, tuple(s)) for k, s, _ in official]
    assert len(ours) == {"san_vit_b_16": 442, "san_vit_large_14": 586}[name]


def test_state_dict_shapes_match_parity_keys() -> None:
    ours = of.official_state_dict_shapes(of.config_for("san_vit_b_16"))
    assert list(ours.items()) == [(e["key"], tuple(e["shape"])) for e in _sanref_v2_rows()]


def test_tiny_config_runs() -> None:
    cfg = of.config_for("tiny")
    shapes = of.official_state_dict_shapes(cfg)
    assert shapes["side_adapter_network.vit_model.pos_embed"] == (1, 16, 48)
    assert shapes["criterion.empty_weight"] == (172,)
    assert shapes["ov_classifier.attn_mask"] == (77, 77)
    assert shapes["side_adapter_network.mask_decoder.attn_mlp.layers.2.weight"] == (16 * 4, 16, 1, 1)
    assert sum(k.startswith("clip_rec_head.resblocks.") for k in shapes) == 3 * 12
    state = of.deterministic_state_dict(cfg, seed=0)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    again = of.deterministic_state_dict(cfg, seed=0)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert torch.isclose(state["ov_classifier.logit_scale"].exp(), torch.tensor(100.0))

    image = (torch.arange(70 * 90 * 3) % 251).reshape(70, 90, 3).to(torch.uint8).numpy()
    padded, resized_hw = of.preprocess(image, short_edge=64, max_size=256)
    assert resized_hw == (64, 82) and tuple(padded.shape) == (1, 3, 64, 96)
    tokens = torch.randint(1, 49405, (14, 3, 77), generator=torch.Generator().manual_seed(0))
    tokens[..., 6] = 49407
    with torch.no_grad():
        classifier = of.text_classifier(state, cfg, tokens)
        out = of.forward(state, cfg, padded, classifier)
        scores = of.postprocess(out["mask_preds"], out["class_logits"], (64, 96), resized_hw, (70, 90))
    assert tuple(classifier.shape) == (4, 24)
    assert out["mask_hw"] == (4, 6) and out["clip_hw"] == (2, 3)
    assert tuple(out["mask_preds"].shape) == (10, 4, 6)
    assert tuple(out["attn_bias"].shape) == (4, 10, 4, 6)
    assert tuple(out["mask_embs"].shape) == (10, 24)
    assert tuple(out["class_logits"].shape) == (10, 4)
    assert tuple(out["clip_cls_tokens"].shape) == (4, 64)
    assert tuple(scores.shape) == (3, 70, 90)
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


# ----------------------------------------------------------------------------------------------------------
# Parity with the official outputs
# ----------------------------------------------------------------------------------------------------------


def test_sanref_v2_weights_reproduce_sha256() -> None:
    weights = _sanref_v2_numpy()
    for e in _sanref_v2_rows():
        digest = hashlib.sha256(np.ascontiguousarray(weights[e["key"]]).tobytes()).hexdigest()
        assert digest == e["sha256_of_float32_le_bytes"], e["key"]


@pytest.mark.parametrize("name", CASES)
def test_preprocess(name: str) -> None:
    case, meta = _case(name), _case_meta(name)
    np.testing.assert_array_equal(of.eval_resize(case["image_uint8"]), case["resized_uint8"])
    mean = torch.tensor([255.0 * m for m in of.CLIP_MEAN], dtype=torch.float32)
    std = torch.tensor([255.0 * s for s in of.CLIP_STD], dtype=torch.float32)
    assert mean.tolist() == _manifest()["pixel_mean"] and std.tolist() == _manifest()["pixel_std"]
    out = _run(name)
    padded, image_c = out["padded"], out["clip_input"]
    sizes = [
        *case["image_uint8"].shape[:2],
        *out["resized_hw"],
        *padded.shape[-2:],
        *image_c.shape[-2:],
        *out["mask_hw"],
    ]
    assert sizes == case["sizes"].tolist()
    assert list(out["resized_hw"]) == meta["resized_hw"]
    np.testing.assert_allclose(padded[0, :, 0].numpy(), case["model_input_first_row"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(_chan_stats(padded), case["model_input_chan_stats"], rtol=1e-6, atol=1e-6)
    _assert_close(f"{name}/clip_input_first_row", image_c[0, :, 0], case["clip_input_first_row"], 1e-6)
    _assert_close(f"{name}/clip_input_chan_stats", _chan_stats(image_c), case["clip_input_chan_stats"], 1e-6)


@pytest.mark.parametrize("name", CASES)
def test_text_tokens_and_classifier(name: str) -> None:
    case = _case(name)
    np.testing.assert_array_equal(_tokens(name).numpy(), case["text_tokens"])
    _assert_close(f"{name}/classifier_weight", _run(name)["classifier_weight"], case["classifier_weight"])


@pytest.mark.parametrize("name", CASES)
def test_forward_intermediates(name: str) -> None:
    case, out = _case(name), _run(name)
    assert out["clip_layers"] == case["clip_layers"].tolist()
    for key in (
        "clip_cls_tokens",
        "clip_spatial_mean",
        "sa_query",
        "sa_x_chan_mean",
        "mask_preds",
        "mask_embs",
        "class_logits",
    ):
        _assert_close(f"{name}/{key}", out[key], case[key])
    bias = out["attn_bias"].double()
    stats = np.array([bias.mean(), bias.std(), bias.min(), bias.max()])
    ref_stats = case["attn_bias_stats"]
    err = np.abs(stats - ref_stats).max() / np.abs(ref_stats).max()
    print(f"{name}/attn_bias_stats: max rel err {err:.3e}")
    assert err <= REL_TOL
    _assert_close(
        f"{name}/attn_bias_head_query_mean",
        out["attn_bias"].mean(dim=(-2, -1)),
        case["attn_bias_head_query_mean"],
    )


@pytest.mark.parametrize("name", CASES)
def test_semantic_scores(name: str) -> None:
    case, out = _case(name), _run(name)
    sem_seg = out["sem_seg"]
    if "sem_seg" in case:
        _assert_close(f"{name}/sem_seg", sem_seg, case["sem_seg"])
    _assert_close(f"{name}/sem_seg_sub", sem_seg[:, ::8, ::8], case["sem_seg_sub"])
    flat = sem_seg.double().flatten(1)
    stats = torch.stack([flat.mean(1), flat.std(1), flat.amin(1), flat.amax(1)]).numpy()
    _assert_close(f"{name}/sem_seg_chan_stats", stats, case["sem_seg_chan_stats"])
    # argmax: identical wherever the official top-1/top-2 margin is clearly above the numerical noise
    argmax = sem_seg.argmax(dim=0).numpy()
    margin = case["argmax_margin"]
    decided = margin > 1e-4 * float(case["sem_seg_chan_stats"][3].max())
    assert decided.mean() > 0.99
    mismatches = int((argmax != case["argmax"])[decided].sum())
    print(f"{name}/argmax: {mismatches} mismatches over {int(decided.sum())} decided pixels")
    assert mismatches == 0

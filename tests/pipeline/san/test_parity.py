"""Our SAN against the official implementation's own outputs, layer by layer (tests/data/parity/).

The official code ran the released B/16 architecture with closed-form deterministic weights on two images;
we load the same weights through the official key layout (strictly) and must agree at every stage:
preprocessing, CLIP features, side adapter, masks, attention bias, recognition, text classifier and the
final full-resolution scores and labels.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from pipeline.san import SAN, Segmenter, get_config
from pipeline.san.preprocess import geometry, normalize_and_pad, resize_pil
from pipeline.san.vocabulary import template_prompts
from tests.pipeline.san.parity_fixtures import CASES, case_arrays, case_meta, sanref_v2_state

REL_TOL = 1e-4


def assert_close(
    label: str, ours: torch.Tensor | np.ndarray, official: np.ndarray, tol: float = REL_TOL
) -> None:
    ours_np = (
        ours.detach().cpu().double().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours, float)
    )
    assert ours_np.shape == official.shape, f"{label}: shape {ours_np.shape} != official {official.shape}"
    scale = max(float(np.abs(official).max()), 1e-12)
    error = float(np.abs(ours_np - official).max()) / scale
    assert error <= tol, f"{label}: max error {error:.2e} of the official scale (limit {tol:.0e})"


def channel_stats(x: torch.Tensor) -> np.ndarray:
    flat = x[0].reshape(3, -1).double()
    return torch.stack([flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values]).numpy()


@functools.cache
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    model = SAN(get_config("san_vit_b_16"))
    model.load_state_dict(sanref_v2_state(), strict=True)
    return Segmenter(model, device="cpu", resizer="pil")


@functools.cache
def run_case(name: str) -> dict[str, object]:
    official = case_arrays(name)
    vocabulary = case_meta(name)["vocabulary"]
    seg = segmenter()
    model = seg.model
    image = official["image_uint8"]
    geom = geometry(*image.shape[:2])
    with torch.inference_mode():
        resized = resize_pil(image, geom.resized)
        batch = normalize_and_pad([resized], geom.padded)
        clip_in = model.clip_input(batch)
        clip = model.clip_visual_extractor(clip_in, keep={0, 3, 6, 9})
        queries, pixel_map = model.side_adapter_network.forward_features(batch, clip)
        mask_logits, biases = model.side_adapter_network.mask_decoder(queries, pixel_map)
        embeddings = model.clip_rec_head(clip, 9, biases[-1])
        classifier = seg.classifier(vocabulary)
    result = seg.segment([image], [vocabulary], return_scores=True)[0]
    return {
        "geom": geom,
        "resized": resized,
        "batch": batch,
        "clip_in": clip_in,
        "clip": clip,
        "queries": queries,
        "pixel_map": pixel_map,
        "mask_logits": mask_logits,
        "bias": biases[-1],
        "embeddings": embeddings,
        "classifier": classifier,
        "result": result,
    }


@pytest.mark.parametrize("name", CASES)
def test_preprocessing_matches_official(name: str) -> None:
    official = case_arrays(name)
    ours = run_case(name)
    geom = ours["geom"]
    sizes = official["sizes"].tolist()
    assert [*geom.original, *geom.resized, *geom.padded] == sizes[:6]
    assert list(ours["clip_in"].shape[-2:]) == sizes[6:8]
    assert list(ours["mask_logits"].shape[-2:]) == sizes[8:10]
    resized = ours["resized"].permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(resized, official["resized_uint8"])
    assert_close("model input stats", channel_stats(ours["batch"]), official["model_input_chan_stats"])
    assert_close("model input row 0", ours["batch"][0, :, 0], official["model_input_first_row"])
    assert_close("clip input stats", channel_stats(ours["clip_in"]), official["clip_input_chan_stats"])
    assert_close("clip input row 0", ours["clip_in"][0, :, 0], official["clip_input_first_row"])


@pytest.mark.parametrize("name", CASES)
def test_text_tokens_and_classifier_match_official(name: str) -> None:
    official = case_arrays(name)
    vocabulary = tuple(case_meta(name)["vocabulary"])
    seg = segmenter()
    tokens = torch.stack([seg.tokenizer(prompts) for prompts in template_prompts(vocabulary)])
    np.testing.assert_array_equal(tokens.numpy(), official["text_tokens"])
    assert_close("classifier", run_case(name)["classifier"], official["classifier_weight"])


@pytest.mark.parametrize("name", CASES)
def test_layers_match_official(name: str) -> None:
    official = case_arrays(name)
    ours = run_case(name)
    clip = ours["clip"]
    layers = official["clip_layers"].tolist()
    cls_tokens = torch.stack([clip.cls_token(k)[0] for k in layers])
    spatial = torch.stack([clip.tokens[k][0, 1:].mean(0) for k in layers])
    assert_close("clip cls tokens", cls_tokens, official["clip_cls_tokens"])
    assert_close("clip spatial means", spatial, official["clip_spatial_mean"])
    assert_close("side-adapter queries", ours["queries"][0], official["sa_query"])
    assert_close("side-adapter pixel means", ours["pixel_map"][0].mean((1, 2)), official["sa_x_chan_mean"])
    assert_close("mask logits", ours["mask_logits"][0], official["mask_preds"])
    bias = ours["bias"].double()
    stats = np.array([bias.mean(), bias.std(), bias.min(), bias.max()])
    assert_close("attention bias stats", stats, official["attn_bias_stats"])
    assert_close(
        "attention bias head/query means", ours["bias"][0].mean((2, 3)), official["attn_bias_head_query_mean"]
    )
    assert_close("mask embeddings", ours["embeddings"][0], official["mask_embs"])
    logits = ours["embeddings"][0] @ ours["classifier"].T
    assert_close("class logits", logits, official["class_logits"])


@pytest.mark.parametrize("name", CASES)
def test_scores_and_labels_match_official(name: str) -> None:
    official = case_arrays(name)
    result = run_case(name)["result"]
    scores = torch.from_numpy(result.scores)
    assert_close("scores (every 8th pixel)", scores[:, ::8, ::8], official["sem_seg_sub"])
    flat = scores.reshape(scores.shape[0], -1).double()
    stats = torch.stack([flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values]).numpy()
    assert_close("score stats", stats, official["sem_seg_chan_stats"])
    if "sem_seg" in official:
        assert_close("full scores", scores, official["sem_seg"])
    decided = official["argmax_margin"] > 1e-4 * float(official["sem_seg_sub"].max())
    np.testing.assert_array_equal(result.labels[decided], official["argmax"][decided])
    assert result.areas.tolist() == case_meta(name)["argmax_class_pixel_counts"]
    assert int(result.areas.sum()) == result.labels.size

"""The compiled forward: whole-graph tracing, batch sizes padded to powers of two so graphs are reused, and
results equal to the eager model's. Dynamo's "trace" mode (no code generation) keeps this a CPU test of
seconds; the inductor modes run in bench/gpu_check.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from pipeline.san import SAN, Segmenter
from pipeline.san.compiled import static_batch_size
from tests.pipeline.san.conftest import pattern_image

VOCABULARIES = [["road", "car", "person"], ["water", "tree"], ["sky", "roof", "grass", "field"], ["anything"]]


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def test_batch_sizes_round_up_to_powers_of_two() -> None:
    assert [static_batch_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 33, 64, 65)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        64,
        64,
        128,
    ]
    with pytest.raises(ValueError, match="at least one image"):
        static_batch_size(0)


def test_unknown_mode_is_refused(tiny_model: SAN) -> None:
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        Segmenter(tiny_model, device="cpu", compile_mode="fastest")


def test_compiled_results_equal_eager_and_graphs_are_reused(
    tiny_model: SAN, tiny_segmenter: Segmenter
) -> None:
    torch._dynamo.reset()
    counters.clear()
    compiled = Segmenter(tiny_model, device="cpu", compile_mode="trace")
    images = [pattern_image(60, 80, seed) for seed in range(4)]
    three = compiled.segment(images[:3], VOCABULARIES[:3], return_scores=True)
    assert graphs_compiled() == 1
    four = compiled.segment(images, VOCABULARIES, return_scores=True)  # 3 was padded to 4: same graph
    assert graphs_compiled() == 1
    eager = tiny_segmenter.segment(images, VOCABULARIES, return_scores=True)
    for result, expected in [*zip(three, eager, strict=False), *zip(four, eager, strict=True)]:
        np.testing.assert_allclose(result.scores, expected.scores, rtol=0, atol=1e-5)
        assert int(result.areas.sum()) == 60 * 80
    compiled.segment(images[:1], VOCABULARIES[:1])  # batch 1: its own graph
    assert graphs_compiled() == 2


def test_a_canvas_of_several_sizes_runs_eagerly_with_the_same_results(
    tiny_model: SAN, tiny_segmenter: Segmenter
) -> None:
    torch._dynamo.reset()
    counters.clear()
    compiled = Segmenter(tiny_model, device="cpu", compile_mode="trace", max_padding=float("inf"))
    images = [pattern_image(60, 80, 1), pattern_image(90, 160, 2)]
    results = compiled.segment(images, VOCABULARIES[:2], return_scores=True)
    assert graphs_compiled() == 0
    for image, vocabulary, result in zip(images, VOCABULARIES, results, strict=False):
        alone = tiny_segmenter.segment([image], [vocabulary], return_scores=True)[0]
        np.testing.assert_allclose(result.scores, alone.scores, rtol=0, atol=1e-4)

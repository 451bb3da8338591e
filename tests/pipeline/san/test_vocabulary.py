"""Vocabulary validation, command-line parsing, and the per-vocabulary classifier cache."""

from __future__ import annotations

import pytest
import torch

from pipeline.san import Segmenter, VocabularyError, parse_vocabulary_text, validate_vocabulary
from pipeline.san.vocabulary import VILD_TEMPLATES, ClassifierCache


@pytest.mark.parametrize(
    ("vocabulary", "message"),
    [
        ([], "empty"),
        ("person,car", "must be a list"),
        (None, "must be a list"),
        (["person", "car", "Person "], r"'Person' duplicates vocabulary\[0\]"),
        (["person", 3], r"vocabulary\[1\] is int"),
        (["person", "  "], r"vocabulary\[1\] is an empty class name"),
        ([f"class {i}" for i in range(1001)], "1001 classes; the limit is 1000"),
    ],
)
def test_bad_vocabularies_are_rejected_with_the_problem_named(vocabulary: object, message: str) -> None:
    with pytest.raises(VocabularyError, match=message):
        validate_vocabulary(vocabulary)


def test_names_are_stripped_and_synonyms_kept_verbatim() -> None:
    assert validate_vocabulary(["  car, automobile ", "sky"]) == ("car, automobile", "sky")
    assert len(validate_vocabulary([f"class {i}" for i in range(1000)])) == 1000


def test_command_line_vocabulary_parsing() -> None:
    assert parse_vocabulary_text("person,car , tree") == ("person", "car", "tree")
    assert parse_vocabulary_text("car, automobile; person") == ("car, automobile", "person")
    with pytest.raises(VocabularyError, match="--vocab"):
        parse_vocabulary_text("person,,car")


def test_templates_are_the_official_fourteen() -> None:
    assert len(VILD_TEMPLATES) == 14
    assert sum(not t.endswith(".") for t in VILD_TEMPLATES) == 4
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"


def test_cache_is_keyed_by_content_and_bounded() -> None:
    built: list[tuple[str, ...]] = []

    def build(vocabulary: tuple[str, ...]) -> torch.Tensor:
        built.append(vocabulary)
        return torch.zeros(len(vocabulary) + 1, 4)

    cache = ClassifierCache(build, max_entries=2)
    cache.get(("a", "b"))
    cache.get(("a", "b"))
    cache.get(("c",))
    cache.get(("a", "b"))  # refreshes ("a", "b"), so ("c",) is now least recent
    cache.get(("d",))
    assert built == [("a", "b"), ("c",), ("d",)]
    assert ("a", "b") in cache and ("c",) not in cache and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 3)


def test_segmenter_encodes_each_distinct_vocabulary_once(
    tiny_segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = tiny_segmenter.model.ov_classifier
    calls: list[int] = []
    original = encoder.encode

    def counting(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.shape[0])
        return original(tokens)

    monkeypatch.setattr(encoder, "encode", counting)
    first = tiny_segmenter.classifier(["cache test river", "cache test road"])
    again = tiny_segmenter.classifier(
        ["cache test river ", "cache test road"]
    )  # same content after stripping
    other = tiny_segmenter.classifier(["cache test road", "cache test river"])  # order matters: new entry
    assert sum(calls) == 2 * 2 * len(VILD_TEMPLATES)
    assert again is first
    assert torch.allclose(other[0], first[1]) and torch.allclose(other[1], first[0])
    assert first.shape == (3, tiny_segmenter.model.config.clip_text.embed_dim)

"""Vocabularies: validation, the official prompt templates, and a content-keyed cache of classifiers.

A vocabulary is an ordered list of class names; one name may hold synonyms ("car, automobile"), which go
into the prompts verbatim as the official ADE names do. Text embeddings depend only on the names and the
checkpoint's text tower, so each distinct vocabulary is encoded once and reused by every frame and stream.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

MAX_CLASSES = 1000

# The official "vild" prompt ensemble, byte for byte (four entries have no trailing period on purpose).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

Vocabulary = tuple[str, ...]


class VocabularyError(ValueError):
    """A vocabulary the model cannot use; the message says which entry is wrong and how to fix it."""


def validate_vocabulary(names: Any, *, label: str = "vocabulary") -> Vocabulary:
    """Return the vocabulary as a tuple of stripped names, or raise `VocabularyError` naming the problem."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise VocabularyError(
            f"{label} must be a list of class names, got {type(names).__name__}; "
            'for example ["person", "car", "tree"]'
        )
    if len(names) == 0:
        raise VocabularyError(f"{label} is empty: give at least one class name")
    if len(names) > MAX_CLASSES:
        raise VocabularyError(f"{label} has {len(names)} classes; the limit is {MAX_CLASSES}")
    cleaned: list[str] = []
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise VocabularyError(f"{label}[{index}] is {type(name).__name__} {name!r}, not a string")
        stripped = " ".join(name.split())
        if not stripped:
            raise VocabularyError(f"{label}[{index}] is an empty class name")
        key = stripped.casefold()
        if key in seen:
            raise VocabularyError(
                f"{label}[{index}] {stripped!r} duplicates {label}[{seen[key]}]; each class must appear once "
                "(put synonyms in one name: 'car, automobile')"
            )
        seen[key] = index
        cleaned.append(stripped)
    return tuple(cleaned)


def parse_vocabulary_text(text: str) -> Vocabulary:
    """Parse a command-line vocabulary.

    Classes are separated by commas ("person,car,tree"); when the text contains a semicolon, semicolons
    separate classes instead so a class can carry comma-separated synonyms ("car, automobile; person").
    """
    separator = ";" if ";" in text else ","
    return validate_vocabulary([part for part in text.split(separator)], label="--vocab")


def template_prompts(vocabulary: Vocabulary, templates: Sequence[str] = VILD_TEMPLATES) -> list[list[str]]:
    """Prompts [template][class], template-major like the official encoder."""
    return [[template.format(name) for name in vocabulary] for template in templates]


class ClassifierCache:
    """Bounded LRU of classifier matrices keyed by vocabulary content (and device/dtype).

    Args:
        build: computes the classifier [C + 1, D] for a vocabulary; called once per distinct key.
        max_entries: how many vocabularies to keep; the least recently used one is dropped first.
    """

    def __init__(self, build: Callable[[Vocabulary], torch.Tensor], max_entries: int = 256) -> None:
        self._build = build
        self._entries: OrderedDict[Vocabulary, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, vocabulary: Vocabulary) -> torch.Tensor:
        with self._lock:
            if vocabulary in self._entries:
                self._entries.move_to_end(vocabulary)
                self.hits += 1
                return self._entries[vocabulary]
        classifier = self._build(vocabulary)
        with self._lock:
            self.misses += 1
            self._entries[vocabulary] = classifier
            self._entries.move_to_end(vocabulary)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return classifier

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, vocabulary: object) -> bool:
        return vocabulary in self._entries

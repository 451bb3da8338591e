"""SAN (Side Adapter Network) in pure PyTorch: loads the released checkpoints and reproduces the official
outputs; `Segmenter` adds per-image vocabularies and batching for video."""

from pipeline.san.config import SANConfig, UnknownModelError, available_models, get_config
from pipeline.san.model import SAN, SANOutput
from pipeline.san.preprocess import ImageError
from pipeline.san.segmenter import Segmentation, Segmenter
from pipeline.san.vocabulary import (
    VILD_TEMPLATES,
    VocabularyError,
    parse_vocabulary_text,
    validate_vocabulary,
)
from pipeline.san.weights import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotAvailableError,
    convert_to_safetensors,
    load_checkpoint,
)

__all__ = [
    "SAN",
    "VILD_TEMPLATES",
    "CheckpointMismatchError",
    "ImageError",
    "SANConfig",
    "SANOutput",
    "Segmentation",
    "Segmenter",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "VocabularyError",
    "WeightsError",
    "WeightsNotAvailableError",
    "available_models",
    "convert_to_safetensors",
    "get_config",
    "load_checkpoint",
    "parse_vocabulary_text",
    "validate_vocabulary",
]

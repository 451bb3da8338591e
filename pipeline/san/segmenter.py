"""`Segmenter`: the stateful front of the pure `SAN` module — preprocessing, vocabulary caching, batching
images with different vocabularies into one forward pass, and post-processing.

Images are grouped into buckets of padded sizes (`pipeline.san.buckets`) and each bucket runs as one batched
forward; the visual part does not depend on the vocabulary, so only the final [Q, D] x [D, C + 1]
classification differs per image. Images of different sizes in one bucket keep their own padded size on the
shared canvas (`pipeline.san.canvas`), so unlike the official code, which pads a whole batch to its largest
image, every image's result stays independent of what else is in its batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open_clip
import torch

from pipeline.san.buckets import DEFAULT_MAX_PADDING, plan_buckets
from pipeline.san.canvas import CanvasLayout
from pipeline.san.compiled import CompiledForward, check_compile_mode
from pipeline.san.model import SAN
from pipeline.san.postprocess import (
    BAND_ELEMENTS,
    BAND_ELEMENTS_BY_DEVICE,
    PostprocessResult,
    class_probabilities,
    postprocess_batch,
)
from pipeline.san.preprocess import (
    ImageError,
    ImageGeometry,
    Resizer,
    check_image,
    choose_resizer,
    geometry,
    normalize_and_pad,
    resize_pil,
    resize_torch,
)
from pipeline.san.vocabulary import (
    VILD_TEMPLATES,
    ClassifierCache,
    Vocabulary,
    template_prompts,
    validate_vocabulary,
)

# Text-tower sequences encoded per chunk when building a classifier (bounds memory for 1,000 classes).
TEXT_CHUNK = 1024


@dataclass
class Segmentation:
    """The result for one image, at the image's own resolution.

    Attributes:
        vocabulary: the class names; index c in `labels`, `areas` and `scores` is `vocabulary[c]`.
        labels: H x W int32 class indices (None when `return_labels=False`).
        areas: int64 [C], pixels labelled with each class; sums to H * W.
        scores: float32 [C, H, W] per-class scores, only with `return_scores=True`.
        region_areas: int64 [R, C], pixels of each class inside each of the image's region masks (only
            when `regions` were given for the image); row r sums to the size of mask r.
    """

    vocabulary: Vocabulary
    labels: np.ndarray | None
    areas: np.ndarray
    scores: np.ndarray | None = None
    region_areas: np.ndarray | None = None


def _geometry(image: np.ndarray, original: tuple[int, int] | None, index: int) -> ImageGeometry:
    """The image's geometry; a compacted image must have the input size its original size gives."""
    if original is None:
        return geometry(image.shape[0], image.shape[1])
    geom = geometry(*original)
    if tuple(image.shape[:2]) != geom.resized:
        raise ImageError(
            f"images[{index}] is {image.shape[0]} x {image.shape[1]}, but a compacted {original[0]} x "
            f"{original[1]} frame is {geom.resized[0]} x {geom.resized[1]} (pipeline.decode.compact)"
        )
    return geom


def _by_geometry(geoms: Sequence[ImageGeometry], members: Sequence[int]) -> dict[ImageGeometry, list[int]]:
    """`members` grouped by geometry (the same original size gives the same one): post-processed together."""
    groups: dict[ImageGeometry, list[int]] = {}
    for index in members:
        groups.setdefault(geoms[index], []).append(index)
    return groups


def _counts_to_host(results: Sequence[PostprocessResult]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every image's class counts (and region counts) in one device-to-host copy: a copy per image would
    stall the device once per image of the batch."""
    if not results:
        return []
    parts = [result.areas for result in results]
    parts += [result.region_areas.reshape(-1) for result in results if result.region_areas is not None]
    flat = torch.cat(parts).cpu().numpy()
    counts: list[tuple[np.ndarray, np.ndarray | None]] = []
    offset = 0
    for result in results:
        counts.append((flat[offset : offset + result.areas.numel()], None))
        offset += result.areas.numel()
    for i, result in enumerate(results):
        if result.region_areas is not None:
            size = result.region_areas.numel()
            counts[i] = (counts[i][0], flat[offset : offset + size].reshape(result.region_areas.shape))
            offset += size
    return counts


def _to_host(
    vocabulary: Vocabulary, result: PostprocessResult, counts: tuple[np.ndarray, np.ndarray | None]
) -> Segmentation:
    areas, region_areas = counts
    return Segmentation(
        vocabulary=vocabulary,
        labels=None if result.labels is None else result.labels.to(torch.int32).cpu().numpy(),
        areas=areas,
        scores=None if result.scores is None else result.scores.cpu().numpy(),
        region_areas=region_areas,
    )


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over `array`'s memory without a copy, also for a read-only array (cached region masks,
    shared by every frame): nothing here writes to it, so torch's warning about that does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Segmenter:
    """Segments batches of RGB images, each with its own vocabulary.

    Args:
        model: a `SAN` (see `pipeline.san.load_checkpoint`); moved to `device` and put in eval mode.
        device: "cpu", "cuda", "cuda:N" or "auto".
        dtype: compute precision. float32 everywhere; bfloat16/float16 run the network under autocast on CUDA
            (bfloat16 also on CPU). Text embeddings and post-processing stay in float32.
        resizer: "pil" (bit-exact official resize), "torch" (GPU resize) or "auto" (PIL on CPU, torch on CUDA).
        max_vocabularies: classifier cache size (distinct vocabularies kept).
        max_padding: how much extra canvas area an image may be computed on so that images of different
            sizes share a forward (`pipeline.san.buckets`); None: the device's default (0 on CPU).
        pin_memory: stage frames in page-locked host memory and copy them to the device without waiting
            (torch resizer only); None: on CUDA.
        compile_mode: run the network through `torch.compile` in this mode (`pipeline.san.compiled`:
            "default", "reduce-overhead" for CUDA graphs, ...); None: eager. Off by default everywhere until
            a GPU measurement says which mode pays.
    """

    def __init__(
        self,
        model: SAN,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        resizer: Resizer = "auto",
        max_vocabularies: int = 256,
        max_padding: float | None = None,
        pin_memory: bool | None = None,
        compile_mode: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.max_padding = (
            DEFAULT_MAX_PADDING.get(self.device.type, 0.0) if max_padding is None else max_padding
        )
        if self.max_padding < 0:
            raise ValueError(f"max_padding must be >= 0, got {max_padding}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        if dtype == torch.float16 and self.device.type != "cuda":
            raise ValueError("float16 inference needs a CUDA device; use float32 or bfloat16 on CPU")
        self.dtype = dtype
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        if self.pin_memory and self.device.type != "cuda":
            raise ValueError("pin_memory stages frames for a CUDA device; leave it off on CPU")
        self.model = model.to(self.device).eval()
        self.compile_mode = check_compile_mode(compile_mode)
        self._forward: SAN | CompiledForward = (
            self.model if compile_mode is None else CompiledForward(self.model, compile_mode)
        )
        self.resizer = choose_resizer(resizer, self.device)
        self.tokenizer = open_clip.get_tokenizer(model.config.tokenizer)
        self.classifiers = ClassifierCache(self._build_classifier, max_entries=max_vocabularies)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def _build_classifier(self, vocabulary: Vocabulary) -> torch.Tensor:
        prompts = template_prompts(vocabulary)
        flat = [prompt for per_template in prompts for prompt in per_template]
        tokens = self.tokenizer(flat).to(self.device)
        per_prompt = torch.cat(
            [self.model.ov_classifier.encode(chunk).float() for chunk in tokens.split(TEXT_CHUNK)]
        )
        mean = per_prompt.reshape(len(VILD_TEMPLATES), len(vocabulary), -1).mean(dim=0)
        class_embeddings = torch.nn.functional.normalize(mean, dim=-1)
        rows = torch.cat([class_embeddings, self.model.ov_classifier.bg_embed.float()])
        scale = self.model.ov_classifier.logit_scale.float().exp()
        return torch.nn.functional.normalize(rows, dim=-1) * scale

    def classifier(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """Cached classifier [C + 1, D] (float32) for a vocabulary."""
        return self.classifiers.get(validate_vocabulary(vocabulary))

    def _region_tensor(self, masks: np.ndarray | None) -> torch.Tensor | None:
        return None if masks is None else _shared_tensor(masks).to(self.device)

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        """The uint8 image on the device. From pageable memory a copy to the GPU is synchronous, so with
        `pin_memory` the image is first staged in page-locked memory (torch's caching host allocator reuses
        those blocks) and copied without waiting: the next image is staged while this one travels."""
        host = torch.from_numpy(image)
        if self.pin_memory:
            host = torch.empty(host.shape, dtype=host.dtype, pin_memory=True).copy_(host)
        return host.to(self.device, non_blocking=self.pin_memory)

    def _prepare(self, image: np.ndarray, geom: ImageGeometry) -> torch.Tensor:
        if self.resizer == "pil":
            return resize_pil(image, geom.resized).to(self.device)
        tensor = self._upload(image).permute(2, 0, 1)
        return resize_torch(tensor, geom.resized)

    @torch.inference_mode()
    def segment(
        self,
        images: Sequence[np.ndarray],
        vocabularies: Sequence[Sequence[str]],
        *,
        return_labels: bool = True,
        return_scores: bool = False,
        regions: Sequence[np.ndarray | None] | None = None,
        original_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[Segmentation]:
        """Segment `images` (H x W x 3 uint8 RGB, any sizes); image i is classified with `vocabularies[i]`.

        `regions[i]`, when given and not None, is a bool [R, H, W] stack of region masks of image i (see
        `pipeline.regions.RegionMasks.stacked`): its per-region class areas come back in `region_areas`.
        `original_sizes[i]`, when given and not None, says image i was compacted to the model's input size
        from a frame of that (height, width) (`pipeline.decode.compact`): results are at that size.
        """
        if len(images) != len(vocabularies):
            raise ValueError(
                f"got {len(images)} images but {len(vocabularies)} vocabularies; give one vocabulary per image"
            )
        if regions is not None and len(regions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(regions)} region stacks; give one per image")
        checked = [check_image(image, index) for index, image in enumerate(images)]
        vocabs = [
            validate_vocabulary(vocabulary, label=f"vocabularies[{index}]")
            for index, vocabulary in enumerate(vocabularies)
        ]
        sizes = original_sizes or [None] * len(checked)
        if len(sizes) != len(checked):
            raise ValueError(f"got {len(checked)} images but {len(sizes)} original sizes; give one per image")
        geoms = [
            _geometry(image, size, i) for i, (image, size) in enumerate(zip(checked, sizes, strict=True))
        ]
        processed: list[PostprocessResult | None] = [None] * len(checked)
        param_dtype = next(self.model.parameters()).dtype
        stride = self.model.config.side_adapter.patch_size
        for bucket in plan_buckets([geom.padded for geom in geoms], self.max_padding):
            members = bucket.members
            batch = normalize_and_pad([self._prepare(checked[i], geoms[i]) for i in members], bucket.canvas)
            layout = CanvasLayout(bucket.canvas, tuple(geoms[i].padded for i in members))
            with self._autocast():
                output = self._forward(batch.to(param_dtype), layout)
            embeddings = output.mask_embeddings.float()
            slots = {index: slot for slot, index in enumerate(members)}
            for geom, same in _by_geometry(geoms, members).items():
                own_h, own_w = geom.padded[0] // stride, geom.padded[1] // stride
                picked = torch.tensor([slots[i] for i in same], device=output.mask_logits.device)
                results = postprocess_batch(
                    output.mask_logits.index_select(0, picked)[:, :, :own_h, :own_w],
                    [
                        class_probabilities(embeddings[slots[i]] @ self.classifiers.get(vocabs[i]).T)
                        for i in same
                    ],
                    geom,
                    return_labels=return_labels,
                    return_scores=return_scores,
                    regions=None if regions is None else [self._region_tensor(regions[i]) for i in same],
                    band_elements=BAND_ELEMENTS_BY_DEVICE.get(self.device.type, BAND_ELEMENTS),
                )
                for index, result in zip(same, results, strict=True):
                    processed[index] = result
        done = [result for result in processed if result is not None]
        return [
            _to_host(vocab, result, areas)
            for vocab, result, areas in zip(vocabs, done, _counts_to_host(done), strict=True)
        ]

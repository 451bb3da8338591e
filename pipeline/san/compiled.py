"""The SAN forward under `torch.compile`, with few enough shapes that graphs are reused, not rebuilt.

A compiled graph is specialised to its input shape, and a video service sees a new batch size almost every
batch (Serve forms batches from whatever frames are waiting). So a compiled forward pads the batch count up
to the next power of two with blank images (at most 8 graphs per canvas up to batch 128) and runs
`dynamic=False` graphs: compiled once per (canvas, batch size), then reused. Canvases that hold several
sizes (`pipeline.san.canvas`) run eagerly, because their per-image geometry would specialise a graph to one
batch composition.

Modes are torch.compile's ("default", "reduce-overhead" adds CUDA graphs, "max-autotune",
"max-autotune-no-cudagraphs") plus "trace": dynamo traces the whole forward as one graph and runs it without
code generation, which checks on any machine in seconds that the model compiles without graph breaks.
Which mode is fastest on a given GPU is for `bench/model.py --compile` to say.
"""

from __future__ import annotations

import torch
import torch._dynamo.config

from pipeline.compile_modes import compile_mode_problem
from pipeline.san.canvas import CanvasLayout
from pipeline.san.model import SAN, SANOutput

# Graphs kept per compiled forward before torch falls back to eager: canvases x batch sizes in use.
RECOMPILE_LIMIT = 64


def static_batch_size(count: int) -> int:
    """The batch size a compiled forward runs `count` images at: the next power of two."""
    if count < 1:
        raise ValueError(f"a batch needs at least one image, got {count}")
    return 1 << (count - 1).bit_length()


def check_compile_mode(mode: str | None) -> str | None:
    if (problem := compile_mode_problem(mode)) is not None:
        raise ValueError(f"compile_mode {problem}")
    return mode


class CompiledForward:
    """Calls `model(images, layout)` through a compiled graph where the layout allows (see module doc)."""

    def __init__(self, model: SAN, mode: str) -> None:
        self.model = model
        self.mode = check_compile_mode(mode)
        if mode == "trace":
            self.compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
        else:
            self.compiled = torch.compile(model, mode=mode, fullgraph=True, dynamic=False)
        # Process-wide in torch; raised (never lowered) so a service's canvases and batch sizes all fit.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)

    def __call__(self, images: torch.Tensor, layout: CanvasLayout | None = None) -> SANOutput:
        if layout is not None and any(size != layout.canvas for size in layout.sizes):
            return self.model(images, layout)
        count = images.shape[0]
        padded = static_batch_size(count)
        if padded > count:
            images = torch.cat([images, images.new_zeros(padded - count, *images.shape[1:])])
        output = self.compiled(images)
        # CUDA graphs ("reduce-overhead") reuse their output buffers on the next replay: copy what is kept.
        return SANOutput(
            mask_logits=output.mask_logits[:count].clone(),
            mask_embeddings=output.mask_embeddings[:count].clone(),
        )

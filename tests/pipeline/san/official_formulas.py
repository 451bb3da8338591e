"""Independent, purely functional re-statement of the official SAN inference pass (MendelXu/SAN, CVPR 2023).

Written from the project's fact sheet (``/work/shared/reference/san-reference.md``, sections 1, 2, 3, 5,
9), *not* from the official code and *not* from this project's own ``pipeline`` package. It is a test oracle:
every function reads weights straight out of a state dict that uses the **official checkpoint key names**
(``side_adapter_network.*``, ``clip_visual_extractor.*``, ``clip_rec_head.*``, ``ov_classifier.*``) and
spells each step out with explicit tensor algebra (hand-written attention, layer norms, MLPs), so a
module-based implementation can be compared against it intermediate by intermediate.

Layout conventions (batch-first, unlike open_clip's sequence-first LND; the maths is the same):

* token sequences are ``[B, N, C]``;
* feature maps are ``[B, C, h, w]``;
* the public :func:`forward` takes a batch of one image and returns unbatched intermediates.

Everything is float32 and intended for the CPU with small inputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "VILD_TEMPLATES",
    "clip_input",
    "config_for",
    "deterministic_state_dict",
    "eval_resize",
    "eval_resize_hw",
    "forward",
    "official_state_dict_shapes",
    "postprocess",
    "preprocess",
    "text_classifier",
]

StateDict = Mapping[str, torch.Tensor]
Config = dict[str, Any]

#: OpenAI CLIP pixel statistics on the 0..1 scale; the model uses them multiplied by 255.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: The 14 "vild" prompt templates, byte-exact (numbers 2 to 5 have no trailing period).
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

# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------

_SHARED_DEFAULTS: Config = {
    # side adapter ("vit_w240n6d8_patch16", class token removed)
    "side_width": 240,
    "side_depth": 8,
    "side_heads": 6,
    "side_patch": 16,
    "side_image_size": 640,  # native side grid = 640 / 16 = 40
    "side_mlp_ratio": 4,
    "side_ln_eps": 1e-6,
    "num_queries": 100,
    "deep_supervision_idxs": (7, 8),  # 1-based side blocks; only the last one is decoded at inference
    # fusion ("add"): channel-first LayerNorm + 1x1 conv + bilinear resize
    "fusion_ln_eps": 1e-6,
    # mask decoder / attention-bias head
    "dec_embed_channels": 256,
    "dec_mlp_channels": 256,
    "dec_mlp_layers": 3,
    "attn_bias_layers": 1,
    # recognition head
    "rec_mask_value": -100.0,
    # CLIP (both towers)
    "clip_mlp_ratio": 4,
    "text_mlp_ratio": 4,
    "clip_ln_eps": 1e-5,
    "context_length": 77,
    "vocab_size": 49408,
    # training-time class count (only the shape of ``criterion.empty_weight`` depends on it)
    "num_classes": 171,
    # evaluation preprocessing
    "short_edge": 640,
    "max_size": 2560,
    "size_divisibility": 32,
}

_CONFIGS: dict[str, Config] = {
    "san_vit_b_16": {
        "clip_model_name": "ViT-B-16",
        "clip_width": 768,
        "clip_layers": 12,
        "clip_heads": 12,
        "clip_patch": 16,
        "clip_image_size": 224,
        "feature_last_layer": 9,
        "fusion_map": {0: 0, 3: 1, 6: 2, 9: 3},
        "clip_resolution": 0.5,
        "text_width": 512,
        "text_layers": 12,
        "text_heads": 8,
        "embed_dim": 512,
        "attn_bias_heads": 12,
    },
    "san_vit_large_14": {
        "clip_model_name": "ViT-L-14-336",
        "clip_width": 1024,
        "clip_layers": 24,
        "clip_heads": 16,
        "clip_patch": 14,
        "clip_image_size": 336,
        "feature_last_layer": 18,
        "fusion_map": {0: 0, 6: 1, 12: 2, 18: 3},
        "clip_resolution": 0.7,
        "text_width": 768,
        "text_layers": 12,
        "text_heads": 12,
        "embed_dim": 768,
        "attn_bias_heads": 16,
    },
    "tiny": {
        "clip_model_name": "ViT-B-16",  # only for the tokenizer; the weights are synthetic
        "clip_width": 64,
        "clip_layers": 6,
        "clip_heads": 4,
        "clip_patch": 16,
        "clip_image_size": 64,
        "feature_last_layer": 3,
        "fusion_map": {0: 0, 1: 1, 2: 2, 3: 3},
        "clip_resolution": 0.5,
        "text_width": 32,
        "text_layers": 2,
        "text_heads": 2,
        "embed_dim": 24,
        "side_width": 48,
        "side_depth": 4,
        "side_heads": 3,
        "side_patch": 16,
        "side_image_size": 64,  # native side grid 4x4 -> pos_embed [1, 16, 48]
        "num_queries": 10,
        "deep_supervision_idxs": (4,),
        "dec_embed_channels": 16,
        "dec_mlp_channels": 16,
        "attn_bias_heads": 4,
    },
}


def config_for(name: str) -> Config:
    """Hyper-parameters of ``"san_vit_b_16"``, ``"san_vit_large_14"`` or ``"tiny"`` as a plain dict.

    Derived entries are filled in too: ``clip_grid`` / ``side_grid`` (native token grids),
    ``clip_deep_layers`` (number of recognition blocks = ``clip_layers - feature_last_layer``) and ``name``.
    Every other function in this module reads its dimensions from this dict only.
    """
    if name not in _CONFIGS:
        raise KeyError(f"unknown SAN config {name!r}; known: {sorted(_CONFIGS)}")
    cfg: Config = {**_SHARED_DEFAULTS, **_CONFIGS[name], "name": name}
    cfg["fusion_map"] = dict(cfg["fusion_map"])
    cfg["deep_supervision_idxs"] = tuple(cfg["deep_supervision_idxs"])
    cfg["clip_grid"] = cfg["clip_image_size"] // cfg["clip_patch"]
    cfg["side_grid"] = cfg["side_image_size"] // cfg["side_patch"]
    cfg["clip_deep_layers"] = cfg["clip_layers"] - cfg["feature_last_layer"]
    if cfg["attn_bias_heads"] != cfg["clip_heads"]:
        raise ValueError("the attention-bias head count must equal the CLIP visual head count")
    if max(cfg["fusion_map"]) > cfg["feature_last_layer"]:
        raise ValueError("fusion can only use CLIP features up to the split point")
    if max(cfg["fusion_map"].values()) > cfg["side_depth"]:
        raise ValueError("fusion side indices must be in 0..side_depth")
    return cfg


# ----------------------------------------------------------------------------------------------------------
# State-dict layout
# ----------------------------------------------------------------------------------------------------------

_LN_WEIGHT_SUFFIXES = (
    "ln_1.weight",
    "ln_2.weight",
    "ln_pre.weight",
    "ln_post.weight",
    "ln_final.weight",
    "norm1.weight",
    "norm2.weight",
    "input_proj.0.weight",
)


def _clip_block_shapes(prefix: str, width: int, mlp_ratio: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` names)."""
    hidden = width * mlp_ratio
    return {
        f"{prefix}ln_1.weight": (width,),
        f"{prefix}ln_1.bias": (width,),
        f"{prefix}attn.in_proj_weight": (3 * width, width),
        f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width),
        f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,),
        f"{prefix}ln_2.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (hidden, width),
        f"{prefix}mlp.c_fc.bias": (hidden,),
        f"{prefix}mlp.c_proj.weight": (width, hidden),
        f"{prefix}mlp.c_proj.bias": (width,),
    }


def _mlp_shapes(prefix: str, dims: Sequence[int], conv: bool) -> dict[str, tuple[int, ...]]:
    """Shapes of a SAN MLP (``layers.{k}``), either ``nn.Linear`` or 1x1 ``nn.Conv2d`` layers."""
    out: dict[str, tuple[int, ...]] = {}
    for k, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        out[f"{prefix}layers.{k}.weight"] = (d_out, d_in, 1, 1) if conv else (d_out, d_in)
        out[f"{prefix}layers.{k}.bias"] = (d_out,)
    return out


def official_state_dict_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every key of the official SAN ``state_dict()`` with its shape, in the official (module) order.

    For the released configs this reproduces ``checkpoint_keys.json`` exactly (442 keys for B/16, 586 for
    L/14), including the two buffers ``criterion.empty_weight`` and ``ov_classifier.attn_mask``.
    """
    ws, wc, wt, d = cfg["side_width"], cfg["clip_width"], cfg["text_width"], cfg["embed_dim"]
    q, ps, pc = cfg["num_queries"], cfg["side_patch"], cfg["clip_patch"]
    emb, mlp_ch = cfg["dec_embed_channels"], cfg["dec_mlp_channels"]
    n_mlp = cfg["dec_mlp_layers"]
    shapes: dict[str, tuple[int, ...]] = {"criterion.empty_weight": (cfg["num_classes"] + 1,)}

    # side adapter network
    sa = "side_adapter_network."
    shapes[f"{sa}query_embed"] = (1, q, ws)
    shapes[f"{sa}query_pos_embed"] = (1, q, ws)
    shapes[f"{sa}vit_model.pos_embed"] = (1, cfg["side_grid"] ** 2, ws)
    shapes[f"{sa}vit_model.patch_embed.proj.weight"] = (ws, 3, ps, ps)
    shapes[f"{sa}vit_model.patch_embed.proj.bias"] = (ws,)
    hidden = ws * cfg["side_mlp_ratio"]
    for i in range(cfg["side_depth"]):
        p = f"{sa}vit_model.blocks.{i}."
        shapes.update(
            {
                f"{p}norm1.weight": (ws,),
                f"{p}norm1.bias": (ws,),
                f"{p}attn.qkv.weight": (3 * ws, ws),
                f"{p}attn.qkv.bias": (3 * ws,),
                f"{p}attn.proj.weight": (ws, ws),
                f"{p}attn.proj.bias": (ws,),
                f"{p}norm2.weight": (ws,),
                f"{p}norm2.bias": (ws,),
                f"{p}mlp.fc1.weight": (hidden, ws),
                f"{p}mlp.fc1.bias": (hidden,),
                f"{p}mlp.fc2.weight": (ws, hidden),
                f"{p}mlp.fc2.bias": (ws,),
            }
        )
    for j in sorted(cfg["fusion_map"].values()):
        p = f"{sa}fusion_layers.layer_{j}.input_proj."
        shapes[f"{p}0.weight"] = (wc,)
        shapes[f"{p}0.bias"] = (wc,)
        shapes[f"{p}1.weight"] = (ws, wc, 1, 1)
        shapes[f"{p}1.bias"] = (ws,)
    md = f"{sa}mask_decoder."
    hidden_dims = [mlp_ch] * (n_mlp - 1)
    attn_out = emb * cfg["attn_bias_heads"] * cfg["attn_bias_layers"]
    shapes.update(_mlp_shapes(f"{md}query_mlp.", [ws, *hidden_dims, emb], conv=False))
    shapes.update(_mlp_shapes(f"{md}pix_mlp.", [ws, *hidden_dims, emb], conv=True))
    shapes.update(_mlp_shapes(f"{md}attn_mlp.", [ws, *hidden_dims, attn_out], conv=True))
    shapes[f"{md}bias_scaling.weight"] = (1, 1)
    shapes[f"{md}bias_scaling.bias"] = (1,)

    # CLIP visual tower, part 1: feature extractor (blocks 0..split-1)
    cv = "clip_visual_extractor."
    shapes[f"{cv}class_embedding"] = (wc,)
    shapes[f"{cv}positional_embedding"] = (cfg["clip_grid"] ** 2 + 1, wc)
    shapes[f"{cv}conv1.weight"] = (wc, 3, pc, pc)
    shapes[f"{cv}ln_pre.weight"] = (wc,)
    shapes[f"{cv}ln_pre.bias"] = (wc,)
    for i in range(cfg["feature_last_layer"]):
        shapes.update(_clip_block_shapes(f"{cv}resblocks.{i}.", wc, cfg["clip_mlp_ratio"]))

    # CLIP visual tower, part 2: recognition head (blocks split..end, re-indexed from 0)
    rh = "clip_rec_head."
    shapes[f"{rh}proj"] = (wc, d)
    for i in range(cfg["clip_deep_layers"]):
        shapes.update(_clip_block_shapes(f"{rh}resblocks.{i}.", wc, cfg["clip_mlp_ratio"]))
    shapes[f"{rh}ln_post.weight"] = (wc,)
    shapes[f"{rh}ln_post.bias"] = (wc,)

    # CLIP text tower + background embedding
    oc = "ov_classifier."
    ctx = cfg["context_length"]
    shapes[f"{oc}positional_embedding"] = (ctx, wt)
    shapes[f"{oc}text_projection"] = (wt, d)
    shapes[f"{oc}logit_scale"] = ()
    shapes[f"{oc}bg_embed"] = (1, d)
    shapes[f"{oc}attn_mask"] = (ctx, ctx)
    for i in range(cfg["text_layers"]):
        shapes.update(_clip_block_shapes(f"{oc}transformer.resblocks.{i}.", wt, cfg["text_mlp_ratio"]))
    shapes[f"{oc}token_embedding.weight"] = (cfg["vocab_size"], wt)
    shapes[f"{oc}ln_final.weight"] = (wt,)
    shapes[f"{oc}ln_final.bias"] = (wt,)
    return shapes


def causal_mask(n: int) -> torch.Tensor:
    """Float causal mask ``[n, n]``: 0 on and below the diagonal, ``-inf`` above it."""
    return torch.full((n, n), float("-inf")).triu(1)


def deterministic_state_dict(cfg: Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random, ``torch.Generator``-seeded state dict in the official layout with sensible scales.

    LayerNorm weights ``1 + 0.1·N(0,1)``, 1-D biases and embeddings ``0.02·N(0,1)``, matrices and conv kernels
    ``N(0,1)/sqrt(fan_in)`` (``fan_in`` = input features; for the ``x @ P`` projections ``clip_rec_head.proj``
    and ``ov_classifier.text_projection`` that is ``shape[0]``), ``logit_scale = ln 100``, a causal
    ``attn_mask`` and ``criterion.empty_weight = [1]*C + [0.1]``.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_state_dict_shapes(cfg).items():
        if key == "ov_classifier.attn_mask":
            value = causal_mask(shape[0])
        elif key == "criterion.empty_weight":
            value = torch.ones(shape)
            value[-1] = 0.1
        elif key == "ov_classifier.logit_scale":
            value = torch.tensor(math.log(100.0), dtype=torch.float32)
        else:
            noise = torch.randn(shape, generator=gen, dtype=torch.float32)
            if key.endswith(_LN_WEIGHT_SUFFIXES):
                value = 1.0 + 0.1 * noise
            elif len(shape) < 2 or key.endswith(("embed", "embedding", "embedding.weight")):
                value = 0.02 * noise
            else:
                if key.endswith(("clip_rec_head.proj", "text_projection")):
                    fan_in = shape[0]
                else:
                    fan_in = math.prod(shape[1:])
                value = noise / math.sqrt(fan_in)
        state[key] = value.to(torch.float32).contiguous()
    return state


# ----------------------------------------------------------------------------------------------------------
# Building blocks (explicit algebra)
# ----------------------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``nn.Linear`` convention: weight is ``[out, in]``)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP activation: ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def _attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Multi-head self-attention on ``x [B, N, C]`` with packed q/k/v rows ``[0:C), [C:2C), [2C:3C)``.

    ``mask`` is an additive float mask broadcastable to ``[B, heads, N, N]`` (rows = queries, columns = keys).
    Head ``h`` uses channels ``[h*hd, (h+1)*hd)`` of q, k and v; the scale is ``hd ** -0.5``.
    """
    b, n, c = x.shape
    hd = c // heads
    qkv = _linear(x, w_qkv, b_qkv)  # [B, N, 3C]
    q, k, v = qkv.split(c, dim=-1)
    q = q.reshape(b, n, heads, hd).transpose(1, 2)  # [B, H, N, hd]
    k = k.reshape(b, n, heads, hd).transpose(1, 2)
    v = v.reshape(b, n, heads, hd).transpose(1, 2)
    scores = (q * hd**-0.5) @ k.transpose(-2, -1)  # [B, H, N, N]
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(dim=-1) @ v  # [B, H, N, hd]
    out = out.transpose(1, 2).reshape(b, n, c)
    return _linear(out, w_out, b_out)


def _clip_block(
    state: StateDict, prefix: str, x: torch.Tensor, heads: int, eps: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock``: ``x + attn(ln_1 x, mask)``, then
    ``x + c_proj(QuickGELU(c_fc(ln_2 x)))``."""
    c = x.shape[-1]
    h = F.layer_norm(x, (c,), state[f"{prefix}ln_1.weight"], state[f"{prefix}ln_1.bias"], eps)
    x = x + _attention(
        h,
        state[f"{prefix}attn.in_proj_weight"],
        state[f"{prefix}attn.in_proj_bias"],
        state[f"{prefix}attn.out_proj.weight"],
        state[f"{prefix}attn.out_proj.bias"],
        heads,
        mask,
    )
    h = F.layer_norm(x, (c,), state[f"{prefix}ln_2.weight"], state[f"{prefix}ln_2.bias"], eps)
    h = _linear(h, state[f"{prefix}mlp.c_fc.weight"], state[f"{prefix}mlp.c_fc.bias"])
    h = _linear(_quick_gelu(h), state[f"{prefix}mlp.c_proj.weight"], state[f"{prefix}mlp.c_proj.bias"])
    return x + h


def _side_block(state: StateDict, prefix: str, x: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """timm pre-norm ViT block: ``x + proj(MHSA(norm1 x))``, then ``x + fc2(GELU(fc1(norm2 x)))``
    (exact erf GELU)."""
    c = x.shape[-1]
    h = F.layer_norm(x, (c,), state[f"{prefix}norm1.weight"], state[f"{prefix}norm1.bias"], eps)
    x = x + _attention(
        h,
        state[f"{prefix}attn.qkv.weight"],
        state[f"{prefix}attn.qkv.bias"],
        state[f"{prefix}attn.proj.weight"],
        state[f"{prefix}attn.proj.bias"],
        heads,
        None,
    )
    h = F.layer_norm(x, (c,), state[f"{prefix}norm2.weight"], state[f"{prefix}norm2.bias"], eps)
    h = F.gelu(_linear(h, state[f"{prefix}mlp.fc1.weight"], state[f"{prefix}mlp.fc1.bias"]))
    return x + _linear(h, state[f"{prefix}mlp.fc2.weight"], state[f"{prefix}mlp.fc2.bias"])


def _channel_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm over the channel axis of ``x [B, C, h, w]`` (biased variance), then a per-channel affine."""
    mean = x.mean(dim=1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    return weight[:, None, None] * x + bias[:, None, None]


def _mlp(state: StateDict, prefix: str, x: torch.Tensor, num_layers: int, conv: bool) -> torch.Tensor:
    """SAN MLP: ``num_layers`` Linear (or 1x1 conv) layers with ReLU between them and none after the last."""
    for k in range(num_layers):
        w, b = state[f"{prefix}layers.{k}.weight"], state[f"{prefix}layers.{k}.bias"]
        x = F.conv2d(x, w, b) if conv else _linear(x, w, b)
        if k < num_layers - 1:
            x = F.relu(x)
    return x


def _resize_grid_tokens(
    tokens: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resize grid tokens ``[L, C]`` (row-major ``src_hw``) to ``dst_hw`` (align_corners False,
    no antialias). Returns the input unchanged when the grids already match."""
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    c = tokens.shape[-1]
    grid = tokens.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(dst_hw[0] * dst_hw[1], c)


# ----------------------------------------------------------------------------------------------------------
# Text side
# ----------------------------------------------------------------------------------------------------------


def text_classifier(state: StateDict, cfg: Config, token_ids: torch.Tensor) -> torch.Tensor:
    """Classifier matrix ``[K+1, D]`` for a vocabulary already tokenized as ``token_ids [T, K, ctx]``.

    ``T`` templates (template-major), ``K`` class names. Each prompt goes through the CLIP text tower
    (token + positional embedding, blocks with the causal mask, ``ln_final``, the feature at the argmax token
    id (EOT), ``@ text_projection``, L2-normalised); the T vectors of a class are averaged and renormalised;
    ``bg_embed`` is appended last; every row is renormalised and the matrix is multiplied by
    ``exp(logit_scale)``.
    """
    oc = "ov_classifier."
    t, k, ctx = token_ids.shape
    width = cfg["text_width"]
    flat = token_ids.reshape(t * k, ctx).long()
    x = state[f"{oc}token_embedding.weight"][flat] + state[f"{oc}positional_embedding"]
    mask = state.get(f"{oc}attn_mask")
    if mask is None:
        mask = causal_mask(ctx)
    eps = cfg["clip_ln_eps"]
    for i in range(cfg["text_layers"]):
        x = _clip_block(state, f"{oc}transformer.resblocks.{i}.", x, cfg["text_heads"], eps, mask)
    x = F.layer_norm(x, (width,), state[f"{oc}ln_final.weight"], state[f"{oc}ln_final.bias"], eps)
    eot = x[torch.arange(t * k), flat.argmax(dim=-1)]  # [T*K, width]
    emb = F.normalize(eot @ state[f"{oc}text_projection"], dim=-1).reshape(t, k, -1)
    text = F.normalize(emb.mean(dim=0), dim=-1)  # [K, D]
    weight = F.normalize(torch.cat([text, state[f"{oc}bg_embed"]], dim=0), dim=-1)
    return weight * state[f"{oc}logit_scale"].exp()


# ----------------------------------------------------------------------------------------------------------
# Visual side
# ----------------------------------------------------------------------------------------------------------


def clip_input(padded_normalized: torch.Tensor, cfg: Config) -> torch.Tensor:
    """CLIP's input: bilinear downscale (align_corners False) of the padded normalised tensor, passing
    ``clip_resolution`` as ``scale_factor`` (output size = floor(H*s), floor(W*s))."""
    return F.interpolate(
        padded_normalized, scale_factor=cfg["clip_resolution"], mode="bilinear", align_corners=False
    )


def _clip_features(
    state: StateDict, cfg: Config, image: torch.Tensor
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """CLIP feature extractor. Returns ``[feature_0, ..., feature_split]`` (each ``[B, 1+hc*wc, W]``, CLS
    first) and the token grid ``(hc, wc)``. Feature 0 is the sequence after ``ln_pre``; feature k is the
    output of block k-1."""
    cv = "clip_visual_extractor."
    width, g = cfg["clip_width"], cfg["clip_grid"]
    x = F.conv2d(image, state[f"{cv}conv1.weight"], None, stride=cfg["clip_patch"])  # [B, W, hc, wc]
    b, _, hc, wc = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # [B, hc*wc, W]
    cls = state[f"{cv}class_embedding"].reshape(1, 1, width).expand(b, 1, width)
    x = torch.cat([cls, tokens], dim=1)
    pos = state[f"{cv}positional_embedding"]
    pos = torch.cat([pos[:1], _resize_grid_tokens(pos[1:], (g, g), (hc, wc))], dim=0)
    x = x + pos
    x = F.layer_norm(x, (width,), state[f"{cv}ln_pre.weight"], state[f"{cv}ln_pre.bias"], cfg["clip_ln_eps"])
    feats = [x]
    for i in range(cfg["feature_last_layer"]):
        x = _clip_block(state, f"{cv}resblocks.{i}.", x, cfg["clip_heads"], cfg["clip_ln_eps"], None)
        feats.append(x)
    return feats, (hc, wc)


def _token_map(seq: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Patch tokens of a CLIP sequence ``[B, 1+h*w, C]`` as a map ``[B, C, h, w]`` (CLS dropped)."""
    b, _, c = seq.shape
    return seq[:, 1:].transpose(1, 2).reshape(b, c, hw[0], hw[1])


def _fuse(
    state: StateDict, cfg: Config, side_idx: int, x: torch.Tensor, clip_map: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """ "add" fusion: channel LN -> 1x1 conv -> bilinear resize to the side grid -> add to the patch tokens
    only (the query tokens are untouched)."""
    p = f"side_adapter_network.fusion_layers.layer_{side_idx}.input_proj."
    y = _channel_layer_norm(clip_map, state[f"{p}0.weight"], state[f"{p}0.bias"], cfg["fusion_ln_eps"])
    y = F.conv2d(y, state[f"{p}1.weight"], state[f"{p}1.bias"])
    if tuple(y.shape[-2:]) != tuple(hw):
        y = F.interpolate(y, size=hw, mode="bilinear", align_corners=False)
    n_patch = hw[0] * hw[1]
    y = y.flatten(2).transpose(1, 2)  # [B, h*w, Ws]
    return torch.cat([x[:, :-n_patch], x[:, -n_patch:] + y], dim=1)


def _side_adapter(
    state: StateDict, cfg: Config, image: torch.Tensor, clip_maps: Mapping[int, torch.Tensor]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[int, int]]:
    """Side adapter ViT with CLIP fusion. Returns the recorded ``(query [B,Q,Ws], pixel map [B,Ws,h,w])``
    pairs (one per ``deep_supervision_idxs`` entry, in order) and the side grid ``(h, w)``.

    Order: embed + pos, fusion at side index 0, then for block i = 1..depth: block -> fusion at index i ->
    record (if i is a supervision index) -> re-add the position embedding (unless i is the last block)."""
    sa = "side_adapter_network."
    vm = f"{sa}vit_model."
    width, q, g = cfg["side_width"], cfg["num_queries"], cfg["side_grid"]
    side_to_clip = {side: clip for clip, side in cfg["fusion_map"].items()}

    x = F.conv2d(
        image,
        state[f"{vm}patch_embed.proj.weight"],
        state[f"{vm}patch_embed.proj.bias"],
        stride=cfg["side_patch"],
    )  # [B, Ws, h, w]
    b, _, h, w = x.shape
    n_patch = h * w
    x = x.flatten(2).transpose(1, 2)  # [B, h*w, Ws]
    pos_patch = _resize_grid_tokens(state[f"{vm}pos_embed"][0], (g, g), (h, w))
    pos = torch.cat([state[f"{sa}query_pos_embed"][0], pos_patch], dim=0)[None]  # [1, Q+L, Ws]
    x = torch.cat([state[f"{sa}query_embed"].expand(b, q, width), x], dim=1)
    x = x + pos

    def fuse_at(side_idx: int, seq: torch.Tensor) -> torch.Tensor:
        if side_idx not in side_to_clip:
            return seq
        return _fuse(state, cfg, side_idx, seq, clip_maps[side_to_clip[side_idx]], (h, w))

    x = fuse_at(0, x)
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    depth = cfg["side_depth"]
    for i in range(1, depth + 1):
        x = _side_block(state, f"{vm}blocks.{i - 1}.", x, cfg["side_heads"], cfg["side_ln_eps"])
        x = fuse_at(i, x)
        if i in cfg["deep_supervision_idxs"]:
            query = x[:, :-n_patch]
            pix = x[:, -n_patch:].transpose(1, 2).reshape(b, width, h, w)
            records.append((query, pix))
        if i < depth:
            x = x + pos
    return records, (h, w)


def _mask_decoder(
    state: StateDict, cfg: Config, query: torch.Tensor, pix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits ``[B, Q, h, w]`` and attention bias ``[B, layers, heads, Q, h, w]`` from one record.

    The attn_mlp output channel ``(layer*heads + head)*embed + c`` feeds layer/head/channel; ``bias_scaling``
    is the scalar affine ``weight[0, 0] * x + bias[0]``."""
    md = "side_adapter_network.mask_decoder."
    n = cfg["dec_mlp_layers"]
    q_emb = _mlp(state, f"{md}query_mlp.", query, n, conv=False)  # [B, Q, E]
    pix_emb = _mlp(state, f"{md}pix_mlp.", pix, n, conv=True)  # [B, E, h, w]
    mask_preds = torch.einsum("bqc,bchw->bqhw", q_emb, pix_emb)
    attn = _mlp(state, f"{md}attn_mlp.", pix, n, conv=True)  # [B, layers*heads*E, h, w]
    b, _, h, w = attn.shape
    attn = attn.reshape(b, cfg["attn_bias_layers"], cfg["attn_bias_heads"], cfg["dec_embed_channels"], h, w)
    bias = torch.einsum("bqc,blnchw->blnqhw", q_emb, attn)
    bias = state[f"{md}bias_scaling.weight"][0, 0] * bias + state[f"{md}bias_scaling.bias"][0]
    return mask_preds, bias


def _rec_attn_mask(cfg: Config, bias: torch.Tensor, clip_hw: tuple[int, int]) -> torch.Tensor:
    """Full additive mask ``[B, heads, Q+1+Lc, Q+1+Lc]`` for ``[SLS x Q; CLS; patches]`` from one layer's bias
    ``[B, heads, Q, h, w]`` (adaptive max-pooled to the CLIP grid)."""
    b, heads, q, h, w = bias.shape
    lc = clip_hw[0] * clip_hw[1]
    pooled = F.adaptive_max_pool2d(bias.reshape(b, heads * q, h, w), clip_hw).reshape(b, heads, q, lc)
    n = q + 1 + lc
    big = cfg["rec_mask_value"]
    base = torch.zeros(n, n, dtype=bias.dtype)
    base[:, :q] = big  # nobody sees SLS tokens ...
    base[torch.arange(q), torch.arange(q)] = 0.0  # ... except each SLS token itself
    base[:q, q] = big  # SLS rows do not see the CLS token
    mask = base.expand(b, heads, n, n).clone()
    mask[:, :, :q, q + 1 :] = pooled  # SLS rows -> patch columns: the predicted bias
    return mask


def _recognize(
    state: StateDict, cfg: Config, split_seq: torch.Tensor, clip_hw: tuple[int, int], bias: torch.Tensor
) -> torch.Tensor:
    """Recognition head: Q copies of the split-point CLS token run through the deep CLIP blocks under the
    attention-bias mask; then ``ln_post``, ``@ proj``, L2-normalise. ``bias`` is
    ``[B, layers, heads, Q, h, w]``; with one layer the same mask serves every deep block.
    Returns mask embeddings ``[B, Q, D]``."""
    rh = "clip_rec_head."
    b, _, width = split_seq.shape
    q = cfg["num_queries"]
    n_deep, n_layers = cfg["clip_deep_layers"], cfg["attn_bias_layers"]
    masks = [_rec_attn_mask(cfg, bias[:, layer], clip_hw) for layer in range(n_layers)]
    x = torch.cat([split_seq[:, :1].expand(b, q, width), split_seq], dim=1)
    for i in range(n_deep):
        mask = masks[0] if n_layers == 1 else masks[i]
        x = _clip_block(state, f"{rh}resblocks.{i}.", x, cfg["clip_heads"], cfg["clip_ln_eps"], mask)
    sls = F.layer_norm(
        x[:, :q], (width,), state[f"{rh}ln_post.weight"], state[f"{rh}ln_post.bias"], cfg["clip_ln_eps"]
    )
    return F.normalize(sls @ state[f"{rh}proj"], dim=-1)


def forward(
    state: StateDict, cfg: Config, padded_normalized: torch.Tensor, classifier: torch.Tensor
) -> dict[str, Any]:
    """Official SAN inference on one padded, normalised image ``[1, 3, H, W]`` with a classifier ``[K+1, D]``.

    Returns (unbatched) intermediates named like the parity fixtures:

    * ``clip_input`` ``[1, 3, hi, wi]``: the downscaled CLIP input;
    * ``clip_layers``: the CLIP feature indices used for fusion (sorted);
    * ``clip_cls_tokens`` / ``clip_spatial_mean`` ``[n_fused, Wc]``: CLS token / spatial mean of the patch
      tokens of those features (feature 0 = after ``ln_pre``);
    * ``sa_query`` ``[Q, Ws]`` and ``sa_x_chan_mean`` ``[Ws]``: the mask decoder's inputs (last side block);
    * ``mask_preds`` ``[Q, h, w]``: mask logits at the side grid;
    * ``attn_bias`` ``[heads, Q, h, w]`` (``[layers, heads, Q, h, w]`` if ``attn_bias_layers > 1``), taken
      before the max-pool to the CLIP grid;
    * ``mask_embs`` ``[Q, D]`` and ``class_logits`` ``[Q, K+1]`` (= ``mask_embs @ classifier.T``);
    * ``mask_hw`` and ``clip_hw``: the side and CLIP token grids.
    """
    if padded_normalized.shape[0] != 1:
        raise ValueError("forward() takes a batch of exactly one image")
    image_c = clip_input(padded_normalized, cfg)
    feats, clip_hw = _clip_features(state, cfg, image_c)
    clip_layers = sorted(cfg["fusion_map"])
    clip_maps = {k: _token_map(feats[k], clip_hw) for k in clip_layers}
    records, side_hw = _side_adapter(state, cfg, padded_normalized, clip_maps)
    query, pix = records[-1]  # at inference only the last recorded block is decoded
    mask_preds, bias = _mask_decoder(state, cfg, query, pix)
    mask_embs = _recognize(state, cfg, feats[cfg["feature_last_layer"]], clip_hw, bias)
    class_logits = mask_embs @ classifier.T
    return {
        "clip_input": image_c,
        "clip_layers": clip_layers,
        "clip_cls_tokens": torch.stack([feats[k][0, 0] for k in clip_layers]),
        "clip_spatial_mean": torch.stack([feats[k][0, 1:].mean(dim=0) for k in clip_layers]),
        "sa_query": query[0],
        "sa_x_chan_mean": pix[0].mean(dim=(1, 2)),
        "mask_preds": mask_preds[0],
        "attn_bias": bias[0, 0] if cfg["attn_bias_layers"] == 1 else bias[0],
        "mask_embs": mask_embs[0],
        "class_logits": class_logits[0],
        "mask_hw": side_hw,
        "clip_hw": clip_hw,
    }


# ----------------------------------------------------------------------------------------------------------
# Pre- and post-processing (evaluation path)
# ----------------------------------------------------------------------------------------------------------


def postprocess(
    mask_preds: torch.Tensor,
    class_logits: torch.Tensor,
    padded_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> torch.Tensor:
    """Per-class score maps ``[K, H, W]`` at the original resolution.

    Mask logits ``[Q, h, w]`` are bilinearly upsampled to the padded size, cropped to the resized image,
    bilinearly resized to the original size, then passed through a sigmoid; class probabilities are the
    softmax over the K+1 logits with the background column dropped;
    ``S = einsum('qc,qhw->chw', prob, sigmoid(mask))``.
    """
    m = F.interpolate(mask_preds[None], size=tuple(padded_hw), mode="bilinear", align_corners=False)
    m = m[:, :, : resized_hw[0], : resized_hw[1]]
    m = F.interpolate(m, size=tuple(original_hw), mode="bilinear", align_corners=False)[0]
    prob = class_logits.softmax(dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", prob, m.sigmoid())


def eval_resize_hw(height: int, width: int, short_edge: int = 640, max_size: int = 2560) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge(short_edge, max_size)`` output ``(h, w)``, rounded half up with
    ``int(x + 0.5)``."""
    scale = short_edge / min(height, width)
    if height < width:
        new_h, new_w = float(short_edge), scale * width
    else:
        new_h, new_w = scale * height, float(short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def eval_resize(image_uint8: np.ndarray, short_edge: int = 640, max_size: int = 2560) -> np.ndarray:
    """Resize an RGB ``uint8 [H, W, 3]`` image as the official evaluation does (PIL bilinear)."""
    new_h, new_w = eval_resize_hw(image_uint8.shape[0], image_uint8.shape[1], short_edge, max_size)
    pil = Image.fromarray(np.ascontiguousarray(image_uint8))
    return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))


def preprocess(
    image_uint8: np.ndarray, short_edge: int = 640, max_size: int = 2560, size_divisibility: int = 32
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Evaluation preprocessing: resize, normalise 0..255 floats with the CLIP mean/std x 255, then zero-pad
    at the bottom/right to multiples of ``size_divisibility``.

    Returns ``([1, 3, Hp, Wp], (h_resized, w_resized))``."""
    resized = eval_resize(image_uint8, short_edge, max_size)
    h, w = resized.shape[:2]
    x = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).to(torch.float32)
    mean = torch.tensor([255.0 * m for m in CLIP_MEAN], dtype=torch.float32)[:, None, None]
    std = torch.tensor([255.0 * s for s in CLIP_STD], dtype=torch.float32)[:, None, None]
    x = (x - mean) / std
    hp = (h + size_divisibility - 1) // size_divisibility * size_divisibility
    wp = (w + size_divisibility - 1) // size_divisibility * size_divisibility
    padded = torch.zeros(1, 3, hp, wp, dtype=torch.float32)
    padded[0, :, :h, :w] = x
    return padded, (h, w)

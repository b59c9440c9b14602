"""Load pretrained backbones by hub id or local folder, through the libraries' own loaders.

Stable Diffusion components and pixel-space DDPM UNets come from diffusers/transformers
(``from_pretrained``), CLIP from open_clip (``create_model``; a folder is read as
``local-dir:``), ResNet-50 from torchvision. Hub ids load from the local hub cache only unless
``DIFFSLEUTH_HUB_DOWNLOAD=1`` allows downloads (:mod:`diffsleuth.backbones.hub`): a detector
folder never makes a load touch the network by itself. When a model is neither local nor
allowed and reachable, the error names the model and how to supply a local copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from diffsleuth.backbones.hub import DOWNLOAD_VARIABLE, check_hub, downloads_allowed, go_offline
from diffsleuth.extras import require

T = TypeVar("T")

SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DDPM_BEDROOM_ID = "google/ddpm-bedroom-256"


class BackboneUnavailableError(RuntimeError):
    """A pretrained backbone could not be found locally nor fetched from the hub.

    ``source`` is the id or folder asked for, so a caller can name the setting that holds it."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


def _is_local(source: str | os.PathLike) -> bool:
    return Path(source).expanduser().is_dir()


def _unavailable(kind: str, source: str, exc: BaseException, hint: str) -> BackboneUnavailableError:
    if not downloads_allowed():
        return BackboneUnavailableError(
            f"could not load {kind} {source!r}: it is neither a local folder nor in the local model-hub "
            f"cache, and diffsleuth downloads from the hub only when {DOWNLOAD_VARIABLE}=1 is set: "
            f"download it ({hint}) and pass the folder instead of the id, or set {DOWNLOAD_VARIABLE}=1.",
            source=source,
        )
    if _connection_failure(exc):
        go_offline(f"loading {source!r} failed: {exc.__class__.__name__}")
    return BackboneUnavailableError(
        f"could not load {kind} {source!r}: it is not a local folder and the model hub could not "
        f"supply it ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        f"On a machine with internet, download it ({hint}) and pass the folder instead of the id.",
        source=source,
    )


def _connection_failure(exc: BaseException | None) -> bool:
    """The hub was not reached (as opposed to: reached, and the model is not there)."""
    while exc is not None:
        name = type(exc).__name__
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError",
                    "ConnectTimeout", "NameResolutionError") or "check your connection" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _hub_call(kind: str, source: str, load: Callable[[], T], hint: str) -> T:
    """Run a loader, turning 'not cached and not reachable' into BackboneUnavailableError."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError) as exc:
        if _is_local(source) and not isinstance(exc, OSError):
            raise
        if _is_local(source):
            raise BackboneUnavailableError(f"could not load {kind} from folder {source}: {exc}", source) from exc
        raise _unavailable(kind, source, exc, hint) from exc
    except Exception as exc:  # huggingface_hub / requests connection errors
        if type(exc).__module__.split(".")[0] in ("huggingface_hub", "requests", "urllib3", "httpx"):
            raise _unavailable(kind, source, exc, hint) from exc
        raise


def _hub_kwargs(source: str, local_files_only: bool | None) -> dict[str, Any]:
    if _is_local(source):
        return {"local_files_only": True}
    if local_files_only is None:
        local_files_only = not check_hub()  # no network: fail at once instead of retrying for minutes
    return {"local_files_only": bool(local_files_only)}


@dataclass
class StableDiffusionParts:
    """What LaRE needs from Stable Diffusion; frozen, in eval mode."""

    vae: nn.Module
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any


def load_stable_diffusion(
    source: str = SD15_ID,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> StableDiffusionParts:
    """VAE, UNet, text encoder, tokenizer and DDPM training scheduler of an SD checkpoint."""
    require("research", "the Stable Diffusion backbone (LaRE, LaRE²)")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = str(source)
    kw = _hub_kwargs(source, local_files_only)
    hint = f"`hf download {source} --local-dir DIR`"

    def part(cls: Any, sub: str, **extra: Any) -> Any:
        return _hub_call(f"Stable Diffusion component '{sub}' of", source,
                         lambda: cls.from_pretrained(source, subfolder=sub, **kw, **extra), hint)

    vae = part(AutoencoderKL, "vae", torch_dtype=dtype)
    unet = part(UNet2DConditionModel, "unet", torch_dtype=dtype)
    text_encoder = part(CLIPTextModel, "text_encoder", torch_dtype=dtype)
    tokenizer = part(CLIPTokenizer, "tokenizer")
    scheduler = part(DDPMScheduler, "scheduler")
    for module in (vae, unet, text_encoder):
        module.to(device).eval().requires_grad_(False)
    return StableDiffusionParts(vae, unet, text_encoder, tokenizer, scheduler)


def load_ddpm(
    source: str = DDPM_BEDROOM_ID,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> tuple[nn.Module, Any]:
    """Unconditional pixel-space ``UNet2DModel`` and its ``DDPMScheduler`` (same repo or folder)."""
    require("research", "the DDPM backbone (DNF, DIRE)")
    from diffusers import DDPMScheduler, UNet2DModel

    source = str(source)
    kw = _hub_kwargs(source, local_files_only)
    hint = f"`hf download {source} --local-dir DIR`"
    unet = _hub_call("DDPM UNet", source,
                     lambda: UNet2DModel.from_pretrained(source, torch_dtype=dtype, **kw), hint)
    scheduler = _hub_call("DDPM scheduler", source,
                          lambda: DDPMScheduler.from_pretrained(source, **kw), hint)
    unet.to(device).eval().requires_grad_(False)
    return unet, scheduler


def load_clip(
    model: str = "RN50",
    pretrained: str | None = "openai",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    load_weights: bool = True,
) -> nn.Module:
    """An open_clip model: a built-in name with a weight tag or file, ``hf-hub:...``, or a folder.

    A folder holds ``open_clip_config.json`` and ``open_clip_model.safetensors`` (the layout
    open_clip publishes on the hub); it is loaded as ``local-dir:``. ``load_weights=False`` builds
    the architecture only, for a fine-tuned copy whose weights come from elsewhere.
    """
    require("research", "the CLIP backbone (LaRE²)")
    import open_clip

    if not _is_local(model):
        check_hub()
    name = f"local-dir:{Path(model).expanduser()}" if _is_local(model) else model
    use_pretrained = None if name.startswith(("local-dir:", "hf-hub:")) else pretrained
    if pretrained and Path(pretrained).is_file() and Path(pretrained).suffix not in (".safetensors",):
        raise BackboneUnavailableError(
            f"{pretrained}: only safetensors CLIP weight files are accepted from a path")
    if not load_weights:
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": that is the point
        try:
            clip = open_clip.create_model(name, pretrained=None, load_weights=False)
        finally:
            logging.disable(logging.NOTSET)
        return clip.to(device=device, dtype=dtype)
    hint = f"open_clip's `create_model('{model}', pretrained='{pretrained}')` once, then save it"
    clip = _hub_call("CLIP model", model,
                     lambda: open_clip.create_model(name, pretrained=use_pretrained, device="cpu",
                                                    weights_only=True), hint)
    return clip.to(device=device, dtype=dtype)


def _check_torchvision_cache(tag: str) -> None:
    """A torchvision weight tag loads from torch's hub cache; it downloads only when allowed."""
    import torchvision

    try:
        url = torchvision.models.ResNet50_Weights[tag].url
    except KeyError:
        raise BackboneUnavailableError(f"{tag!r} is neither a file nor a torchvision ResNet-50 weight tag "
                                       f"({', '.join(w.name for w in torchvision.models.ResNet50_Weights)})",
                                       tag) from None
    cached = Path(torch.hub.get_dir(), "checkpoints", url.rsplit("/", 1)[-1])
    if not cached.is_file() and not downloads_allowed():
        raise BackboneUnavailableError(
            f"torchvision ResNet-50 weights {tag!r} are not in torch's cache ({cached}), and diffsleuth "
            f"downloads them only when {DOWNLOAD_VARIABLE}=1 is set (or pass a local safetensors file)", tag)


def load_resnet50(weights: str | None = None, num_classes: int = 1) -> nn.Module:
    """torchvision ResNet-50 with a ``num_classes`` head; ``weights`` is None (from scratch),
    a torchvision tag such as ``IMAGENET1K_V2``, or a local safetensors file of the backbone."""
    import torchvision

    if weights is not None and not Path(weights).is_file():
        _check_torchvision_cache(weights)
    if weights is None or Path(weights).is_file():
        net = torchvision.models.resnet50(weights=None)
        if weights is not None:
            from diffsleuth.detectors.base import read_safetensors

            net.load_state_dict(read_safetensors(Path(weights)))
    else:
        net = _hub_call("torchvision ResNet-50 weights", weights,
                        lambda: torchvision.models.resnet50(weights=weights),
                        "torchvision.models.resnet50(weights=...) and save its state dict")
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net

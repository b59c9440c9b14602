"""GPU check: every heavy path at real size, in fp32 / fp16 / bf16, with random weights and no network.

Builds the real architectures from their published configs (nothing is downloaded): the UNet of
google/ddpm-bedroom-256 (DNF, DIRE), Stable Diffusion v1.5's VAE, UNet and a CLIP text encoder
of its size (LaRE), open_clip RN50 (LaRE²), torchvision ResNet-50 (DNF/DIRE classifier) and the
shipped compact judge for the scan (the default detector fetches its pinned encoder once, which a
machine without network may not have; ``judge-compact`` ships whole). For each precision it
runs LaRE extraction with the LaRE² classifier, DNF with 1 and K steps, DIRE, one training step
of each recipe (judge, lare2, dnf, dire) and a scan; it checks that every output is finite and
that fp16 / bf16 agree with fp32 within the tolerances below, and prints seconds per image beside the figure the
paper reports where there is one. Exit status 1 when any check fails.

    python benchmarks/gpu_check.py                          # CUDA, real sizes
    python benchmarks/gpu_check.py --device cpu --quick     # tiny sizes, a minute on a CPU

Agreement is the relative L2 error ||x - x_fp32|| / ||x_fp32|| of a feature map, training loss
or score vector; mixed-precision training steps use autocast with fp32 weights, as
``precision=fp16|bf16`` does in training.

DIRE gets its own limit. Its 2S DDIM steps run in float32 in every precision (only the UNet runs
in half), but the chain amplifies whatever error each UNet call makes: x0 is predicted by dividing
by sqrt(alpha_bar), about 0.006 at DIRE's top level. Injecting Gaussian error of a half UNet's size
into a float32 run shows it (tiny DDPM, random weights, 20+20 steps): a per-call error of 1.7e-3
(fp16's) moves DIRE by 0.09, 1.4e-2 (bf16's) by 0.46, 1e-4 by 0.006. So DIRE in fp16 / bf16 passes
when it is no further from fp32 than that injection with the per-call error measured for the same
precision (the "DNF, 1 step" row), or within the general tolerance: half precision must cost DIRE
no more than its UNet's own rounding does. (Before the DDIM state was kept in float32 it cost more:
0.17 / 0.50 on the quick check.)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffsleuth.backbones.loading import StableDiffusionParts, load_clip, load_ddpm, load_stable_diffusion
from diffsleuth.backbones.tiny import make_tiny_clip, make_tiny_ddpm, make_tiny_stable_diffusion
from diffsleuth.detectors.dnf.model import build_classifier
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector, judge_loss
from diffsleuth.detectors.lare2.model import Lare2Config, Lare2Detector, Lare2Network
from diffsleuth.detectors.registry import load_detector
from diffsleuth.detectors.dnf.dire import dire_map
from diffsleuth.detectors.dnf.features import dnf_map
from diffsleuth.detectors.lare2.features import LareConfig, LareExtractor

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp16": 0.05, "bf16": 0.15}
"""Largest relative L2 error against fp32 that passes (bf16 keeps 8 mantissa bits, fp16 11)."""
PAPER = {"LaRE (4 draws)": "0.25 (V100, LaRE² paper)"}
"""Seconds per image the papers report; the DNF and DIRE papers give none that we could cite."""


def real_parts(workdir: Path) -> tuple[torch.nn.Module, object, StableDiffusionParts, torch.nn.Module]:
    """Real-size DDPM-bedroom UNet, SD v1.5 parts and CLIP RN50, random weights, built in memory.

    Only the tokenizer and schedulers come from the tiny folder: a byte-level vocabulary is enough
    to run the text encoder at SD's size, and a schedule has no weights.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny_sd = load_stable_diffusion(str(make_tiny_stable_diffusion(workdir / "sd")))
    _, ddpm_scheduler = load_ddpm(str(make_tiny_ddpm(workdir / "ddpm")))
    ddpm = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    tokenizer = tiny_sd.tokenizer
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    sd = StableDiffusionParts(vae.eval(), unet.eval(), text_encoder.eval(), tokenizer, tiny_sd.scheduler)
    visual = load_clip("RN50", pretrained=None, load_weights=False).visual
    return ddpm.eval(), ddpm_scheduler, sd, visual


def tiny_parts(workdir: Path) -> tuple[torch.nn.Module, object, StableDiffusionParts, torch.nn.Module]:
    """The tiny test backbones (same classes), through the package's loaders."""
    ddpm, scheduler = load_ddpm(str(make_tiny_ddpm(workdir / "ddpm")))
    sd = load_stable_diffusion(str(make_tiny_stable_diffusion(workdir / "sd")))
    visual = load_clip(str(make_tiny_clip(workdir / "clip")), load_weights=False).visual
    return ddpm, scheduler, sd, visual


def images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 16, 3), dtype=np.uint8)) for _ in range(count)]


def cast(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A copy in ``dtype``: the fp32 originals stay untouched for every other precision."""
    return copy.deepcopy(module).to(device, dtype).requires_grad_(False)


def timed(work: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[torch.Tensor, float]:
    """(output, median seconds) after one warm-up call; CUDA is synchronised around each call.

    ``repeats`` 0 times a single call without warm-up (a smoke test, not a measurement).
    """
    out = None if repeats < 1 else work()
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return out, sorted(times)[len(times) // 2]


def train_step(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module], torch.Tensor],
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One Adam step of a fresh copy under autocast (fp32 weights); returns the loss and checks grads."""
    model = copy.deepcopy(model).to(device).train().requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(0)  # the same dropout masks in every precision (LaRE²'s refinement has dropout)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_of(model).float()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise FloatingPointError("non-finite or missing gradients")
    optimizer.step()
    return loss.detach()


class NoisyUNet(torch.nn.Module):
    """A float32 UNet whose every noise prediction gets Gaussian error of relative L2 size ``rel``."""

    def __init__(self, unet: torch.nn.Module, rel: float, seed: int = 0) -> None:
        super().__init__()
        self.unet, self.rel, self.generator = unet, rel, torch.Generator().manual_seed(seed)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor):
        out = self.unet(sample, timestep)
        noise = torch.randn(out.sample.shape, generator=self.generator).to(out.sample.device)
        out.sample = out.sample + self.rel * out.sample.norm() / noise.norm() * noise
        return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().float().cpu() - ref).norm() / ref.norm().clamp_min(1e-12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny architectures (CPU smoke test)")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up (0: one call, no warm-up)")
    parser.add_argument("--dnf-steps", type=int, default=5)
    parser.add_argument("--dire-steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu --quick for the CPU smoke test")
        return 2
    names = [n.strip() for n in args.dtypes.split(",")]
    if names[0] != "fp32" or any(n not in DTYPES for n in names):
        parser.error("--dtypes starts with fp32 (the reference) and names fp32, fp16 or bf16")
    torch.manual_seed(0)
    size, crop = (64 if args.quick else 256), 96  # DNF/DIRE frame; the judge's training crop

    with tempfile.TemporaryDirectory() as tmp:
        ddpm, scheduler, sd, visual = (tiny_parts if args.quick else real_parts)(Path(tmp))
        # LaRE keeps its 256 frame even when quick: CLIP's attention pool needs the 224 crop.
        lare_config = LareConfig(backbone="gpu-check", size=256, ensemble=2 if args.quick else 4)
        lare2 = Lare2Config(lare=lare_config, clip_model="gpu-check", clip_pretrained=None)
        lare2_network = Lare2Network(visual, lare2)
        judge = JudgeDetector.from_config(JudgeConfig(), pretrained=False)
        classifier = build_classifier("resnet18" if args.quick else "resnet50")
        pictures = images(args.batch, 256)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, 3, size, size, generator=gen) * 2 - 1
        labels = torch.arange(args.batch) % 2

        reference: dict[str, torch.Tensor] = {}
        # LaRE² trains on cached features: its training step reads the fp32 ones in every precision,
        # so the check measures the step, not the half-precision LaRE above it (checked on its own)
        lare2_batch: list[torch.Tensor] = []
        fp32_unet: torch.nn.Module | None = None  # kept from the fp32 pass for DIRE's error injection
        rows: list[tuple[str, str, float | None, float | None, bool, str]] = []
        for name in names:
            dtype = DTYPES[name]
            unet = cast(ddpm, device, dtype)
            if fp32_unet is None:  # the first precision is fp32
                fp32_unet = unet
            per_call: float | None = None  # this precision's "DNF, 1 step" error, once measured
            parts = StableDiffusionParts(cast(sd.vae, device, dtype), cast(sd.unet, device, dtype),
                                         cast(sd.text_encoder, device, dtype), sd.tokenizer, sd.scheduler)
            detector = Lare2Detector(lare2, visual, LareExtractor(lare_config, parts)).eval()
            detector.network = cast(lare2_network, device, dtype)  # the same weights in every precision
            xd = x.to(device)  # DNF/DIRE frames stay float32, as in the extractor; the UNet runs in dtype
            scanner = load_detector("judge-compact", device=device, dtype=dtype)  # fully shipped: no fetch
            if not lare2_batch:  # the first precision is fp32
                lare2_batch = [t.float() for t in detector.crop_inputs(*detector.lare_backbone.lare_for_images(pictures))]
            runs: dict[str, tuple[Callable[[], torch.Tensor], bool]] = {
                "LaRE (4 draws)" if not args.quick else "LaRE (2 draws)":
                    (lambda: detector.lare_backbone.lare_for_images(pictures)[1], True),
                "LaRE² score": (lambda: detector.score_images(pictures)[0], True),
                "DNF, 1 step": (lambda: dnf_map(unet, scheduler, xd, num_steps=1), True),
                f"DNF, {args.dnf_steps} steps": (lambda: dnf_map(unet, scheduler, xd, num_steps=args.dnf_steps), True),
                f"DIRE, {args.dire_steps}+{args.dire_steps} steps":
                    (lambda: dire_map(unet, scheduler, xd, num_steps=args.dire_steps), True),
                "scan (judge-compact)": (lambda: torch.tensor([p.score for p in scanner.predict(pictures)]), True),
                "train step: dnf/dire": (lambda: train_step(classifier, lambda m: F.binary_cross_entropy_with_logits(
                    m(x.to(device)).squeeze(1), labels.float().to(device)), device, dtype), False),
                "train step: lare2": (lambda: train_step(lare2_network, lambda m: F.cross_entropy(
                    m(*[t.to(device) for t in lare2_batch]), labels.to(device)), device, dtype), False),
                "train step: judge": (lambda: train_step(judge, lambda m: judge_loss(
                    m.embed(torch.rand(args.batch, 3, crop, crop, generator=torch.Generator().manual_seed(1)).to(device)),
                    labels.to(device), m.traces)["loss"], device, dtype), False),
            }
            for label, (work, per_image) in runs.items():
                try:
                    with torch.no_grad() if per_image else torch.enable_grad():
                        out, seconds = timed(work, device, args.repeats if per_image else 0)
                    out = out.detach().float().cpu()
                    finite = bool(torch.isfinite(out).all())
                    error, limit, note = None, TOLERANCE.get(name), ""
                    if name == "fp32":
                        reference[label] = out
                    else:
                        error = relative_error(out, reference[label])
                    if label.startswith("DIRE") and error is not None and per_call is not None:
                        with torch.no_grad():  # the chain's own amplification, everything else in fp32
                            injected = relative_error(dire_map(NoisyUNet(fp32_unet, per_call),
                                                               scheduler, xd, num_steps=args.dire_steps),
                                                      reference[label])
                        limit = max(limit, injected)
                        note = f"limit {limit:.2f}: fp32 with a {per_call:.1e} per-call UNet error injected"
                    if label == "DNF, 1 step":
                        per_call = error
                    ok = finite and (error is None or error <= limit)
                    note = note if finite else "non-finite output"
                    rows.append((label, name, seconds / args.batch if per_image else None, error, ok, note))
                except Exception as exc:  # report every failure, not just the first
                    rows.append((label, name, None, None, False, f"{type(exc).__name__}: {exc}"[:120]))
            del unet, parts, detector, scanner
            if device.type == "cuda":
                torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {gpu}, batch {args.batch}, {'tiny' if args.quick else 'real'} sizes, median of {args.repeats}; "
          f"tolerance (relative L2 vs fp32): fp16 {TOLERANCE['fp16']}, bf16 {TOLERANCE['bf16']}; DIRE: see its note")
    print(f"{'check':<26}{'dtype':<6}{'s/image':>10}{'rel err':>10}  {'ok':<4}{'paper s/image':<26}note")
    for label, name, seconds, error, ok, note in rows:
        timing = f"{seconds:.4f}" if seconds is not None else "-"
        err = f"{error:.2e}" if error is not None else "-"
        print(f"{label:<26}{name:<6}{timing:>10}{err:>10}  {'yes' if ok else 'NO':<4}{PAPER.get(label, '-'):<26}{note}")
    failed = [row for row in rows if not row[4]]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

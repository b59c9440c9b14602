"""Per-image feature cost of DNF, DIRE and LaRE with the real architectures at real sizes.

Weights are random (timing does not depend on them), so nothing is downloaded: the UNet of
google/ddpm-bedroom-256 and SD v1.5's UNet and VAE are built from their published architecture
configs. DIRE with S steps costs 2S UNet passes; ``--dire-steps`` can be lowered to keep the run
short, and the per-pass time is then extrapolated to S = 20 (the output says so).

    .venv/bin/python benchmarks/feature_cost.py --repeats 3 --dnf-steps 5 --dire-steps 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffsleuth.detectors.dnf.dire import dire_map
from diffsleuth.detectors.dnf.features import dnf_map
from diffsleuth.detectors.lare2.features import lare_map


def ddpm_bedroom() -> tuple[UNet2DModel, DDPMScheduler]:
    unet = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )
    return unet.eval(), DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def stable_diffusion_15() -> tuple[AutoencoderKL, UNet2DConditionModel, DDPMScheduler]:
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return vae.eval(), unet.eval(), scheduler


def seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``work`` after one warm-up call."""
    with torch.no_grad():
        work()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dnf-steps", type=int, default=5)
    parser.add_argument("--dire-steps", type=int, default=2, help="steps actually run (extrapolated to 20)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.rand(1, 3, 256, 256) * 2 - 1

    unet, scheduler = ddpm_bedroom()
    rows = {"DNF, 1 step": seconds(lambda: dnf_map(unet, scheduler, image, num_steps=1), args.repeats)}
    rows[f"DNF, {args.dnf_steps} steps"] = seconds(
        lambda: dnf_map(unet, scheduler, image, num_steps=args.dnf_steps), args.repeats)
    dire = seconds(lambda: dire_map(unet, scheduler, image, num_steps=args.dire_steps), args.repeats)
    rows["DIRE, 20+20 steps" + (" (extrapolated)" if args.dire_steps != 20 else "")] = dire * 20 / args.dire_steps
    del unet

    vae, sd_unet, sd_scheduler = stable_diffusion_15()
    context = torch.randn(1, 77, 768)
    noise = torch.randn(1, 4, 4, 32, 32)

    def lare() -> torch.Tensor:
        latents = vae.encode(image).latent_dist.sample() * 0.18215
        return lare_map(sd_unet, sd_scheduler, latents, noise, 200, context)

    rows["LaRE, 4 draws"] = seconds(lare, args.repeats)

    base = rows["DNF, 1 step"]
    print(f"CPU threads: {args.threads}, batch 1, 256x256, median of {args.repeats}")
    print(f"{'feature':<36}{'s/image':>10}{'x DNF-1':>10}")
    for name, value in rows.items():
        print(f"{name:<36}{value:>10.3f}{value / base:>10.1f}")


if __name__ == "__main__":
    main()

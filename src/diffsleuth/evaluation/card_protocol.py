"""Render the leave-one-out protocol stored under ``protocol`` in ``card_metrics.json``.

The protocol (``benchmarks/protocol_v3.py`` over :mod:`diffsleuth.evaluation.loo_protocol`) grades
a training *recipe*: each fold trains it without one generator family and one real source. The
card shows it beside the shipped model's own rates because it says how the recipe does on
generators and photos it has never seen, which the held-out pair alone cannot.
"""

from __future__ import annotations

# protocol names -> what a reader calls them
NAMES = {"sdxl": "SDXL (13 models)", "pixart": "PixArt", "kandinsky": "Kandinsky", "hunyuandit": "HunyuanDiT",
         "playground": "Playground", "kolors": "Kolors", "cascade": "Stable Cascade", "sd14": "SD 1.4 (portraits)", "2022-era": "2022-era (dalle-mini, latent diffusion)", "gan": "GANs (5)",
         "stylegan2-faces": "StyleGAN2 faces", "bsds500": "BSDS500", "unsplash": "Unsplash portraits",
         "imagenet": "ImageNet web photos", "camera-canon": "camera originals: Canon",
         "camera-nikon-sony-panasonic": "camera originals: Nikon, Sony, Panasonic",
         "camera-other": "camera originals: other makes", "ffhq": "FFHQ faces", "gan-real": "the GANs' real photos",
         "camera": "camera originals"}


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def by_group_table(section: dict, attr: str, heading: str) -> list[str]:
    five, one = section["5%"][f"by_{attr}"], section["1%"][f"by_{attr}"]
    lines = [f"| {heading} | caught at 5% FPR | at 1% FPR |", "|---|---|---|"]
    lines += [f"| {NAMES.get(name, name)} | {rate(five[name])} | {rate(one.get(name))} |" for name in five]
    return lines


def fold_name(name: str) -> str:
    """``family | source`` (a table's column separator) as words."""
    fake, _, real = name.partition(" | ")
    return f"{NAMES.get(fake, fake)} with {NAMES.get(real, real)} left out"


def protocol_block(protocol: dict) -> str:
    """Mean and worst fold, per family, per real source, per GAN, the false-positive checks, the targets."""
    grid = protocol["grid"]
    sources = protocol.get("train_sources")
    lines = [f"Made by `{protocol['command']}` (every image re-encoded as `{protocol.get('degradation', 'jpeg:90')}`, "
             f"both classes alike; one seed). Recipe `{protocol['variant']}`"
             + (f", trained on: {', '.join(NAMES.get(s, s) for s in sources)}" if isinstance(sources, list) else "")
             + f". {grid['folds']} folds: each trains without one generator family (all its images) and one real "
             "source, sets thresholds flagging 5% and 1% of that source, and counts the share of the family's "
             "images caught. A family is caught in a fold only as well as the recipe generalises to it.", "",
             "| over all folds | at 5% FPR | at 1% FPR |", "|---|---|---|",
             f"| mean share caught | {rate(grid['5%']['mean'])} | {rate(grid['1%']['mean'])} |",
             f"| worst fold | {rate(grid['5%']['worst'])} ({fold_name(grid['5%']['worst_fold'])}) | "
             f"{rate(grid['1%']['worst'])} ({fold_name(grid['1%']['worst_fold'])}) |", ""]
    lines += by_group_table(grid, "fake", "family left out (mean over the real sources)") + [""]
    lines += by_group_table(grid, "real", "real source left out (mean over the families)") + [""]
    if "per_gan" in protocol:
        lines += by_group_table(protocol["per_gan"], "fake", "one GAN left out alone (the other four trained on "
                                "only if the recipe trains on GANs)") + [""]
    if "pixart_kandinsky" in protocol:
        pk = protocol["pixart_kandinsky"]
        lines += [f"PixArt and Kandinsky left out together: {rate(pk['5%']['mean'])} caught at 5% FPR, "
                  f"{rate(pk['1%']['mean'])} at 1% (mean over the real sources).", ""]
    if "checks" in protocol:
        lines += ["| real photos never trained on | flagged at the threshold that flags 5% of ImageNet | images |",
                  "|---|---|---|"]
        lines += [f"| {NAMES.get(name, name)} | {rate(c['5%'])} | {c['n']} |" for name, c in protocol["checks"].items()]
        lines.append("")
    if protocol.get("targets"):
        lines += ["| target (issue #30) | goal | measured | |", "|---|---|---|---|"]
        lines += [f"| {t['what']} | {t['target']} | {rate(t['measured'])} | {'met' if t['met'] else '**missed**'} |"
                  for t in protocol["targets"]]
    return "\n".join(lines).rstrip()

"""Render ``card_metrics.json`` as ``MODEL_CARD.md``: tables of measured numbers, plus the author's notes.

Only the notes (method, training data, known limits) are written by hand; they come from a
Markdown file (``--notes``) and must not contain numbers that the metrics do not hold.
"""

from __future__ import annotations

import math
from collections import defaultdict

from diffsleuth.evaluation.card_protocol import protocol_block

INTENDED_DOMAIN = (
    "**Intended domain: camera photographs.** Read the verdict first: `generated` (score at or above "
    "the threshold), `uncertain` (in the band below it, where the detector has one), `outside the "
    "detector's domain` (an input it cannot judge), `no trace found` (never proof that an image is "
    "a photograph). The score is a detector score, not a chance. Rendered text, charts, screenshots, "
    "drawings and other non-photographic images are out of scope: what the detector says about them is "
    "measured below so that nobody mistakes it for evidence. No detector here is proof: use it as one "
    "signal among others, and check it on your own real photos first (`diffsleuth eval`).")


def pct(block: dict) -> str:
    low, high = block["ci95"]
    if block["n"] == 0:
        return "n/a"
    return f"{block['rate']:.1%} [{low:.1%}, {high:.1%}] ({block['k']}/{block['n']})"


def ci(entry: dict, key: str) -> str:
    value = entry[key]
    low, high = entry["ci"].get(key, [math.nan, math.nan])
    if value != value:
        return "n/a"
    return f"{value:.3f}" if low != low else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def sets_table(report: dict) -> str:
    if not report["sets"]:
        return "No data set with both classes among the roles scored."
    baseline = any("colour_histogram" in e for e in report["sets"].values())
    head = "| set / role / degradation | AUC [95% CI] | AP | TPR at threshold | FPR at threshold |"
    rule = "|---|---|---|---|---|"
    if baseline:
        head += " colour-histogram AUC |"
        rule += "---|"
    lines = [head, rule]
    for name, entry in report["sets"].items():
        m = entry["model"]
        line = (f"| {name} | {ci(m, 'auc')} | {ci(m, 'ap')} | {pct(m['tpr_at_threshold'])} "
                f"| {pct(m['fpr_at_threshold'])} |")
        if baseline:
            line += f" {ci(entry['colour_histogram'], 'auc')} |" if "colour_histogram" in entry else " |"
        lines.append(line)
    return "\n".join(lines)


def sources_table(report: dict) -> str:
    """One row per source and role; one column per degradation (share flagged at the threshold)."""
    rows: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    specs = report["degradations"]
    for key, entry in report["sources"].items():
        source, role, spec = key.rsplit("/", 2)
        rows[(entry["label"], role, source)][spec] = pct(entry["model"])
    lines = ["| class | role | source | " + " | ".join(f"flagged, {s}" for s in specs) + " |",
             "|---|---|---|" + "---|" * len(specs)]
    for (label, role, source), cells in sorted(rows.items()):
        lines.append(f"| {label} | {role} | {source} | " + " | ".join(cells.get(s, "") for s in specs) + " |")
    return "\n".join(lines)


def verdicts_table(report: dict) -> str:
    """One row per source, role and degradation: the share of each detector verdict."""
    names = ("generated", "uncertain", "outside the detector's domain", "no trace found")
    lines = ["| class | role | source | degradation | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * 4]
    for key, entry in sorted(report["sources"].items(), key=lambda item: (item[1]["label"], item[0])):
        if "verdicts" not in entry:
            continue
        source, role, spec = key.rsplit("/", 2)
        lines.append(f"| {entry['label']} | {role} | {source} | {spec} | "
                     + " | ".join(pct(entry["verdicts"][n]) for n in names) + " |")
    return "\n".join(lines) if len(lines) > 2 else "No verdicts in these metrics (made before verdicts existed)."


VERDICT_NAMES = ("generated", "uncertain", "outside the detector's domain", "no trace found")


def verdict_rates_block(rates: dict) -> str:
    """The ``verdict_rates`` of ``card_metrics.json`` (:mod:`diffsleuth.evaluation.verdict_rates`)."""
    band = rates.get("uncertain_threshold")
    lines = [f"Made by `{rates.get('command', 'python -m diffsleuth.evaluation.verdict_rates')}`. Threshold "
             f"{rates['threshold']:.4f}; uncertain band "
             + (f"from {band:.4f}" if band is not None else "none") + ". Share of each detector verdict, exact 95% "
             "intervals; every file re-encoded as stated. Synthetic inputs: `out_of_domain.outside_inputs(seed="
             f"{rates.get('synthetic_seed', 0)})` (text pages, charts, screenshots, 512-px uniform noise, 16-64 px "
             "thumbnails), scored by `predict`.", "",
             "| set | class | " + " | ".join(VERDICT_NAMES) + " | why outside |",
             "|---|---|" + "---|" * (len(VERDICT_NAMES) + 1)]
    classes, reasons = rates.get("classes", {}), rates.get("outside_reasons", {})
    rows = [(name, classes.get(name, ""), block) for name, block in rates["sets"].items()]
    rows += [(f"synthetic: {k}", "not a photo", b) for k, b in rates["synthetic"].items()]
    for name, kind, block in rows:
        why = ", ".join(f"{reason}: {count}" for reason, count in reasons.get(name, {}).items())
        lines.append(f"| {name} | {kind} | " + " | ".join(pct(block[n]) for n in VERDICT_NAMES) + f" | {why} |")
    return "\n".join(lines)


def named_block(block: dict) -> str:
    lines = [f"Flagged by the model: {pct(block['model'])}"
             + (f"; by the colour-histogram baseline: {pct(block['colour_histogram'])}." if "colour_histogram" in block else ".")]
    kinds: dict[str, list[dict]] = defaultdict(list)
    for row in block["rows"]:
        kinds[row["image"].split(":", 1)[0]].append(row)
    if "verdicts" in block:
        lines += ["", "Detector verdicts: " + "; ".join(f"{name} {pct(rate)}" for name, rate in block["verdicts"].items())
                  + "."]
    if all("detector_verdict" in r for r in block["rows"]):
        lines += ["", "| image | size | detector score | detector verdict |", "|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['size'][0]}x{r['size'][1]} | {r['model']:.3f} | {r['detector_verdict']} |"
                  for r in block["rows"]]
    else:
        lines += ["", "| image | size | detector score |", "|---|---|---|"]
        lines += [f"| {r['image']} | {r['size'][0]}x{r['size'][1]} | {r['model']:.3f} |" for r in block["rows"]]
    return "\n".join(lines)


def operating_point_text(report: dict) -> str:
    point = report.get("operating_point")
    if not point:
        return "The detector's config stores no operating point."
    lines = [f"Stored in `config.json` by training (threshold {point['threshold']:.4f}, target false-positive "
             f"rate {point['target_fpr']:.0%}; scores pooled over {', '.join(point['degradations'])}, both "
             "classes re-encoded identically). Rates with exact 95% intervals (Clopper-Pearson).", "",
             "| role | rate | all | by source |", "|---|---|---|---|"]
    for role in ("calibration", "check", "holdout", "test"):
        block = point.get(role, {})
        for name in ("fpr", "tpr"):
            if name in block:
                parts = "; ".join(f"{s}: {pct(b)}" for s, b in block[f"{name}_by_source"].items())
                lines.append(f"| {role} | {name.upper()} | {pct(block[name])} | {parts} |")
    return "\n".join(lines)


def render_card(report: dict, title: str, notes: str = "", command: str = "") -> str:
    holdout = report["holdout"]
    trained = ", ".join(report["trained_on_sources"]) or "unknown (no training log)"
    parts = [
        f"# {title}", "",
        f"Detector `{report['detector']}`, {report['parameters']:,} trained parameters. An image is labelled "
        f"*generated* when its score is at least **{report['threshold']:.4f}** (the threshold in `config.json`).",
        "", INTENDED_DOMAIN, "",
        notes.strip(), "",
        "## Operating point", operating_point_text(report), "",
        "## Measured on held-out data",
        f"Produced by `{command or 'diffsleuth card'}`; every number below is in `card_metrics.json`. "
        f"Roles scored: {', '.join(report['roles'])} (train/val/test: a seeded per-file split, seed "
        f"{holdout['seed']}, {holdout['val_fraction']:.0%} / {holdout['test_fraction']:.0%} val / test; "
        f"held-out generator families: {', '.join(holdout['holdout_families']) or 'none'}; threshold-setting real "
        f"sources: {', '.join(holdout['calibration_sources']) or 'none'}; check-only real sources: "
        f"{', '.join(holdout['check_sources']) or 'none'}). Sources in training: {trained}. "
        + (f"At most {report['max_per_source']} images of each source, role and class were scored (a seeded "
           "choice by file name). " if report.get("max_per_source") else "")
        + "Each degradation is applied to both classes identically (`jpeg:Q`: JPEG quality Q, 4:2:0). "
        "AUC/AP intervals: 95% stratified bootstrap; rates: exact 95% intervals.", "",
        "### Data sets (both classes)", sets_table(report), "",
        "### Per source, at the threshold", sources_table(report), "",
        "### Detector verdicts per source", verdicts_table(report), "",
        *(("### Verdicts on camera photos, held-out generators, data it never trained on, and non-photos",
           verdict_rates_block(report["verdict_rates"]), "") if "verdict_rates" in report else ()),
        *(("### The training recipe under the leave-one-out protocol", protocol_block(report["protocol"]), "")
          if "protocol" in report else ()),
        "### Out of domain: rendered text, charts, screenshots (made by `diffsleuth.evaluation.out_of_domain`)",
        named_block(report["non_photos"]), "",
        "### Camera photos bundled in the scikit-image and scikit-learn wheels", named_block(report["wheel_photos"]), "",
    ]
    return "\n".join(parts).replace("\n\n\n", "\n\n") + "\n"

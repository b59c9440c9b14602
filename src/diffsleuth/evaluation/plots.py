"""The plots of the HTML report, each returned as a base64 PNG.

Readable at any number of generators: the ROC overview has one curve per family (or per
generator when there are few), and generators get small multiples, one panel per family (large
families split), so no panel holds more curves than a qualitative palette can tell apart. Legends
carry each curve's AUC and fake count and keep both ends of long names.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from diffsleuth.extras import require
from diffsleuth.evaluation.metrics import reliability_bins
from diffsleuth.evaluation.reports import enough_for_ci
from diffsleuth.evaluation.runner import ScoredSet, group_selections

MAX_CURVES = 7
"""Curves per panel: the seven darkest colours of matplotlib's tab10, plus black for the reference."""
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
STYLES = ("-", "--", "-.", ":")


def _pyplot():
    require("eval", "the report plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short(name: str, width: int = 44) -> str:
    """Plot labels: keep both ends of long names (generator variants differ at the end)."""
    return name if len(name) <= width else f"{name[:12]}…{name[-(width - 13):]}"


def _png(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _curve(ax, labels: np.ndarray, scores: np.ndarray, label: str, **style) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    auc = roc_auc_score(labels, scores)
    ax.plot(fpr, tpr, label=f"{label}  AUC {auc:.3f}, {int(labels.sum())} fakes", **style)


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls=":", color="#999999", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_xlabel("false-positive rate (reals flagged)", fontsize=8)
    ax.set_ylabel("true-positive rate (fakes caught)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)


def _two_class(labels: np.ndarray) -> bool:
    return labels.size > 0 and labels.min() != labels.max()


def families(scored: ScoredSet) -> dict[str, list[str]]:
    """Family -> its generators (of the fakes), both sorted; empty when records carry no family."""
    fakes = [r for r in scored.records if r.label == 1]
    if not any(r.family for r in fakes):
        return {}
    out: dict[str, set[str]] = {}
    for record in fakes:
        out.setdefault(record.family or "no family", set()).add(record.generator or "unknown")
    return {family: sorted(names) for family, names in sorted(out.items())}


def roc_overview(scored: ScoredSet) -> str | None:
    """Overall ROC, with one curve per family (or per generator when there are 2 to 7 and no families)."""
    labels, scores = scored.labels, scored.scores
    if not _two_class(labels):
        return None
    plt = _pyplot()
    by_family = families(scored)
    key = "family" if len(by_family) > 1 else "generator"
    groups = group_selections(scored, key)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    title = "ROC overall"
    if 1 < len(groups) <= MAX_CURVES:
        title = f"ROC per {key}"
        for i, (name, (mask, _)) in enumerate(groups.items()):
            if _two_class(labels[mask]):
                _curve(ax, labels[mask], scores[mask], short(name), color=PALETTE[i], lw=1.6)
    _curve(ax, labels, scores, "overall", color="black", lw=2.4)
    _roc_axes(ax, title)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    return _png(fig)


def _panels(scored: ScoredSet) -> list[tuple[str, list[str]]]:
    """(title, generators) per panel: each family, split into chunks of at most MAX_CURVES."""
    by_family = families(scored) or {"": sorted(group_selections(scored, "generator"))}
    panels = []
    for family, names in by_family.items():
        chunks = [names[i:i + MAX_CURVES] for i in range(0, len(names), MAX_CURVES)]
        for n, chunk in enumerate(chunks, 1):
            title = family or "generators"
            panels.append((f"{title} ({n}/{len(chunks)})" if len(chunks) > 1 else title, chunk))
    return panels


def roc_panels(scored: ScoredSet) -> str | None:
    """Small multiples: ROC per generator, one panel per family, with the overall curve for reference.

    Drawn when there is more than one generator and they do not all fit the overview (families
    present, or more than MAX_CURVES generators)."""
    labels, scores = scored.labels, scored.scores
    selections = group_selections(scored, "generator")
    if not _two_class(labels) or len(selections) < 2 or (not families(scored) and len(selections) <= MAX_CURVES):
        return None
    plt = _pyplot()
    panels = _panels(scored)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 6.2 * rows), squeeze=False)
    for ax, (title, names) in zip(axes.flat, panels):
        for i, name in enumerate(names):
            mask = selections[name][0]
            if _two_class(labels[mask]):
                _curve(ax, labels[mask], scores[mask], short(name), color=PALETTE[i], lw=1.5,
                       ls=STYLES[i % len(STYLES)] if i >= 4 else "-")
        _curve(ax, labels, scores, "all generators (reference)", color="black", lw=1.0, alpha=0.45)
        _roc_axes(ax, title)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("ROC per generator, one panel per family (each curve: that generator's fakes against the reals)",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _png(fig)


def bars_plot(rows: dict[str, dict], min_count: int, family_of: dict[str, str] | None = None) -> str | None:
    """Per generator: balanced accuracy (95% CI where the counts allow), detection rate and AP.

    Horizontal bars so that long generator names stay readable, grouped by family when
    ``family_of`` maps generators to families. Balanced rather than plain accuracy: with shared
    reals a generator row holds far more reals than fakes.
    """
    if len(rows) < 2:
        return None
    plt = _pyplot()
    family_of = family_of or {}
    names = sorted(rows, key=lambda n: (family_of.get(n, ""), n.lower()))[::-1]  # first row on top
    y = np.arange(len(names))

    def column(key: str) -> np.ndarray:
        return np.array([rows[n][key] for n in names], dtype=float)

    bal = column("balanced_acc")
    ci = np.array([rows[n]["ci"].get("balanced_acc", [np.nan, np.nan])
                   if enough_for_ci(rows[n], min_count) else [np.nan, np.nan]
                   for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(8.5, 0.34 * len(names) + 1.8))
    ax.barh(y + 0.27, bal, 0.27, label=f"balanced accuracy (95% CI for >= {min_count} images a class)",
            color="#1f77b4")
    shown = ~np.isnan(ci).any(axis=1)
    if shown.any():
        ax.errorbar(bal[shown], y[shown] + 0.27, xerr=np.vstack([bal - ci[:, 0], ci[:, 1] - bal])[:, shown],
                    fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.barh(y, column("fake_acc"), 0.27, label="detection rate (fakes caught)", color="#ff7f0e")
    ax.barh(y - 0.27, column("ap"), 0.27, label="AP", color="#2ca02c")
    ax.axvline(0.5, color="#999999", ls=":", lw=1)
    ax.set_yticks(y, [f"{short(n)}  ({family_of[n]})" if n in family_of else short(n) for n in names], fontsize=8)
    ax.set(xlim=(0, 1.02), xlabel="score", title="Per generator, at the detector's threshold")
    ax.grid(axis="x", alpha=0.25)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=3, frameon=False)
    return _png(fig)


def reliability_plot(scored: ScoredSet) -> str:
    """Observed fraction generated against mean predicted P(generated), with the bin counts."""
    plt = _pyplot()
    bins = [b for b in reliability_bins(scored.labels, scored.scores) if b["count"]]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.6, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="#999999", label="perfect calibration")
    ax.plot([b["mean_score"] for b in bins], [b["frac_generated"] for b in bins], "o-", color="#1f77b4",
            label="detector")
    ax.set(ylabel="fraction generated", title="Reliability diagram (15 bins)", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    ax_count.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["count"] for b in bins], width=1 / 15 * 0.9,
                 color="#999999")
    ax_count.set(xlabel="predicted P(generated)", ylabel="images", xlim=(0, 1))
    return _png(fig)


def robustness_plot(summary: list[dict]) -> str:
    """acc, balanced acc, AP and AUC per condition with their bootstrap intervals."""
    plt = _pyplot()
    labels = [row["label"] for row in summary]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.65 * len(labels) + 2), 4.6))
    series = (("acc", "acc", "#1f77b4", -0.15), ("balanced_acc", "balanced acc", "#9467bd", -0.05),
              ("ap", "AP", "#2ca02c", 0.05), ("auc", "AUC", "#d62728", 0.15))
    for key, name, colour, offset in series:
        values = np.array([row[key] for row in summary], dtype=float)
        ci = np.array([row["ci"].get(key, [np.nan, np.nan]) for row in summary], dtype=float)
        err = np.vstack([values - ci[:, 0], ci[:, 1] - values])
        ax.errorbar(x + offset, values, yerr=np.nan_to_num(err), fmt="o-", color=colour,
                    label=name, capsize=2, lw=1.2, ms=4)
    ax.axhline(0.5, color="#999999", ls=":", lw=1)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Robustness: both classes degraded identically")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)

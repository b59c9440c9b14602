"""Evaluation reports: ``metrics.json``, ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNGs (ROC per generator, per-generator accuracy and AP,
reliability diagram, robustness summary) so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from diffsleuth.evaluation.metrics import reliability_bins  # noqa: E402
from diffsleuth.evaluation.runner import ScoredSet, group_selections, json_safe, write_scores_csv  # noqa: E402

ROW_COLUMNS = (("n_real", "reals"), ("n_fake", "fakes"), ("acc", "acc@0.5"), ("real_acc", "real acc"),
               ("fake_acc", "fake acc"), ("balanced_acc", "bal acc"), ("ap", "AP"), ("auc", "AUC"),
               ("tpr_at_1fpr", "TPR@1%FPR"), ("tpr_at_5fpr", "TPR@5%FPR"), ("eer", "EER"), ("ece", "ECE"))
ROBUSTNESS_COLUMNS = (("n", "n"), ("acc", "acc@0.5"), ("real_acc", "real acc"), ("fake_acc", "fake acc"),
                      ("balanced_acc", "bal acc"), ("ap", "AP"), ("auc", "AUC"), ("tpr_at_5fpr", "TPR@5%FPR"),
                      ("eer", "EER"))


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: list | None) -> str:
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "n/a"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def table_rows(rows: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a metrics table (one line per group), CIs and notes included."""
    header = ["group", *(label for _, label in ROW_COLUMNS), "acc 95% CI", "AUC 95% CI", "reals",
              "val-thr bal acc", "oracle bal acc", "notes"]
    cells = []
    for name, row in rows.items():
        line = [name, *(fmt(row.get(key)) for key, _ in ROW_COLUMNS)]
        ci = row.get("ci", {})
        line += [fmt_ci(ci.get("acc")), fmt_ci(ci.get("auc")), row.get("reals", "all"),
                 fmt(row["val_threshold"]["balanced_acc"]) if "val_threshold" in row else "-",
                 fmt(row["oracle"]["balanced_acc"]) if "oracle" in row else "-", "; ".join(row.get("notes", []))]
        cells.append(line)
    return header, cells


def robustness_rows(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["condition", *(label for _, label in ROBUSTNESS_COLUMNS), "acc 95% CI", "AUC 95% CI"]
    cells = [[row["label"], *(fmt(row.get(key)) for key, _ in ROBUSTNESS_COLUMNS),
              fmt_ci(row["ci"].get("acc")), fmt_ci(row["ci"].get("auc"))] for row in summary]
    return header, cells


def _md_table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def _threshold_text(result: dict) -> str:
    t = result.get("thresholds", {})
    text = "Accuracy is at the fixed threshold 0.5 (score >= 0.5 means generated)."
    if t.get("validation") is not None:
        text += (f" 'val-thr bal acc' is the balanced accuracy at {t['validation']:.4f}, the threshold that "
                 f"maximises balanced accuracy on {t['validation_images']} validation images, never on the test set.")
    text += (" 'oracle bal acc' picks that threshold on the test rows themselves: an upper bound, not a result."
             " 'bal acc' is the mean of real and fake accuracy. AP and AUC do not depend on any threshold.")
    return text


def markdown_report(result: dict, title: str) -> str:
    """The whole evaluation as Markdown tables."""
    parts = [f"# {title}\n", f"Detector: `{result.get('detector', result.get('detector_name'))}`"
             f" ({result.get('detector_name')}). Data: {', '.join(map(str, result.get('data', [])))}."
             f" Equalisation: {result.get('equalize') or 'none'}. Bootstrap: {result.get('n_bootstrap')}"
             f" resamples, seed {result.get('seed')}.\n", _threshold_text(result) + "\n",
             "Per-generator rows: that generator's fakes against the reals of the test set ('shared'), or against"
             " the reals filed under the same generator when there are any ('own', e.g. GenImage subsets).\n"]
    parts += ["## Overall\n", _md_table(*table_rows({"overall": result["overall"]}))]
    parts += ["## Per generator\n", _md_table(*table_rows(result["per_generator"]))]
    if "per_family" in result:
        parts += ["## Per family\n", _md_table(*table_rows(result["per_family"]))]
    if "robustness" in result:
        parts += ["## Robustness (same degradation applied to both classes)\n",
                  _md_table(*robustness_rows(result["robustness"]["summary"]))]
        for condition, section in result["robustness"]["conditions"].items():
            if condition == "clean":
                continue
            parts += [f"### {condition}\n", _md_table(*table_rows({"overall": section["overall"],
                                                                   **section["per_generator"]}))]
    for note in result.get("notes", []):
        parts.append(f"- {note}\n")
    if result.get("failures"):
        parts += [f"## Unreadable files ({len(result['failures'])})\n"]
        parts += [f"- `{f['path']}`: {f['error']}\n" for f in result["failures"][:50]]
    return "\n".join(parts)


def short(name: str, width: int = 32) -> str:
    """Plot labels: keep both ends of long names (generator variants differ at the end)."""
    return name if len(name) <= width else f"{name[:10]}…{name[-(width - 11):]}"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_plot(scored: ScoredSet) -> str | None:
    """ROC curve of every generator row (and overall)."""
    labels, scores = scored.labels, scored.scores
    if labels.min() == labels.max():
        return None
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    selections = group_selections(scored, "generator")
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(selections), 1)))
    for colour, (name, (mask, _)) in zip(colours, selections.items()):
        if labels[mask].min() == labels[mask].max():
            continue
        fpr, tpr, _ = roc_curve(labels[mask], scores[mask])
        ax.plot(fpr, tpr, color=colour, lw=1.2, label=short(name))
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, color="black", lw=2.2, label="overall")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="false-positive rate (reals flagged)", ylabel="true-positive rate (fakes caught)",
           title="ROC per generator", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=2 if len(selections) > 14 else 1)
    return _png(fig)


def bars_plot(result: dict) -> str:
    """Per generator: balanced accuracy at 0.5 (95% CI), fake accuracy (detection rate) and AP.

    Balanced rather than plain accuracy: with shared reals a generator row holds far more reals
    than fakes, and plain accuracy would mostly measure the reals.
    """
    rows = result["per_generator"]
    names = list(rows)
    x = np.arange(len(names))

    def column(key: str) -> np.ndarray:
        return np.array([rows[n][key] for n in names], dtype=float)

    bal = column("balanced_acc")
    ci = np.array([rows[n]["ci"].get("balanced_acc", [np.nan, np.nan]) for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(names) + 2), 4.4))
    ax.bar(x - 0.27, bal, 0.27, label="balanced acc@0.5", color="#4c72b0",
           yerr=np.nan_to_num(np.vstack([bal - ci[:, 0], ci[:, 1] - bal])), capsize=2, error_kw={"lw": 0.8})
    ax.bar(x, column("fake_acc"), 0.27, label="fake acc@0.5 (detection rate)", color="#8172b3")
    ax.bar(x + 0.27, column("ap"), 0.27, label="AP", color="#dd8452")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(x, [short(n) for n in names], rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Per generator: balanced accuracy (95% CI), detection rate, AP")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def reliability_plot(scored: ScoredSet) -> str:
    """Observed fraction generated against mean predicted P(generated), with the bin counts."""
    bins = [b for b in reliability_bins(scored.labels, scored.scores) if b["count"]]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.2, 5.8), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.plot([b["mean_score"] for b in bins], [b["frac_generated"] for b in bins], "o-", color="#4c72b0",
            label="detector")
    ax.set(ylabel="fraction generated", title="Reliability diagram (15 bins)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    ax_count.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["count"] for b in bins], width=1 / 15 * 0.9,
                 color="#999999")
    ax_count.set(xlabel="predicted P(generated)", ylabel="images", xlim=(0, 1))
    return _png(fig)


def robustness_plot(summary: list[dict]) -> str:
    """acc, balanced acc, AP and AUC per condition with their bootstrap intervals."""
    labels = [row["label"] for row in summary]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 2), 4.2))
    series = (("acc", "#4c72b0", -0.15), ("balanced_acc", "#8172b3", -0.05), ("ap", "#dd8452", 0.05),
              ("auc", "#55a868", 0.15))
    for key, colour, offset in series:
        values = np.array([row[key] for row in summary], dtype=float)
        ci = np.array([row["ci"].get(key, [np.nan, np.nan]) for row in summary], dtype=float)
        err = np.vstack([values - ci[:, 0], ci[:, 1] - values])
        ax.errorbar(x + offset, values, yerr=np.nan_to_num(err), fmt="o-", color=colour, label=key, capsize=2,
                    lw=1.2, ms=4)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Robustness: both classes degraded identically")
    ax.legend(fontsize=8)
    return _png(fig)


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.6em 0 1.4em}th,td{border:1px solid #ccc;padding:3px 6px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f0f0f0}img{max-width:100%;
margin:0.5em 1em 0.5em 0;border:1px solid #eee}.plots{display:flex;flex-wrap:wrap;align-items:flex-start}
.note{color:#555;font-size:13px}"""


def html_report(result: dict, scored: dict[str, ScoredSet], title: str) -> str:
    """A self-contained HTML page: the tables of the Markdown report plus embedded plots."""
    clean = scored["clean"]
    plots = [roc_plot(clean), bars_plot(result), reliability_plot(clean)]
    if "robustness" in result:
        plots.append(robustness_plot(result["robustness"]["summary"]))
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots if p)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>Detector <code>{html.escape(str(result.get('detector')))}</code> "
            f"({html.escape(str(result.get('detector_name')))}); "
            f"data {html.escape(', '.join(map(str, result.get('data', []))))};"
            f" equalisation {html.escape(str(result.get('equalize') or 'none'))}; "
            f"{result.get('n_bootstrap')} bootstrap resamples, seed {result.get('seed')}.</p>",
            f"<p class='note'>{html.escape(_threshold_text(result))}</p>",
            f"<div class='plots'>{images}</div>",
            "<h2>Overall</h2>", _html_table(*table_rows({"overall": result["overall"]})),
            "<h2>Per generator</h2>", _html_table(*table_rows(result["per_generator"]))]
    if "per_family" in result:
        body += ["<h2>Per family</h2>", _html_table(*table_rows(result["per_family"]))]
    if "robustness" in result:
        body += ["<h2>Robustness</h2>", _html_table(*robustness_rows(result["robustness"]["summary"]))]
        for condition, section in result["robustness"]["conditions"].items():
            if condition != "clean":
                body += [f"<h3>{html.escape(condition)}</h3>",
                         _html_table(*table_rows({"overall": section["overall"], **section["per_generator"]}))]
    if result.get("failures"):
        body.append(f"<h2>Unreadable files ({len(result['failures'])})</h2><ul>"
                    + "".join(f"<li><code>{html.escape(f['path'])}</code>: {html.escape(f['error'])}</li>"
                              for f in result["failures"][:50]) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_reports(result: dict, scored: dict[str, ScoredSet], output: Path, title: str = "diffsleuth evaluation",
                  formats: tuple[str, ...] = ("md", "json", "html")) -> dict[str, Path]:
    """Write scores.csv (and robustness_scores.csv) plus the requested report formats into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    written = {"scores": output / "scores.csv"}
    write_scores_csv(scored["clean"], written["scores"])
    conditions = [c for c in scored if c != "clean"]
    if conditions:
        written["robustness_scores"] = output / "robustness_scores.csv"
        written["robustness_scores"].unlink(missing_ok=True)
        for condition in conditions:
            write_scores_csv(scored[condition], written["robustness_scores"], condition=condition)
    if "json" in formats:
        written["json"] = output / "metrics.json"
        written["json"].write_text(json.dumps(json_safe(result), indent=2) + "\n", encoding="utf-8")
    if "md" in formats:
        written["md"] = output / "report.md"
        written["md"].write_text(markdown_report(result, title), encoding="utf-8")
    if "html" in formats:
        written["html"] = output / "report.html"
        written["html"].write_text(html_report(result, scored, title), encoding="utf-8")
    return written

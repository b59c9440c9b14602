"""Evaluation reports: ``metrics.json``, ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNGs (ROC per family and per generator, per-generator bars,
reliability diagram, robustness summary; see :mod:`diffsleuth.evaluation.plots`) so the one file
can be mailed or archived. Each table has one header with each column named once: the main
metrics, then a second table of further metrics. A group that repeats the overall row (a dataset
with a single generator, e.g. a 0_real/1_fake folder) is not shown again. Intervals of rows with
fewer than ``MIN_CI_COUNT`` images of either class read "n too small": a bootstrap over two
fakes gives [1.000, 1.000], which looks precise and is not.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from diffsleuth.evaluation.runner import ScoredSet, json_safe, write_scores_csv

MIN_CI_COUNT = 10
"""Fewest images of each class for which a row's bootstrap interval is shown."""
TOO_SMALL = "n too small"

MAIN_COLUMNS = (("acc", "acc"), ("ci:acc", "acc 95% CI"), ("balanced_acc", "bal acc"), ("ap", "AP"),
                ("auc", "AUC"), ("ci:auc", "AUC 95% CI"), ("tpr_at_5fpr", "TPR@5%FPR"))
DETAIL_COLUMNS = (("real_acc", "real acc"), ("fake_acc", "fake acc"), ("tpr_at_1fpr", "TPR@1%FPR"),
                  ("eer", "EER"), ("ece", "ECE"))
ROBUSTNESS_COLUMNS = (("n", "images"), ("acc", "acc"), ("ci:acc", "acc 95% CI"), ("real_acc", "real acc"),
                      ("fake_acc", "fake acc"), ("balanced_acc", "bal acc"), ("ap", "AP"), ("auc", "AUC"),
                      ("ci:auc", "AUC 95% CI"), ("tpr_at_5fpr", "TPR@5%FPR"), ("eer", "EER"))


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def enough_for_ci(row: dict, min_count: int = MIN_CI_COUNT) -> bool:
    """Whether both classes of a row have at least ``min_count`` images (robustness rows: n only)."""
    if "n_real" in row or "n_fake" in row:
        return min(row.get("n_real") or 0, row.get("n_fake") or 0) >= min_count
    return (row.get("n") or 0) >= 2 * min_count


def fmt_ci(ci: list | None, row: dict | None = None) -> str:
    """``[lo, hi]``; "n too small" when ``row`` has too few images of a class; "n/a" when undefined."""
    if row is not None and not enough_for_ci(row):
        return TOO_SMALL
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "n/a"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(row: dict, key: str) -> str:
    if key.startswith("ci:"):
        return fmt_ci(row.get("ci", {}).get(key[3:]), row)
    return fmt(row.get(key))


def shown_groups(result: dict, key: str) -> dict[str, dict]:
    """The rows of ``result[key]`` worth a table: none when the only group holds the overall images."""
    rows = result.get(key) or {}
    overall = result["overall"]
    if len(rows) == 1:
        (only,) = rows.values()
        if only.get("n_real") == overall.get("n_real") and only.get("n_fake") == overall.get("n_fake"):
            return {}
    return rows


def _reals(row: dict) -> str:
    count = fmt(row.get("n_real"))
    return f"{count} ({row['reals']})" if row.get("reals") else count


def table_rows(rows: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main metrics table (one line per group)."""
    header = ["group", "reals", "fakes", *(label for _, label in MAIN_COLUMNS)]
    cells = [[name, _reals(row), fmt(row.get("n_fake")), *(_cell(row, key) for key, _ in MAIN_COLUMNS)]
             for name, row in rows.items()]
    return header, cells


def detail_rows(rows: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the further metrics: per-class accuracy, TPR@1%FPR, EER, ECE, other thresholds."""
    header = ["group", *(label for _, label in DETAIL_COLUMNS), "bal acc at val thr", "oracle bal acc"]
    cells = [[name, *(_cell(row, key) for key, _ in DETAIL_COLUMNS),
              fmt(row["val_threshold"]["balanced_acc"]) if "val_threshold" in row else "-",
              fmt(row["oracle"]["balanced_acc"]) if "oracle" in row else "-"] for name, row in rows.items()]
    return header, cells


def row_notes(rows: dict[str, dict]) -> list[str]:
    """Each distinct note once, with the rows it applies to ("every row" when all of several)."""
    by_note: dict[str, list[str]] = {}
    for name, row in rows.items():
        for note in row.get("notes", []):
            by_note.setdefault(note, []).append(name)
    return [f"{note} ({'every row' if len(names) == len(rows) > 1 else ', '.join(names)})"
            for note, names in by_note.items()]


def robustness_rows(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["condition", *(label for _, label in ROBUSTNESS_COLUMNS)]
    cells = [[row["label"], *(_cell(row, key) for key, _ in ROBUSTNESS_COLUMNS)] for row in summary]
    return header, cells


def _md_table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def threshold_text(result: dict) -> str:
    """What the accuracies mean: at the detector's stored threshold, the one ``diffsleuth scan`` labels with."""
    t = result.get("thresholds", {})
    at = t.get("accuracy", t.get("detector", 0.5))
    text = (f"Accuracies are at the detector's stored threshold {at:.4f} (score >= {at:.4f} means generated), "
            "the threshold `diffsleuth scan` labels with.")
    if t.get("validation") is not None:
        text += (f" 'bal acc at val thr' is the balanced accuracy at {t['validation']:.4f}, the threshold that "
                 f"maximises balanced accuracy on {t['validation_images']} validation images, never on the test set.")
    text += (" 'oracle bal acc' picks that threshold on the test rows themselves: an upper bound, not a result."
             " 'bal acc' is the mean of real and fake accuracy. AP and AUC do not depend on any threshold."
             f" 95% bootstrap intervals are shown for rows with at least {MIN_CI_COUNT} images of each class"
             f" ('{TOO_SMALL}' otherwise).")
    return text


REALS_TEXT = ("Per-generator rows: that generator's fakes against the reals of the test set ('shared'), or"
              " against the reals filed under the same generator when there are any ('own', e.g. GenImage"
              " subsets).")


def _sections(result: dict) -> list[tuple[str, dict[str, dict]]]:
    """(title, rows) of each metrics section: overall, then generators and families when informative."""
    sections = [("Overall", {"overall": result["overall"]})]
    for key, title in (("per_generator", "Per generator"), ("per_family", "Per family")):
        rows = shown_groups(result, key)
        if rows:
            sections.append((title, rows))
    return sections


def markdown_report(result: dict, title: str) -> str:
    """The whole evaluation as Markdown tables."""
    parts = [f"# {title}\n", f"Detector: `{result.get('detector', result.get('detector_name'))}`"
             f" ({result.get('detector_name')}). Data: {', '.join(map(str, result.get('data', [])))}."
             f" Equalisation: {result.get('equalize') or 'none'}. Bootstrap: {result.get('n_bootstrap')}"
             f" resamples, seed {result.get('seed')}.\n", threshold_text(result) + "\n", REALS_TEXT + "\n"]
    for heading, rows in _sections(result):
        parts += [f"## {heading}\n", _md_table(*table_rows(rows)), f"Further metrics ({heading.lower()}):\n",
                  _md_table(*detail_rows(rows))]
        notes = row_notes(rows)
        parts += [f"- {note}" for note in notes] + ([""] if notes else [])
    if "robustness" in result:
        parts += ["## Robustness (same degradation applied to both classes)\n",
                  _md_table(*robustness_rows(result["robustness"]["summary"]))]
        for condition, section in result["robustness"]["conditions"].items():
            if condition == "clean":
                continue
            rows = {"overall": section["overall"], **shown_groups(section, "per_generator")}
            parts += [f"### {condition}\n", _md_table(*table_rows(rows))]
    for note in result.get("notes", []):
        parts.append(f"- {note}\n")
    if result.get("failures"):
        parts += [f"## Unreadable files ({len(result['failures'])})\n"]
        parts += [f"- `{f['path']}`: {f['error']}\n" for f in result["failures"][:50]]
    return "\n".join(parts)


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.6em 0 1.0em}th,td{border:1px solid #ccc;padding:3px 6px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f0f0f0}img{max-width:100%;
margin:0.5em 1em 0.5em 0;border:1px solid #eee}.plots{display:flex;flex-wrap:wrap;align-items:flex-start}
.note{color:#555;font-size:13px}details{margin:0 0 1.4em}summary{cursor:pointer;color:#555;font-size:13px}"""


def _html_section(heading: str, rows: dict[str, dict]) -> list[str]:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in row_notes(rows))
    return [f"<h2>{html.escape(heading)}</h2>", _html_table(*table_rows(rows)),
            f"<details><summary>further metrics ({html.escape(heading.lower())})</summary>"
            f"{_html_table(*detail_rows(rows))}</details>", f"<ul class='note'>{notes}</ul>" if notes else ""]


def report_plots(result: dict, scored: dict[str, ScoredSet]) -> list[str]:
    """Base64 PNGs of the report, in reading order; plots with nothing to show are left out."""
    from diffsleuth.evaluation import plots

    clean = scored["clean"]
    family_of = {g: family for family, names in plots.families(clean).items() for g in names}
    images = [plots.roc_overview(clean), plots.roc_panels(clean),
              plots.bars_plot(shown_groups(result, "per_generator"), MIN_CI_COUNT, family_of),
              plots.reliability_plot(clean)]
    if "robustness" in result:
        images.append(plots.robustness_plot(result["robustness"]["summary"]))
    return [image for image in images if image]


def html_report(result: dict, scored: dict[str, ScoredSet], title: str) -> str:
    """A self-contained HTML page: the tables of the Markdown report plus embedded plots."""
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in report_plots(result, scored))
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>Detector <code>{html.escape(str(result.get('detector')))}</code> "
            f"({html.escape(str(result.get('detector_name')))}); "
            f"data {html.escape(', '.join(map(str, result.get('data', []))))};"
            f" equalisation {html.escape(str(result.get('equalize') or 'none'))}; "
            f"{result.get('n_bootstrap')} bootstrap resamples, seed {result.get('seed')}.</p>",
            f"<p class='note'>{html.escape(threshold_text(result))}</p>",
            f"<p class='note'>{html.escape(REALS_TEXT)}</p>",
            f"<div class='plots'>{images}</div>"]
    for heading, rows in _sections(result):
        body += _html_section(heading, rows)
    if "robustness" in result:
        body += ["<h2>Robustness (same degradation applied to both classes)</h2>",
                 _html_table(*robustness_rows(result["robustness"]["summary"]))]
        for condition, section in result["robustness"]["conditions"].items():
            if condition != "clean":
                rows = {"overall": section["overall"], **shown_groups(section, "per_generator")}
                body += [f"<h3>{html.escape(condition)}</h3>", _html_table(*table_rows(rows))]
    if result.get("notes"):
        body.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>")
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

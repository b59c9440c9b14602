// diffsleuth page, the result cards: one per file, headed by the row's verdict, never by a
// probability. Every string that comes from a file or from the server is set with textContent.
"use strict";

window.diffsleuthCards = (function () {
  const PROBABILITY = "P(generated)";
  // Keys every row has, or that the card shows on their own; the rest are the detector's extras.
  const KNOWN = new Set(["path", "score", "label", "error", "threshold", "verdict", "detector_verdict",
                         "declared", "declared_by", "provenance", "provenance_details", "score_map"]);
  const NOTES = {
    "generated": "The detector scored the pixels at or above its threshold.",
    "generated (declared)": "The file's metadata declares that it was generated.",
    "generated (claimed)": "The file's metadata says it was generated; no valid signature backs that claim.",
    "ai-edited (declared)": "The file's metadata declares that AI edited it.",
    "ai-edited (claimed)": "The file's metadata says AI edited it; no valid signature backs that claim.",
    "uncertain": "The score is in the band below the threshold, where camera photos also land: the detector cannot tell.",
    "outside the detector's domain": "The detector cannot judge this image: too small, not " +
      "photo-like, or unlike anything it was trained on.",
    "no trace found": "The detector found no trace of generation. That does not show the image is authentic.",
  };
  const BACKING = {
    "signed (trusted)": "signed (trusted signer)",
    "signed (untrusted signer)": "signed (signer on no trust list)",
    "signature invalid": "bare claim (signature invalid)",
    "unsigned": "bare claim (unsigned)",
  };
  const BACKING_NOTE = {
    "signed (trusted)": "A valid C2PA signature ties this declaration to a signer on the trust list.",
    "signed (untrusted signer)": "A valid C2PA signature ties this declaration to its signer's " +
      "certificate, but that signer is on no trust list this server knows.",
    "signature invalid": "The file's C2PA signature does not verify: its claims are worth no more " +
      "than text anyone could write.",
    "unsigned": "Unsigned metadata: text anyone can write into a file, or strip from it.",
  };
  const CLAIMS = { "generated": "generated", "ai-edited": "AI-edited", "camera": "camera capture" };
  const LONG_TOKEN = 24;  // a run of this many characters without a space may be broken anywhere

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Text whose long tokens (hashes, paths, URLs) may wrap anywhere; every other word stays whole.
  function wrapped(tag, className, text) {
    const node = el(tag, className);
    for (const part of String(text).split(/(\s+)/)) {
      if (part.length >= LONG_TOKEN && !/\s/.test(part)) node.appendChild(el("span", "token", part));
      else if (part) node.appendChild(document.createTextNode(part));
    }
    return node;
  }

  // A score to two places; three when two would hide which side of the threshold it is on.
  function scoreText(score, threshold) {
    const two = score.toFixed(2);
    if (typeof threshold === "number" && (parseFloat(two) >= threshold) !== (score >= threshold)) {
      return score.toFixed(3);
    }
    return two;
  }

  function thresholdText(t) {
    return String(parseFloat(t.toFixed(3)));
  }

  // The pixels' verdict; an older server sends only the label, which is never a headline itself.
  function pixelVerdict(row) {
    if (typeof row.detector_verdict === "string" && row.detector_verdict) return row.detector_verdict;
    return row.label === "generated" ? "generated" : "no trace found";
  }

  function headlineOf(row, pixels) {
    const verdict = typeof row.verdict === "string" && row.verdict ? row.verdict : pixels;
    return verdict === "real" ? "no trace found" : verdict;
  }

  function tone(verdict) {
    if (verdict.startsWith("generated")) return "generated";
    if (verdict.startsWith("ai-edited") || verdict === "uncertain") return "caution";
    if (verdict === "outside the detector's domain") return "outside";
    return "none";
  }

  function newCard(results, file) {
    const card = el("article", "card pending");
    card.setAttribute("data-testid", "pending");
    card.dataset.filename = file.name;
    card.setAttribute("aria-busy", "true");
    const figure = el("div", "thumb");
    const frame = el("span", "thumb-frame");  // shrink-wraps the image, so a map drawn over it fits
    const img = el("img");
    img.alt = "";
    img.decoding = "async";
    img.src = URL.createObjectURL(file);  // the person's own copy: nothing is fetched for it
    img.addEventListener("error", () => figure.classList.add("no-preview"));
    frame.appendChild(img);
    figure.append(frame, el("span", "no-preview-text", "no preview"));
    const body = el("div", "body");
    body.appendChild(el("h3", "name", file.name));
    body.appendChild(el("p", "status", "Waiting\u2026"));
    card.append(figure, body);
    results.appendChild(card);
    return card;
  }

  function finish(card) {
    card.classList.remove("pending");
    card.removeAttribute("aria-busy");
    card.setAttribute("data-testid", "result");
    card.querySelector(".status").remove();
  }

  function showError(card, reason) {
    finish(card);
    card.classList.add("error");
    card.dataset.label = "error";
    card.dataset.error = reason;
    const body = card.querySelector(".body");
    body.appendChild(el("p", "badge badge-error", "Could not score"));
    body.appendChild(el("p", "reason", reason));
  }

  // ctx: { threshold (from /health, or null), mapLabel, scale (score_maps.map_scale()) }
  function showRow(card, row, ctx) {
    if (row.error || typeof row.score !== "number") {
      showError(card, row.error || "no score");
      return;
    }
    finish(card);
    const used = typeof row.threshold === "number" ? row.threshold : ctx.threshold;
    const pixels = pixelVerdict(row);
    const verdict = headlineOf(row, pixels);
    card.dataset.score = String(row.score);
    card.dataset.label = row.label;
    card.dataset.verdict = verdict;
    card.classList.add("tone-" + tone(verdict));
    const body = card.querySelector(".body");

    const headline = el("p", "verdict-headline", verdict);
    headline.setAttribute("data-testid", "verdict");
    body.appendChild(headline);
    if (NOTES[verdict]) body.appendChild(el("p", "verdict-note", NOTES[verdict]));
    if (pixels !== verdict.split(" (")[0]) {  // a declaration the pixels agree with needs no second line
      const alone = el("p", "detector-verdict");
      alone.append(el("span", "caption", "The pixels alone: "), el("strong", null, pixels));
      body.appendChild(alone);
    }

    const score = el("p", "score");
    score.append(el("span", "caption", "Detector score "), el("span", "score-value", scoreText(row.score, used)));
    if (typeof used === "number") score.append(el("span", "caption", " \u00b7 threshold " + thresholdText(used)));
    body.appendChild(score);
    body.appendChild(scoreBar(row.score, used, pixels));

    addProvenance(body, row);
    addExtras(body, row);
    // A 1x1 map says nothing the score does not: only maps with several regions are drawn.
    const grid = row.score_map;
    if (Array.isArray(grid) && grid.length && Array.isArray(grid[0]) && grid.length * grid[0].length > 1) {
      addMap(card, grid, typeof used === "number" ? used : 0.5, ctx);
    }
  }

  function scoreBar(value, threshold, pixels) {
    const bar = el("div", "bar tone-" + tone(pixels));
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("aria-label", "Detector score");
    const fill = el("div", "fill");
    fill.style.width = (Math.min(1, Math.max(0, value)) * 100).toFixed(1) + "%";
    bar.appendChild(fill);
    if (typeof threshold === "number") {
      const tick = el("div", "tick");
      tick.style.left = (threshold * 100).toFixed(1) + "%";
      tick.title = "threshold " + thresholdText(threshold);
      bar.appendChild(tick);
    }
    return bar;
  }

  // The server may send the evidence as one string (lines joined by "; "), with its lines in
  // `provenance_details`, or as { summary, details }.
  function provenanceOf(row) {
    let summary = row.provenance;
    let details = row.provenance_details;
    if (summary && typeof summary === "object") {
      details = summary.details;
      summary = summary.summary;
    }
    summary = typeof summary === "string" && summary ? summary : null;
    if (!Array.isArray(details) || !details.length) details = summary ? summary.split("; ") : [];
    return { summary, details: details.map(String).filter((line) => line.trim()) };
  }

  function addProvenance(body, row) {
    const found = provenanceOf(row);
    const declared = typeof row.declared === "string" && row.declared ? row.declared : null;
    if (!declared && !found.details.length) return;
    const by = typeof row.declared_by === "string" ? row.declared_by : null;
    const claim = declared ? CLAIMS[declared] || declared : null;
    let line = "metadata found, nothing declared";
    if (declared) line = "declares " + claim + (BACKING[by] ? " \u00b7 " + BACKING[by] : "");
    const details = el("details", "provenance");
    details.setAttribute("data-testid", "provenance");
    const summary = el("summary");
    summary.append(el("span", "caption", "Provenance: "), el("span", "provenance-line", line));
    details.appendChild(summary);
    if (declared && BACKING_NOTE[by]) details.appendChild(el("p", "backing", BACKING_NOTE[by]));
    if (!declared) details.appendChild(el("p", "backing", "Nothing here declares how the image was made."));
    const list = el("ul");
    for (const item of found.details) list.appendChild(wrapped("li", null, item));
    details.appendChild(list);
    body.appendChild(details);
  }

  function addExtras(body, row) {
    const extras = Object.keys(row).filter((k) => !KNOWN.has(k));
    if (!extras.length) return;
    const details = el("details", "extras");
    details.appendChild(el("summary", null, "Detector details"));
    const list = el("dl");
    for (const key of extras) list.append(el("dt", null, key), wrapped("dd", null, formatValue(row[key])));
    details.appendChild(list);
    body.appendChild(details);
  }

  function formatValue(v) {
    return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v);
  }

  // Opacity of one cell: the scale of detectors/score_maps.py (cell_alpha), handed over by the server.
  function cellAlpha(v, threshold, probability, low, span, scale) {
    if (!Number.isFinite(v)) return 0;
    if (!probability) return scale.alpha_max * Math.min(1, Math.max(0, (v - low) / (span || 1)));
    if (v < threshold) return 0;
    const rise = threshold < 1 ? Math.min(1, Math.max(0, (v - threshold) / (1 - threshold))) : 1;
    return scale.alpha_at_threshold + (scale.alpha_max - scale.alpha_at_threshold) * rise;
  }

  function addMap(card, grid, threshold, ctx) {
    const scale = ctx.scale;
    const rows = grid.length;
    const cols = grid[0].length;
    const probability = ctx.mapLabel === PROBABILITY;
    const values = grid.flat().map(Number).filter(Number.isFinite);
    const low = values.length ? Math.min(...values) : 0;
    const span = values.length ? Math.max(...values) - low : 0;
    const rgb = probability ? scale.generated_rgb : scale.other_rgb;
    const canvas = el("canvas", "score-map");
    canvas.setAttribute("data-testid", "score-map");
    canvas.width = cols;
    canvas.height = rows;
    canvas.hidden = true;
    const ctx2d = canvas.getContext("2d");
    const pixels = ctx2d.createImageData(cols, rows);
    let highlighted = 0;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const alpha = cellAlpha(Number(grid[r][c]), threshold, probability, low, span, scale);
        const i = (r * cols + c) * 4;
        pixels.data.set([rgb[0], rgb[1], rgb[2], Math.round(alpha * 255)], i);
        if (alpha > 0) highlighted += 1;
      }
    }
    ctx2d.putImageData(pixels, 0, 0);
    const text = legendText(probability, threshold, highlighted, ctx.mapLabel);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Score map, " + rows + " by " + cols + " regions: " + text);
    card.querySelector(".thumb-frame").appendChild(canvas);
    const toggle = el("button", "map-toggle", "Show score map");
    toggle.type = "button";
    toggle.setAttribute("aria-pressed", "false");
    const legend = el("p", "map-legend", "Map: " + text);
    legend.hidden = true;
    toggle.addEventListener("click", () => {
      const on = canvas.hidden;
      canvas.hidden = legend.hidden = !on;
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Hide score map" : "Show score map";
    });
    card.querySelector(".body").append(toggle, legend);
  }

  function legendText(probability, threshold, highlighted, label) {
    if (!probability) {
      return label + ", shaded from clear (lowest in this image) to strongest (highest); not a probability.";
    }
    if (!highlighted) return "no region reached the threshold (" + thresholdText(threshold) + "): nothing is highlighted.";
    return "red regions looked generated (their score reached the threshold, " + thresholdText(threshold) +
      "); the stronger the red, the higher. Clear regions did not.";
  }

  return { el, newCard, showError, showRow, thresholdText };
})();

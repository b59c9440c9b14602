// diffsleuth page: send the person's images to /v1/scan in batches and show one card per file.
// Every string that comes from a file or from the server is set with textContent, never as HTML.
"use strict";

(function () {
  const app = document.getElementById("app");
  const maxFiles = Math.max(1, parseInt(app.dataset.maxFiles, 10) || 16);
  const maxRequestBytes = parseInt(app.dataset.maxRequestBytes, 10) || Infinity;
  // room for the multipart framing around the files (boundaries, part headers, file names)
  const FRAMING = 4096;
  const PART_FRAMING = 1024;
  const maxFileBytes = Math.min(parseInt(app.dataset.maxFileBytes, 10) || 50 * 1024 * 1024,
                                maxRequestBytes - FRAMING - PART_FRAMING);
  const BATCH_FILES = Math.min(maxFiles, 8);        // small batches: results appear as they come
  const BATCH_BYTES = Math.min(32 * 1024 * 1024, maxRequestBytes - FRAMING);
  const RETRIES = 3;
  const mapLabel = app.dataset.scoreMapLabel || "P(generated)";  // what a score-map cell holds
  // Keys every row has, or that the page shows on their own; the rest are the detector's extras.
  const KNOWN = new Set(["path", "score", "label", "error", "threshold", "verdict", "declared",
                         "provenance", "score_map"]);

  const input = document.getElementById("file-input");
  const results = document.getElementById("results");
  const empty = document.getElementById("empty");
  const clearButton = document.getElementById("clear");
  const progress = document.getElementById("progress");
  const progressBar = document.getElementById("progress-bar");
  const progressText = document.getElementById("progress-text");
  let threshold = null;
  const queue = [];
  let running = false;
  let oneAtATime = false;  // set after a 413 on a batch: the server's request limit is below ours
  let done = 0;
  let total = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function formatBytes(n) {
    return n >= 1048576 ? (n / 1048576).toFixed(0) + " MB" : Math.ceil(n / 1024) + " KB";
  }

  // ---- detector info -------------------------------------------------------------------------
  fetch("/health").then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((info) => {
    threshold = typeof info.threshold === "number" ? info.threshold : null;
    const where = document.getElementById("detector");
    where.textContent = "Detector: " + info.detector +
      (threshold === null ? "" : " \u00b7 labelled generated at a score of " + thresholdPct(threshold) + " or more");
    if (threshold !== null) document.getElementById("threshold-text").textContent = thresholdPct(threshold);
  }).catch(() => {
    document.getElementById("detector").textContent = "The detector did not answer; is the server running?";
  });
  if (app.dataset.hasModelCard !== "true") {
    const link = document.getElementById("model-card-link");
    link.replaceWith(el("span", null, "model card (this detector ships none)"));
  }

  function pct(p) {
    const v = p * 100;
    return (v > 0 && v < 1 ? v.toFixed(1) : Math.round(v)) + "%";
  }

  // A threshold to one decimal (50.3%, not 50%): a score of 50.2% is then visibly below it.
  function thresholdPct(t) {
    return parseFloat((t * 100).toFixed(1)) + "%";
  }

  // ---- cards -----------------------------------------------------------------------------------
  function newCard(file) {
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
    empty.hidden = true;
    clearButton.hidden = false;
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

  function showRow(card, row) {
    if (row.error || typeof row.score !== "number") {
      showError(card, row.error || "no score");
      return;
    }
    finish(card);
    const used = typeof row.threshold === "number" ? row.threshold : threshold;
    card.dataset.score = String(row.score);
    card.dataset.label = row.label;
    card.classList.add(row.label === "generated" ? "is-generated" : "is-real");
    const body = card.querySelector(".body");

    const score = el("p", "score");
    score.append(el("span", "pct-caption", "Estimated chance it was generated"), el("span", "pct", pct(row.score)));
    body.appendChild(score);

    const bar = el("div", "bar");
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(Math.round(row.score * 100)));
    bar.setAttribute("aria-label", "Score");
    const fill = el("div", "fill");
    fill.style.width = (Math.min(1, Math.max(0, row.score)) * 100).toFixed(1) + "%";
    bar.appendChild(fill);
    if (typeof used === "number") {
      const tick = el("div", "tick");
      tick.style.left = (used * 100).toFixed(1) + "%";
      tick.title = "threshold " + thresholdPct(used);
      bar.appendChild(tick);
    }
    body.appendChild(bar);

    body.appendChild(el("p", "badge badge-" + (row.label === "generated" ? "generated" : "real"),
      row.label + (typeof used === "number" ? " (threshold " + thresholdPct(used) + ")" : "")));

    // The verdict is the label unless the file declares itself generated: then it says so.
    if (row.verdict && row.verdict !== row.label) {
      body.appendChild(el("p", "verdict", "Verdict: " + row.verdict));
    }
    if (row.declared || row.provenance) {
      const evidence = el("dl", "evidence");
      addTerm(evidence, "Declared in the file", row.declared);
      addTerm(evidence, "Provenance", row.provenance);
      body.appendChild(evidence);
    }

    const extras = Object.keys(row).filter((k) => !KNOWN.has(k));
    if (extras.length) {
      const details = el("details", "extras");
      details.appendChild(el("summary", null, "Detector details"));
      const list = el("dl");
      for (const key of extras) addTerm(list, key, formatValue(row[key]));
      details.appendChild(list);
      body.appendChild(details);
    }

    // A 1x1 map says nothing the score does not: only maps with several regions are drawn.
    const grid = row.score_map;
    if (Array.isArray(grid) && grid.length && Array.isArray(grid[0]) && grid.length * grid[0].length > 1) {
      addMap(card, grid);
    }
  }

  function addTerm(list, term, value) {
    if (value === undefined || value === null || value === "") return;
    list.append(el("dt", null, term), el("dd", null, value));
  }

  function formatValue(v) {
    return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v);
  }

  function addMap(card, grid) {
    const rows = grid.length;
    const cols = grid[0].length;
    const probability = mapLabel === "P(generated)";
    const values = grid.flat().map((v) => Number(v) || 0);
    // a map of probabilities is drawn on [0, 1]; any other quantity on its own range
    const low = probability ? 0 : Math.min(...values);
    const span = probability ? 1 : Math.max(...values) - low || 1;
    const canvas = el("canvas", "score-map");
    canvas.setAttribute("data-testid", "score-map");
    canvas.width = cols;
    canvas.height = rows;
    canvas.hidden = true;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Score map, " + rows + " by " + cols + " regions: " + legendText(probability));
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const p = Math.min(1, Math.max(0, ((Number(grid[r][c]) || 0) - low) / span));
        const i = (r * cols + c) * 4;
        if (probability) {
          // diverging: red where a region looked generated, blue where it looked real, the
          // stronger the further from 50%; an undecided region leaves the image almost clear
          const generated = p >= 0.5;
          pixels.data[i] = generated ? 220 : 30;
          pixels.data[i + 1] = generated ? 30 : 90;
          pixels.data[i + 2] = generated ? 30 : 230;
          pixels.data[i + 3] = Math.round(20 + 190 * Math.abs(p - 0.5) * 2);
        } else {
          // another quantity: dark purple (its lowest) to yellow (its highest), half transparent
          pixels.data[i] = Math.round(70 + 183 * p);
          pixels.data[i + 1] = Math.round(10 + 221 * p);
          pixels.data[i + 2] = Math.round(110 - 75 * p);
          pixels.data[i + 3] = 150;
        }
      }
    }
    ctx.putImageData(pixels, 0, 0);
    card.querySelector(".thumb-frame").appendChild(canvas);
    const toggle = el("button", "map-toggle", "Show score map");
    toggle.type = "button";
    toggle.setAttribute("aria-pressed", "false");
    const legend = el("p", "map-legend", "Map: " + legendText(probability));
    legend.hidden = true;
    toggle.addEventListener("click", () => {
      const on = canvas.hidden;
      canvas.hidden = legend.hidden = !on;
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Hide score map" : "Show score map";
    });
    card.querySelector(".body").append(toggle, legend);
  }

  function legendText(probability) {
    return probability
      ? "red regions looked generated, blue ones real; the stronger the colour, the surer the detector."
      : mapLabel + ", from dark (lowest in this image) to yellow (highest); not a probability.";
  }

  // ---- sending ---------------------------------------------------------------------------------
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const file of files) {
      const card = newCard(file);
      if (file.size > maxFileBytes) {
        showError(card, "larger than " + formatBytes(maxFileBytes) + ", the most the server accepts");
        continue;
      }
      queue.push({ file, card });
      total += 1;
    }
    updateProgress();
    if (!running) run();
  }

  function nextBatch() {
    const batch = [];
    let bytes = 0;
    const most = oneAtATime ? 1 : BATCH_FILES;
    while (queue.length && batch.length < most &&
           (batch.length === 0 || bytes + queue[0].file.size + PART_FRAMING <= BATCH_BYTES)) {
      const item = queue.shift();
      bytes += item.file.size + PART_FRAMING;
      batch.push(item);
    }
    return batch;
  }

  async function post(batch) {
    const form = new FormData();
    for (const item of batch) form.append("files", item.file, item.file.name);
    for (let attempt = 0; ; attempt++) {
      const response = await fetch("/v1/scan", { method: "POST", body: form });
      if (response.status === 503 && attempt < RETRIES) {
        const wait = Math.min(10, parseFloat(response.headers.get("Retry-After")) || 1 + attempt);
        progressText.textContent = "The server is busy; retrying in " + wait + " s\u2026";
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        continue;
      }
      return response;
    }
  }

  async function detail(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
    } catch (e) { /* not JSON */ }
    return "the server answered " + response.status;
  }

  async function run() {
    running = true;
    while (queue.length) {
      const batch = nextBatch();
      for (const item of batch) item.card.querySelector(".status").textContent = "Scoring\u2026";
      try {
        const response = await post(batch);
        if (response.status === 413 && batch.length > 1) {
          queue.unshift(...batch);  // send these again, one at a time
          for (const item of batch) item.card.querySelector(".status").textContent = "Waiting\u2026";
          oneAtATime = true;
          continue;
        }
        if (!response.ok) {
          const reason = await detail(response);
          for (const item of batch) showError(item.card, reason);
        } else {
          const rows = await response.json();
          batch.forEach((item, i) => (rows[i] ? showRow(item.card, rows[i]) : showError(item.card, "no result")));
        }
      } catch (e) {
        for (const item of batch) showError(item.card, "could not reach the server (" + e.message + ")");
      }
      done += batch.length;
      updateProgress();
    }
    running = false;
    updateProgress();
  }

  function updateProgress() {
    if (total === 0) { progress.hidden = true; return; }
    progress.hidden = false;
    progressBar.max = total;
    progressBar.value = done;
    progressText.textContent = done < total ? "Scored " + done + " of " + total + "\u2026"
                                            : "Scored " + total + " image" + (total === 1 ? "" : "s") + ".";
    app.dataset.busy = String(done < total);
  }

  // ---- input: chooser, drop, paste -------------------------------------------------------------
  document.getElementById("choose").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });

  const drop = document.getElementById("drop");
  // Dropping anywhere on the page scores the files rather than navigating away to them.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");  // the drag left the window
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer) addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });

  clearButton.addEventListener("click", () => {
    for (const card of results.querySelectorAll(".card:not(.pending)")) {
      const img = card.querySelector("img");
      if (img) URL.revokeObjectURL(img.src);
      card.remove();
    }
    if (!results.children.length) {
      empty.hidden = false;
      clearButton.hidden = true;
      done = total = 0;
      updateProgress();
    }
    document.getElementById("choose").focus();
  });
})();

// diffsleuth page: send the person's images to /v1/scan in batches, showing the bytes as they go,
// and show one card per file (cards.js). Every string from a file or the server is set as text.
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
  const cards = window.diffsleuthCards;
  const view = {
    threshold: null,
    mapLabel: app.dataset.scoreMapLabel || "P(generated)",  // what a score-map cell holds
    scale: JSON.parse(app.dataset.mapScale),                // detectors/score_maps.py's colour scale
  };

  const input = document.getElementById("file-input");
  const results = document.getElementById("results");
  const empty = document.getElementById("empty");
  const clearButton = document.getElementById("clear");
  const progress = document.getElementById("progress");
  const progressBar = document.getElementById("progress-bar");
  const progressText = document.getElementById("progress-text");
  const queue = [];
  let running = false;
  let oneAtATime = false;  // set after a 413 on a batch: the server's request limit is below ours
  let done = 0;        // files answered
  let total = 0;       // files to send
  let sentBytes = 0;   // bytes of the files in batches sent whole
  let totalBytes = 0;  // bytes of every file to send
  let sending = null;  // { files, bytes, fraction } of the batch on its way

  function formatBytes(n) {
    if (n >= 1000 * 1024) return (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MB";
    return Math.ceil(n / 1024) + " KB";
  }

  // ---- detector info -------------------------------------------------------------------------
  fetch("/health").then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((info) => {
    const threshold = typeof info.threshold === "number" ? info.threshold : null;
    view.threshold = threshold;
    const where = document.getElementById("detector");
    where.textContent = "Detector: " + info.detector + (threshold === null ? ""
      : " \u00b7 verdict generated at a detector score of " + cards.thresholdText(threshold) + " or more");
    if (threshold !== null) document.getElementById("threshold-text").textContent = cards.thresholdText(threshold);
  }).catch(() => {
    document.getElementById("detector").textContent = "The detector did not answer; is the server running?";
  });
  if (app.dataset.hasModelCard !== "true") {
    const link = document.getElementById("model-card-link");
    link.replaceWith(cards.el("span", null, "model card (this detector ships none)"));
  }
  // The example runs against this very server.
  document.getElementById("curl-example").textContent =
    "curl -F files=@photo.jpg -F files=@other.png " + location.origin + "/v1/scan";

  // ---- sending ---------------------------------------------------------------------------------
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const file of files) {
      const card = cards.newCard(results, file);
      empty.hidden = true;
      clearButton.hidden = false;
      if (file.size > maxFileBytes) {
        cards.showError(card, "larger than " + formatBytes(maxFileBytes) + ", the most the server accepts");
        continue;
      }
      queue.push({ file, card });
      total += 1;
      totalBytes += file.size;
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

  // One POST by XMLHttpRequest, whose upload events (fetch has none) report the bytes as they go.
  function send(form) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/scan");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable && event.total > 0) sent(event.loaded / event.total);
      });
      xhr.upload.addEventListener("load", () => sent(1));
      xhr.addEventListener("load", () => resolve({
        status: xhr.status, ok: xhr.status >= 200 && xhr.status < 300,
        retryAfter: xhr.getResponseHeader("Retry-After"), text: xhr.responseText,
      }));
      xhr.addEventListener("error", () => reject(new Error("the connection failed")));
      xhr.addEventListener("abort", () => reject(new Error("the request was cut off")));
      xhr.send(form);
    });
  }

  function sent(fraction) {
    if (sending) sending.fraction = Math.max(sending.fraction, Math.min(1, fraction));
    updateProgress();
  }

  async function post(batch) {
    const form = new FormData();
    for (const item of batch) form.append("files", item.file, item.file.name);
    const bytes = batch.reduce((sum, item) => sum + item.file.size, 0);
    for (let attempt = 0; ; attempt++) {
      sending = { files: batch.length, bytes, fraction: 0 };
      updateProgress();
      const response = await send(form);
      if (response.status === 503 && attempt < RETRIES) {
        const wait = Math.min(10, parseFloat(response.retryAfter) || 1 + attempt);
        sending = null;
        progressText.textContent = "The server is busy; retrying in " + wait + " s\u2026";
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        continue;
      }
      return response;
    }
  }

  function detail(response) {
    try {
      const body = JSON.parse(response.text);
      if (typeof body.detail === "string") return body.detail;
    } catch (e) { /* not JSON */ }
    return "the server answered " + response.status;
  }

  async function run() {
    running = true;
    while (queue.length) {
      const batch = nextBatch();
      for (const item of batch) item.card.querySelector(".status").textContent = "Sending\u2026";
      try {
        const response = await post(batch);
        if (response.status === 413 && batch.length > 1) {
          queue.unshift(...batch);  // send these again, one at a time
          for (const item of batch) item.card.querySelector(".status").textContent = "Waiting\u2026";
          oneAtATime = true;
          sending = null;
          continue;
        }
        if (!response.ok) {
          const reason = detail(response);
          for (const item of batch) cards.showError(item.card, reason);
        } else {
          const rows = JSON.parse(response.text);
          batch.forEach((item, i) => (rows[i] ? cards.showRow(item.card, rows[i], view)
                                              : cards.showError(item.card, "no result")));
        }
      } catch (e) {
        for (const item of batch) cards.showError(item.card, "could not reach the server (" + e.message + ")");
      }
      sentBytes += batch.reduce((sum, item) => sum + item.file.size, 0);
      sending = null;
      done += batch.length;
      updateProgress();
    }
    running = false;
    updateProgress();
  }

  // The bar counts the bytes sent; the text says what is happening to them.
  function updateProgress() {
    if (total === 0) { progress.hidden = true; return; }
    progress.hidden = false;
    const inFlight = sending ? sending.bytes * sending.fraction : 0;
    progressBar.max = Math.max(1, totalBytes);
    progressBar.value = Math.min(totalBytes, sentBytes + inFlight);
    let text;
    if (done >= total) {
      text = "Scored " + total + " image" + (total === 1 ? "" : "s") + ".";
    } else if (sending && sending.fraction < 1) {
      text = "Sending " + sending.files + " image" + (sending.files === 1 ? "" : "s") + ": " +
        formatBytes(inFlight) + " of " + formatBytes(sending.bytes) + " (" + done + " of " + total + " scored)\u2026";
    } else {
      text = "Scoring\u2026 (" + done + " of " + total + " done)";
    }
    progressText.textContent = text;
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
      done = total = sentBytes = totalBytes = 0;
      updateProgress();
    }
    document.getElementById("choose").focus();
  });
})();

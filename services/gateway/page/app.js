// The imgqueue page: submit images through the public API and watch their results arrive.
// No framework, no build step. Results come from GET /v1/events read with fetch, since
// EventSource cannot send the Authorization header; a job's event says it ended, then
// GET /v1/jobs/{id} reads its result.
"use strict";

const KEY_STORE = "imgqueue.apiKey"; // sessionStorage: gone when the tab closes
const TOP_K = 5;
const DEPTH_EVERY_MS = 2000;
const RECONNECT_MS = 2000;
const CHECK_AFTER_MS = 10000; // a job without news this long is read directly (missed event?)
const SEEN_MAX = 1000;

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  cards: new Map(), // job id -> card
  ended: new Set(), // ids the stream said ended before their card existed
  files: [],
  lastEventId: null,
  stream: null, // AbortController of the open stream
  streamReady: null, // resolves once the stream's headers arrived
  depthTimer: null,
  checkTimer: null,
  count: 0,
};

// -- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, type, detail) {
    super(detail);
    this.status = status;
    this.type = type;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Network", "the gateway cannot be reached");
  }
  if (!response.ok) {
    let type = "HTTP", detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      type = problem.type || type;
      detail = problem.detail || detail;
    } catch (_) { /* not problem+json */ }
    throw new ApiError(response.status, type, detail);
  }
  return response;
}

// -- the key -----------------------------------------------------------------------------

function setStatus(element, text, kind) {
  element.textContent = text;
  element.dataset.kind = kind || "";
}

function showMessage(text) {
  setStatus($("message"), text, text ? "error" : "");
}

async function useKey(key) {
  state.key = key;
  stopLive();
  try {
    await refreshDepth();
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      state.key = "";
      setStatus($("key-status"), `That key was refused: ${error.message}.`, "error");
      return;
    }
    if (error.status !== 403) { // 403: the key is fine, the queue is not among its queues
      setStatus($("key-status"), `Could not check the key: ${error.message}.`, "error");
      return;
    }
  }
  sessionStorage.setItem(KEY_STORE, key);
  setStatus($("key-status"), "Key accepted. Results of this key's jobs appear below.", "ok");
  startLive();
}

function forgetKey() {
  stopLive();
  sessionStorage.removeItem(KEY_STORE);
  state.key = "";
  $("key").value = "";
  setStatus($("key-status"), "Key forgotten.", "");
  setDepth("Queue depth: sign in to see it", "unknown");
}

// -- queue depth -------------------------------------------------------------------------

function queueName() {
  return $("queue").value.trim() || "celery";
}

function setDepth(text, kind) {
  const element = $("depth");
  element.textContent = text;
  element.dataset.state = kind;
}

async function refreshDepth() {
  const name = queueName();
  try {
    const response = await api(`v1/queues/${encodeURIComponent(name)}`);
    const queue = await response.json();
    const limit = queue.limit === null ? "" : ` (limit ${queue.limit})`;
    setDepth(`Queue ${queue.name}: ${queue.depth} waiting${limit}`, "known");
  } catch (error) {
    setDepth(`Queue ${name}: ${error.message}`, "error");
    throw error;
  }
}

// -- live results --------------------------------------------------------------------------

function startLive() {
  const controller = new AbortController();
  state.stream = controller;
  let opened;
  state.streamReady = new Promise((resolve) => { opened = resolve; });
  follow(controller, opened);
  state.depthTimer = setInterval(() => {
    if (!document.hidden) refreshDepth().catch(() => {});
  }, DEPTH_EVERY_MS);
  state.checkTimer = setInterval(checkQuiet, CHECK_AFTER_MS / 2);
}

function stopLive() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.streamReady = null;
  clearInterval(state.depthTimer);
  clearInterval(state.checkTimer);
  setStatus($("stream-status"), "Not connected", "");
}

// Reads the SSE stream until it is aborted, reconnecting after a drop with Last-Event-ID.
async function follow(controller, opened) {
  try {
    while (!controller.signal.aborted) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        const response = await api("v1/events", { headers, signal: controller.signal });
        setStatus($("stream-status"), "Live", "ok");
        opened();
        checkAll(); // anything that ended while the stream was down
        await readEvents(response.body, controller.signal);
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error.status === 401) {
          setStatus($("key-status"), `The key stopped working: ${error.message}.`, "error");
          stopLive();
          return;
        }
      }
      if (controller.signal.aborted) return;
      setStatus($("stream-status"), "Reconnecting…", "warn");
      opened(); // a submit need not wait: checkQuiet reads what the stream misses
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  } finally {
    opened(); // never leave a submit waiting on a stream that is gone
  }
}

async function readEvents(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatch(block);
    }
  }
}

function dispatch(block) {
  let id = null, kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") kind = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
  }
  if (id) state.lastEventId = id;
  if (kind !== "job" || !data) return;
  const event = JSON.parse(data);
  const card = state.cards.get(event.id);
  if (card) {
    loadResult(card);
  } else {
    state.ended.add(event.id); // its card may not exist yet: the submit's answer is on its way
    if (state.ended.size > SEEN_MAX) state.ended.delete(state.ended.values().next().value);
  }
  refreshDepth().catch(() => {});
}

// Jobs that have heard nothing for a while are read directly: an event can be missed while
// the stream reconnects.
function checkQuiet() {
  const now = Date.now();
  for (const card of state.cards.values()) {
    if (!card.done && now - card.since > CHECK_AFTER_MS) loadResult(card);
  }
}

function checkAll() {
  for (const card of state.cards.values()) if (!card.done) loadResult(card);
}

async function loadResult(card) {
  card.since = Date.now();
  try {
    const response = await api(`v1/jobs/${encodeURIComponent(card.id)}`);
    const job = await response.json();
    renderJob(card, job);
  } catch (error) {
    setText(card.stateLine, `Could not read the result: ${error.message}`);
  }
}

// -- submitting ----------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  showMessage("");
  if (!state.key) {
    showMessage("Enter your API key first.");
    $("key").focus();
    return;
  }
  const urls = $("urls").value.split("\n").map((line) => line.trim()).filter(Boolean);
  const files = state.files.slice();
  if (!urls.length && !files.length) {
    showMessage("Paste an image URL or choose an image file.");
    return;
  }
  const button = $("submit");
  button.disabled = true;
  try {
    if (state.streamReady) await state.streamReady; // its events must follow the stream's start
    const queue = $("queue").value.trim();
    if (urls.length) {
      const body = { sources: urls, top_k: TOP_K };
      if (queue) body.queue = queue;
      const response = await api("v1/jobs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      addCards(await response.json(), urls.map((url) => ({ label: url, src: url })));
      $("urls").value = "";
    }
    if (files.length) {
      const form = new FormData();
      for (const file of files) form.append("file", file, file.name);
      const query = new URLSearchParams({ top_k: String(TOP_K) });
      if (queue) query.set("queue", queue);
      const response = await api(`v1/jobs?${query}`, { method: "POST", body: form });
      const shown = files.map((file) => ({ label: file.name, src: URL.createObjectURL(file) }));
      addCards(await response.json(), shown);
      setFiles([]);
    }
    refreshDepth().catch(() => {});
  } catch (error) {
    showMessage(`Not submitted: ${error.message}.`);
  } finally {
    button.disabled = false;
  }
}

function setFiles(files) {
  state.files = files.filter((file) => file.type.startsWith("image/") || !file.type);
  if (!files.length) $("files").value = "";
  $("drop-hint").textContent = state.files.length
    ? `${state.files.length} file(s) ready: ${state.files.map((f) => f.name).join(", ")}`
    : "You can also drop images here.";
}

// -- the cards -----------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  node.textContent = text;
}

function addCards(answer, shown) {
  const ids = answer.ids || (answer.id ? [answer.id] : []);
  ids.forEach((id, index) => {
    const item = shown[index] || { label: id, src: "" };
    const card = makeCard(id, item);
    state.cards.set(id, card);
    $("results").prepend(card.root);
    if (state.ended.delete(id)) loadResult(card);
  });
  updateProgress();
}

function makeCard(id, item) {
  state.count += 1;
  const root = element("li", "card");
  root.id = `job-${id}`;
  root.dataset.state = "PENDING";
  root.setAttribute("aria-busy", "true");
  const figure = element("figure", "thumb");
  if (item.src) {
    const img = element("img");
    img.alt = `Image ${state.count}: ${shortName(item.label)}`;
    img.src = item.src;
    img.loading = "lazy";
    img.referrerPolicy = "no-referrer";
    img.addEventListener("error", () => figure.classList.add("broken"));
    figure.append(img);
  }
  const body = element("div", "card-body");
  const title = element("h3", "source", shortName(item.label));
  title.title = item.label;
  const stateLine = element("p", "state", "Waiting in the queue…");
  const model = element("p", "model");
  const warning = element("p", "warning");
  warning.hidden = true;
  const bars = element("ol", "bars");
  bars.setAttribute("aria-label", `Top ${TOP_K} predictions`);
  body.append(title, stateLine, warning, bars, model);
  root.append(figure, body);
  return { id, root, stateLine, model, warning, bars, done: false, since: Date.now() };
}

function shortName(label) {
  try {
    const url = new URL(label);
    return decodeURIComponent(url.pathname.split("/").pop() || url.host);
  } catch (_) {
    return label;
  }
}

const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
const STATE_TEXT = {
  PENDING: "Waiting in the queue…",
  STARTED: "Running…",
  RETRY: "Retrying (a fetch failed)…",
};

function renderJob(card, job) {
  card.root.dataset.state = job.state;
  if (!FINAL.has(job.state)) {
    setText(card.stateLine, STATE_TEXT[job.state] || job.state);
    return;
  }
  card.done = true;
  card.root.setAttribute("aria-busy", "false");
  if (job.state === "SUCCESS" && job.result) {
    renderResult(card, job.result);
  } else {
    const error = job.error || { type: job.state, message: "" };
    const verb = job.state === "REVOKED" ? "Cancelled" : "Failed";
    setText(card.stateLine, `${verb}: ${error.type}${error.message ? ` (${error.message})` : ""}`);
  }
  updateProgress();
}

function renderResult(card, result) {
  const predictions = (result.predictions || []).slice(0, TOP_K);
  // Random or stand-in weights make labels meaningless: say so, and never show them as real.
  const notReal = Boolean(result.warning) || result.pretrained === false;
  card.root.classList.toggle("not-real", notReal);
  setText(card.stateLine, notReal ? "Done: these labels are NOT real predictions" : "Done");
  if (notReal) {
    card.warning.hidden = false;
    setText(card.warning, `Warning: ${result.warning || "these weights are not trained"}`);
  }
  const parts = [`Model ${result.model || "?"}`, `weights ${result.weights || "?"}`];
  if (result.cached) parts.push("cached");
  setText(card.model, parts.join(" · "));
  card.bars.replaceChildren(...predictions.map(bar));
}

function bar(prediction) {
  const p = Math.max(0, Math.min(1, Number(prediction.probability) || 0));
  const row = element("li", "bar-row");
  const label = element("span", "label", prediction.label);
  label.title = prediction.label;
  const track = element("span", "track");
  track.setAttribute("aria-hidden", "true");
  const fill = element("span", "fill");
  fill.style.width = `${(p * 100).toFixed(2)}%`; // CSSOM, which the page's CSP allows
  track.append(fill);
  const percent = p >= 0.01 ? (p * 100).toFixed(1) : (p * 100).toFixed(2);
  row.append(label, track, element("span", "prob", `${percent}%`));
  return row;
}

function updateProgress() {
  const cards = [...state.cards.values()];
  const done = cards.filter((card) => card.done).length;
  setText($("progress"), cards.length ? `${done} of ${cards.length} done` : "");
}

// -- wiring --------------------------------------------------------------------------------

function init() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) {
      setStatus($("key-status"), "Enter an API key (imgqueue keys create --tenant NAME).", "error");
      return;
    }
    setStatus($("key-status"), "Checking the key…", "");
    useKey(key);
  });
  $("forget").addEventListener("click", forgetKey);
  $("submit-form").addEventListener("submit", submit);
  $("files").addEventListener("change", () => setFiles([...$("files").files]));
  $("queue").addEventListener("change", () => {
    if (state.key) refreshDepth().catch(() => {});
  });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    setFiles([...event.dataTransfer.files]);
  });
  if (state.key) {
    $("key").value = state.key;
    useKey(state.key);
  }
}

init();

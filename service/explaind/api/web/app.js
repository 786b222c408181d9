// explaind's page: the gateway's JSON API only (GET /v1/models, /v1/methods, /v1/metrics,
// POST /v1/models/{name}:explainStream as server-sent events). Plain JS, no build step, no network
// beyond the server that served it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, image: null, methods: [], metrics: [] };

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const token = $("token").value.trim();
  if (token) h.authorization = "Bearer " + token;
  return h;
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers(false) });
  const body = await response.json();
  if (!response.ok) throw new Error(errorText(body, response.status));
  return body;
}

function errorText(body, status) {
  const e = body && body.error;
  return e ? `${e.status} (HTTP ${e.code}): ${e.message}` : `HTTP ${status}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function base64ToBytes(text) {
  const raw = atob(text || "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// A Tensor's JSON (dtype FLOAT32, shape as strings, data base64 little-endian) as {shape, values}.
function tensorValues(tensor) {
  const bytes = base64ToBytes(tensor.data);
  const view = new DataView(bytes.buffer);
  const values = new Array(bytes.length / 4);
  for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
  return { shape: (tensor.shape || []).map(Number), values };
}

// Models, methods, metrics -----------------------------------------------------------------------

async function loadModels() {
  const { models = [] } = await getJson("/v1/models");
  state.models = models.filter((m) => m.status === "READY");
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) select.add(new Option(`${m.name} (${(m.kind || "").toLowerCase()})`, m.name));
  if (state.models.length) await chooseModel(state.models[0].name);
  else showError("no model is READY on this server");
}

async function chooseModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const m = state.model;
  $("model-info").textContent = `${(m.labels || []).length} classes` + (m.whiteBox ? ", white box" : ", black box");
  const image = m.kind === "IMAGE";
  $("image-input").hidden = !image;
  $("preview").hidden = !image || !state.image;
  $("tabular-input").hidden = image;
  if (!image) {
    const n = m.numFeatures || (m.featureNames || []).length;
    if ($("row").dataset.model !== name) $("row").value = new Array(n).fill("0").join(", ");
    $("row").dataset.model = name;
    $("feature-names").textContent = (m.featureNames || []).join(", ");
  }
  const [{ methods = [] }, { metrics = [] }] = await Promise.all([
    getJson(`/v1/methods?model=${encodeURIComponent(name)}`), getJson(`/v1/metrics?model=${encodeURIComponent(name)}`)]);
  state.methods = methods;
  state.metrics = metrics.filter((x) => !x.needsRegion);
  const defaults = image ? ["saliency", "grad_cam", "occlusion"] : ["tree_shap", "occlusion", "kernel_shap"];
  fill($("methods"), "method", methods.map((x) => x.name), defaults, (x) => (methods.find((y) => y.name === x) || {}).title);
  fill($("metrics"), "metric", state.metrics.map((x) => x.name), [], (x) => (state.metrics.find((y) => y.name === x) || {}).title);
}

function fill(box, kind, names, ticked, title) {
  box.innerHTML = "";
  for (const name of names) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = name;
    input.name = kind;
    input.checked = ticked.includes(name);
    label.title = title(name) || "";
    label.append(input, " " + name);
    box.append(label);
  }
}

function ticked(box) {
  return [...box.querySelectorAll("input:checked")].map((x) => x.value);
}

// Inputs -----------------------------------------------------------------------------------------

async function loadExamples() {
  let names = [];
  try {
    const response = await fetch("/examples/boxes.json");
    if (response.ok) names = Object.keys(await response.json());
  } catch (e) { /* no bundled examples: upload only */ }
  const box = $("examples");
  for (const name of names.sort()) {
    const img = document.createElement("img");
    img.src = "/examples/" + name;
    img.alt = img.title = name;
    img.dataset.name = name;
    img.addEventListener("click", async () => {
      const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
      setImage(bytes, img.src);
      box.querySelectorAll("img").forEach((x) => x.classList.toggle("chosen", x === img));
    });
    box.append(img);
  }
}

function setImage(bytes, url) {
  state.image = bytes;
  $("preview").src = url;
  $("preview").hidden = false;
}

$("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  setImage(bytes, URL.createObjectURL(file));
  $("examples").querySelectorAll("img").forEach((x) => x.classList.remove("chosen"));
});

function inputFields() {
  if (state.model.kind === "IMAGE") {
    if (!state.image) throw new Error("choose an example or upload an image first");
    return { image: bytesToBase64(state.image) };
  }
  const values = $("row").value.split(/[\s,]+/).filter((x) => x !== "").map(Number);
  if (values.some((x) => !Number.isFinite(x))) throw new Error("the row must be numbers separated by commas");
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  values.forEach((x, i) => view.setFloat32(4 * i, x, true));
  return { tensor: { dtype: "FLOAT32", shape: [String(values.length)], data: bytesToBase64(bytes) } };
}

// Running ---------------------------------------------------------------------------------------

async function run() {
  showError("");
  const methods = ticked($("methods"));
  const metrics = ticked($("metrics"));
  let input;
  try {
    if (!methods.length) throw new Error("tick at least one method");
    input = inputFields();
  } catch (e) {
    showError(e.message);
    return;
  }
  $("results").innerHTML = "";
  $("status").textContent = `running ${methods.length} method(s)...`;
  $("run").disabled = true;
  const started = performance.now();
  const outcomes = await Promise.all(methods.map((method) => explainOne(method, metrics, input)));
  $("run").disabled = false;
  const failed = outcomes.filter((x) => x).length;
  $("status").textContent = `${methods.length - failed} of ${methods.length} done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  const first = outcomes.find((x) => x);
  if (first) showError(first);
}

function card(method) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.method = method;
  node.querySelector(".method").textContent = method;
  $("results").append(node);
  return node;
}

// One method through :explainStream; resolves to an error message, or "" when it succeeded.
async function explainOne(method, metrics, input) {
  const node = card(method);
  const body = { ...input, [method]: {} };
  if (state.model.kind === "IMAGE") body.render = { colormap: "VIRIDIS", overlay: "ORIGINAL" };
  if (metrics.length) body.evaluate = metrics.map((m) => ({ [m]: {} }));
  try {
    const response = await fetch(`/v1/models/${encodeURIComponent(state.model.name)}:explainStream`, {
      method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!response.ok) {
      let parsed = null;
      try { parsed = await response.json(); } catch (e) { /* not JSON */ }
      throw new Error(errorText(parsed, response.status));
    }
    for await (const [event, data] of serverEvents(response)) {
      if (event === "progress") {
        node.querySelector("progress").value = data.fraction || 0;
        node.querySelector(".stage").textContent = `${data.stage || ""} ${data.rowsDone || 0} / ${data.rowsTotal || 0} rows`;
      } else if (event === "partial") {
        show(node, data, method, true);
      } else if (event === "result") {
        node.querySelector("progress").value = 1;
        node.querySelector(".stage").textContent = `done in ${(data.stats.totalSeconds || 0).toFixed(2)} s, ${data.stats.modelEvaluations || 0} model evaluations`;
        show(node, data, method, false);
        node.classList.add("done");
      } else if (event === "error") {
        throw new Error(errorText(data, data.error && data.error.code));
      }
    }
    return "";
  } catch (e) {
    const box = node.querySelector(".card-error");
    box.textContent = `${method}: ${e.message}`;
    box.hidden = false;
    node.classList.add("failed");
    return `${method}: ${e.message}`;
  }
}

// The (event, data) pairs of a text/event-stream body, as they arrive.
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield [event, JSON.parse(data)];
    }
  }
}

function show(node, explanation, method, partial) {
  const img = node.querySelector(".heatmap");
  const attribution = explanation.attribution ? tensorValues(explanation.attribution) : null;
  if (explanation.heatmapPng) {
    img.src = "data:image/png;base64," + explanation.heatmapPng;
    img.hidden = false;
  } else if (attribution && attribution.shape.length === 1) {
    img.hidden = true;
    drawBars(node.querySelector(".bars"), attribution.values, state.model.featureNames || []);
  }
  node.classList.toggle("partial", partial);
  const top = node.querySelector(".top");
  top.innerHTML = "";
  for (const c of (explanation.topClasses || []).slice(0, 3)) {
    const item = document.createElement("li");
    item.textContent = `${c.label} ${(100 * (c.probability || 0)).toFixed(1)}%`;
    top.append(item);
  }
  const table = node.querySelector(".evaluation");
  table.innerHTML = "";
  for (const r of explanation.evaluation || []) {
    const row = table.insertRow();
    row.insertCell().textContent = r.metric;
    row.insertCell().textContent = typeof r.value === "number" ? r.value.toFixed(4) : String(r.value);
  }
  if (partial) return;
  const png = node.querySelector(".png");
  if (explanation.heatmapPng) {
    png.href = img.src;
    png.download = `${state.model.name}-${method}.png`;
    png.hidden = false;
  } else {
    const canvas = node.querySelector(".bars");
    png.href = canvas.toDataURL("image/png");
    png.download = `${state.model.name}-${method}.png`;
    png.hidden = false;
  }
  if (attribution) {
    const raw = node.querySelector(".raw");
    const blob = new Blob([JSON.stringify({ model: state.model.name, method, targetLabel: explanation.targetLabel,
      shape: attribution.shape, values: attribution.values })], { type: "application/json" });
    raw.href = URL.createObjectURL(blob);
    raw.download = `${state.model.name}-${method}-attribution.json`;
    raw.hidden = false;
  }
}

// A tabular attribution: one horizontal bar per feature, red positive, blue negative.
function drawBars(canvas, values, names) {
  const rowHeight = 16, width = 512;
  canvas.width = width;
  canvas.height = rowHeight * values.length + 4;
  canvas.hidden = false;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const scale = Math.max(...values.map(Math.abs), 1e-12);
  const middle = width * 0.6, half = width * 0.38;
  g.font = "11px sans-serif";
  values.forEach((v, i) => {
    const y = 2 + i * rowHeight;
    g.fillStyle = v >= 0 ? "#c62828" : "#1565c0";
    const w = (half * v) / scale;
    g.fillRect(v >= 0 ? middle : middle + w, y + 2, Math.abs(w), rowHeight - 4);
    g.fillStyle = "#333";
    g.fillText((names[i] || `feature ${i}`).slice(0, 28), 2, y + rowHeight - 4);
  });
}

$("model").addEventListener("change", (e) => chooseModel(e.target.value).catch((x) => showError(x.message)));
$("run").addEventListener("click", run);
$("token").addEventListener("change", () => loadModels().then(() => showError("")).catch((x) => showError(x.message)));
loadModels().catch((e) => showError(e.message));
loadExamples();

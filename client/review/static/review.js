// ugafl review: the pathologist's correction tool. Plain browser JavaScript, no build step.
// The correction is a 0/1 array at the patch's own pixel grid; brush, eraser and fill edit it
// pixel by pixel (no antialiasing, so the saved mask holds exactly 0 and 255).
"use strict";

const $ = (id) => document.getElementById(id);
// The patch's canvases live in the viewer's overlay, which the viewer takes out of the page
// while it opens the next slide: found through the overlay element itself.
const OVERLAY = document.getElementById("stack");
const layer = (id) => document.getElementById(id) || OVERLAY.querySelector(`#${id}`);
const TOKEN = document.querySelector('meta[name="ugafl-token"]').content;
const TAB = sessionStorage.getItem("ugafl-tab") || (() => {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem("ugafl-tab", id);
  return id;
})();
const UNDO_LIMIT = 50;

const st = {
  item: null, w: 0, h: 0, mask: null, model: null, undo: [], redo: [], polygon: [],
  tool: "brush", size: 6, drawing: false, last: null, busy: false, offline: false,
};

// ---------------------------------------------------------------- server

// Paths are relative: the app may be served under a prefix (behind the hospital's proxy).
async function post(path, extra = {}) {
  const body = JSON.stringify({ token: TOKEN, tab: TAB, ...extra });
  let res;
  try {
    res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  } catch (err) {  // no answer at all: the server (or the network) is down
    goOffline();
    throw new Error("the review server cannot be reached; your drawing is kept");
  }
  if (res.status === 401 && AUTH === "accounts") { st.leaving = true; window.location.assign("login"); throw new Error("signed out"); }
  const data = await res.json().catch(() => ({ error: `server answered ${res.status}` }));
  if (res.status === 403 && /page token/.test(data.error || "")) {  // the server restarted: a new page, same drawing
    st.leaving = true;
    window.location.reload();
    throw new Error("the review server restarted; reloading (your drawing is kept)");
  }
  if (!res.ok) throw new Error(data.error || `server answered ${res.status}`);
  return data;
}

// ---------------------------------------------------------------- the server going away

function goOffline() {
  if (st.offline) return;
  st.offline = true;
  $("offline").hidden = false;
  setState("offline");
  const poll = async () => {
    try {
      const res = await fetch("api/progress", { cache: "no-store" });
      if (res.ok || res.status === 401) {
        st.offline = false; $("offline").hidden = true;
        say("The review server is back. Your drawing was kept; Accept saves it.");
        setState(st.item ? "ready" : "done");
        return;
      }
    } catch (err) { /* still down */ }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}

// Every edit is kept in this tab's sessionStorage until the item is decided: a reload, a restart
// of the server or a lost connection does not lose it.
const draftKey = (id) => `ugafl-draft-${id}`;
function saveDraft() { if (st.item) sessionStorage.setItem(draftKey(st.item.id), maskBase64()); }
function loadDraft(id, n) {
  const text = sessionStorage.getItem(draftKey(id));
  if (!text) return null;
  const raw = atob(text);
  if (raw.length !== n) return null;
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

const AUTH = document.querySelector('meta[name="ugafl-auth"]').content;

function showProgress(p) {
  if (!p) return;
  $("progress-text").textContent =
    `${p.done} of ${p.total} done · ${p.corrected} corrected · ${p.rejected} rejected · ` +
    `${p.pending} pending · ${p.in_review} in review`;
  $("progress-bar").style.width = p.total ? `${(100 * p.done) / p.total}%` : "0";
  const me = (p.by || {})[$("user").textContent] || { corrected: 0, rejected: 0 };
  $("progress-text").textContent += ` · you: ${me.corrected} corrected, ${me.rejected} rejected`;
  $("progress").title = Object.entries(p.by || {}).map(([who, n]) => `${who}: ${n.corrected} corrected, ${n.rejected} rejected`)
    .join("\n") || "nobody has decided a patch yet";
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function setState(s) { document.body.dataset.state = s; }

// ---------------------------------------------------------------- loading an item

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${src}`));
    img.src = src;
  });
}

function pixelsOf(img) {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = new Uint8Array(c.width * c.height);
  for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i] > 0 ? 1 : 0;  // stored as 0/1 (or 0/255)
  return out;
}

async function next(notice = "") {
  setState("loading");
  try {
    const data = await post("api/next");
    showProgress(data.progress);
    if (!data.item) {
      showDone();
      $("held-elsewhere").textContent = data.held_elsewhere
        ? `${data.held_elsewhere} more patch(es) are open in other tabs; they come back here when those tabs are left idle for 10 minutes.` : "";
      if (notice) say(notice);
      return;
    }
    await show(data.item, notice);
  } catch (err) { say(err.message, true); setState("error"); }
}

async function show(item, notice = "") {
  const base = `api/items/${item.id}`;
  const [patch, model, unc] = await Promise.all(
    ["image.png", "model_mask.png", "uncertainty.png"].map((n) => loadImage(`${base}/${n}?v=${Date.now()}`)));
  st.item = item; st.w = item.width; st.h = item.height;
  st.model = pixelsOf(model);
  const draft = loadDraft(item.id, st.model.length);
  st.mask = draft || st.model.slice();
  st.undo = []; st.redo = []; st.polygon = [];
  if (draft) notice = `${notice} Your unsaved drawing on this patch was restored.`.trim();
  st.claimed = item.state === "in_review";
  for (const id of ["unc-layer", "model-layer", "mask-layer", "cursor-layer", "model-panel"]) {
    layer(id).width = st.w; layer(id).height = st.h;
  }
  $("model-image").src = patch.src; $("unc-panel").src = unc.src;
  $("workspace").hidden = false; $("done").hidden = true;  // before the viewer opens: it measures itself
  openViewer(item, patch.src);
  st.uncImage = unc;
  $("unc-measure").textContent = `(${item.measure})`;
  $("unc-max").textContent = `${item.uncertainty_max.toPrecision(3)} unsure`;
  const rows = [["item", item.id], ["slide", item.slide], ["box (level 0)", `${item.x}, ${item.y} · ${item.box_width}×${item.box_height}`],
    ["size", `${Math.round(item.width * item.mpp)} × ${Math.round(item.height * item.mpp)} µm (${item.width} × ${item.height} px)`],
    ["resolution", `${item.mpp} µm/px`], ["score", `${item.score.toPrecision(4)} (${item.measure})`],
    ["chosen by", item.selection], ["model", item.model_version], ["round", item.round]];
  $("details").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    return [dt, dd];
  }));
  $("workspace").hidden = false; $("done").hidden = true;
  drawAll();
  const intro = `Patch ${item.id} from ${item.slide}: correct the yellow area, then Accept.`;
  await new Promise((resolve) => { st.onViewerReady = resolve; });  // the patch placed in its slide
  document.body.dataset.item = String(item.id);
  say(notice ? `${notice} ${intro}` : intro);
  setState("ready");
}

// ---------------------------------------------------------------- the viewer

// OpenSeadragon shows the slide (Deep Zoom tiles, level-0 pixels) or, without one, the patch
// image; the correction's canvases ride on it as an overlay over the patch's box, so they zoom
// and pan with the tissue. The canvases keep the patch's own grid: what is drawn is the mask the
// model's resolution gives, however far one zooms in.
function patchRect(item) {
  return item.slide_dzi ? [item.x, item.y, item.box_width, item.box_height] : [0, 0, item.width, item.height];
}

function openViewer(item, patchSrc) {
  if (!st.viewer) {
    st.viewer = OpenSeadragon({
      element: $("viewer"), showNavigationControl: false, showNavigator: true, navigatorPosition: "BOTTOM_RIGHT",
      navigatorSizeRatio: 0.18, navigatorAutoFade: false, autoHideControls: false, imageSmoothingEnabled: false, maxZoomPixelRatio: 8, minZoomImageRatio: 0.5,
      visibilityRatio: 0.2, animationTime: 0.3, keyboardShortcutsEnabled: false,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false, flickEnabled: false },
      crossOriginPolicy: false, loadTilesWithAjax: false,
    });
    st.viewer.addHandler("animation", showZoom);
    st.viewer.addHandler("open", () => {
      const r = st.viewer.viewport.imageToViewportRectangle(...patchRect(st.item));
      st.viewer.addOverlay({ element: st.overlay, location: r });
      fitPatch(true);
      showZoom();
      if (st.onViewerReady) { st.onViewerReady(); st.onViewerReady = null; }
    });
    st.viewer.addHandler("open-failed", () => {  // the slide's tiles are not to be had: the patch alone
      if (st.item && st.item.slide_dzi) {
        say(`The slide ${st.item.slide} cannot be shown; correcting on the patch alone.`, true);
        st.item = { ...st.item, slide_dzi: null };
        st.viewer.open({ type: "image", url: st.patchSrc, buildPyramid: false });
      }
    });
  }
  st.patchSrc = patchSrc;
  st.viewer.clearOverlays();
  st.viewer.open(item.slide_dzi || { type: "image", url: patchSrc, buildPyramid: false });
}

function fitPatch(immediately = false) {
  if (!st.viewer || !st.item) return;
  const [x, y, w, h] = patchRect(st.item), m = 0.08;
  const r = st.viewer.viewport.imageToViewportRectangle(x - m * w, y - m * h, w * (1 + 2 * m), h * (1 + 2 * m));
  st.viewer.viewport.fitBounds(r, immediately);
}

function fullResolution() {
  if (!st.viewer || !st.item) return;
  const [x, y, w, h] = patchRect(st.item);
  const scale = st.item.slide_dzi ? 1 : st.item.box_width / st.item.width;  // slide pixels per image pixel
  const vp = st.viewer.viewport;
  vp.zoomTo(vp.imageToViewportZoom(1 / scale), null, true);
  vp.panTo(vp.imageToViewportCoordinates(x + w / 2, y + h / 2), true);
}

function showZoom() {
  if (!st.viewer || !st.item || !st.viewer.world.getItemCount()) return;
  const scale = st.item.slide_dzi ? 1 : st.item.box_width / st.item.width;
  const screenPerImage = st.viewer.viewport.viewportToImageZoom(st.viewer.viewport.getZoom(true));
  const perSlidePixel = screenPerImage / scale;
  $("zoom-level").textContent = `${perSlidePixel >= 1 ? perSlidePixel.toFixed(1) : perSlidePixel.toPrecision(2)}× slide px`;
  $("viewer").dataset.zoom = String(perSlidePixel);
}

function showDone() {
  st.item = null;
  $("workspace").hidden = true; $("done").hidden = false;
  document.body.dataset.item = "";
  setState("done");
}

// ---------------------------------------------------------------- drawing layers

function boundary(arr, x, y) {
  const { w, h } = st, i = y * w + x;
  return (x === 0 || !arr[i - 1]) || (x === w - 1 || !arr[i + 1]) || (y === 0 || !arr[i - w]) || (y === h - 1 || !arr[i + w]);
}

function paintMask(canvas, arr, rgb, fillAlpha, edgeAlpha, visible) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(st.w, st.h);
  if (visible) {
    for (let y = 0; y < st.h; y++) for (let x = 0; x < st.w; x++) {
      const i = y * st.w + x;
      if (!arr[i]) continue;
      const a = boundary(arr, x, y) ? edgeAlpha : fillAlpha;
      if (!a) continue;
      img.data.set([rgb[0], rgb[1], rgb[2], a], 4 * i);
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawAll() {
  paintMask(layer("mask-layer"), st.mask, [255, 212, 0], 90, 255, $("show-mask").checked);
  paintMask(layer("model-layer"), st.model, [0, 229, 255], 0, 255, $("show-model").checked);
  paintMask($("model-panel"), st.model, [0, 229, 255], 110, 255, true);
  const u = layer("unc-layer").getContext("2d");
  u.clearRect(0, 0, st.w, st.h);
  if ($("show-unc").checked && st.uncImage) { u.globalAlpha = 1; u.drawImage(st.uncImage, 0, 0); }
  layer("unc-layer").style.opacity = String(Number($("unc-opacity").value) / 100);
  layer("mask-layer").style.opacity = String(Number($("mask-opacity").value) / 100);
  layer("model-layer").style.opacity = String(Number($("model-opacity").value) / 100);
  drawPolygon();
}

function drawPolygon() {
  const c = layer("cursor-layer").getContext("2d");
  c.clearRect(0, 0, st.w, st.h);
  if (!st.polygon.length) return;
  c.strokeStyle = "#ff2d95"; c.fillStyle = "#ff2d95"; c.lineWidth = Math.max(0.5, st.w / 256);
  c.beginPath();
  st.polygon.forEach((p, k) => (k ? c.lineTo(p.x, p.y) : c.moveTo(p.x, p.y)));
  c.stroke();
  for (const p of st.polygon) c.fillRect(p.x - c.lineWidth, p.y - c.lineWidth, 2 * c.lineWidth, 2 * c.lineWidth);
}

// ---------------------------------------------------------------- editing

function pushUndo() {
  st.undo.push(st.mask.slice());
  if (st.undo.length > UNDO_LIMIT) st.undo.shift();
  st.redo = [];
}

// The polygon: pixels whose centre lies inside the closed outline (even-odd rule).
function fillPolygon(points, value) {
  const n = points.length;
  for (let y = 0; y < st.h; y++) {
    const cy = y + 0.5, xs = [];
    for (let k = 0; k < n; k++) {
      const a = points[k], b = points[(k + 1) % n];
      if ((a.y <= cy) !== (b.y <= cy)) xs.push(a.x + ((cy - a.y) * (b.x - a.x)) / (b.y - a.y));
    }
    xs.sort((p, q) => p - q);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      for (let x = Math.max(0, Math.ceil(xs[k] - 0.5)); x < st.w && x + 0.5 < xs[k + 1]; x++) st.mask[y * st.w + x] = value;
    }
  }
}

function closePolygon(background) {
  if (st.polygon.length >= 3) {
    claim(); pushUndo();
    fillPolygon(st.polygon, background ? 0 : 1);
    saveDraft();
  }
  st.polygon = [];
  drawAll();
}

function stamp(cx, cy, value) {
  const r = st.size / 2, r2 = r * r;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(st.w - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(st.h - 1, Math.ceil(cy + r));
  for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) {
    const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
    if (dx * dx + dy * dy <= r2) st.mask[y * st.w + x] = value;
  }
}

function line(a, b, value) {
  const d = Math.hypot(b.x - a.x, b.y - a.y), steps = Math.max(1, Math.ceil(d / Math.max(0.5, st.size / 4)));
  for (let k = 1; k <= steps; k++) stamp(a.x + ((b.x - a.x) * k) / steps, a.y + ((b.y - a.y) * k) / steps, value);
}

function flood(x, y, value) {
  const { w, h, mask } = st, seed = mask[y * w + x];
  if (seed === value) return;
  const todo = [y * w + x];
  mask[y * w + x] = value;
  while (todo.length) {
    const i = todo.pop(), px = i % w, py = (i - px) / w;
    for (const [nx, ny] of [[px - 1, py], [px + 1, py], [px, py - 1], [px, py + 1]]) {
      if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
      const j = ny * w + nx;
      if (mask[j] === seed) { mask[j] = value; todo.push(j); }
    }
  }
}

function patchPoint(ev) {
  const r = layer("cursor-layer").getBoundingClientRect();
  return {
    x: Math.min(st.w - 0.001, Math.max(0, ((ev.clientX - r.left) / r.width) * st.w)),
    y: Math.min(st.h - 0.001, Math.max(0, ((ev.clientY - r.top) / r.height) * st.h)),
  };
}

// The queue records who corrects an item when they start: the first edit claims it.
function claim() {
  if (!st.item || st.claimed) return;
  st.claimed = true;
  const id = st.item.id;
  post(`api/items/${id}/claim`).then((data) => showProgress(data.progress))
    .catch((err) => { say(`Item ${id}: ${err.message}`, true); });
}

function onDown(ev) {
  if (!st.item || st.busy || ev.button !== 0 || st.tool === "pan") return;  // pan: the viewer has it
  ev.preventDefault(); ev.stopPropagation();  // drawing, not panning
  claim();
  layer("cursor-layer").setPointerCapture(ev.pointerId);
  const p = patchPoint(ev);
  if (st.tool === "polygon") {
    const first = st.polygon[0], near = st.w / 64;
    if (st.polygon.length >= 3 && Math.hypot(p.x - first.x, p.y - first.y) <= near) closePolygon(ev.shiftKey);
    else { st.polygon.push(p); drawPolygon(); }
    return;
  }
  pushUndo();
  if (st.tool === "fill") {
    flood(Math.floor(p.x), Math.floor(p.y), ev.shiftKey ? 0 : 1);
    saveDraft();
  } else {
    st.drawing = true; st.last = p;
    stamp(p.x, p.y, st.tool === "brush" ? 1 : 0);
  }
  drawAll();
}

function onMove(ev) {
  if (!st.drawing) return;
  ev.stopPropagation();
  const p = patchPoint(ev);
  line(st.last, p, st.tool === "brush" ? 1 : 0);
  st.last = p;
  drawAll();
}

function onUp() {
  if (st.drawing) saveDraft();
  st.drawing = false; st.last = null;
}

function setTool(tool) {
  if (tool !== "polygon" && st.polygon.length) { st.polygon = []; drawAll(); }
  st.tool = tool;
  layer("cursor-layer").style.pointerEvents = tool === "pan" ? "none" : "auto";
  layer("cursor-layer").style.cursor = tool === "pan" ? "" : "crosshair";
  for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
}

function setSize(n) {
  st.size = Math.max(1, Math.min(40, n));
  $("size").value = String(st.size); $("size-value").textContent = String(st.size);
}

function undo() {
  if (st.polygon.length) { st.polygon.pop(); drawPolygon(); return; }
  if (!st.undo.length) return;
  st.redo.push(st.mask);
  st.mask = st.undo.pop();
  saveDraft(); drawAll();
}

function redo() {
  if (!st.redo.length) return;
  st.undo.push(st.mask);
  st.mask = st.redo.pop();
  saveDraft(); drawAll();
}

// ---------------------------------------------------------------- decisions

function maskPng() {
  const c = document.createElement("canvas");
  c.width = st.w; c.height = st.h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(st.w, st.h);
  for (let i = 0; i < st.mask.length; i++) {
    const v = st.mask[i] ? 255 : 0;
    img.data[4 * i] = v; img.data[4 * i + 1] = v; img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c.toDataURL("image/png");
}

async function decide(action, extra, done) {
  if (!st.item || st.busy) return;
  st.busy = true; setState("saving");
  const id = st.item.id;
  try {
    const data = await post(`api/items/${id}/${action}`, extra);
    sessionStorage.removeItem(draftKey(id));
    showProgress(data.progress);
    st.busy = false;
    await next(done(id));
  } catch (err) {
    st.busy = false;
    say(`Item ${id}: ${err.message}`, true);
    if (!st.offline) setState("error");
  }
}

const accept = () => decide("correction", { mask_png: maskPng() }, (id) => `Saved your correction of item ${id}.`);
const skip = () => decide("skip", {}, (id) => `Skipped item ${id}; it stays in the queue.`);

function openReject() {
  if (!st.item || st.busy) return;
  $("reject-note").value = "";
  $("reject-dialog").returnValue = "";
  $("reject-dialog").showModal();
  $("reject-reason").focus();
}

function onRejectClose() {
  if ($("reject-dialog").returnValue !== "ok") return;
  const note = $("reject-note").value.trim();
  const reason = $("reject-reason").value + (note ? `: ${note}` : "");
  decide("reject", { reason }, (id) => `Rejected item ${id} (${reason}).`);
}

// ---------------------------------------------------------------- keyboard

function onKey(ev) {
  if ($("reject-dialog").open) return;  // the dialog handles Enter and Esc itself
  const t = ev.target;
  if (t instanceof HTMLInputElement && t.type !== "checkbox" && t.type !== "range") return;
  const ctrl = ev.ctrlKey || ev.metaKey, key = ev.key.toLowerCase();
  if (ctrl && (key === "y" || (key === "z" && ev.shiftKey))) { ev.preventDefault(); redo(); return; }
  if (ctrl && key === "z") { ev.preventDefault(); undo(); return; }
  if (st.polygon.length && (key === "enter" || key === "escape")) {  // Enter closes the polygon, Esc drops it
    ev.preventDefault();
    if (key === "enter") closePolygon(ev.shiftKey); else { st.polygon = []; drawAll(); }
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const toggle = (id) => { $(id).checked = !$(id).checked; drawAll(); };
  const keys = {
    b: () => setTool("brush"), e: () => setTool("eraser"), f: () => setTool("fill"), p: () => setTool("polygon"),
    h: () => setTool("pan"), 0: () => fitPatch(), 1: fullResolution,
    "+": () => st.viewer && st.viewer.viewport.zoomBy(1.5), "=": () => st.viewer && st.viewer.viewport.zoomBy(1.5),
    "-": () => st.viewer && st.viewer.viewport.zoomBy(1 / 1.5),
    "[": () => setSize(st.size - 1), "]": () => setSize(st.size + 1),
    m: () => toggle("show-mask"), c: () => toggle("show-model"), u: () => toggle("show-unc"),
    enter: accept, a: accept, r: openReject, s: skip,
  };
  const fn = keys[ev.key.toLowerCase()];
  if (fn) { ev.preventDefault(); fn(); }
}

// ---------------------------------------------------------------- start

function maskBase64() {
  let text = "";
  const m = st.mask || new Uint8Array(0);
  for (let i = 0; i < m.length; i += 8192) text += String.fromCharCode(...m.subarray(i, i + 8192));
  return btoa(text);
}

function start() {
  const cursor = layer("cursor-layer");
  cursor.addEventListener("pointerdown", onDown);
  cursor.addEventListener("pointermove", onMove);
  cursor.addEventListener("pointerup", onUp);
  cursor.addEventListener("pointercancel", onUp);
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("size").addEventListener("input", () => setSize(Number($("size").value)));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("zoom-patch").addEventListener("click", () => fitPatch());
  $("zoom-full").addEventListener("click", fullResolution);
  st.overlay = OVERLAY;
  for (const id of ["mask-opacity", "model-opacity", "unc-opacity"]) $(id).addEventListener("input", drawAll);
  $("reset").addEventListener("click", () => { if (st.item) { claim(); pushUndo(); st.mask = st.model.slice(); saveDraft(); drawAll(); } });
  for (const id of ["show-mask", "show-model", "show-unc"]) $(id).addEventListener("change", drawAll);
  $("accept").addEventListener("click", accept);
  $("reject").addEventListener("click", openReject);
  $("skip").addEventListener("click", skip);
  $("refresh").addEventListener("click", () => next());
  $("reject-dialog").addEventListener("close", onRejectClose);
  $("reject-cancel").addEventListener("click", () => $("reject-dialog").close("cancel"));
  $("logout").hidden = AUTH !== "accounts";
  $("logout").addEventListener("click", () => post("api/logout").finally(() => { st.leaving = true; window.location.assign("login"); }));
  document.addEventListener("keydown", onKey);
  // Leaving with edits not yet saved: the browser asks first (the drawing is also kept in this
  // tab, so a reload restores it; the app's own reloads and sign-in redirects do not ask).
  window.addEventListener("beforeunload", (ev) => {
    if (st.item && st.undo.length && !st.leaving) { ev.preventDefault(); ev.returnValue = ""; }
  });
  setTool("brush"); setSize(6);
  // For tests and support: the mask the page would save now, as 0/1 row-major base64.
  window.ugafl = { tab: TAB, maskBase64, state: st };
  next();
}

start();

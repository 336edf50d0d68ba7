// The reader page's image viewer: Cornerstone3D stack viewports over the node's pixels.
//
// app.js calls window.cxrViewer.show({studyUid, images, priors, token}) when a study opens and
// window.cxrViewer.clear() when none is shown. Each image gets its own viewport, created anew
// for every study (so zoom, pan and window never carry over): the current study's images side
// by side (PA beside the lateral), then the first image of each prior study.
//
// Pixels come from GET /api/studies/{uid}/images/{id}/pixels: the full-resolution first frame
// after the Modality LUT, with its size, format, photometric interpretation and default window
// in headers. A small image loader (scheme "cxrnode:") turns that into a Cornerstone image;
// nothing is decoded in the browser, so no codecs, workers or wasm are needed.
//
// Mouse: left drag windows (horizontal: width, vertical: level), right drag or the wheel
// (with or without Ctrl) zooms at the cursor, middle drag or Shift+left drag pans.
// Keyboard on a focused image: arrows window, + and - zoom, 0 resets.
import {
  Enums,
  RenderingEngine,
  cache,
  imageLoader,
  init as initCore,
  metaData,
  utilities,
} from "@cornerstonejs/core";
import {
  Enums as ToolEnums,
  PanTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as initTools,
} from "@cornerstonejs/tools";

const SCHEME = "cxrnode";
const ENGINE_ID = "cxr-reader";
const TOOL_GROUP_ID = "cxr-reader-tools";
// Most images of the current study, and most prior studies, shown at once.
const MAX_CURRENT = 4;
const MAX_PRIORS = 2;
const TYPED_ARRAYS = {
  uint8: Uint8Array,
  uint16: Uint16Array,
  int16: Int16Array,
  float32: Float32Array,
};
const LATERAL = new Set(["LL", "RL", "LAT", "LATERAL", "LLD", "RLD"]);

// Presets for radiographs, whose pixel values carry no calibrated unit (unlike CT's HU):
// each is a band of the image's own histogram in display order (0 = darkest shown, 1 =
// brightest), so "lung" spreads the grey levels over the aerated (dark) part of the image and
// "bone" over the densest part, whatever the detector's value range.
const PRESETS = [
  { id: "file", label: "Default (file)", title: "The window the image file gives" },
  { id: "lung", label: "Lung", band: [0.04, 0.6], title: "Contrast in the dark, aerated range" },
  { id: "mediastinum", label: "Mediastinum", band: [0.3, 0.97], title: "Contrast in the soft-tissue range" },
  { id: "bone", label: "Bone", band: [0.6, 0.998], title: "Contrast in the densest range" },
  { id: "full", label: "Full range", band: [0, 1], title: "Every value from the lowest to the highest" },
];

const metadata = new Map(); // imageId -> {module type -> module}
const defaults = new Map(); // imageId -> {center, width, min, max, quantile(p)}
const modalities = new Map(); // imageId -> the image's Modality, as the study lists it
let token = null;
let engine = null;
let toolGroup = null;
let generation = 0; // increases with every show()/clear(): late answers of older calls are dropped
let cells = []; // [{viewportId, element, imageId, label}]
let resizeObserver = null;
let shownStudy = null; // what show() was last given (the Priors button shows it again)
let withPriors = true; // the reader's choice: priors beside the current study or not

class PixelLoadError extends Error {}

function ensureInitialised() {
  if (engine) return;
  initCore();
  initTools();
  imageLoader.registerImageLoader(SCHEME, loadPixels);
  metaData.addProvider((type, imageId) => metadata.get(imageId)?.[type], 10000);
  for (const tool of [WindowLevelTool, ZoomTool, PanTool]) addTool(tool);
  toolGroup = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
  toolGroup.addTool(WindowLevelTool.toolName);
  toolGroup.addTool(ZoomTool.toolName);
  toolGroup.addTool(PanTool.toolName);
  const { MouseBindings, KeyboardBindings } = ToolEnums;
  toolGroup.setToolActive(WindowLevelTool.toolName, {
    bindings: [{ mouseButton: MouseBindings.Primary }],
  });
  toolGroup.setToolActive(PanTool.toolName, {
    bindings: [
      { mouseButton: MouseBindings.Auxiliary },
      { mouseButton: MouseBindings.Primary, modifierKey: KeyboardBindings.Shift },
    ],
  });
  toolGroup.setToolActive(ZoomTool.toolName, {
    bindings: [
      { mouseButton: MouseBindings.Secondary },
      { mouseButton: MouseBindings.Wheel },
      { mouseButton: MouseBindings.Wheel, modifierKey: KeyboardBindings.Ctrl },
    ],
  });
  engine = new RenderingEngine(ENGINE_ID);
}

// ------------------------------------------------------------------ image loader
function pixelsUrl(imageId) {
  return imageId.slice(SCHEME.length + 1);
}

async function failure(response) {
  let detail = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.detail) detail = String(body.detail);
  } catch (_) { /* not JSON: keep the status */ }
  return new PixelLoadError(detail);
}

function header(response, name) {
  const value = response.headers.get(name);
  if (value === null) throw new PixelLoadError(`the answer lacks its ${name} header`);
  return value;
}

function quantiles(pixels, monochrome1) {
  // A sample of at most ~65k values, sorted: enough for the presets' bands.
  const step = Math.max(1, Math.floor(pixels.length / 65536));
  const sample = new Float64Array(Math.ceil(pixels.length / step));
  let n = 0;
  for (let i = 0; i < pixels.length; i += step) sample[n++] = pixels[i];
  const sorted = sample.subarray(0, n).sort();
  // display order: MONOCHROME1 shows its lowest value white
  return (p) => sorted[Math.round((monochrome1 ? 1 - p : p) * (n - 1))];
}

// The image loader of the "cxrnode:" scheme. show() fetches each image itself first
// (fetchImage), so that a failure is told in its pane and never reaches Cornerstone's cache
// as an unhandled rejection; the loader then hands over what was fetched.
const fetched = new Map(); // imageId -> Cornerstone image
function loadPixels(imageId) {
  const image = fetched.get(imageId);
  return { promise: image ? Promise.resolve(image) : fetchImage(imageId) };
}

function fetchImage(imageId) {
  return (async () => {
    let response;
    try {
      response = await fetch(pixelsUrl(imageId), { headers: { Authorization: `Bearer ${token}` } });
    } catch (_) {
      throw new PixelLoadError("the node did not answer (network error)");
    }
    if (!response.ok) throw await failure(response);
    const rows = Number(header(response, "X-Rows"));
    const columns = Number(header(response, "X-Columns"));
    const format = header(response, "X-Pixel-Format");
    const photometric = header(response, "X-Photometric-Interpretation");
    const center = Number(header(response, "X-Window-Center"));
    const width = Number(header(response, "X-Window-Width"));
    const TypedArray = TYPED_ARRAYS[format];
    if (!TypedArray) throw new PixelLoadError(`unknown pixel format ${format}`);
    const buffer = await response.arrayBuffer();
    const pixels = new TypedArray(buffer);
    if (pixels.length !== rows * columns) {
      throw new PixelLoadError(`${pixels.length} values for ${rows} x ${columns} pixels`);
    }
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < pixels.length; i++) {
      const v = pixels[i];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const monochrome1 = photometric === "MONOCHROME1";
    const bits = TypedArray.BYTES_PER_ELEMENT * 8;
    metadata.set(imageId, {
      imagePixelModule: {
        samplesPerPixel: 1, photometricInterpretation: photometric, rows, columns,
        bitsAllocated: bits, bitsStored: bits, highBit: bits - 1,
        pixelRepresentation: format === "int16" ? 1 : 0,
      },
      imagePlaneModule: {
        rows, columns, imageOrientationPatient: [1, 0, 0, 0, 1, 0],
        rowCosines: [1, 0, 0], columnCosines: [0, 1, 0], imagePositionPatient: [0, 0, 0],
        pixelSpacing: [1, 1], rowPixelSpacing: 1, columnPixelSpacing: 1,
      },
      voiLutModule: { windowCenter: [center], windowWidth: [width], voiLUTFunction: "LINEAR" },
      modalityLutModule: { rescaleSlope: 1, rescaleIntercept: 0 },
      generalSeriesModule: { modality: modalities.get(imageId) || "OT" },
    });
    defaults.set(imageId, { center, width, min, max, quantile: quantiles(pixels, monochrome1) });
    const voxelManager = utilities.VoxelManager.createImageVoxelManager({
      width: columns, height: rows, numberOfComponents: 1, scalarData: pixels,
    });
    return {
      imageId,
      minPixelValue: min,
      maxPixelValue: max,
      slope: 1,
      intercept: 0,
      windowCenter: center,
      windowWidth: width,
      voiLUTFunction: "LINEAR",
      getPixelData: () => voxelManager.getScalarData(),
      voxelManager,
      getCanvas: undefined,
      rows,
      columns,
      height: rows,
      width: columns,
      color: false,
      rgba: false,
      numberOfComponents: 1,
      columnPixelSpacing: 1,
      rowPixelSpacing: 1,
      invert: monochrome1,
      photometricInterpretation: photometric,
      sizeInBytes: buffer.byteLength,
      dataType: TypedArray.name,
    };
  })();
}

// ------------------------------------------------------------------ viewports
function root() {
  return document.getElementById("viewer");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function viewLabel(image) {
  return [image.modality, image.view_position].filter(Boolean).join(" ") || "Image";
}

function isLateral(image) {
  return LATERAL.has(String(image.view_position || "").toUpperCase());
}

// The current study's images, frontal views first, then laterals, then the rest; the first
// image of each prior study.
function chooseImages(study) {
  const images = [...(study.images || [])];
  const frontal = images.filter((i) => !isLateral(i));
  const lateral = images.filter(isLateral);
  const current = [...frontal.slice(0, 1), ...lateral.slice(0, 1),
    ...frontal.slice(1), ...lateral.slice(1)].slice(0, MAX_CURRENT);
  const chosen = current.map((image) => ({ studyUid: study.studyUid, image, label: viewLabel(image) }));
  for (const prior of (withPriors ? study.priors || [] : []).slice(0, MAX_PRIORS)) {
    if (!prior.images || !prior.images.length) continue;
    const image = prior.images.find((i) => !isLateral(i)) || prior.images[0];
    chosen.push({ studyUid: prior.studyUid, image, label: `Prior ${prior.label || ""} ${viewLabel(image)}`.replace(/\s+/g, " ").trim(), prior: true });
  }
  return chosen;
}

function readout(cell) {
  const viewport = engine.getViewport(cell.viewportId);
  if (!viewport || !viewport.getImageData()) return;
  const { voiRange, invert } = viewport.getProperties();
  if (voiRange) {
    const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(voiRange.lower, voiRange.upper);
    cell.wl.textContent = `W ${Math.round(windowWidth)}  L ${Math.round(windowCenter)}`
      + `${invert !== cell.initialInvert ? "  inverted" : ""}`;
  }
  cell.zoom.textContent = `${Math.round(viewport.getZoom() * 100)} %`;
}

function disableAll() {
  if (!engine) return;
  for (const cell of cells) {
    if (!engine.getViewport(cell.viewportId)) continue;  // never enabled
    toolGroup.removeViewports(ENGINE_ID, cell.viewportId);
    engine.disableElement(cell.viewportId);
  }
  cells = [];
  cache.purgeCache();
  fetched.clear();
  modalities.clear();
  metadata.clear();
  defaults.clear();
}

// Columns x rows that show the images largest in the pane (chest radiographs are about
// square): side by side in a wide pane, one above the other in a tall, narrow one.
function layout(container, count) {
  const width = container.clientWidth || 1;
  const height = container.clientHeight || 1;
  let best = { columns: 1, side: -1 };
  for (let columns = 1; columns <= Math.max(1, count); columns++) {
    const rows = Math.ceil(count / columns) || 1;
    const side = Math.min(width / columns, height / rows);
    if (side >= best.side * 0.98) best = { columns, side };  // a tie goes to side by side
  }
  const rows = Math.ceil(count / best.columns) || 1;
  const columns = `repeat(${best.columns}, minmax(0, 1fr))`;
  if (container.style.gridTemplateColumns !== columns) {
    container.style.gridTemplateColumns = columns;
    container.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
    container.dataset.layout = `${best.columns}x${rows}`;
  }
}

function setMessage(text) {
  const message = document.getElementById("viewer-message");
  if (!message) return;
  message.textContent = text || "";
  message.hidden = !text;
}

function onKey(cell, event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;  // the page's shortcuts
  const viewport = engine.getViewport(cell.viewportId);
  if (!viewport || !viewport.getImageData()) return;
  const { voiRange } = viewport.getProperties();
  let { windowWidth: width, windowCenter: center } = utilities.windowLevel.toWindowLevel(voiRange.lower, voiRange.upper);
  const step = Math.max(1, width * 0.03);
  switch (event.key) {
    case "ArrowUp": center += step; break;
    case "ArrowDown": center -= step; break;
    case "ArrowRight": width += step; break;
    case "ArrowLeft": width = Math.max(1, width - step); break;
    case "+": case "=": case "-": case "0": break;
    default: return;
  }
  // The image's keys are its own: the page's shortcuts do not see them.
  event.preventDefault();
  event.stopPropagation();
  if (event.key === "0") {
    reset();
  } else if (event.key === "-" || event.key === "+" || event.key === "=") {
    viewport.setZoom(viewport.getZoom() * (event.key === "-" ? 1 / 1.2 : 1.2));
    viewport.render();
  } else {
    viewport.setProperties({ voiRange: utilities.windowLevel.toLowHighRange(width, center) });
    viewport.render();
  }
}

/**
 * Show a study: one viewport per chosen image, all new (no zoom, pan or window carries over).
 *
 * @param {{studyUid: string, images: {id: number, modality?: string, view_position?: string}[],
 *          priors?: {studyUid: string, label?: string, images: object[]}[], token: string}} study
 * @returns {Promise<void>} resolved when every image has rendered or failed (its cell says why)
 */
async function show(study) {
  ensureInitialised();
  const mine = ++generation;
  token = study.token;
  shownStudy = study;
  disableAll();
  const container = root();
  container.replaceChildren();
  container.dataset.study = study.studyUid;
  container.dataset.state = "loading";
  const chosen = chooseImages(study);
  setMessage(chosen.length ? "" : "This study has no image the viewer can show.");
  layout(container, chosen.length);
  syncToolbar();
  chosen.forEach((choice, index) => {
    const viewportId = `cxr-vp-${mine}-${index}`;
    const cellNode = el("figure", "vp-cell");
    cellNode.dataset.imageId = String(choice.image.id);
    cellNode.dataset.state = "loading";
    if (choice.prior) cellNode.classList.add("prior");
    const element = el("div", "vp-element");
    element.tabIndex = 0;
    element.setAttribute("role", "img");
    element.setAttribute("aria-label", `${choice.label}: drag to window, wheel to zoom, arrows window, + and - zoom, 0 resets`);
    element.addEventListener("contextmenu", (event) => event.preventDefault());
    const label = el("figcaption", "vp-label", choice.label);
    const wl = el("span", "vp-wl");
    const zoom = el("span", "vp-zoom");
    const status = el("span", "vp-status", "Loading\u2026");
    const info = el("div", "vp-info");
    info.append(wl, zoom);
    cellNode.append(element, label, info, status);
    container.append(cellNode);
    const imageId = `${SCHEME}:/api/studies/${encodeURIComponent(choice.studyUid)}/images/${choice.image.id}/pixels`;
    modalities.set(imageId, choice.image.modality || "OT");
    const cell = { viewportId, element, imageId, label: choice.label, node: cellNode, wl, zoom, status, initialInvert: false };
    element.addEventListener("keydown", (event) => onKey(cell, event));
    cells.push(cell);
  });
  if (!resizeObserver) {
    resizeObserver = new ResizeObserver(() => {
      if (!engine || !cells.length) return;
      // An image the reader has not zoomed or panned is fitted to its new pane; one the
      // reader has keeps its zoom and pan.
      const fitted = readyViewports()
        .filter(([, viewport]) => Math.abs(viewport.getZoom() - 1) < 1e-3
          && Math.hypot(...viewport.getPan()) < 1e-3)
        .map(([, viewport]) => viewport);
      layout(container, cells.length);
      engine.resize(true, true);
      for (const viewport of fitted) {
        viewport.resetCamera();
        viewport.render();
      }
    });
    resizeObserver.observe(container);
  }
  await Promise.all(cells.map(async (cell) => {
    engine.enableElement({
      viewportId: cell.viewportId,
      type: Enums.ViewportType.STACK,
      element: cell.element,
      defaultOptions: { background: [0, 0, 0] },
    });
    toolGroup.addViewport(cell.viewportId, ENGINE_ID);
    const viewport = engine.getViewport(cell.viewportId);
    const update = () => { if (mine === generation) readout(cell); };
    cell.element.addEventListener(Enums.Events.VOI_MODIFIED, update);
    cell.element.addEventListener(Enums.Events.CAMERA_MODIFIED, update);
    try {
      // Fetched first: a failed load would leave setStack's promise pending (GPU path).
      const image = await fetchImage(cell.imageId);
      if (mine !== generation) return;
      fetched.set(cell.imageId, image);
      await viewport.setStack([cell.imageId]);
      if (mine !== generation) return;
      cell.initialInvert = Boolean(viewport.getProperties().invert);
      viewport.render();
      cell.status.textContent = "";
      cell.node.dataset.state = "ready";
      const shown = viewport.getImageData();
      cell.node.dataset.size = shown ? `${shown.dimensions[0]}x${shown.dimensions[1]}` : "";
      readout(cell);
    } catch (error) {
      if (mine !== generation) return;
      const reason = error && error.error ? error.error : error;
      if (!(reason instanceof PixelLoadError)) console.error(reason);
      cell.node.dataset.state = "failed";
      cell.status.textContent = `This image cannot be shown: ${reason && reason.message ? reason.message : reason}`;
      cell.status.classList.add("error");
    }
  }));
  if (mine === generation) {
    container.dataset.state = "ready";
    syncToolbar();
  }
}

/** Show the priors beside the current study, or hide them (the current images load anew). */
function togglePriors() {
  withPriors = !withPriors;
  if (shownStudy) return show(shownStudy);
  syncToolbar();
  return Promise.resolve();
}

/** Remove every viewport (no study shown). */
function clear(text) {
  generation++;
  shownStudy = null;
  disableAll();
  const container = root();
  if (container) {
    container.replaceChildren();
    delete container.dataset.study;
    container.dataset.state = "empty";
  }
  setMessage(text || "");
  syncToolbar();
}

function readyViewports() {
  return cells
    .filter((cell) => cell.node.dataset.state === "ready")
    .map((cell) => [cell, engine.getViewport(cell.viewportId)])
    .filter(([, viewport]) => viewport);
}

/** Window every image with a preset (see PRESETS). */
function applyPreset(id) {
  const preset = PRESETS.find((p) => p.id === id);
  if (!preset) throw new Error(`unknown preset ${id}`);
  for (const [cell, viewport] of readyViewports()) {
    const d = defaults.get(cell.imageId);
    if (!d) continue;
    let range;
    if (!preset.band) {
      range = utilities.windowLevel.toLowHighRange(d.width, d.center);
    } else {
      const a = d.quantile(preset.band[0]);
      const b = d.quantile(preset.band[1]);
      const lower = Math.min(a, b);
      const upper = Math.max(Math.max(a, b), lower + 1);
      range = { lower, upper };
    }
    viewport.setProperties({ voiRange: range });
    viewport.render();
  }
}

/** Invert the grey scale of every image (again: back to the standard presentation). */
function toggleInvert() {
  for (const [cell, viewport] of readyViewports()) {
    viewport.setProperties({ invert: !viewport.getProperties().invert });
    viewport.render();
    readout(cell);  // an inversion alone fires no VOI event
  }
  syncToolbar();
}

/** Fit every image to its viewport (zoom and pan reset, the window kept). */
function fit() {
  for (const [, viewport] of readyViewports()) {
    viewport.resetCamera();
    viewport.render();
  }
}

/** Reset zoom, pan, window and inversion of every image to how it first showed. */
function reset() {
  for (const [cell, viewport] of readyViewports()) {
    viewport.resetCamera();
    viewport.resetProperties();
    viewport.render();
    readout(cell);
  }
  const select = document.getElementById("wl-preset");
  if (select) select.value = "file";
  syncToolbar();
}

function syncToolbar() {
  const priors = document.getElementById("viewer-priors");
  if (priors) {
    const count = shownStudy && shownStudy.priors ? Math.min(shownStudy.priors.length, MAX_PRIORS) : 0;
    priors.hidden = count === 0;
    priors.textContent = `Priors (${count})`;
    priors.setAttribute("aria-pressed", String(withPriors && count > 0));
  }
  const button = document.getElementById("viewer-invert");
  if (!button) return;
  const inverted = readyViewports().some(([cell, viewport]) => Boolean(viewport.getProperties().invert) !== cell.initialInvert);
  button.setAttribute("aria-pressed", String(inverted));
}

function wireToolbar() {
  const select = document.getElementById("wl-preset");
  if (select && !select.options.length) {
    for (const preset of PRESETS) {
      const option = el("option", "", preset.label);
      option.value = preset.id;
      option.title = preset.title;
      select.append(option);
    }
    select.addEventListener("change", () => applyPreset(select.value));
  }
  const on = (id, handler) => { const node = document.getElementById(id); if (node) node.addEventListener("click", handler); };
  on("viewer-invert", toggleInvert);
  on("viewer-fit", fit);
  on("viewer-reset", reset);
  on("viewer-priors", () => togglePriors().catch((error) => setMessage(String(error))));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wireToolbar);
else wireToolbar();

window.cxrViewer = {
  show,
  clear,
  applyPreset,
  toggleInvert,
  fit,
  reset,
  togglePriors,
  presets: PRESETS.map(({ id, label }) => ({ id, label })),
  /** The Cornerstone StackViewport of the n-th shown image (for tests and scripts). */
  viewport(index) {
    const cell = cells[index];
    return cell && engine ? engine.getViewport(cell.viewportId) : undefined;
  },
};

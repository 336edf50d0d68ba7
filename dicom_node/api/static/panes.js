// Reader page: resizable panes (loaded after app.js, whose $ it uses).
// Each separator sets the width of the side pane it names (worklist, report, dialog); the
// viewer takes the rest and never gets narrower than VIEWER_MIN_PX. Dragged with the
// pointer or moved with the arrow keys (Shift: larger steps, Home/End: smallest/largest);
// the widths are kept in localStorage for the next visit.
"use strict";

const PANES_KEY = "readerPaneWidths";
const PANE_MIN_PX = { worklist: 160, report: 280, dialog: 240 };
const VIEWER_MIN_PX = 300;
let paneWidths = {};

function panePanel(name) {
  return $(`${name}-panel`);
}

// The largest width `name` may take now: what the viewer can give above its minimum.
function paneMax(name) {
  const viewer = $("viewer-panel").getBoundingClientRect().width;
  const current = panePanel(name).getBoundingClientRect().width;
  return Math.max(PANE_MIN_PX[name], Math.floor(current + viewer - VIEWER_MIN_PX));
}

function setPaneWidth(name, px, save = true) {
  const width = Math.round(Math.min(paneMax(name), Math.max(PANE_MIN_PX[name], px)));
  $("main").style.setProperty(`--w-${name}`, `${width}px`);
  paneWidths[name] = width;
  updateSeparators();
  if (save) localStorage.setItem(PANES_KEY, JSON.stringify(paneWidths));
}

function updateSeparators() {
  for (const separator of document.querySelectorAll(".separator")) {
    const name = separator.dataset.pane;
    separator.setAttribute("aria-valuemin", String(PANE_MIN_PX[name]));
    separator.setAttribute("aria-valuemax", String(paneMax(name)));
    separator.setAttribute("aria-valuenow",
      String(Math.round(panePanel(name).getBoundingClientRect().width)));
  }
}

function restorePanes() {
  try {
    paneWidths = JSON.parse(localStorage.getItem(PANES_KEY) || "{}") || {};
  } catch (ignored) {
    paneWidths = {};
  }
  for (const [name, width] of Object.entries(paneWidths)) {
    if (name in PANE_MIN_PX && Number.isFinite(width)) {
      $("main").style.setProperty(`--w-${name}`, `${Math.max(PANE_MIN_PX[name], width)}px`);
    }
  }
}

function wireSeparator(separator) {
  const name = separator.dataset.pane;
  // The worklist is left of its separator (dragging right widens it); the others are right.
  const sign = name === "worklist" ? 1 : -1;
  separator.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    separator.setPointerCapture(event.pointerId);
    separator.classList.add("dragging");
    const startX = event.clientX;
    const startWidth = panePanel(name).getBoundingClientRect().width;
    const move = (moved) => setPaneWidth(name, startWidth + sign * (moved.clientX - startX), false);
    const stop = () => {
      separator.classList.remove("dragging");
      separator.removeEventListener("pointermove", move);
      separator.removeEventListener("pointerup", stop);
      separator.removeEventListener("pointercancel", stop);
      localStorage.setItem(PANES_KEY, JSON.stringify(paneWidths));
    };
    separator.addEventListener("pointermove", move);
    separator.addEventListener("pointerup", stop);
    separator.addEventListener("pointercancel", stop);
  });
  separator.addEventListener("keydown", (event) => {
    const width = panePanel(name).getBoundingClientRect().width;
    const step = event.shiftKey ? 64 : 16;
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      const right = event.key === "ArrowRight" ? 1 : -1;
      setPaneWidth(name, width + sign * right * step);
    } else if (event.key === "Home") {
      setPaneWidth(name, PANE_MIN_PX[name]);
    } else if (event.key === "End") {
      setPaneWidth(name, paneMax(name));
    } else {
      return;
    }
    event.preventDefault();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  restorePanes();
  for (const separator of document.querySelectorAll(".separator")) wireSeparator(separator);
  window.addEventListener("resize", updateSeparators);
  // The separators' values once the panes are laid out (after login shows them).
  new MutationObserver(updateSeparators).observe($("main"), { attributes: true,
    attributeFilter: ["hidden"] });
});

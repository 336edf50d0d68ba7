// Reader page: keyboard shortcuts and their help overlay (loaded after app.js, whose
// state and functions it uses: shownStudies, openStudy, decide, reviewSignOff, attempt).
"use strict";

// Alt+key works everywhere, the bare key only outside text fields (where it would type).
// Listed for the reader in the help overlay (#help), which "?" opens.
const SHORTCUTS = [
  { code: "ArrowDown", bare: "j", run: () => stepStudy(1) },
  { code: "ArrowUp", bare: "k", run: () => stepStudy(-1) },
  { code: "KeyA", bare: "a", run: () => decideShortcut("accept") },
  { code: "KeyR", bare: "r", run: () => decideShortcut("reject") },
  { code: "KeyS", bare: "s", run: () => signShortcut() },
];

function inTextField(target) {
  if (!target || !target.tagName) return false;
  const tag = target.tagName.toLowerCase();
  if (tag === "textarea" || tag === "select" || target.isContentEditable) return true;
  return tag === "input" && !["button", "checkbox", "radio", "range", "submit"].includes(target.type);
}

function onShortcut(event) {
  if (!state.user || $("main").hidden || $("help").open) return;
  if (event.ctrlKey || event.metaKey) return;
  const typing = inTextField(event.target);
  if (!typing && !event.altKey && event.key === "?") {
    event.preventDefault();
    openHelp();
    return;
  }
  if (!typing && !event.altKey && event.key === "/") {
    event.preventDefault();
    $("worklist-search").focus();
    return;
  }
  const shortcut = SHORTCUTS.find((s) => (event.altKey && !event.shiftKey && event.code === s.code)
    || (!typing && !event.altKey && !event.shiftKey && event.key === s.bare));
  if (!shortcut) return;
  event.preventDefault();
  shortcut.run();
}

// Opens the next (1) or previous (-1) study of the worklist as it is shown now.
function stepStudy(step) {
  const studies = shownStudies();
  if (!studies.length) return;
  const index = studies.findIndex((study) => study.study_instance_uid === state.uid);
  const next = index < 0 ? (step > 0 ? 0 : studies.length - 1)
    : Math.min(studies.length - 1, Math.max(0, index + step));
  if (index === next) {
    setStatus(step > 0 ? "This is the last study of the worklist." : "This is the first study of the worklist.");
    return;
  }
  const uid = studies[next].study_instance_uid;
  const fromWorklist = document.activeElement && document.activeElement.closest
    && document.activeElement.closest("#worklist");
  attempt(async () => {
    await openStudy(uid);
    if (fromWorklist) {
      const row = $("worklist").querySelector(`tbody tr[data-uid="${CSS.escape(uid)}"]`);
      if (row) row.focus();
    }
  });
}

// The proposal a shortcut decides: the open one on the current version (the newest).
function decideShortcut(action) {
  const open = state.detail ? state.detail.proposals.filter((p) => p.status === "open" && !p.stale) : [];
  if (!open.length) {
    setStatus("There is no open proposal to " + action + ".", true);
    return undefined;
  }
  return decide(open[open.length - 1].id, action);
}

// Sign-off by keyboard still goes through the confirmation: it opens, focused on Confirm.
function signShortcut() {
  if ($("sign-button").disabled) {
    setStatus($("sign-hint").textContent || "This report cannot be signed off now.", true);
    return;
  }
  reviewSignOff();
  const target = !$("sign-review").hidden ? $("sign-confirm")
    : $("resolve-table").querySelector("input");
  if (target) target.focus();
}

function openHelp() {
  $("help").showModal();
  $("help-close").focus();
}

// Tab and Shift+Tab go round the dialog's controls and never leave it while it is open.
function trapFocus(event) {
  if (event.key !== "Tab") return;
  const controls = [...event.currentTarget.querySelectorAll(
    "button, [href], input, select, textarea, [tabindex]:not([tabindex='-1'])")]
    .filter((node) => !node.disabled);
  if (!controls.length) return;
  const first = controls[0];
  const last = controls[controls.length - 1];
  if (event.shiftKey && document.activeElement === first) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("keydown", onShortcut);
  $("help-button").addEventListener("click", openHelp);
  $("help-close").addEventListener("click", () => $("help").close());
  $("help").addEventListener("keydown", trapFocus);
});

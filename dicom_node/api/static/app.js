// Reader page of the amend dialog: plain JavaScript, no build step.
// Every text from the server is inserted with textContent (never innerHTML).
"use strict";

const TOKEN_KEY = "dicomNodeApiToken";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  uid: null,
  detail: null,
  busy: false,
  edit: null,       // {uid, version} while the reader edits the report text (unsaved)
  review: null,     // {version, sha256} of the report the sign-off confirmation shows
  resolveVersion: null,  // the version whose code/text choices are on screen
  addendum: false,  // the addendum form is open
  addendumShown: null,  // {version, text} the addendum confirmation shows
  drafts: {},       // study UID -> what the reader typed in its message box, not sent yet
  showChanges: false,  // the report as clean text (false) or with the last change marked
  viewVersion: null,   // an earlier version the reader opened from the list (read-only)
  worklist: [],        // the studies as the API listed them
  sort: { key: "priority", descending: false },  // urgent first, then the longest waiting
  search: "",
};

const $ = (id) => document.getElementById(id);

class ApiFailure extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// The node did not answer at all (down, restarting, network gone): fetch() itself failed.
class NodeUnreachable extends Error {
  constructor() {
    super("The node is not answering");
  }
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text || "";
  status.classList.toggle("error", Boolean(isError));
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const init = { method: options.method || "GET", headers };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error instanceof TypeError) throw new NodeUnreachable();
    throw error;
  }
  if (response.status === 401) {
    logout("The token is not valid (or no longer valid).");
    throw new ApiFailure(401, "not logged in");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (ignored) { /* not JSON: keep the status text */ }
    throw new ApiFailure(response.status, detail);
  }
  return response;
}

const studyPath = (suffix = "") => `/api/studies/${encodeURIComponent(state.uid)}${suffix}`;

// Says what went wrong in plain words. When the node did not answer, a Retry button runs
// `retry` (the same request again); what the reader typed stays where it was.
function reportFailure(error, retry) {
  if (error instanceof ApiFailure) {
    if (error.status !== 401) setStatus(`${error.status}: ${error.message}`, true);
  } else if (error instanceof NodeUnreachable || error instanceof TypeError) {
    // A stream cut off midway rejects with a TypeError too.
    setStatus("");
    showFailure("The node is not answering; your text is kept.", retry);
  } else {
    setStatus(String(error), true);
  }
}

let failureRetry = null;
function showFailure(text, retry) {
  failureRetry = retry || null;
  $("failure-text").textContent = text + (retry ? " Retry when it is back." : " Try again in a moment.");
  $("retry-button").hidden = !retry;
  $("failure").hidden = false;
}

function clearFailure() {
  failureRetry = null;
  $("failure").hidden = true;
}

// Runs `work`; when the node does not answer, the failure offers to run it again.
function attempt(work) {
  return work().then(clearFailure, (error) => reportFailure(error, () => attempt(work)));
}

// ------------------------------------------------------------------ login
async function login(token) {
  state.token = token;
  try {
    const response = await api("/api/me");
    state.user = await response.json();
  } catch (error) {
    state.token = null;
    $("login-error").textContent = error instanceof ApiFailure && error.status === 401
      ? "This token is not valid." : `Login failed: ${error.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout-button").hidden = false;
  $("user").textContent = `${state.user.display_name.replaceAll("^", " ")} (${state.user.name})`;
  $("sign-button").disabled = !state.user.may_sign;
  await attempt(loadWorklist);
  connectLive();
}

function logout(message) {
  disconnectLive();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.user = null;
  $("main").hidden = true;
  $("login").hidden = false;
  $("logout-button").hidden = true;
  $("user").textContent = "";
  $("login-error").textContent = message || "";
  if (window.cxrViewer) window.cxrViewer.clear();
}

// ------------------------------------------------------------------ worklist
async function loadWorklist() {
  const response = await api("/api/studies");
  state.worklist = await response.json();
  renderWorklist();
}

// What each state is called on the page (the API's "running" is a draft being written).
const STATUS_NAMES = { received: "received", queued: "queued", running: "drafting",
  failed: "failed", drafted: "drafted", amended: "amended", signed: "signed" };

function statusText(study) {
  const name = STATUS_NAMES[study.status] || study.status;
  return study.open_proposals ? `${name} (${study.open_proposals} open)`
    : study.status_reason ? `${name}: ${study.status_reason}` : name;
}

// Sort keys; ties are broken by age (the longest waiting first).
// A reader's urgent mark ranks with the RIS's STAT; then HIGH, the rest, LOW.
const RIS_RANKS = { STAT: 0, HIGH: 1, ROUTINE: 2, MEDIUM: 2, LOW: 3 };
function priorityRank(study) {
  return study.urgent ? 0 : (RIS_RANKS[study.ris_priority] ?? 2);
}

function priorityText(study) {
  if (study.urgent) return "urgent";
  return study.ris_priority ? study.ris_priority.toLowerCase() : "routine";
}

const SORT_KEYS = {
  priority: priorityRank,
  accession: (study) => study.accession_number || "",
  received: (study) => study.received_at,
  status: (study) => study.status,
};

function compareStudies(a, b) {
  const key = SORT_KEYS[state.sort.key];
  let order = key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
  if (state.sort.descending) order = -order;
  if (order === 0) order = a.received_at < b.received_at ? -1 : a.received_at > b.received_at ? 1 : 0;
  return order;
}

// The studies as the worklist shows them now (filtered and sorted), for next/previous.
function shownStudies() {
  const needle = state.search.trim().toLowerCase();
  return state.worklist
    .filter((study) => !needle || `${study.accession_number || ""} ${statusText(study)}`
      .toLowerCase().includes(needle))
    .sort(compareStudies);
}

// The worklist as the reader filters (accession or status text) and sorts it (a header).
function renderWorklist() {
  const studies = shownStudies();
  for (const header of $("worklist").querySelectorAll("th[data-sort]")) {
    const sorted = header.dataset.sort === state.sort.key;
    header.setAttribute("aria-sort", sorted ? (state.sort.descending ? "descending" : "ascending")
      : "none");
  }
  const body = $("worklist").querySelector("tbody");
  // A reload (live update) keeps the keyboard focus on the row it was on.
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("#worklist tbody tr") : null;
  const focusedUid = focused ? focused.dataset.uid : null;
  body.replaceChildren();
  for (const study of studies) {
    const row = element("tr");
    row.dataset.uid = study.study_instance_uid;
    row.title = study.study_instance_uid;
    const priority = element("td", priorityText(study),
      priorityRank(study) <= 1 ? "urgent" : "muted");
    if (study.ris_priority) priority.title = `RIS priority: ${study.ris_priority}`;
    row.append(
      priority,
      element("td", study.accession_number || "-"),
      element("td", new Date(study.received_at).toLocaleString(undefined, {
        month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })),
      element("td", statusText(study)
        + (study.latest_version ? ` \u00b7 v${study.latest_version}` : "")),
    );
    row.classList.add(`status-${study.status}`);
    row.classList.toggle("is-urgent", Boolean(study.urgent));
    row.classList.toggle("selected", study.study_instance_uid === state.uid);
    row.addEventListener("click", () => attempt(() => openStudy(study.study_instance_uid)));
    // Reachable with Tab, opened with Enter or Space, as a link would be.
    row.tabIndex = 0;
    row.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      attempt(() => openStudy(study.study_instance_uid));
    });
    body.append(row);
    if (study.study_instance_uid === focusedUid) row.focus();
  }
  $("worklist-empty").hidden = state.worklist.length > 0;
  $("worklist-nomatch").hidden = !state.worklist.length || studies.length > 0;
}

// ------------------------------------------------------------------ live updates
// One event stream per page (GET /api/events, read with fetch so that the token goes in
// the Authorization header, never in a URL). "worklist" reloads the worklist, "study" the
// study on screen; both wait while the reader's own request runs. A dropped stream is
// opened again, 1 s, 2 s, ... up to 30 s later, and the page reloads what it missed.
const live = { controller: null, timer: null, retryMs: 1000 };
const pending = { worklist: false, study: false, running: false };

function setLive(connected) {
  $("live").textContent = connected ? "Live" : "Live updates paused: reconnecting\u2026";
  $("live").classList.toggle("error", !connected);
}

async function connectLive() {
  if (!state.token || live.controller) return;
  const controller = new AbortController();
  live.controller = controller;
  try {
    const response = await fetch("/api/events", {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (response.status === 401) {
      live.controller = null;
      logout("The token is not valid (or no longer valid).");
      return;
    }
    if (!response.ok) throw new ApiFailure(response.status, response.statusText);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (chunk.startsWith(":")) continue;  // keep-alive comment
        const { event, data } = parseEvent(chunk);
        if (event === "ready") {
          live.retryMs = 1000;
          setLive(true);
          // Whatever changed while the stream was down.
          scheduleRefresh(true, true);
        } else if (event === "worklist") {
          scheduleRefresh(true, false);
        } else if (event === "study" && data && data.study_instance_uid === state.uid) {
          scheduleRefresh(false, true);
        }
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
  } finally {
    if (live.controller === controller) live.controller = null;
  }
  if (controller.signal.aborted || !state.token) return;
  setLive(false);
  clearTimeout(live.timer);
  live.timer = setTimeout(connectLive, live.retryMs);
  live.retryMs = Math.min(live.retryMs * 2, 30000);
}

function disconnectLive() {
  clearTimeout(live.timer);
  if (live.controller) live.controller.abort();
  live.controller = null;
}

function scheduleRefresh(worklist, study) {
  pending.worklist = pending.worklist || worklist;
  pending.study = pending.study || study;
  runRefresh();
}

// Reloads what live events named, one request at a time, never during the reader's own.
async function runRefresh() {
  if (pending.running || state.busy || !state.token) return;
  pending.running = true;
  try {
    while ((pending.worklist || pending.study) && !state.busy) {
      if (pending.worklist) {
        pending.worklist = false;
        await loadWorklist();
      }
      if (pending.study && !state.busy) {
        pending.study = false;
        if (state.uid && state.detail) await refreshStudy();
      }
    }
  } catch (error) {
    // A live reload that fails is not the reader's request: the stream's reconnect retries.
  } finally {
    pending.running = false;
  }
}

// What the reader sees of a study, to tell whether a reload changed anything.
function fingerprint(detail) {
  return JSON.stringify([detail.study.status, detail.study.urgent,
    detail.versions.map((v) => v.version), detail.messages.length,
    detail.proposals.map((p) => [p.id, p.status, p.stale])]);
}

// A study reload caused by a live event: rendered only when something the page shows
// changed (the reader's own change is on screen already, and a render would close
// confirmations that are still valid).
async function refreshStudy() {
  const uid = state.uid;
  const response = await api(studyPath());
  const detail = await response.json();
  if (uid !== state.uid || state.busy || !state.detail) return;
  if (fingerprint(detail) === fingerprint(state.detail)) return;
  state.detail = detail;
  renderStudy();
}

// ------------------------------------------------------------------ study
async function openStudy(uid) {
  const changed = uid !== state.uid;
  if (changed) {
    // Each study keeps its own typed message; the previous patient leaves the screen at once.
    if (state.uid) state.drafts[state.uid] = $("message-input").value;
    state.uid = uid;
    state.detail = null;
    state.viewVersion = null;
    state.addendum = false;
    state.addendumShown = null;
    $("message-input").value = state.drafts[uid] || "";
    clearStudy();
  }
  for (const row of $("worklist").querySelectorAll("tbody tr")) {
    row.classList.toggle("selected", row.dataset.uid === uid);
  }
  await reloadStudy();
  if (changed) showImages();
}

async function reloadStudy() {
  const uid = state.uid;
  const response = await api(studyPath());
  const detail = await response.json();
  if (uid !== state.uid) return;  // the reader opened another study meanwhile
  state.detail = detail;
  renderStudy();
}

// What shows while a newly opened study loads: nothing of the previous one.
function clearStudy() {
  $("patient").textContent = "Loading the study\u2026";
  $("report-version").textContent = "-";
  $("report-status").textContent = "";
  for (const id of ["report-findings", "report-impression", "report-codes-changes", "messages",
                    "proposals", "versions"]) {
    $(id).replaceChildren();
  }
  $("findings").querySelector("tbody").replaceChildren();
  if (window.cxrViewer) window.cxrViewer.clear();
}

function renderDiff(container, segments, fallback) {
  container.replaceChildren();
  if (!segments) {
    container.textContent = fallback;
    return;
  }
  for (const segment of segments) {
    if (segment.op === "equal") container.append(document.createTextNode(segment.text));
    else container.append(element(segment.op === "insert" ? "ins" : "del", segment.text));
  }
}

function codeChanges(diff) {
  if (!diff || !diff.findings_changes.length) return "";
  return "Coded findings: " + diff.findings_changes
    .map((c) => `${c.label} ${c.before ?? "-"} \u2192 ${c.after ?? "-"}`).join("; ");
}

// A DICOM date (DA, "19400305") in the reader's locale; anything else as it is.
function dicomDate(value) {
  const match = /^(\d{4})(\d{2})(\d{2})$/.exec(value || "");
  if (!match) return value || "";
  const date = new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]));
  return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

function renderStudy() {
  const detail = state.detail;
  const patient = detail.patient;
  $("patient").textContent = patient
    ? `${patient.name.replaceAll("^", " ")} \u00b7 ID ${patient.patient_id} \u00b7 born ${dicomDate(patient.birth_date)} `
      + `\u00b7 ${patient.sex} \u00b7 study ${dicomDate(patient.study_date)} \u00b7 acc. ${patient.accession_number}`
    : detail.study.study_instance_uid;
  const latest = detail.current;
  // An earlier version opened from the list is shown read-only: nothing can be edited or
  // signed while it is on screen, so a sign-off never follows a text other than the current.
  const older = latest && state.viewVersion !== null && state.viewVersion !== latest.version
    ? detail.versions.find((v) => v.version === state.viewVersion) || null : null;
  if (!older) state.viewVersion = null;
  const current = older || latest;
  $("version-note").hidden = !older;
  if (older) {
    $("version-note-text").textContent = `You are reading version ${older.version} (${older.kind}, `
      + `${older.author || "model"}, ${new Date(older.created_at).toLocaleString()}); `
      + `the current report is version ${latest.version}. `;
  }
  $("report-version").textContent = current ? String(current.version) : "-";
  // The node opens a screened draft with this statement (inference.screening = warn).
  $("report-caution").hidden = !(current && current.findings_text.startsWith(
    "CAUTION: outside the model's training distribution"));
  $("report-status").textContent = STATUS_NAMES[detail.study.status] || detail.study.status;
  $("urgent-button").setAttribute("aria-pressed", String(Boolean(detail.study.urgent)));
  $("urgent-button").textContent = detail.study.urgent ? "Urgent (click: routine)" : "Mark urgent";
  // Clean text to read; the last version's changes on request ("Show changes").
  const diff = current && state.showChanges ? current.diff : null;
  renderDiff($("report-findings"), diff ? diff.findings : null,
    current ? current.findings_text
      : `(no report yet: ${detail.study.status}${detail.study.status_reason ? ", " + detail.study.status_reason : ""})`);
  renderDiff($("report-impression"), diff ? diff.impression : null,
    current ? current.impression_text : "");
  $("report-codes-changes").textContent = current ? codeChanges(current.diff) : "";
  const signed = detail.study.status === "signed";
  if (state.edit && (!current || state.edit.uid !== state.uid || signed)) state.edit = null;
  const editing = Boolean(state.edit);
  $("edit-button").disabled = !current || signed || editing || Boolean(older);
  // An unsaved edit is never signed: sign-off waits until it is saved or discarded.
  $("sign-button").disabled = !current || signed || editing || Boolean(older)
    || !(state.user && state.user.may_sign);
  const maySignOff = Boolean(state.user && state.user.may_sign);
  const signedBy = signed && latest
    ? `Signed off by ${latest.author || "a reader"} on ${new Date(latest.created_at).toLocaleString()}: `
      + "the report cannot be changed; an addendum can be added." : "";
  $("sign-hint").textContent = editing
    ? "Save or discard your edit to sign off: an unsaved edit is never signed."
    : signed ? signedBy
    : "Your account may not sign reports off; a radiologist who may signs them.";
  $("sign-hint").hidden = !editing && !signed && (maySignOff || !current);
  // A confirmation stays open through a reload only while it still shows the latest version.
  const reviewing = (shown) => shown !== null && current && !older && !signed && !editing
    && shown === current.version;
  if (!reviewing(state.review ? state.review.version : null)) {
    state.review = null;
    $("sign-review").hidden = true;
  }
  if (!reviewing(state.resolveVersion)) {
    state.resolveVersion = null;
    $("resolve-review").hidden = true;
  }
  // A reload (a dialog turn, a colleague's change) keeps an edit in progress on screen.
  $("edit-form").hidden = !editing;
  $("report").hidden = editing;

  // A signed report takes addenda only; each is a signed version of its own.
  const addenda = current ? current.addenda || [] : [];
  $("report-addenda").hidden = !addenda.length;
  $("addenda").replaceChildren(...addenda.map((addendum) => {
    const item = element("li", null, "addendum");
    const when = addendum.written_at ? new Date(addendum.written_at).toLocaleString() : "";
    item.append(element("span", `${(addendum.author || "").replaceAll("^", " ")} \u00b7 ${when}`,
      "meta"), element("div", addendum.text, "text"));
    return item;
  }));
  const maySign = Boolean(state.user && state.user.may_sign);
  $("addendum-button").hidden = !signed;
  $("addendum-button").disabled = !maySign || state.addendum;
  $("addendum-button").title = maySign ? "" : "Only a reader who may sign can add an addendum";
  $("addendum-form").hidden = !(signed && state.addendum);

  const findings = $("findings").querySelector("tbody");
  findings.replaceChildren();
  const locked = !current || signed || editing || Boolean(older);
  for (const finding of current ? current.findings : []) {
    findings.append(findingRow(finding, locked));
  }

  const versions = $("versions");
  versions.replaceChildren();
  for (const version of detail.versions) {
    const when = new Date(version.created_at).toLocaleString();
    const item = element("li", `v${version.version} ${version.kind} \u00b7 ${version.author || "model"} \u00b7 ${when}`);
    item.dataset.version = version.version;
    item.tabIndex = 0;
    item.classList.toggle("selected", version.version === (current && current.version));
    const open = () => {
      state.viewVersion = version.version;
      renderStudy();
    };
    item.addEventListener("click", open);
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        open();
      }
    });
    versions.append(item);
  }

  const messages = $("messages");
  messages.replaceChildren();
  for (const message of detail.messages) {
    messages.append(messageBubble(message.role, message.text, `${message.kind} \u00b7 v${message.based_on_version}`));
  }

  const proposals = $("proposals");
  proposals.replaceChildren();
  for (const proposal of detail.proposals) {
    proposals.append(proposalCard(proposal));
  }
  scrollToNewest(true);
}

// Keeps the newest message in view; while text streams in, only if the reader has not
// scrolled up to read something older.
function scrollToNewest(always = false) {
  const pane = $("conversation");
  const nearBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
  if (always || nearBottom) pane.scrollTop = pane.scrollHeight;
}

const PRESENCES = ["present", "absent", "uncertain", "not_assessed"];
const PRESENCE_NAMES = { present: "present", absent: "absent", uncertain: "uncertain",
  not_assessed: "not assessed" };

function presenceName(value) {
  return value === null || value === undefined ? "\u2014" : (PRESENCE_NAMES[value] || value);
}

// One row of the coded findings: a presence control (the reader's choice), what the text
// says, who set the code, and the model's probability, labelled as the model's.
function findingRow(finding, locked) {
  const row = element("tr", null, finding.presence);
  row.dataset.label = finding.label;
  row.classList.toggle("disagrees", finding.disagrees);
  const select = document.createElement("select");
  select.className = "presence";
  select.setAttribute("aria-label", `Presence of ${finding.label}`);
  for (const value of PRESENCES) {
    const option = element("option", PRESENCE_NAMES[value]);
    option.value = value;
    option.selected = value === finding.presence;
    select.append(option);
  }
  select.disabled = locked;
  select.addEventListener("change", () => setPresence(finding.label, select.value));
  const said = element("td", presenceName(finding.text_presence)
    + (finding.disagrees ? " \u2260 code" : ""), finding.disagrees ? "disagree" : null);
  const source = finding.source === "reader"
    ? (finding.confirmed ? "you (confirmed)" : "you") : finding.source;
  const probability = finding.probability === null ? "\u2014"
    : `${(finding.probability * 100).toFixed(0)}%`;
  const bar = document.createElement("meter");
  if (finding.probability !== null) {
    bar.min = 0;
    bar.max = 1;
    bar.value = finding.probability;
    if (finding.threshold !== null) bar.optimum = 0;  // low is good: high shows as a warning
    if (finding.threshold !== null) bar.high = finding.threshold;
    bar.setAttribute("aria-label", `model probability of ${finding.label}`);
  }
  const cell = element("td");
  cell.append(select);
  const model = element("td", null, "num");
  if (finding.probability !== null) model.append(bar);
  model.append(probability);
  if (finding.threshold !== null) {
    model.title = `model probability; threshold ${(finding.threshold * 100).toFixed(0)} %`;
  }
  const label = element("td", finding.label);
  label.title = finding.label;  // shown in full when the pane cuts it short
  row.append(label, cell, said, element("td", source), model);
  return row;
}

// A presence chosen by hand is saved at once, as the next version (the reader's choice).
function setPresence(label, presence) {
  if (state.busy) {
    // Not saved: show the stored code again rather than a choice that was not made.
    setStatus("Please wait for the current request to finish.", true);
    renderStudy();
    return undefined;
  }
  return guarded(async () => {
    const current = state.detail.current;
    const response = await api(studyPath("/report"), {
      method: "PUT",
      json: {
        based_on_version: current.version,
        findings_text: current.findings_text,
        impression_text: current.impression_text,
        findings: { [label]: presence },
      },
    });
    const result = await response.json();
    await reloadStudy();
    await loadWorklist();
    setStatus(`${label}: ${presenceName(presence)} (version ${result.version.version})`);
  });
}

function messageBubble(role, text, meta) {
  const bubble = element("div", null, `message ${role}`);
  bubble.append(element("span", meta, "meta"));
  const body = element("span", text, "body");
  bubble.append(body);
  return bubble;
}

function proposalCard(proposal) {
  const card = element("div", null, "proposal");
  card.dataset.id = proposal.id;
  card.dataset.status = proposal.status;
  card.classList.toggle("stale", proposal.stale);
  const state_ = proposal.status === "open" && proposal.stale ? "open, outdated" : proposal.status;
  card.append(element("h3", `Proposal ${proposal.id} (${proposal.kind}) on v${proposal.based_on_version}: ${state_}`));
  const findings = element("div", null, "text diff");
  renderDiff(findings, proposal.diff ? proposal.diff.findings : null, proposal.findings_text);
  const impression = element("div", null, "text diff");
  renderDiff(impression, proposal.diff ? proposal.diff.impression : null, proposal.impression_text);
  card.append(element("h3", "Findings"), findings, element("h3", "Impression"), impression);
  const codes = codeChanges(proposal.diff);
  if (codes) card.append(element("p", codes, "muted"));
  if (proposal.unmet_statements && proposal.unmet_statements.length) {
    // The model did not do all the reader asked: say which findings, before any accept.
    card.append(element("p", `Not as you stated: ${proposal.unmet_statements.join(", ")}`,
      "unmet"));
  }
  if (proposal.status === "open" && !proposal.stale) {
    const actions = element("div", null, "actions");
    const accept = element("button", "Accept", "accept");
    accept.type = "button";
    accept.addEventListener("click", () => decide(proposal.id, "accept"));
    const reject = element("button", "Reject", "reject");
    reject.type = "button";
    reject.addEventListener("click", () => decide(proposal.id, "reject"));
    actions.append(accept, reject);
    card.append(actions);
  }
  return card;
}

// Runs one action at a time; the action buttons are disabled meanwhile (a click on a
// disabled button does nothing, so no message is lost silently).
async function guarded(work) {
  if (state.busy) {
    setStatus("Please wait for the current request to finish.", true);
    return;
  }
  state.busy = true;
  document.body.classList.add("busy");
  $("send").disabled = true;
  for (const button of document.querySelectorAll(".proposal button")) button.disabled = true;
  try {
    await work();
    clearFailure();
  } catch (error) {
    reportFailure(error, () => guarded(work));
    // Show the study as it is now (a 409 means someone else changed it).
    if (state.token && state.uid && !(error instanceof NodeUnreachable)) {
      await reloadStudy().catch(() => undefined);
    }
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
    $("send").disabled = false;
    for (const button of document.querySelectorAll(".proposal button")) button.disabled = false;
    runRefresh();  // live updates that arrived meanwhile
  }
}

function decide(proposalId, action) {
  return guarded(async () => {
    const response = await api(studyPath(`/proposals/${proposalId}/${action}`), { method: "POST" });
    const result = await response.json();
    await reloadStudy();
    await loadWorklist();
    setStatus(action === "accept"
      ? `Version ${result.version.version} stored` + (result.destinations.length ? ` and queued for ${result.destinations.join(", ")}` : "")
      : `Proposal ${proposalId} rejected`);
  });
}

// ------------------------------------------------------------------ dialog (SSE)
function parseEvent(raw) {
  let event = "message";
  const data = [];
  for (const line of raw.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
}

function sendMessage(text, intent) {
  return guarded(async () => {
    // The request belongs to the study it was sent in, whatever the reader opens meanwhile.
    const uid = state.uid;
    const path = studyPath("/messages?stream=true");
    const messages = $("messages");
    messages.append(messageBubble("user", text, "sending"));
    const bubble = messageBubble("assistant", "", "generating");
    bubble.classList.add("streaming");
    messages.append(bubble);
    scrollToNewest(true);
    const body = bubble.querySelector(".body");
    const sent = messages.lastElementChild.previousElementSibling;
    try {
      await streamTurn(uid, path, text, intent, body);
    } catch (error) {
      // Nothing half-done stays on screen; the typed text stays in the box.
      sent.remove();
      bubble.remove();
      throw error;
    }
    bubble.classList.remove("streaming");
    const outcome = bubble.dataset.outcome;
    // Only now is the message stored: until then a failure keeps what the reader typed.
    if (state.uid !== uid) {
      if (state.drafts[uid] === text) state.drafts[uid] = "";
      await loadWorklist();
      setStatus(`${outcome} in the study you left; open it again to read it.`);
      return;
    }
    if ($("message-input").value === text) $("message-input").value = "";
    await reloadStudy();
    await loadWorklist();
    setStatus(outcome);
  });
}

// Posts one message and writes the streamed answer into `body` (its bubble's text).
async function streamTurn(uid, path, text, intent, body) {
  const response = await api(path, {
    method: "POST", json: { text, intent }, headers: { Accept: "text/event-stream" },
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finished = false;
  while (!finished) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const { event, data } = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (event === "token") {
        body.textContent += data.text;
        if (state.uid === uid) scrollToNewest();
      } else if (event === "done") {
        finished = true;
        body.parentElement.dataset.outcome = data.proposal
          ? `Proposal ${data.proposal.id} ready` : "Answered";
      } else if (event === "error") {
        finished = true;
        throw new ApiFailure(data.status, data.detail);
      }
    }
  }
  if (!finished) throw new NodeUnreachable();  // the stream ended without an answer
}

// ------------------------------------------------------------------ priority
function toggleUrgent() {
  if (!state.detail) return undefined;
  const urgent = !state.detail.study.urgent;
  return guarded(async () => {
    await api(studyPath("/priority"), { method: "PUT", json: { urgent } });
    await reloadStudy();
    await loadWorklist();
    setStatus(urgent ? "Marked urgent: the study heads the worklist" : "Marked routine");
  });
}

// ------------------------------------------------------------------ edit and sign-off
function startEdit() {
  const current = state.detail.current;
  state.edit = { uid: state.uid, version: current.version };
  $("edit-findings").value = current.findings_text;
  $("edit-impression").value = current.impression_text;
  renderStudy();
}

function discardEdit() {
  state.edit = null;
  renderStudy();
}

function reviewSignOff() {
  if (state.edit) {
    setStatus("Save or discard your edit first: an unsaved edit is never signed.", true);
    return;
  }
  const current = state.detail.current;
  const disagreeing = current.findings.filter((finding) => finding.disagrees);
  if (disagreeing.length) {
    showResolve(disagreeing);
    return;
  }
  $("resolve-review").hidden = true;
  state.resolveVersion = null;
  $("review-version").textContent = String(current.version);
  $("review-findings").textContent = current.findings_text;
  $("review-impression").textContent = current.impression_text;
  const codes = $("review-codes");
  codes.replaceChildren();
  for (const finding of current.findings) {
    const by = finding.source === "reader" ? "you" : finding.source;
    codes.append(element("li", `${finding.label}: ${presenceName(finding.presence)} (${by})`));
  }
  state.review = { version: current.version, sha256: current.content_sha256 };
  $("sign-review").hidden = false;
}

// Sign-off asks for an explicit choice for each finding whose code and text disagree.
function showResolve(disagreeing) {
  const body = $("resolve-table").querySelector("tbody");
  body.replaceChildren();
  for (const finding of disagreeing) {
    const row = element("tr");
    row.dataset.label = finding.label;
    row.dataset.text = finding.text_presence;
    const choice = (value, text) => {
      const cell = element("td");
      const label = element("label");
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = `resolve-${finding.label}`;
      radio.value = value;
      label.append(radio, ` ${text}`);
      cell.append(label);
      return cell;
    };
    row.append(element("td", finding.label),
      choice("text", presenceName(finding.text_presence)),
      choice("code", presenceName(finding.presence)));
    body.append(row);
  }
  $("sign-review").hidden = true;
  state.review = null;
  state.resolveVersion = state.detail.current.version;
  $("resolve-review").hidden = false;
}

function applyResolve() {
  const rows = [...$("resolve-table").querySelectorAll("tbody tr")];
  const findings = {};
  const confirm = [];
  for (const row of rows) {
    const chosen = row.querySelector("input:checked");
    if (!chosen) {
      setStatus(`Choose for ${row.dataset.label}: follow the text or keep the code.`, true);
      return undefined;
    }
    if (chosen.value === "text") findings[row.dataset.label] = row.dataset.text;
    else confirm.push(row.dataset.label);
  }
  return guarded(async () => {
    const current = state.detail.current;
    await api(studyPath("/report"), {
      method: "PUT",
      json: {
        based_on_version: current.version,
        findings_text: current.findings_text,
        impression_text: current.impression_text,
        findings,
        confirm,
      },
    });
    $("resolve-review").hidden = true;
    state.resolveVersion = null;
    await reloadStudy();
    // The choices are a version of their own: review exactly that before signing.
    reviewSignOff();
  });
}

function startAddendum() {
  state.addendum = true;
  $("addendum-text").value = "";
  $("addendum-confirm").hidden = true;
  renderStudy();
}

function cancelAddendum() {
  state.addendum = false;
  renderStudy();
}

function reviewAddendum() {
  const text = $("addendum-text").value.trim();
  if (!text) {
    setStatus("Write the addendum first.", true);
    return;
  }
  $("addendum-version").textContent = String(state.detail.current.version);
  $("addendum-shown").textContent = text;
  state.addendumShown = { version: state.detail.current.version, text };
  $("addendum-confirm").hidden = false;
}

function signAddendum() {
  return guarded(async () => {
    const shown = state.addendumShown;
    if (!shown) return;
    // Exactly the text the confirmation showed, on exactly that version (409 otherwise).
    const response = await api(studyPath("/addenda"), {
      method: "POST",
      json: { based_on_version: shown.version, text: shown.text },
    });
    const result = await response.json();
    state.addendum = false;
    state.addendumShown = null;
    await reloadStudy();
    await loadWorklist();
    setStatus(`Addendum signed as version ${result.version.version}`);
  });
}

function saveEdit() {
  return guarded(async () => {
    const response = await api(studyPath("/report"), {
      method: "PUT",
      json: {
        based_on_version: state.detail.current.version,
        findings_text: $("edit-findings").value,
        impression_text: $("edit-impression").value,
      },
    });
    const result = await response.json();
    state.edit = null;
    await reloadStudy();
    await loadWorklist();
    setStatus(`Version ${result.version.version} stored`);
  });
}

function signOff() {
  return guarded(async () => {
    if (!state.review) return;
    // What the confirmation showed is what the node must sign (409 otherwise).
    const response = await api(studyPath("/signoff"), {
      method: "POST",
      json: { based_on_version: state.review.version, shown_sha256: state.review.sha256 },
    });
    state.review = null;
    const result = await response.json();
    await reloadStudy();
    await loadWorklist();
    setStatus(`Signed off as version ${result.version.version}`);
  });
}

// ------------------------------------------------------------------ image
// The viewer (Cornerstone3D) is built from frontend/ into /static/viewer/viewer.js and
// exposes window.cxrViewer; it fetches the full-resolution pixels itself.
function showImages() {
  if (!window.cxrViewer) {
    setStatus("The image viewer is not installed (build it: cd frontend && npm ci && npm run build).", true);
    return;
  }
  const uid = state.uid;
  const images = state.detail.images;
  // The patient's earlier studies go beside the current one; without them (an error) the
  // current images still show.
  api(studyPath("/priors"))
    .then((response) => response.json())
    .catch((error) => { reportFailure(error); return []; })
    .then((priors) => {
      if (uid !== state.uid) return undefined;  // the reader opened another study meanwhile
      return window.cxrViewer.show({
        studyUid: uid, images, token: state.token,
        priors: priors.map((prior) => ({
          studyUid: prior.study_instance_uid,
          label: prior.study_date ? localDate(prior.study_date)
            : new Date(prior.received_at).toLocaleDateString(),
          images: prior.images,
        })),
      });
    })
    .catch(reportFailure);
}

// "2004-08-26" in the reader's locale (as a local date: no shift by the time zone).
function localDate(isoDate) {
  const [year, month, day] = isoDate.split("-").map(Number);
  return new Date(year, month - 1, day).toLocaleDateString();
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login($("token").value.trim());
  });
  $("logout-button").addEventListener("click", () => logout(""));
  $("refresh-button").addEventListener("click", () => attempt(loadWorklist));
  $("retry-button").addEventListener("click", () => {
    const retry = failureRetry;
    clearFailure();
    if (retry) retry();
  });
  $("failure-dismiss").addEventListener("click", clearFailure);
  $("urgent-button").addEventListener("click", toggleUrgent);
  $("version-back").addEventListener("click", () => {
    state.viewVersion = null;
    renderStudy();
  });
  $("worklist-search").addEventListener("input", (event) => {
    state.search = event.target.value;
    renderWorklist();
  });
  for (const header of $("worklist").querySelectorAll("th[data-sort]")) {
    header.querySelector("button").addEventListener("click", () => {
      const key = header.dataset.sort;
      state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : false };
      renderWorklist();
    });
  }
  $("show-changes").addEventListener("change", (event) => {
    state.showChanges = event.target.checked;
    if (state.detail) renderStudy();
  });
  // Ctrl+Enter (Cmd+Enter on a Mac) sends; Enter alone starts a new line.
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("message-form").requestSubmit();
    }
  });
  $("message-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message-input").value;
    if (!state.uid) { setStatus("Select a study first.", true); return; }
    sendMessage(text, $("intent").value);
  });
  $("edit-button").addEventListener("click", startEdit);
  $("cancel-edit").addEventListener("click", discardEdit);
  $("save-edit").addEventListener("click", saveEdit);
  $("sign-button").addEventListener("click", reviewSignOff);
  $("sign-confirm").addEventListener("click", signOff);
  $("resolve-apply").addEventListener("click", applyResolve);
  $("addendum-button").addEventListener("click", startAddendum);
  $("addendum-cancel").addEventListener("click", cancelAddendum);
  $("addendum-review").addEventListener("click", reviewAddendum);
  $("addendum-sign").addEventListener("click", signAddendum);
  $("addendum-text").addEventListener("input", () => { $("addendum-confirm").hidden = true; });
  $("resolve-cancel").addEventListener("click", () => {
    state.resolveVersion = null;
    $("resolve-review").hidden = true;
  });
  $("sign-cancel").addEventListener("click", () => {
    state.review = null;
    $("sign-review").hidden = true;
  });
  if (state.token) login(state.token);
});

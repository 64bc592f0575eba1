// muster console. Vanilla JavaScript, no build step. Every data call goes to muster's REST API
// with the caller's credential in the Authorization header; the credential lives in this tab's
// sessionStorage only and is never put in a URL. Live job progress is read from
// GET /api/jobs/{id}/watch (server-sent events) with fetch() and a stream reader, because
// EventSource cannot send an Authorization header.
"use strict";

const CENTRAL = "2022-07-31";
const HUB = "2021-04-12";
const TOKEN_KEY = "muster.token";
// A token signed here from a pasted connection string lives this long; the key is not kept.
const SIGNED_TOKEN_SECS = 8 * 3600;
const DEVICE_PAGE = 50;

const main = document.getElementById("main");
let me = null; // {principal, permissions}
let cleanup = []; // what the current view must stop when the page changes

// ------------------------------------------------------------------------------------------
// Small DOM helpers: text always goes in as text, never as HTML.
// ------------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function toast(message, bad) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 3000);
}

function can(permission) {
  return !!me && me.permissions.includes(permission);
}

function badge(status) {
  // IoT Central calls a finished job "complete"; muster's stream says "completed".
  if (status === "complete") status = "completed";
  return el("span", { class: "badge " + status, "data-status": status, text: statusText(status) });
}

function statusText(s) {
  return { timedOut: "timed out", complete: "completed" }[s] || s;
}

function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

// One line when it is short, indented otherwise.
function compact(v) {
  const one = typeof v === "string" ? v : JSON.stringify(v);
  return one.length <= 72 ? one : pretty(v);
}

function pretty(v) {
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

// ------------------------------------------------------------------------------------------
// The API
// ------------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: t } : {};
}

function withVersion(path, version) {
  if (/[?&]api-version=/.test(path)) return path;
  return path + (path.includes("?") ? "&" : "?") + "api-version=" + (version || CENTRAL);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, version) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(withVersion(path, version), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (r.status === 401) {
    signOut("The server refused the credential (expired, revoked or mistyped); sign in again.");
    throw new ApiError(401, "Unauthorized", "sign in again");
  }
  if (!r.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(r.status, e.code || String(r.status), e.message || r.statusText);
  }
  return data;
}

function skiptoken(nextLink) {
  if (!nextLink) return null;
  try { return new URL(nextLink).searchParams.get("$skiptoken"); } catch (_) { return null; }
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}

// ------------------------------------------------------------------------------------------
// Signing in: a token as sent (SharedAccessSignature ...), or a connection string from which a
// token is signed here (Web Crypto) and only the token kept.
// ------------------------------------------------------------------------------------------

function pct(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

async function tokenFrom(text) {
  text = text.trim();
  // Nothing: only a node started with --insecure lets that in.
  if (!text) return "";
  if (text.startsWith("SharedAccessSignature ")) return text;
  if (text.includes("HostName=")) {
    const parts = {};
    for (const p of text.split(";")) {
      const i = p.indexOf("=");
      if (i > 0) parts[p.slice(0, i).trim()] = p.slice(i + 1).trim();
    }
    for (const k of ["HostName", "SharedAccessKeyName", "SharedAccessKey"]) {
      if (!parts[k]) throw new Error("the connection string has no " + k + "=");
    }
    if (!window.crypto || !crypto.subtle) {
      throw new Error("this browser cannot sign here (Web Crypto needs https or localhost); paste a token instead (muster prints one in dev mode)");
    }
    const key = Uint8Array.from(atob(parts.SharedAccessKey), (c) => c.charCodeAt(0));
    const se = Math.floor(Date.now() / 1000) + SIGNED_TOKEN_SECS;
    const sr = pct(parts.HostName);
    const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const mac = await crypto.subtle.sign("HMAC", k, new TextEncoder().encode(sr + "\n" + se));
    const sig = btoa(String.fromCharCode(...new Uint8Array(mac)));
    return "SharedAccessSignature sr=" + sr + "&sig=" + pct(sig) + "&se=" + se + "&skn=" + pct(parts.SharedAccessKeyName);
  }
  throw new Error("paste a token (SharedAccessSignature sr=...) or a connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...)");
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  showLogin(message);
}

function showLogin(message) {
  stopView();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("textarea", {
    id: "token", rows: 4, autocomplete: "off", spellcheck: "false",
    placeholder: "SharedAccessSignature sr=...&sig=...&se=...&skn=...   or   HostName=...;SharedAccessKeyName=...;SharedAccessKey=...",
  });
  const error = el("p", { class: "error", id: "login-error", text: message || "" });
  const form = el("form", { class: "card", id: "login" },
    el("h1", { text: "Sign in" }),
    el("p", { class: "muted", text: "Paste an API token, a SAS token or a connection string, as the muster CLI takes it. It stays in this browser tab only (sessionStorage) and is sent as the Authorization header." }),
    el("label", { for: "token", text: "Credential" }),
    input,
    error,
    el("div", { class: "row" }, el("button", { type: "submit", id: "login-submit", text: "Sign in" })));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      sessionStorage.setItem(TOKEN_KEY, await tokenFrom(input.value));
      await loadMe();
      if (!location.hash || location.hash === "#/login") location.hash = "#/jobs";
      render();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = e.status === 401 ? "The server refused this credential." : e.message;
    }
  });
  clear(main).append(form);
}

async function loadMe() {
  me = await api("GET", "/api/me");
  document.getElementById("who").textContent = me.principal;
  document.getElementById("who").title = "permissions: " + me.permissions.join(", ");
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  for (const a of document.querySelectorAll("#nav a[data-needs]")) {
    a.hidden = !can(a.dataset.needs);
  }
}

// ------------------------------------------------------------------------------------------
// Progress: the same numbers `muster job watch` shows (finished = succeeded + failed + timed
// out + cancelled; the server sends `finished`).
// ------------------------------------------------------------------------------------------

function percent(stats) {
  if (!stats || !stats.total) return 0;
  return Math.floor((stats.finished * 100) / stats.total);
}

function progressBar(stats, big) {
  const bar = el("div", { class: big ? "progress big" : "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" });
  const parts = {};
  for (const k of ["succeeded", "failed", "timedOut", "cancelled", "running"]) {
    parts[k] = el("span", { class: k, title: statusText(k) });
    bar.append(parts[k]);
  }
  bar.update = (s) => {
    s = s || { total: 0, finished: 0 };
    const total = s.total || 0;
    for (const k of Object.keys(parts)) {
      parts[k].style.width = total ? ((s[k] || 0) * 100) / total + "%" : "0%";
    }
    const p = percent(s);
    bar.setAttribute("aria-valuenow", String(p));
    bar.dataset.percent = String(p);
    bar.dataset.finished = String(s.finished || 0);
    bar.dataset.total = String(total);
  };
  bar.update(stats);
  return bar;
}

function progressLabel(s) {
  s = s || { total: 0, finished: 0 };
  return s.finished + " / " + s.total + " (" + percent(s) + "%)";
}

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

function stopView() {
  for (const f of cleanup) { try { f(); } catch (_) { /* already stopped */ } }
  cleanup = [];
}

function every(ms, f) {
  const t = setInterval(f, ms);
  cleanup.push(() => clearInterval(t));
}

async function render() {
  stopView();
  if (token() === null) return showLogin();
  if (!me) {
    try { await loadMe(); } catch (e) { if (e.status !== 401) showError(e); return; }
  }
  const hash = location.hash || "#/jobs";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.nav === parts[0]);
  }
  clear(main);
  try {
    switch (parts[0]) {
      case "jobs": return parts[1] ? await viewJob(parts[1]) : await viewJobs();
      case "new": return await viewNewJob();
      case "devices": return parts[1] ? await viewDevice(parts[1]) : await viewDevices();
      case "groups": return await viewGroups();
      case "schedules": return await viewSchedules();
      case "cluster": return await viewCluster();
      default: location.hash = "#/jobs";
    }
  } catch (e) {
    if (e.status !== 401) showError(e);
  }
}

function showError(e) {
  clear(main).append(el("div", { class: "card" }, el("h1", { text: "Something went wrong" }), el("p", { class: "error", text: e.message })));
}

// ------------------------------------------------------------------------------------------
// Jobs list
// ------------------------------------------------------------------------------------------

async function viewJobs() {
  const body = el("tbody");
  const more = el("button", { class: "ghost", type: "button", text: "Load more", hidden: true });
  const head = el("div", { class: "row spread" }, el("h1", { text: "Jobs" }),
    can("jobs.write") ? el("a", { class: "button", href: "#/new", id: "new-job", text: "New job" }) : null);
  const table = el("table", { class: "stack", id: "jobs" },
    el("thead", {}, el("tr", {}, ["Job", "Status", "Progress", "Outcomes"].map((h) => el("th", { text: h })))),
    body);
  main.append(el("section", { class: "card" }, head, table, el("div", { class: "pager" }, more)));
  let pages = 1;
  let next = null;

  async function load() {
    const rows = [];
    let token = null;
    for (let i = 0; i < pages; i++) {
      const page = await api("GET", "/api/jobs" + qs({ progress: "true", maxpagesize: 50, $skiptoken: token }));
      rows.push(...page.value);
      token = skiptoken(page.nextLink);
      if (!token) break;
    }
    next = token;
    more.hidden = !next;
    clear(body);
    if (!rows.length) {
      body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No jobs yet." })));
    }
    for (const j of rows) body.append(jobRow(j));
  }
  more.addEventListener("click", () => { pages++; load().catch(showError); });
  await load();
  every(3000, () => load().catch(() => {}));
}

function jobRow(j) {
  const s = j.progress;
  const failures = s ? s.failed + s.timedOut : 0;
  return el("tr", { "data-job": j.id },
    el("td", { "data-label": "Job", class: "wrap" },
      el("div", {}, el("a", { href: "#/jobs/" + encodeURIComponent(j.id), text: j.displayName || j.id }),
        el("div", { class: "muted small mono", text: j.id }))),
    el("td", { "data-label": "Status" }, el("span", {}, badge(j.rolloutState && j.rolloutState.paused ? "paused" : j.status))),
    el("td", { "data-label": "Progress" }, el("div", {}, progressBar(s), el("div", { class: "progress-label", text: progressLabel(s) }))),
    el("td", { "data-label": "Outcomes", class: "small" },
      el("span", { text: s ? s.succeeded + " succeeded · " + failures + " failed · " + s.cancelled + " cancelled" : "" })));
}

// ------------------------------------------------------------------------------------------
// One job, live
// ------------------------------------------------------------------------------------------

async function viewJob(id) {
  const job = await api("GET", "/api/jobs/" + encodeURIComponent(id));
  const path = "/api/jobs/" + encodeURIComponent(id);

  const title = el("h1", { id: "job-title", text: job.displayName || id });
  const statusBox = el("span", { id: "job-status" }, badge(job.status));
  const reason = el("p", { class: "muted", id: "job-reason" });
  const live = el("span", { class: "live", id: "live", text: "connecting…" });
  const bar = progressBar(null, true);
  bar.id = "job-progress";
  const label = el("div", { class: "progress-label", id: "job-progress-label" });
  const counts = el("div", { class: "counts", id: "counts" });
  const batches = el("div", { class: "batches", id: "batches" });
  const batchNote = el("p", { class: "muted small" });
  const rollout = rolloutBox(job);

  const need = can("jobs.write") ? null : "your role may not change jobs (needs jobs.write)";
  const buttons = {
    stop: el("button", { type: "button", id: "stop", class: "ghost", text: "Stop", title: need }),
    resume: el("button", { type: "button", id: "resume", text: "Resume", title: need }),
    cancel: el("button", { type: "button", id: "cancel", class: "danger", text: "Cancel", title: need }),
    rerun: el("button", { type: "button", id: "rerun", class: "ghost", text: "Rerun failed", title: need }),
  };
  let snapshot = null;
  function enable() {
    const st = snapshot ? snapshot.status : "";
    const fin = snapshot && snapshot.final;
    const failures = snapshot ? snapshot.stats.failed + snapshot.stats.timedOut : 0;
    const allowed = can("jobs.write");
    buttons.stop.disabled = !allowed || !["scheduled", "pending", "running", "paused"].includes(st);
    buttons.resume.disabled = !allowed || st !== "stopped";
    buttons.cancel.disabled = !allowed || fin;
    buttons.rerun.disabled = !allowed || !fin || failures === 0;
    rollout.enable(st, allowed);
  }
  async function act(button, f, done) {
    button.disabled = true;
    try { await f(); toast(done); } catch (e) { if (e.status !== 401) toast(e.message, true); enable(); }
  }
  buttons.stop.addEventListener("click", () => act(buttons.stop, () => api("POST", path + "/stop"), "Stopped: no new devices are sent the job."));
  buttons.resume.addEventListener("click", () => act(buttons.resume, () => api("POST", path + "/resume"), "Resumed."));
  buttons.cancel.addEventListener("click", () => {
    if (!confirm("Cancel job " + id + "? Devices that have not finished end cancelled; this cannot be undone.")) return;
    act(buttons.cancel, () => api("POST", "/jobs/v2/" + encodeURIComponent(id) + "/cancel", undefined, HUB), "Cancelled.");
  });
  buttons.rerun.addEventListener("click", () => {
    const rerunId = "rerun-" + Date.now();
    act(buttons.rerun, () => api("PUT", path + "/rerun/" + encodeURIComponent(rerunId)), "Rerun " + rerunId + " started over the failed devices.");
  });
  rollout.onContinue((button) => act(button, () => api("POST", path + "/continue"), "Continued: the next batch starts."));

  main.append(
    el("section", { class: "card" },
      el("div", { class: "row spread" },
        el("div", {}, title, el("div", { class: "muted small mono", text: id })),
        el("div", { class: "row" }, statusBox, live)),
      reason,
      rollout.box,
      el("div", { class: "actions" }, Object.values(buttons))),
    el("section", { class: "card" },
      el("h2", { text: "Progress" }), bar, label, el("div", { class: "small muted", id: "run-note" }), el("p"), counts),
    el("section", { class: "card" }, el("h2", { text: "Batches" }), batchNote, batches),
    failuresCard(path),
    deviceTable(path, id),
    definitionCard(job));

  const countKeys = [["succeeded", "Succeeded"], ["failed", "Failed"], ["timedOut", "Timed out"], ["cancelled", "Cancelled"], ["running", "Running"], ["pending", "Pending"]];
  function show(p) {
    snapshot = p;
    title.textContent = p.displayName || id;
    clear(statusBox).append(badge(p.status));
    reason.textContent = p.status === "paused" ? "" : p.statusReason || "";
    rollout.update(p);
    bar.update(p.stats);
    label.textContent = progressLabel(p.stats) + " devices finished";
    document.getElementById("run-note").textContent = p.run > 0 ? "run " + p.run + " (a rerun over the devices that failed)" : "";
    clear(counts);
    for (const [k, name] of countKeys) {
      counts.append(el("div", { class: "count " + k, "data-count": k }, el("b", { text: String(p.stats[k]) }), el("span", { class: "small", text: name })));
    }
    clear(batches);
    batchNote.textContent = p.batchCount > p.batches.length
      ? "showing batches " + (p.batches[0].index + 1) + "–" + (p.batches[p.batches.length - 1].index + 1) + " of " + p.batchCount
      : p.batchCount + (p.batchCount === 1 ? " batch" : " batches");
    for (const b of p.batches) {
      batches.append(el("div", { class: "batch", "data-batch": String(b.index) },
        el("span", { text: "Batch " + (b.index + 1) }),
        progressBar(b.stats),
        el("span", { class: "progress-label", text: b.startedAt ? b.stats.finished + "/" + b.stats.total : "not started" })));
    }
    enable();
    document.dispatchEvent(new CustomEvent("muster:progress", { detail: p }));
  }
  enable();
  const stop = watchJob(path, show, (state) => {
    live.textContent = state;
    live.classList.toggle("on", state === "live");
  });
  cleanup.push(stop);
}

// The rollout as it stands (issue 16): the rate in force, the maintenance window, and a job its
// gate paused with why and a Continue button (for a caller who may change jobs). The first
// values come from GET /api/jobs/{id} (rolloutState, maintenanceWindow); the live stream's
// snapshots (ratePerMinute, window, pausedAfterBatch, pauseReason) replace them.
function rolloutBox(job) {
  const rs = job.rolloutState || {};
  const mw = job.maintenanceWindow;
  const rate = el("span", { id: "job-rate" });
  const windowText = el("span", { id: "job-window" });
  const pauseText = el("p", { id: "job-pause-reason" });
  const cont = el("button", { type: "button", id: "continue", text: "Continue", title: "start the next batch" });
  const pause = el("div", { class: "paused", id: "job-paused", hidden: true },
    el("div", { class: "row spread" }, el("b", { text: "Paused between batches" }), can("jobs.write") ? cont : null), pauseText);
  const line = el("p", { class: "small muted row", id: "job-rollout" }, rate, windowText);
  const box = el("div", {}, pause, line);
  let onContinue = null;
  cont.addEventListener("click", () => { if (onContinue) onContinue(cont); });
  function windowLine(w, cron) {
    if (!w || !w.state) return "";
    const at = w.until ? when(w.until) : null;
    const what = cron ? " (" + cron + ")" : "";
    if (w.state === "open") return "Maintenance window" + what + " open" + (at ? " until " + at : "");
    return at ? "Waiting for the maintenance window" + what + " until " + at : "Waiting for a maintenance window" + what + " that never opens again";
  }
  function show(p) {
    rate.textContent = p.ratePerMinute ? "Rate in force: " + p.ratePerMinute + " devices a minute" : "";
    rate.dataset.rate = p.ratePerMinute ? String(p.ratePerMinute) : "";
    windowText.textContent = windowLine(p.window, mw && [mw.cron, mw.timeZone === "UTC" ? "" : mw.timeZone].filter(Boolean).join(" "));
    windowText.dataset.state = p.window ? p.window.state : "";
    rate.hidden = !rate.textContent;
    windowText.hidden = !windowText.textContent;
    line.hidden = rate.hidden && windowText.hidden;
    const paused = p.status === "paused";
    pause.hidden = !paused;
    // Batches are numbered from 1 on this page (the API's index is 0-based).
    const after = p.pausedAfterBatch === undefined || p.pausedAfterBatch === null ? "" : " after batch " + (p.pausedAfterBatch + 1);
    pauseText.textContent = paused ? "Paused" + after + ": " + (p.pauseReason || "the gate holds the next batch back") + ". " +
      (can("jobs.write") ? "Continue starts the next batch." : "An operator (jobs.write) can continue it.") : "";
    pause.dataset.batch = paused && p.pausedAfterBatch !== undefined ? String(p.pausedAfterBatch) : "";
  }
  show({
    status: rs.paused ? "paused" : job.status,
    pauseReason: rs.pauseReason,
    pausedAfterBatch: rs.pausedAfterBatch,
    ratePerMinute: rs.ratePerMinute,
    window: mw && mw.state ? { state: mw.state, until: mw.until } : null,
  });
  return {
    box,
    update: show,
    onContinue: (f) => { onContinue = f; },
    enable: (status, allowed) => { cont.disabled = !allowed || status !== "paused"; },
  };
}

// Reads GET /api/jobs/{id}/watch with fetch() and a stream reader (an EventSource could not send
// the Authorization header). Reconnects until the job is final or the view is left.
function watchJob(path, onProgress, onState) {
  const abort = new AbortController();
  let finished = false;
  (async () => {
    let delay = 500;
    while (!finished && !abort.signal.aborted) {
      try {
        const r = await fetch(withVersion(path + "/watch"), {
          headers: Object.assign({ Accept: "text/event-stream" }, authHeaders()),
          signal: abort.signal,
          cache: "no-store",
        });
        if (r.status === 401) { signOut("The server refused the credential; sign in again."); return; }
        if (!r.ok) {
          const e = await r.json().catch(() => ({}));
          onState((e.error && e.error.message) || "stream refused (" + r.status + ")");
          if (r.status === 404 || r.status === 403) return;
        } else {
          onState("live");
          delay = 500;
          const reader = r.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const frame = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              let event = "message";
              const data = [];
              for (const line of frame.split("\n")) {
                if (line.startsWith("event:")) event = line.slice(6).trim();
                else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
              }
              if (!data.length) continue;
              const body = JSON.parse(data.join("\n"));
              if (event === "progress") {
                onProgress(body);
                if (body.final) { finished = true; onState("finished"); }
              } else if (event === "error") {
                onState(body.error ? body.error.message : "stream error");
              }
            }
          }
        }
      } catch (e) {
        if (abort.signal.aborted) return;
        onState("reconnecting…");
      }
      if (!finished && !abort.signal.aborted) {
        await new Promise((res) => setTimeout(res, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }
  })();
  return () => abort.abort();
}

// The failed and timed-out devices of the current run with why, and what they answered.
function failuresCard(path) {
  const body = el("tbody");
  const note = el("p", { class: "muted small" });
  const table = el("table", { class: "stack" },
    el("thead", {}, el("tr", {}, ["Device", "Status", "Reason", "Response"].map((h) => el("th", { text: h })))),
    body);
  const card = el("section", { class: "card", id: "failures" }, el("h2", { text: "Failures" }), note, table);
  let shown = -1;
  let busy = false;
  async function load(count) {
    if (busy || count === shown) return;
    busy = true;
    try {
      const page = await api("GET", path + "/devices" + qs({ status: "failed,timedOut", details: "true", maxpagesize: 25 }));
      shown = count;
      clear(body);
      table.hidden = page.value.length === 0;
      note.textContent = count === 0 ? "No failures." : count > page.value.length ? "The first " + page.value.length + " of " + count + "; filter the device table for all." : "";
      for (const d of page.value) {
        body.append(el("tr", { "data-device": d.id },
          el("td", { "data-label": "Device", class: "wrap mono" }, el("a", { href: "#/devices/" + encodeURIComponent(d.id), text: d.id })),
          el("td", { "data-label": "Status" }, el("span", {}, badge(d.outcome))),
          el("td", { "data-label": "Reason", class: "wrap reason", text: d.lastError || "" }),
          el("td", { "data-label": "Response", class: "wrap" }, responseCell(d.response))));
      }
    } catch (e) {
      if (e.status !== 401) note.textContent = e.message;
    } finally {
      busy = false;
    }
  }
  const onProgress = (ev) => {
    const s = ev.detail.stats;
    load(s.failed + s.timedOut);
  };
  document.addEventListener("muster:progress", onProgress);
  cleanup.push(() => document.removeEventListener("muster:progress", onProgress));
  return card;
}

function responseCell(r) {
  if (!r) return el("span", { class: "muted", text: "no answer" });
  return el("div", {}, el("div", { class: "small", text: "status " + r.status }),
    r.payload === null || r.payload === undefined ? null : el("pre", { class: "json", text: compact(r.payload) }));
}

// The current run's devices, paged and filtered by the server (fast for 100,000 devices).
function deviceTable(path, id) {
  const body = el("tbody");
  const status = el("select", { id: "device-status", "aria-label": "Status" },
    [["", "All statuses"], ["pending", "Pending"], ["running", "Running"], ["succeeded", "Succeeded"], ["failed", "Failed"], ["timedOut", "Timed out"], ["cancelled", "Cancelled"]]
      .map(([v, t]) => el("option", { value: v, text: t })));
  const search = el("input", { id: "device-search", type: "search", placeholder: "Device id contains…", "aria-label": "Device id contains" });
  const prev = el("button", { class: "ghost", type: "button", text: "‹ Previous", id: "devices-prev" });
  const next = el("button", { class: "ghost", type: "button", text: "Next ›", id: "devices-next" });
  const where = el("span", { class: "muted small", id: "devices-page" });
  const csv = el("button", { class: "ghost", type: "button", id: "csv", text: "Download CSV" });
  const card = el("section", { class: "card", id: "devices" },
    el("div", { class: "row spread" }, el("h2", { text: "Devices" }), csv),
    el("div", { class: "filters" }, status, search),
    el("table", { class: "stack" },
      el("thead", {}, el("tr", {}, ["Device", "Batch", "Status", "Attempts", "Finished", "Last error"].map((h) => el("th", { text: h })))),
      body),
    el("div", { class: "pager" }, where, prev, next));
  // tokens[i] is the $skiptoken of page i (null for the first).
  let tokens = [null];
  let page = 0;
  let nextToken = null;
  let lastLoad = 0;
  async function load() {
    lastLoad = Date.now();
    const data = await api("GET", path + "/devices" + qs({
      details: "true", maxpagesize: DEVICE_PAGE, status: status.value, search: search.value.trim(), $skiptoken: tokens[page],
    }));
    nextToken = skiptoken(data.nextLink);
    prev.disabled = page === 0;
    next.disabled = !nextToken;
    where.textContent = "page " + (page + 1);
    clear(body);
    if (!data.value.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No devices match." })));
    for (const d of data.value) {
      body.append(el("tr", { "data-device": d.id },
        el("td", { "data-label": "Device", class: "wrap mono" }, el("a", { href: "#/devices/" + encodeURIComponent(d.id), text: d.id })),
        el("td", { "data-label": "Batch", text: String(d.batch + 1) }),
        el("td", { "data-label": "Status" }, el("span", {}, badge(d.outcome))),
        el("td", { "data-label": "Attempts", text: String(d.attempts) }),
        el("td", { "data-label": "Finished", class: "small", text: when(d.finishedAt) }),
        el("td", { "data-label": "Last error", class: "wrap small", text: d.lastError || "" })));
    }
  }
  const reload = () => { tokens = [null]; page = 0; load().catch(showErrorIn(body)); };
  status.addEventListener("change", reload);
  let typing;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(reload, 300); });
  prev.addEventListener("click", () => { if (page > 0) { page--; load().catch(showErrorIn(body)); } });
  next.addEventListener("click", () => { if (nextToken) { tokens[page + 1] = nextToken; page++; load().catch(showErrorIn(body)); } });
  csv.addEventListener("click", () => downloadCsv(path, id, csv));
  // Follow the live job: the page on screen is read again at most every two seconds.
  let pending = null;
  const onProgress = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load().catch(() => {}); }, Math.max(0, 2000 - (Date.now() - lastLoad)));
  };
  document.addEventListener("muster:progress", onProgress);
  cleanup.push(() => { document.removeEventListener("muster:progress", onProgress); clearTimeout(pending); });
  return card;
}

function showErrorIn(tbody) {
  return (e) => {
    if (e.status === 401) return;
    clear(tbody).append(el("tr", {}, el("td", { colspan: 6, class: "error", text: e.message })));
  };
}

// The same columns as `muster job devices --output csv`.
const CSV_COLUMNS = ["deviceId", "run", "batch", "status", "attempts", "dispatchedAt", "finishedAt", "failureReason", "lastError", "responseStatus", "responseBody"];

function csvField(s) {
  s = s === null || s === undefined ? "" : String(s);
  return /[",\r\n]/.test(s) || /^ | $/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

async function downloadCsv(path, id, button) {
  const label = button.textContent;
  button.disabled = true;
  try {
    const lines = [CSV_COLUMNS.map(csvField).join(",")];
    let skip = null;
    do {
      const page = await api("GET", path + "/devices" + qs({ details: "true", maxpagesize: 1000, $skiptoken: skip }));
      for (const d of page.value) {
        const r = d.response;
        lines.push([d.id, d.run, d.batch, d.outcome, d.attempts, d.dispatchedAt, d.finishedAt, d.failureReason, d.lastError,
          r ? r.status : "", r && r.payload !== undefined ? JSON.stringify(r.payload) : ""].map(csvField).join(","));
      }
      button.textContent = "Preparing… " + (lines.length - 1);
      skip = skiptoken(page.nextLink);
    } while (skip);
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: id + "-devices.csv" });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  } catch (e) {
    if (e.status !== 401) toast(e.message, true);
  } finally {
    button.textContent = label;
    button.disabled = false;
  }
}

function definitionCard(job) {
  const d = el("details", {}, el("summary", { text: "Definition (IoT Central's shape)" }), el("pre", { class: "json", text: pretty(job) }));
  return el("section", { class: "card" }, d);
}

// ------------------------------------------------------------------------------------------
// New job, in IoT Central's shape
// ------------------------------------------------------------------------------------------

async function viewNewJob() {
  if (!can("jobs.write")) {
    main.append(el("div", { class: "card" }, el("h1", { text: "New job" }), el("p", { class: "error", text: "Your role may not create jobs (needs jobs.write)." })));
    return;
  }
  const groups = can("devices.read") ? (await api("GET", "/api/deviceGroups?maxpagesize=1000")).value : [];
  const stamp = new Date().toISOString().replace(/[-:T]/g, "").slice(0, 14);
  const f = {
    id: el("input", { id: "job-id", value: "job-" + stamp, required: true }),
    displayName: el("input", { id: "job-name", placeholder: "Reboot the fleet" }),
    description: el("input", { id: "job-description" }),
    group: el("select", { id: "job-group", required: true }, groups.map((g) => el("option", { value: g.id, text: (g.displayName || g.id) + " (" + g.id + ")" }))),
    type: el("select", { id: "job-type" },
      [["CommandJobData", "Run a command"], ["PropertyJobData", "Set a property"], ["CloudPropertyJobData", "Set a cloud property"]].map(([v, t]) => el("option", { value: v, text: t }))),
    target: el("input", { id: "job-target", placeholder: "dtmi:… (optional)" }),
    path: el("input", { id: "job-path", value: "reboot", required: true }),
    value: el("textarea", { id: "job-value", rows: 3, text: "{}" }),
    batchType: el("select", { id: "job-batch-type" }, [["", "All at once"], ["percentage", "Percentage"], ["number", "Number of devices"]].map(([v, t]) => el("option", { value: v, text: t }))),
    batchValue: el("input", { id: "job-batch-value", type: "number", min: 1, value: 25 }),
    thresholdType: el("select", { id: "job-threshold-type" }, [["", "Never cancel"], ["percentage", "Percentage failed"], ["number", "Number failed"]].map(([v, t]) => el("option", { value: v, text: t }))),
    thresholdValue: el("input", { id: "job-threshold-value", type: "number", min: 1, value: 10 }),
    thresholdBatch: el("input", { id: "job-threshold-batch", type: "checkbox" }),
  };
  const preview = el("pre", { class: "json", id: "job-preview" });
  const error = el("p", { class: "error", id: "job-error" });
  function body() {
    let value;
    const raw = f.value.value.trim();
    try { value = raw ? JSON.parse(raw) : null; } catch (_) { value = raw; }
    const item = { type: f.type.value, path: f.path.value.trim() };
    if (f.target.value.trim()) item.target = f.target.value.trim();
    if (value !== null) item.value = value;
    const b = { displayName: f.displayName.value.trim() || f.id.value.trim(), description: f.description.value.trim(), group: f.group.value, data: [item] };
    if (f.batchType.value) b.batch = { type: f.batchType.value, value: Number(f.batchValue.value) };
    if (f.thresholdType.value) b.cancellationThreshold = { type: f.thresholdType.value, value: Number(f.thresholdValue.value), batch: f.thresholdBatch.checked };
    return b;
  }
  const update = () => {
    f.batchValue.disabled = !f.batchType.value;
    f.thresholdValue.disabled = f.thresholdBatch.disabled = !f.thresholdType.value;
    preview.textContent = "PUT /api/jobs/" + f.id.value.trim() + "?api-version=" + CENTRAL + "\n" + JSON.stringify(body(), null, 2);
  };
  const form = el("form", { class: "card", id: "new-job-form" },
    el("h1", { text: "New job" }),
    groups.length ? null : el("p", { class: "error", text: "There are no device groups yet: a job targets a group. Create one under Groups first." }),
    el("div", { class: "form-grid" },
      el("div", {}, el("label", { for: "job-id", text: "Job id" }), f.id),
      el("div", {}, el("label", { for: "job-name", text: "Display name" }), f.displayName),
      el("div", {}, el("label", { for: "job-description", text: "Description" }), f.description),
      el("div", {}, el("label", { for: "job-group", text: "Device group" }), f.group),
      el("div", {}, el("label", { for: "job-type", text: "Job type" }), f.type),
      el("div", {}, el("label", { for: "job-path", text: "Command or property name" }), f.path),
      el("div", {}, el("label", { for: "job-target", text: "Device template ", }, el("span", { class: "muted", text: "(data[].target)" })), f.target),
      el("div", {}, el("label", { for: "job-batch-type", text: "Batches" }), el("div", { class: "row" }, f.batchType, f.batchValue)),
      el("div", {}, el("label", { for: "job-threshold-type", text: "Cancellation threshold" }),
        el("div", { class: "row" }, f.thresholdType, f.thresholdValue, el("label", { class: "check" }, f.thresholdBatch, "per batch")))),
    el("label", { for: "job-value", text: "Value ", }, el("span", { class: "muted", text: "(JSON: the command's payload or the property's value)" })),
    f.value,
    error,
    el("div", { class: "row" }, el("button", { type: "submit", id: "create-job", text: "Create job" }), el("a", { class: "button ghost", href: "#/jobs", text: "Back" })),
    el("details", { open: true }, el("summary", { class: "small", text: "Request" }), preview));
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const id = f.id.value.trim();
    try {
      await api("PUT", "/api/jobs/" + encodeURIComponent(id), body());
      location.hash = "#/jobs/" + encodeURIComponent(id);
    } catch (e) {
      if (e.status !== 401) error.textContent = e.message;
    }
  });
  update();
  main.append(form);
}

// ------------------------------------------------------------------------------------------
// Devices and their twins
// ------------------------------------------------------------------------------------------

async function viewDevices() {
  const body = el("tbody");
  const prev = el("button", { class: "ghost", type: "button", text: "‹ Previous" });
  const next = el("button", { class: "ghost", type: "button", text: "Next ›" });
  main.append(el("section", { class: "card" }, el("h1", { text: "Devices" }),
    el("table", { class: "stack", id: "device-list" },
      el("thead", {}, el("tr", {}, ["Device", "Name", "Template", "Enabled"].map((h) => el("th", { text: h })))), body),
    el("div", { class: "pager" }, prev, next)));
  let tokens = [null];
  let page = 0;
  let nextToken = null;
  async function load() {
    const data = await api("GET", "/api/devices" + qs({ maxpagesize: DEVICE_PAGE, $skiptoken: tokens[page] }));
    nextToken = skiptoken(data.nextLink);
    prev.disabled = page === 0;
    next.disabled = !nextToken;
    clear(body);
    if (!data.value.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No devices registered." })));
    for (const d of data.value) {
      body.append(el("tr", {},
        el("td", { "data-label": "Device", class: "wrap mono" }, el("a", { href: "#/devices/" + encodeURIComponent(d.id), text: d.id })),
        el("td", { "data-label": "Name", class: "wrap", text: d.displayName }),
        el("td", { "data-label": "Template", class: "wrap small mono", text: d.template || "" }),
        el("td", { "data-label": "Enabled", text: d.enabled ? "yes" : "no" })));
    }
  }
  prev.addEventListener("click", () => { if (page > 0) { page--; load().catch(showError); } });
  next.addEventListener("click", () => { if (nextToken) { tokens[page + 1] = nextToken; page++; load().catch(showError); } });
  await load();
}

async function viewDevice(id) {
  const device = await api("GET", "/api/devices/" + encodeURIComponent(id));
  const twin = await api("GET", "/twins/" + encodeURIComponent(id), undefined, HUB).catch((e) => ({ error: e.message }));
  const props = twin.properties || {};
  main.append(
    el("section", { class: "card" },
      el("div", { class: "row spread" }, el("h1", { text: device.displayName || id }), el("a", { class: "button ghost", href: "#/devices", text: "All devices" })),
      device.displayName && device.displayName !== id ? el("p", { class: "muted mono small", text: id }) : null,
      el("p", {}, "Template: ", el("code", { text: device.template || "none" }), " · enabled: " + (device.enabled ? "yes" : "no"),
        twin.connectionState ? " · " + twin.connectionState : "")),
    el("section", { class: "card", id: "twin" },
      el("h2", { text: "Twin" }),
      twin.error ? el("p", { class: "error", text: twin.error }) : null,
      el("h2", { class: "small", text: "Tags" }), el("pre", { class: "json", id: "twin-tags", text: pretty(twin.tags || {}) }),
      el("h2", { class: "small", text: "Desired properties" }), el("pre", { class: "json", id: "twin-desired", text: pretty(props.desired || {}) }),
      el("h2", { class: "small", text: "Reported properties" }), el("pre", { class: "json", id: "twin-reported", text: pretty(props.reported || {}) })));
}

// ------------------------------------------------------------------------------------------
// Groups
// ------------------------------------------------------------------------------------------

async function viewGroups() {
  const body = el("tbody");
  const card = el("section", { class: "card" }, el("h1", { text: "Device groups" }),
    el("table", { class: "stack", id: "group-list" },
      el("thead", {}, el("tr", {}, ["Group", "Filter", ""].map((h) => el("th", { text: h })))), body));
  main.append(card);
  async function load() {
    const data = await api("GET", "/api/deviceGroups?maxpagesize=1000");
    clear(body);
    if (!data.value.length) body.append(el("tr", {}, el("td", { colspan: 3, class: "muted", text: "No groups yet." })));
    for (const g of data.value) {
      const del = el("button", { class: "ghost", type: "button", text: "Delete", disabled: !can("groups.write"), title: can("groups.write") ? null : "needs groups.write" });
      del.addEventListener("click", async () => {
        if (!confirm("Delete group " + g.id + "? Jobs created on it keep their devices.")) return;
        try { await api("DELETE", "/api/deviceGroups/" + encodeURIComponent(g.id)); load(); } catch (e) { if (e.status !== 401) toast(e.message, true); }
      });
      body.append(el("tr", { "data-group": g.id },
        el("td", { "data-label": "Group", class: "wrap" }, el("div", {}, el("b", { text: g.displayName }), el("div", { class: "muted small mono", text: g.id }))),
        el("td", { "data-label": "Filter", class: "wrap mono small", text: g.filter }),
        el("td", { "data-label": "" }, el("span", {}, del))));
    }
  }
  await load();
  if (can("groups.write")) {
    const id = el("input", { id: "group-id", value: "all", required: true });
    const name = el("input", { id: "group-name", value: "All devices" });
    const filter = el("input", { id: "group-filter", value: "SELECT * FROM devices", required: true });
    const error = el("p", { class: "error" });
    const form = el("form", { class: "card", id: "group-form" }, el("h2", { text: "Save a group" }),
      el("div", { class: "form-grid" },
        el("div", {}, el("label", { for: "group-id", text: "Group id" }), id),
        el("div", {}, el("label", { for: "group-name", text: "Display name" }), name)),
      el("label", { for: "group-filter", text: "Filter (device query)" }), filter, error,
      el("div", { class: "row" }, el("button", { type: "submit", id: "save-group", text: "Save group" })));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try {
        await api("PUT", "/api/deviceGroups/" + encodeURIComponent(id.value.trim()), { displayName: name.value.trim() || id.value.trim(), filter: filter.value.trim() });
        toast("Group saved.");
        load();
      } catch (e) { if (e.status !== 401) error.textContent = e.message; }
    });
    main.append(form);
  }
}

// ------------------------------------------------------------------------------------------
// Scheduled jobs (IoT Central's /api/scheduledJobs): each schedule with its recurrence, whether
// it is enabled, and the jobs its occurrences created, linked to their pages.
// ------------------------------------------------------------------------------------------

const SCHEDULE_JOBS_SHOWN = 50;

function recurrenceText(s) {
  s = s || {};
  let what = s.intervalSeconds ? "every " + s.intervalSeconds + " s" : s.recurrence || "once";
  if (s.timeZone) what += " (" + s.timeZone + ")";
  const parts = [what, "from " + when(s.start)];
  if (s.end && s.end.type === "occurrences") parts.push(s.end.occurrences + (s.end.occurrences === 1 ? " occurrence" : " occurrences"));
  if (s.end && s.end.type === "date") parts.push("until " + when(s.end.date));
  return parts.join(", ");
}

async function viewSchedules() {
  const body = el("tbody");
  const more = el("p", { class: "muted small", hidden: true });
  main.append(el("section", { class: "card" },
    el("h1", { text: "Scheduled jobs" }),
    el("p", { class: "muted small", text: "Each occurrence of a schedule creates a job from its template, with its own id and history." }),
    el("table", { class: "stack", id: "schedules" },
      el("thead", {}, el("tr", {}, ["Schedule", "Recurrence", "Enabled", "Jobs", ""].map((h) => el("th", { text: h })))), body),
    more));
  async function toggle(s, button) {
    button.disabled = true;
    try {
      await api("PATCH", "/api/scheduledJobs/" + encodeURIComponent(s.id), { enabled: !s.enabled });
      toast(s.enabled ? "Disabled: no further occurrences." : "Enabled.");
      await load();
    } catch (e) {
      if (e.status !== 401) toast(e.message, true);
      button.disabled = false;
    }
  }
  async function jobsCell(s) {
    const cell = el("div", { class: "occurrences" });
    try {
      const page = await api("GET", "/api/scheduledJobs/" + encodeURIComponent(s.id) + "/jobs" + qs({ maxpagesize: SCHEDULE_JOBS_SHOWN }));
      if (!page.value.length) cell.append(el("span", { class: "muted small", text: "none yet" }));
      for (const j of page.value) {
        cell.append(el("div", { class: "row", "data-job": j.id },
          el("a", { href: "#/jobs/" + encodeURIComponent(j.id), class: "mono small", text: j.id }), badge(j.status)));
      }
      if (page.nextLink) cell.append(el("div", { class: "muted small", text: "the first " + page.value.length + "; GET /api/scheduledJobs/" + s.id + "/jobs pages through all" }));
    } catch (e) {
      if (e.status !== 401) cell.append(el("span", { class: "error small", text: e.message }));
    }
    return cell;
  }
  async function load() {
    const data = await api("GET", "/api/scheduledJobs" + qs({ maxpagesize: 100 }));
    const rows = [];
    for (const s of data.value) {
      const toggleButton = el("button", {
        type: "button", class: "ghost", text: s.enabled ? "Disable" : "Enable", "data-toggle": s.id,
        disabled: !can("jobs.write") || s.completed, title: can("jobs.write") ? null : "needs jobs.write",
      });
      toggleButton.addEventListener("click", () => toggle(s, toggleButton));
      rows.push(el("tr", { "data-schedule": s.id, "data-enabled": String(!!s.enabled) },
        el("td", { "data-label": "Schedule", class: "wrap" }, el("div", {}, el("b", { text: s.displayName || s.id }), el("div", { class: "muted small mono", text: s.id }))),
        el("td", { "data-label": "Recurrence", class: "wrap small", text: recurrenceText(s.schedule) }),
        el("td", { "data-label": "Enabled", text: s.completed ? "completed" : s.enabled ? "yes" : "no" }),
        el("td", { "data-label": "Jobs", class: "wrap" }, await jobsCell(s)),
        el("td", { "data-label": "" }, el("span", {}, toggleButton))));
    }
    clear(body);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No scheduled jobs. Create one with PUT /api/scheduledJobs/{id} or muster schedule create." })));
    body.append(...rows);
    more.hidden = !data.nextLink;
    more.textContent = data.nextLink ? "Showing the first " + data.value.length + " schedules." : "";
  }
  await load();
  every(5000, () => load().catch(() => {}));
}

// ------------------------------------------------------------------------------------------
// Cluster
// ------------------------------------------------------------------------------------------

async function viewCluster() {
  const summary = el("p", { id: "cluster-summary" });
  const body = el("tbody");
  main.append(el("section", { class: "card" }, el("h1", { text: "Cluster" }), summary,
    el("table", { class: "stack", id: "members" },
      el("thead", {}, el("tr", {}, ["Node", "State", "REST", "Applied", "Lag"].map((h) => el("th", { text: h })))), body)));
  async function load() {
    const c = await api("GET", "/api/cluster");
    summary.textContent = (c.leader ? "Leader: node " + c.leader : "No leader known") + " · term " + c.term + " · answered by node " + c.answeredBy;
    clear(body);
    for (const m of c.members) {
      body.append(el("tr", { "data-member": String(m.id) },
        el("td", { "data-label": "Node" }, el("span", {}, el("b", { text: "node " + m.id }), " ", m.role === "learner" ? el("span", { class: "muted small", text: "learner" }) : null)),
        el("td", { "data-label": "State" }, el("span", {}, badge(m.reachable ? m.state : "unreachable"), m.isLeader ? " ★" : "")),
        el("td", { "data-label": "REST", class: "wrap mono small", text: m.httpAddr || "" }),
        el("td", { "data-label": "Applied", text: m.lastApplied === null ? "" : String(m.lastApplied) }),
        el("td", { "data-label": "Lag", text: m.lag === null ? "" : String(m.lag) })));
    }
  }
  await load();
  every(3000, () => load().catch(() => {}));
}

// ------------------------------------------------------------------------------------------

document.getElementById("logout").addEventListener("click", () => {
  signOut("Signed out.");
  location.hash = "#/login";
});
window.addEventListener("hashchange", render);
render();

// Postamt sandbox UI. Plain JavaScript, no build step. Mail content is only ever put into the
// page as text (textContent), never as markup; the HTML part is shown in a sandboxed iframe
// that the server also serves with a strict Content-Security-Policy.
"use strict";

const API = "/api/v1";
const PAGE = 50;
const $ = (sel) => document.querySelector(sel);

const state = {
  query: "", offset: 0, total: 0, messages: [], selected: null, // id
  current: null, tab: "html", width: "", images: false,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function showError(msg) {
  const e = $("#error");
  e.textContent = msg;
  e.hidden = !msg;
}

async function api(path, opts = {}) {
  const init = { method: opts.method || "GET", headers: {} };
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const r = await fetch(API + path, init);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  if (r.status === 204) return null;
  const ct = r.headers.get("Content-Type") || "";
  return ct.startsWith("application/json") ? r.json() : r.text();
}

function fmtTime(iso) {
  const d = new Date(iso), now = new Date();
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function fmtSize(n) {
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KB";
  if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + " MB";
  return (n / (1 << 30)).toFixed(2) + " GB";
}

// ---- list

async function loadList() {
  try {
    const q = encodeURIComponent(state.query);
    const pg = await api(`/messages?query=${q}&limit=${PAGE}&offset=${state.offset}`);
    state.messages = pg.messages;
    state.total = pg.total;
    showError("");
    renderList();
    $("#count").textContent = pg.total === 0 ? (state.query ? "No matches" : "No messages")
      : `${state.offset + 1}–${state.offset + pg.messages.length} of ${pg.total}` + (pg.unread ? ` · ${pg.unread} unread` : "");
    $("#prev").disabled = state.offset === 0;
    $("#next").disabled = state.offset + PAGE >= pg.total;
  } catch (e) {
    showError("Search: " + e.message);
  }
  loadStats();
}

function row(m) {
  const li = el("li", { "data-id": m.id, class: "msg-row" + (m.read ? "" : " unread") + (m.id === state.selected ? " selected" : ""), role: "option" },
    el("div", { class: "row1" }, el("span", { class: "from" }, m.from || m.envelope_from || "(no sender)"), el("span", { class: "time" }, fmtTime(m.received))),
    el("div", { class: "subj" + (m.attachments ? " clip" : "") }, m.subject || "(no subject)"),
    el("div", { class: "snip" }, ...m.tags.map((t) => el("span", { class: "tag" }, t)), m.snippet));
  li.addEventListener("click", () => openMessage(m.id));
  return li;
}

function renderList() {
  const ul = $("#list");
  ul.replaceChildren(...state.messages.map(row));
}

async function loadStats() {
  try {
    const s = await api("/stats");
    let t = `${s.messages} messages · ${fmtSize(s.bytes)} of mail · ${fmtSize(s.file_bytes)} ${s.memory_only ? "in memory" : "on disk"}`;
    const lim = [];
    if (s.max_messages) lim.push(`${s.max_messages} messages`);
    if (s.max_age_seconds) lim.push(`${Math.round(s.max_age_seconds / 86400 * 10) / 10} days`);
    if (lim.length) t += ` · keeps at most ${lim.join(" / ")}`;
    $("#storage").textContent = t;
  } catch (_) { /* shown by the list */ }
}

// ---- message view

async function openMessage(id) {
  state.selected = id;
  for (const li of document.querySelectorAll("#list li")) li.classList.toggle("selected", li.dataset.id === id);
  const li = document.querySelector(`#list li[data-id="${CSS.escape(id)}"]`);
  if (li) li.scrollIntoView({ block: "nearest" });
  let m;
  try {
    m = await api("/messages/" + encodeURIComponent(id));
  } catch (e) {
    showError(e.message);
    return;
  }
  if (state.selected !== id) return; // the user moved on
  state.current = m;
  state.images = false;
  if (location.hash !== "#/m/" + id) history.replaceState(null, "", "#/m/" + id);
  renderMessage(m);
  if (!m.read) {
    api("/messages/" + encodeURIComponent(id), { method: "PATCH", body: { read: true } }).catch((e) => showError(e.message));
  }
}

function renderMessage(m) {
  $("#empty").hidden = true;
  $("#view").hidden = false;
  const p = m.parsed;
  $("#v-subject").textContent = m.subject || "(no subject)";
  $("#v-from").textContent = p.from || "";
  $("#v-to").textContent = [...(p.to || []), ...(p.cc || []).map((c) => "Cc: " + c)].join(", ");
  $("#v-env").textContent = `MAIL FROM:<${m.envelope_from}> RCPT TO: ${m.envelope_to.map((a) => "<" + a + ">").join(" ")} · ${fmtSize(m.size)}`;
  $("#v-date").textContent = new Date(m.received).toLocaleString() + (p.date && !p.date.startsWith("0001") ? " (Date: " + new Date(p.date).toLocaleString() + ")" : "");
  renderTags(m);
  $("#toggle-read").textContent = "Mark unread";
  $("#dl-eml").href = `${API}/messages/${encodeURIComponent(m.id)}/raw?download=1`;
  $("#attachments").replaceChildren(...p.attachments.map((a) =>
    el("li", {}, el("a", { href: `${API}/messages/${encodeURIComponent(m.id)}/parts/${a.index}`, download: a.filename || "", class: "attachment", "data-index": a.index },
      `⤓ ${a.filename || a.content_type}${a.inline ? " (inline)" : ""} · ${fmtSize(a.size)}`))));
  // Text
  $("#view-text pre").textContent = p.text || "(no text part)";
  // Headers
  $("#view-headers tbody").replaceChildren(...p.headers.map((h) => el("tr", {}, el("td", {}, h.name), el("td", {}, h.value))));
  $("#view-source pre").textContent = "Loading…";
  $("#checks").replaceChildren();
  const tab = (!p.html && state.tab === "html") ? "text" : state.tab;
  showTab(tab, true);
}

function renderTags(m) {
  $("#v-tags").replaceChildren(...m.tags.map((t) => el("span", { class: "tag" },
    el("a", { href: "#", title: "Show messages tagged " + t, onclick: (e) => { e.preventDefault(); searchFor("tag:" + t); } }, t),
    el("button", { type: "button", title: "Remove tag " + t, onclick: () => setTags(m.tags.filter((x) => x !== t)) }, "×"))));
}

function searchFor(q) {
  $("#search").value = q;
  search();
}

async function setTags(tags) {
  const m = state.current;
  try {
    const s = await api("/messages/" + encodeURIComponent(m.id), { method: "PATCH", body: { tags } });
    m.tags = s.tags;
    renderTags(m);
  } catch (e) { showError(e.message); }
}

function htmlSrc() {
  const m = state.current;
  return `${API}/messages/${encodeURIComponent(m.id)}/html` + (state.images ? "?images=1" : "");
}

async function showTab(tab, fresh) {
  const m = state.current;
  if (!m) return;
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs > button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const p of document.querySelectorAll(".pane")) p.classList.toggle("active", p.id === "view-" + tab);
  $("#html-tools").hidden = tab !== "html";
  if (tab === "html") {
    const f = $("#html-frame");
    if (!m.parsed.html) {
      f.removeAttribute("src");
      f.srcdoc = "<p>This message has no HTML part.</p>";
    } else if (fresh || !f.src) {
      f.removeAttribute("srcdoc");
      f.src = htmlSrc();
    }
    f.style.maxWidth = state.width ? state.width + "px" : "100%";
    for (const b of document.querySelectorAll(".tab-tools [data-width]")) b.classList.toggle("on", b.dataset.width === state.width);
    $("#images-btn").classList.toggle("on", state.images);
    $("#images-btn").textContent = state.images ? "Remote images loaded" : "Load remote images";
  } else if (tab === "source") {
    try {
      $("#view-source pre").textContent = await api(`/messages/${encodeURIComponent(m.id)}/raw`);
    } catch (e) { showError(e.message); }
  } else if (tab === "checks") {
    loadChecks(m);
  }
}

async function loadChecks(m) {
  const box = $("#checks");
  box.replaceChildren(el("p", { class: "muted" }, "Checking…"));
  try {
    const r = await api(`/messages/${encodeURIComponent(m.id)}/check`);
    const probs = r.problems.length ? el("ul", {}, ...r.problems.map((p) => el("li", { class: p.severity }, p.text)))
      : el("p", {}, "No problems found.");
    const auth = r.auth.length ? el("ul", {}, ...r.auth.map((a) => el("li", {}, `${a.method}=${a.result}` + (a.detail ? ` (${a.detail})` : ""))))
      : el("p", { class: "muted" }, r.auth_note || "No verdicts.");
    const links = el("ul", { id: "links" }, ...r.links.map((l) => el("li", {}, l.url)));
    const btn = el("button", { type: "button", onclick: () => checkLinks(m, links) }, "Check link status");
    box.replaceChildren(el("h3", {}, "Size"), el("p", {}, fmtSize(r.size)),
      el("h3", {}, "Problems"), probs, el("h3", {}, "Authentication"), auth,
      el("h3", {}, `Links (${r.links.length}) `, r.links.length ? btn : null), links);
  } catch (e) { box.replaceChildren(el("p", { class: "error" }, e.message)); }
}

async function checkLinks(m, ul) {
  ul.replaceChildren(el("li", { class: "muted" }, "Requesting each link…"));
  try {
    const links = await api(`/messages/${encodeURIComponent(m.id)}/check/links`, { method: "POST" });
    ul.replaceChildren(...links.map((l) => el("li", { class: l.error || l.status >= 400 ? "error" : "" }, `${l.status || "—"} ${l.url}${l.error ? " — " + l.error : ""}`)));
  } catch (e) { ul.replaceChildren(el("li", { class: "error" }, e.message)); }
}

function closeView() {
  state.current = null;
  state.selected = null;
  $("#view").hidden = true;
  $("#empty").hidden = false;
  history.replaceState(null, "", "#/");
}

async function deleteCurrent() {
  const m = state.current;
  if (!m) return;
  const i = state.messages.findIndex((x) => x.id === m.id);
  const next = state.messages[i + 1] || state.messages[i - 1];
  try {
    await api("/messages/" + encodeURIComponent(m.id), { method: "DELETE" });
  } catch (e) { showError(e.message); return; }
  state.messages = state.messages.filter((x) => x.id !== m.id);
  // The deleted message is no longer current: the server's "delete" event for it, which may
  // arrive while the next one loads, must not close the view.
  state.current = null;
  if (next) openMessage(next.id); else closeView();
  loadList();
}

async function toggleRead() {
  const m = state.current;
  if (!m) return;
  const read = $("#toggle-read").textContent === "Mark read";
  try {
    await api("/messages/" + encodeURIComponent(m.id), { method: "PATCH", body: { read } });
    $("#toggle-read").textContent = read ? "Mark unread" : "Mark read";
  } catch (e) { showError(e.message); }
}

// ---- live updates

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadList, 150);
}

function connect() {
  const es = new EventSource(API + "/events");
  es.addEventListener("ready", () => { $("#live").classList.remove("off"); $("#live").textContent = "● live"; reloadSoon(); });
  es.onerror = () => { $("#live").classList.add("off"); $("#live").textContent = "● reconnecting"; };
  es.onmessage = (ev) => {
    const e = JSON.parse(ev.data);
    if (e.type === "update" && e.message) {
      const i = state.messages.findIndex((x) => x.id === e.message.id);
      if (i >= 0) {
        state.messages[i] = e.message;
        const old = document.querySelector(`#list li[data-id="${CSS.escape(e.message.id)}"]`);
        if (old) old.replaceWith(row(e.message));
      }
      if (state.current && state.current.id === e.message.id) {
        $("#toggle-read").textContent = e.message.read ? "Mark unread" : "Mark read";
      }
      reloadSoon(); // counts (unread) change too
      return;
    }
    if (e.type === "delete" && state.current && e.ids.includes(state.current.id)) closeView();
    if (e.type === "clear") closeView();
    reloadSoon();
  };
}

// ---- keyboard

function move(delta) {
  if (!state.messages.length) return;
  let i = state.messages.findIndex((x) => x.id === state.selected);
  i = i < 0 ? 0 : Math.min(state.messages.length - 1, Math.max(0, i + delta));
  openMessage(state.messages[i].id);
}

document.addEventListener("keydown", (e) => {
  const t = e.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement;
  if (e.key === "Escape") {
    if (t === $("#search")) { $("#search").value = ""; search(); t.blur(); }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  const tabs = ["html", "text", "headers", "source", "checks"];
  switch (e.key) {
    case "j": case "ArrowDown": move(1); break;
    case "k": case "ArrowUp": move(-1); break;
    case "Enter": case "o": if (state.selected) openMessage(state.selected); else move(0); break;
    case "/": $("#search").focus(); break;
    case "u": toggleRead(); break;
    case "#": case "Delete": deleteCurrent(); break;
    case "n": if (!$("#next").disabled) $("#next").click(); break;
    case "p": if (!$("#prev").disabled) $("#prev").click(); break;
    case "?": $("#help").showModal(); break;
    default:
      if (e.key >= "1" && e.key <= "5") showTab(tabs[+e.key - 1]);
      else return;
  }
  e.preventDefault();
});

function search() {
  state.query = $("#search").value.trim();
  state.offset = 0;
  loadList();
}

// ---- wiring

$("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
let typingTimer = null;
$("#search").addEventListener("input", () => { clearTimeout(typingTimer); typingTimer = setTimeout(search, 250); });
$("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadList(); });
$("#next").addEventListener("click", () => { state.offset += PAGE; loadList(); });
$("#mark-all-read").addEventListener("click", () => api("/messages/read", { method: "POST" }).catch((e) => showError(e.message)));
$("#delete-all").addEventListener("click", async () => {
  const what = state.query ? `every message matching “${state.query}”` : "every message";
  if (!confirm(`Delete ${what}?`)) return;
  try {
    await api("/messages?query=" + encodeURIComponent(state.query), { method: "DELETE" });
    closeView();
    loadList();
  } catch (e) { showError(e.message); }
});
$("#help-btn").addEventListener("click", () => $("#help").showModal());
$("#delete-btn").addEventListener("click", deleteCurrent);
$("#toggle-read").addEventListener("click", toggleRead);
for (const b of document.querySelectorAll(".tabs > button")) b.addEventListener("click", () => showTab(b.dataset.tab));
for (const b of document.querySelectorAll(".tab-tools [data-width]")) b.addEventListener("click", () => { state.width = b.dataset.width; showTab("html"); });
$("#images-btn").addEventListener("click", () => { state.images = !state.images; showTab("html", true); });
$("#tag-input").addEventListener("keydown", (e) => {
  if (e.key !== "Enter" || !state.current) return;
  const v = e.target.value.trim();
  if (v) setTags([...state.current.tags, v]);
  e.target.value = "";
});
$("#release-btn").addEventListener("click", () => {
  $("#rel-result").textContent = "";
  $("#rel-from").value = state.current ? state.current.envelope_from : "";
  $("#release").showModal();
});
$("#release-form").addEventListener("submit", async (e) => {
  if (e.submitter && e.submitter.value !== "send") return;
  e.preventDefault();
  const to = $("#rel-to").value.split(/[\s,;]+/).filter(Boolean);
  try {
    const r = await api(`/messages/${encodeURIComponent(state.current.id)}/release`, { method: "POST", body: { from: $("#rel-from").value.trim(), to } });
    $("#rel-result").textContent = "Queued as " + r.queue_id + ".";
  } catch (err) { $("#rel-result").textContent = err.message; }
});
api("/info").then((i) => { $("#smtp-hint").textContent = i.smtp.join(", "); }).catch(() => {});

connect();
loadList().then(() => {
  const m = location.hash.match(/^#\/m\/(.+)$/);
  if (m) openMessage(decodeURIComponent(m[1]));
});

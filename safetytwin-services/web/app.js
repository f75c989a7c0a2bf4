// The safetytwin dashboard: a page per hash route (#/, #/host/H, #/host/H/diff/A/B,
// #/host/H/twin), built from the JSON API with DOM calls. Data only ever becomes text
// (textContent): host names, paths and file contents come from monitored hosts.
"use strict";

const TOKEN_KEY = "safetytwin.token";
const HOSTS_EVERY_MS = 5000;
const TIMELINE_EVERY_MS = 2000;
const TIMELINE_PAGE = 200;

let timers = [];
let generation = 0; // a page's callbacks stop once another page is shown

// ---- DOM helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick" || k === "onsubmit" || k === "oninput") e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const main = () => document.getElementById("main");
const present = (nodes) => nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);
function show(...nodes) { main().replaceChildren(...present(nodes)); }
function hostHref(host, rest) { return "#/host/" + encodeURIComponent(host) + (rest || ""); }

function crumbs(...parts) {
  document.getElementById("crumbs").replaceChildren(
    ...parts.map(([text, href]) => el("a", { href }, text)));
}

function ago(ns, nowNs) {
  if (!ns) return "never";
  const s = Math.max(0, Math.round((nowNs - ns) / 1e9));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function when(ns) { return ns ? new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-"; }
function ms(us) { return us >= 1e6 ? (us / 1e6).toFixed(1) + " s" : (us / 1e3).toFixed(1) + " ms"; }

// ---- the API --------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, options) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, Object.assign({ headers, cache: "no-store" }, options || {}));
  if (r.status === 401) throw new Unauthorized("the token was refused");
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

function failed(e) {
  if (e instanceof Unauthorized) return login(e.message);
  show(el("div", { class: "card" }, el("p", { class: "error", id: "page-error" }, String(e.message || e))));
}

// ---- login ----------------------------------------------------------------------------

function login(message) {
  stopTimers();
  generation++;
  crumbs();
  document.getElementById("logout").classList.add("hidden");
  const input = el("input", { type: "password", id: "token", autocomplete: "current-password", placeholder: "consumer token", required: true });
  const form = el("form", {
    id: "login",
    onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      route();
    },
  },
    el("label", { for: "token" }, "The replayer's consumer token (serve --token-file):"),
    input,
    el("button", { type: "submit", class: "primary", id: "login-submit" }, "Log in"),
    message && sessionStorage.getItem(TOKEN_KEY) ? el("p", { class: "error", id: "login-error" }, message) : null);
  sessionStorage.removeItem(TOKEN_KEY);
  show(el("div", { class: "card login" }, el("h1", {}, "safetytwin"), form));
  input.focus();
}

// ---- timers ---------------------------------------------------------------------------

function stopTimers() { timers.forEach(clearInterval); timers = []; setLive(""); }
function every(ms, f) { timers.push(setInterval(f, ms)); }
function setLive(text) { document.getElementById("live").textContent = text; }

// ---- charts ---------------------------------------------------------------------------

// Bars over time: points [{t (ns), v, label, cls, tall}]; one bar per point, in order; `tall`
// ones (resyncs) do not set the scale.
function barChart(id, points, unit) {
  const W = 1000, H = 180, L = 80, B = 22, T = 10;
  const chart = svg("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  // A resync restates the whole host (thousands of changes); scaled to it, every other bar
  // would be flat. Scale to the others and let taller bars run off the top, clipped.
  const others = points.filter((p) => !p.tall).map((p) => p.v);
  const max = Math.max(...(others.some((v) => v > 0) ? others : points.map((p) => p.v)), 0) || 1;
  chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  chart.append(svg("text", { x: 4, y: T + 8 }, Number(max.toPrecision(3)).toLocaleString() + " " + unit));
  chart.append(svg("text", { x: 4, y: H - B }, "0"));
  if (points.length) {
    const w = Math.min(40, (W - L) / points.length);
    points.forEach((p, i) => {
      const h = (H - B - T) * Math.min(1, p.v / max);
      chart.append(svg("rect", {
        class: "bar " + (p.cls || ""), x: L + i * w + w * 0.1, y: H - B - h,
        width: Math.max(1, w * 0.8), height: Math.max(0.5, h),
      }, svg("title", {}, p.label)));
    });
    chart.append(svg("text", { x: L, y: H - 6 }, when(points[0].t)));
    chart.append(svg("text", { x: W - 4, y: H - 6, "text-anchor": "end" }, when(points[points.length - 1].t)));
  } else {
    chart.append(svg("text", { x: L + 10, y: H / 2 }, "nothing yet"));
  }
  return chart;
}

// ---- confirm --------------------------------------------------------------------------

function confirmFirst(text) {
  return new Promise((resolve) => {
    const box = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    box.classList.remove("hidden");
    const done = (v) => () => { box.classList.add("hidden"); yes.onclick = no.onclick = null; resolve(v); };
    const yes = document.getElementById("confirm-yes"), no = document.getElementById("confirm-no");
    yes.onclick = done(true);
    no.onclick = done(false);
  });
}

// ---- hosts ----------------------------------------------------------------------------

function twinCell(t) {
  if (!t) return el("span", { class: "muted" }, "no twin");
  if (t.held) return el("span", { class: "badge warn" }, "held at " + t.applied_seq);
  if (t.last_failure_seq) return el("span", { class: "badge bad", title: t.last_failure }, "failed " + t.last_failure_seq);
  return el("span", { class: t.domain === "running" ? "ok" : "muted" }, t.domain);
}

function driftCell(t) {
  const v = t && t.last_verify;
  if (!v) return el("span", { class: "muted" }, "-");
  return v.differences
    ? el("span", { class: "bad", title: (v.first || []).join("\n") }, v.differences + " differ")
    : el("span", { class: "ok" }, "in sync" + (v.full ? " (full)" : ""));
}

async function hostsPage(gen) {
  crumbs(["hosts", "#/"]);
  const filter = el("input", { type: "text", id: "filter", placeholder: "filter hosts", autocomplete: "off" });
  const count = el("span", { id: "host-count", class: "muted" });
  const body = el("tbody");
  const table = el("table", { id: "hosts" },
    el("thead", {}, el("tr", {},
      el("th", {}, "host"), el("th", {}, "last batch"), el("th", { class: "num" }, "seq"),
      el("th", {}, "twin"), el("th", { class: "num" }, "applied"), el("th", {}, "drift"),
      el("th", { class: "num hide-narrow" }, "dropped"), el("th", { class: "hide-narrow" }, "worker"))),
    body);
  const stats = el("div", { class: "stats", id: "stats" });
  show(el("h1", {}, "Hosts"), stats, el("div", { class: "row card" }, filter, count), el("div", { class: "table-wrap" }, table));

  let rows = [];
  const render = () => {
    const t0 = performance.now();
    const q = filter.value.trim().toLowerCase();
    const shown = q ? rows.filter((r) => r.host.toLowerCase().includes(q)) : rows;
    const frag = document.createDocumentFragment();
    for (const r of shown) frag.append(r.tr);
    body.replaceChildren(frag);
    count.textContent = shown.length + " of " + rows.length + " hosts";
    table.dataset.renderMs = (performance.now() - t0).toFixed(1);
  };
  filter.addEventListener("input", render);

  const load = async () => {
    const t0 = performance.now();
    const data = await api("/api/v1/hosts");
    if (gen !== generation) return;
    const now = data.now_unix_ns;
    let stale = 0, drift = 0, held = 0, dropped = 0;
    rows = data.hosts.map((h) => {
      const t = h.twin, lost = h.losses ? h.losses.dropped : 0;
      const age = now - h.last_unix_ns;
      if (age > 60e9) stale++;
      if (t && t.last_verify && t.last_verify.differences) drift++;
      if (t && t.held) held++;
      dropped += lost;
      const tr = el("tr", { class: "clickable", dataset: { host: h.host }, onclick: () => { location.hash = hostHref(h.host); } },
        el("td", {}, el("a", { href: hostHref(h.host) }, h.host)),
        el("td", { class: age > 60e9 ? "warn" : "", title: when(h.last_unix_ns) }, ago(h.last_unix_ns, now)),
        el("td", { class: "num" }, h.last_seq),
        el("td", {}, twinCell(t)),
        el("td", { class: "num" }, t ? t.applied_seq : "-"),
        el("td", {}, driftCell(t)),
        el("td", { class: "num hide-narrow " + (lost ? "bad" : "") }, lost),
        el("td", { class: "hide-narrow muted" }, t && t.owner ? t.owner : ""));
      return { host: h.host, tr };
    });
    stats.replaceChildren(
      el("div", { class: "stat" }, el("b", {}, rows.length), el("span", {}, "hosts")),
      el("div", { class: "stat" }, el("b", { class: stale ? "warn" : "" }, stale), el("span", {}, "silent for over a minute")),
      el("div", { class: "stat" }, el("b", { class: drift ? "bad" : "" }, drift), el("span", {}, "twins that differ")),
      el("div", { class: "stat" }, el("b", {}, held), el("span", {}, "twins held at a snapshot")),
      el("div", { class: "stat" }, el("b", { class: dropped ? "bad" : "" }, dropped), el("span", {}, "events dropped (last batches)")));
    render();
    table.dataset.loadMs = (performance.now() - t0).toFixed(1);
    setLive("updated " + new Date().toLocaleTimeString());
  };
  await load();
  every(HOSTS_EVERY_MS, () => load().catch(failed));
}

// ---- a host's timeline ----------------------------------------------------------------

const KINDS = ["files", "units", "packages", "users", "groups", "processes"];

function changeList(batch) {
  const items = [];
  for (const f of batch.files || []) items.push(f.op + " " + f.path + (f.type ? " (" + f.type + (f.mode !== undefined ? ", " + f.mode.toString(8) : "") + ")" : ""));
  for (const u of batch.units || []) items.push((u.op || "") + " unit " + (u.unit || u.name || JSON.stringify(u)));
  for (const p of batch.packages || []) items.push(p.op + " package " + p.package + (p.version ? " " + p.version : ""));
  for (const u of batch.users || []) items.push(u.op + " user " + u.user);
  for (const g of batch.groups || []) items.push(g.op + " group " + g.group);
  const procs = (batch.processes || []).length;
  if (procs) items.push(procs + " process changes");
  return items;
}

async function hostPage(gen, host) {
  crumbs(["hosts", "#/"], [host, hostHref(host)]);
  const body = el("tbody");
  const table = el("table", { id: "batches" },
    el("thead", {}, el("tr", {},
      el("th", { class: "num" }, "seq"), el("th", {}, "window end"), el("th", {}, ""),
      ...KINDS.map((k) => el("th", { class: "num" + (k === "processes" ? " hide-narrow" : "") }, k)),
      el("th", { class: "num hide-narrow" }, "dropped"), el("th", {}, ""))),
    body);
  const detail = el("div", { id: "batch-detail", class: "card hidden" });
  const chartBox = el("div", {});
  const older = el("button", { type: "button", id: "older" }, "older batches");
  const from = el("input", { type: "number", id: "diff-from", min: 0, placeholder: "from seq" });
  const to = el("input", { type: "number", id: "diff-to", min: 0, placeholder: "to seq" });
  const diffForm = el("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); location.hash = hostHref(host, "/diff/" + (from.value || 0) + "/" + to.value); } },
    "diff from", from, "to", to, el("button", { type: "submit", id: "diff-go" }, "show diff"));
  show(el("h1", {}, host),
    el("div", { class: "row card" }, el("a", { href: hostHref(host, "/twin"), id: "to-twin" }, "twin and snapshots →"), diffForm),
    el("h2", {}, "Changes per batch"), chartBox,
    detail,
    el("h2", {}, "Batches (newest first; click one to see it)"),
    el("div", { class: "table-wrap" }, table), el("p", {}, older));

  let lines = []; // oldest first
  const rowOf = (b, live) => {
    const c = b.counts;
    const tr = el("tr", { class: "clickable" + (live ? " fresh-live" : ""), dataset: { seq: b.seq }, onclick: () => open(b.seq, tr) },
      el("td", { class: "num" }, b.seq),
      el("td", {}, when(b.window_end_unix_ns)),
      el("td", {}, b.resync ? el("span", { class: "badge" }, "resync") : "", b.more ? el("span", { class: "badge" }, "part") : ""),
      ...KINDS.map((k) => el("td", { class: "num" + (k === "processes" ? " hide-narrow" : "") }, c[k] || "")),
      el("td", { class: "num hide-narrow " + (b.losses.dropped ? "bad" : "") }, b.losses.dropped || ""),
      el("td", {}, b.seq > 1 ? el("a", { href: hostHref(host, "/diff/" + (b.seq - 1) + "/" + b.seq), onclick: (ev) => ev.stopPropagation() }, "diff") : ""));
    return tr;
  };
  const redrawChart = () => {
    chartBox.replaceChildren(barChart("sizes", lines.map((b) => ({
      t: b.window_end_unix_ns, v: b.counts.total, cls: b.resync ? "resync" : "", tall: b.resync,
      label: "seq " + b.seq + ": " + b.counts.total + " changes" + (b.resync ? " (resync)" : ""),
    })), "changes"));
  };
  const open = async (seq, tr) => {
    body.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
    if (tr) tr.classList.add("selected");
    const b = await api("/api/v1/hosts/" + encodeURIComponent(host) + "/batches/" + seq);
    const items = changeList(b);
    detail.classList.remove("hidden");
    detail.replaceChildren(...present([
      el("h2", {}, "Batch " + seq + (b.resync ? " (resync: the whole state)" : "")),
      el("p", { class: "muted" }, when(b.line.window_start_unix_ns) + " → " + when(b.line.window_end_unix_ns) +
        " · kernel events produced " + b.line.losses.produced + ", received " + b.line.losses.received + ", dropped " + b.line.losses.dropped),
      items.length ? el("ul", { class: "changes mono" }, items.slice(0, 500).map((i) => el("li", {}, i))) : el("p", {}, "no changes (a heartbeat)"),
      items.length > 500 ? el("p", { class: "muted" }, (items.length - 500) + " more") : null,
      seq > 1 ? el("a", { href: hostHref(host, "/diff/" + (seq - 1) + "/" + seq) }, "diff with the batch before") : null]));
  };

  const path = "/api/v1/hosts/" + encodeURIComponent(host) + "/batches";
  const first = await api(path + "?limit=" + TIMELINE_PAGE);
  if (gen !== generation) return;
  lines = first.batches;
  body.replaceChildren(...lines.slice().reverse().map((b) => rowOf(b, false)));
  if (lines.length && !to.value) { to.value = lines[lines.length - 1].seq; from.value = Math.max(0, lines[lines.length - 1].seq - 1); }
  older.disabled = !lines.length || lines[0].seq <= 1;
  redrawChart();
  older.addEventListener("click", async () => {
    if (!lines.length) return;
    const page = await api(path + "?limit=" + TIMELINE_PAGE + "&before=" + lines[0].seq);
    lines = page.batches.concat(lines);
    body.append(...page.batches.slice().reverse().map((b) => rowOf(b, false)));
    older.disabled = !page.batches.length || page.batches[0].seq <= 1;
    redrawChart();
  });

  // Live: the batches after the newest shown, every two seconds.
  const poll = async () => {
    const last = lines.length ? lines[lines.length - 1].seq : 0;
    const page = await api(path + "?after=" + last + "&limit=" + TIMELINE_PAGE);
    if (gen !== generation || !page.batches.length) return;
    lines = lines.concat(page.batches);
    for (const b of page.batches) body.prepend(rowOf(b, true));
    redrawChart();
    setLive("batch " + page.batches[page.batches.length - 1].seq + " arrived " + new Date().toLocaleTimeString());
  };
  setLive("live");
  every(TIMELINE_EVERY_MS, () => poll().catch(failed));
}

// ---- diff -----------------------------------------------------------------------------

function unifiedPre(text) {
  const pre = el("pre", { class: "unified" });
  for (const line of text.split("\n")) {
    const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : null;
    pre.append(cls ? el("span", { class: cls }, line) : document.createTextNode(line), "\n");
  }
  return pre;
}

async function diffPage(gen, host, from, to) {
  crumbs(["hosts", "#/"], [host, hostHref(host)], ["diff " + from + "→" + to, hostHref(host, "/diff/" + from + "/" + to)]);
  const d = await api("/api/v1/hosts/" + encodeURIComponent(host) + "/diff?from=" + from + "&to=" + to);
  if (gen !== generation) return;
  const c = d.counts;
  const files = (d.files || []).map((f) => {
    const dd = d.diffs[f.path] || {};
    return el("div", { class: "file", dataset: { path: f.path } },
      el("h3", {}, (f.op === "remove" ? "removed " : "") + f.path),
      f.op === "upsert" ? el("p", { class: "muted" }, f.type + ", mode " + (f.mode || 0).toString(8) + ", " + f.uid + ":" + f.gid + ", " + f.size + " bytes" + (f.link_target ? " → " + f.link_target : "")) : null,
      dd.unified ? unifiedPre(dd.unified) : dd.note ? el("p", { class: "muted" }, dd.note) : null);
  });
  const list = (title, items, text) => items && items.length
    ? [el("h2", {}, title + " (" + items.length + ")"), el("ul", { class: "changes mono" }, items.map((i) => el("li", {}, text(i))))] : [];
  show(el("h1", {}, host + ": from seq " + from + " to " + to),
    el("div", { class: "stats", id: "diff-counts" }, KINDS.filter((k) => k !== "processes").map((k) =>
      el("div", { class: "stat" }, el("b", {}, c[k]), el("span", {}, k)))),
    el("div", { id: "diff", class: "card" },
      files.length ? [el("h2", {}, "Files (" + files.length + ")"), ...files] : el("p", {}, "No file differs."),
      list("Units", d.units, (u) => u.op + " " + (u.unit || u.name || "") + (u.active !== undefined ? (u.active ? " active" : " inactive") : "")),
      list("Packages", d.packages, (p) => p.op + " " + p.package + (p.version ? " " + p.version : "")),
      list("Users", d.users, (u) => u.op + " " + u.user + (u.uid !== undefined ? " uid " + u.uid : "")),
      list("Groups", d.groups, (g) => g.op + " " + g.group)));
}

// ---- twin -----------------------------------------------------------------------------

async function twinPage(gen, host) {
  crumbs(["hosts", "#/"], [host, hostHref(host)], ["twin", hostHref(host, "/twin")]);
  const load = async () => {
    const v = await api("/api/v1/hosts/" + encodeURIComponent(host) + "/twin");
    if (gen !== generation) return;
    const t = v.twin;
    const resume = el("button", { type: "button", id: "resume", class: "primary", disabled: !t.held },
      "resume following the history");
    resume.addEventListener("click", async () => {
      if (!(await confirmFirst("Let the twin of " + host + " follow the host again? It leaves the snapshot it is held at."))) return;
      await api("/api/v1/hosts/" + encodeURIComponent(host) + "/resume", { method: "POST" }).catch(failed);
      await load().catch(failed);
    });
    const snaps = el("tbody", {}, v.snapshots.slice().reverse().map((s) => {
      const b = el("button", { type: "button", class: "revert danger" }, "revert");
      b.addEventListener("click", async () => {
        if (!(await confirmFirst("Revert the twin of " + host + " to snapshot " + s.name + " (seq " + s.seq + ")? It stays there until resumed."))) return;
        b.disabled = true;
        await api("/api/v1/snapshots/" + encodeURIComponent(s.name), { method: "POST" }).catch(failed);
        await load().catch(failed);
      });
      return el("tr", { dataset: { snapshot: s.name, seq: s.seq }, class: s.name === t.snapshot ? "selected" : "" },
        el("td", { class: "num" }, s.seq), el("td", { class: "mono" }, s.name), el("td", {}, s.created),
        el("td", { class: "num" }, s.items), el("td", { class: "num" }, ms(s.apply_us)), el("td", {}, b));
    }));
    const steps = t.last_apply_steps || [];
    const verify = t.last_verify;
    show(el("h1", {}, "Twin of " + host),
      el("div", { class: "stats", id: "twin-state", dataset: { held: t.held ? "yes" : "no", applied: t.applied_seq } },
        el("div", { class: "stat" }, el("b", {}, t.domain), el("span", {}, "domain")),
        el("div", { class: "stat" }, el("b", {}, t.applied_seq), el("span", {}, "applied seq")),
        el("div", { class: "stat" }, el("b", { class: t.held ? "warn" : "ok" }, t.held ? "held" : "following"), el("span", {}, t.held ? "at " + t.snapshot : "the history")),
        el("div", { class: "stat" }, el("b", { class: verify && verify.differences ? "bad" : "ok" }, verify ? verify.differences : "-"), el("span", {}, "differences at the last check")),
        el("div", { class: "stat" }, el("b", {}, t.owner || "this replayer"), el("span", {}, "worker"))),
      el("div", { class: "row card" }, resume),
      el("h2", {}, "Apply durations"),
      barChart("applies", v.applies.map((a) => ({ t: a.unix_ns, v: a.micros / 1000, label: "seq " + a.seq + ": " + ms(a.micros) + ", " + a.items + " items" })), "ms"),
      el("h2", {}, "Last apply" + (t.last_apply_seq ? " (seq " + t.last_apply_seq + ", " + ms(t.last_apply_us) + ", " + t.last_apply_items + " items)" : "")),
      steps.length ? el("div", { class: "table-wrap" }, el("table", { id: "steps" },
        el("thead", {}, el("tr", {}, el("th", {}, "step"), el("th", { class: "num" }, "time"))),
        el("tbody", {}, steps.map((s) => el("tr", {}, el("td", { class: "mono" }, s.step), el("td", { class: "num" }, ms(s.us))))))) : el("p", { class: "muted" }, "none since this replayer started"),
      el("h2", {}, "Last failure"),
      t.last_failure_seq ? el("div", { id: "last-failure" }, el("p", {}, "seq " + t.last_failure_seq), el("pre", {}, t.last_failure)) : el("p", { class: "muted", id: "last-failure" }, "none"),
      verify && verify.first && verify.first.length ? [el("h2", {}, "First differences"), el("pre", {}, verify.first.join("\n"))] : null,
      el("h2", {}, "Snapshots (newest first)"),
      el("div", { class: "table-wrap" }, el("table", { id: "snapshots" },
        el("thead", {}, el("tr", {}, el("th", { class: "num" }, "seq"), el("th", {}, "name"), el("th", {}, "taken"), el("th", { class: "num" }, "items"), el("th", { class: "num" }, "apply"), el("th", {}, ""))),
        snaps)));
  };
  await load();
  every(HOSTS_EVERY_MS, () => load().catch(failed));
}

// ---- routing --------------------------------------------------------------------------

async function route() {
  stopTimers();
  const gen = ++generation;
  document.getElementById("logout").classList.toggle("hidden", !sessionStorage.getItem(TOKEN_KEY));
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "host" && parts[1]) {
      const host = parts[1];
      if (parts[2] === "diff") return await diffPage(gen, host, Number(parts[3]) || 0, Number(parts[4]) || 0);
      if (parts[2] === "twin") return await twinPage(gen, host);
      return await hostPage(gen, host);
    }
    return await hostsPage(gen);
  } catch (e) {
    if (gen === generation) failed(e);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); login(); });
  route();
});

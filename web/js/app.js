// The ICP dispatch console: login, live map, incident queue, incident view, unit board, chat.
// State comes from REST at start (and after a resync); the gateway keeps it current.

import { ApiError, get, patch, post, setUnauthorizedHandler } from "./api.js";
import { Chat } from "./chat.js";
import { $, clear, clock, debounce, duration, h, words } from "./dom.js";
import { Live } from "./live.js";
import { Media } from "./media.js";
import { CityMap } from "./map.js";
import { positionsApplied } from "./perf.js";

const UNIT_STATUSES = ["available", "out_of_service", "off_duty", "en_route", "on_scene", "transporting", "at_hospital"];
const LIVE_ASSIGNMENT = new Set(["requested", "dispatched", "acknowledged", "en_route", "on_scene"]);
const CONSOLE_ROLES = new Set(["dispatcher", "supervisor", "admin"]);

const S = {
  me: null,
  config: null,
  agencies: new Map(),
  units: new Map(),
  stations: [],
  incidents: new Map(),
  selected: null,
  detail: null, // {id, timeline, alerts, rec, recError}
  alerts: [],
  statusSince: new Map(),
  routes: new Map(), // unit id -> {coordinates, at}
  types: [],
  create: null,
};
let map = null;
let live = null;
let chat = null;
let media = null;

// -- helpers -------------------------------------------------------------------------------------

const canSupervise = () => S.me && (S.me.role === "supervisor" || S.me.role === "admin");
const unrestricted = () => S.me && (S.me.role === "admin" || (S.me.role === "supervisor" && !S.me.agency));
const short = (number) => `#${String(number).split("-").pop().replace(/^0+(?=\d)/, "")}`;
const unitName = (id) => S.units.get(id)?.call_sign || id;
const agencyName = (id) => S.agencies.get(id)?.name || id;
const memberName = (key) => (String(key).startsWith("unit:") ? unitName(String(key).slice(5)) : key);

function toast(text, ms = 4000) {
  const el = $("#toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, ms);
}

function failed(err, what) {
  if (err instanceof ApiError && err.status === 0) toast(`${what}: the server cannot be reached`);
  else toast(`${what}: ${err.message}`);
}

function activeAssignments(inc) {
  return (inc.assignments || []).filter((a) => LIVE_ASSIGNMENT.has(a.status));
}

function isNew(inc) {
  return inc.status === "pending" && activeAssignments(inc).length === 0;
}

function sortedIncidents() {
  return [...S.incidents.values()].sort((a, b) => a.priority - b.priority || Date.parse(a.created_at) - Date.parse(b.created_at));
}

// The standards timers: since creation (amber/red while nobody is dispatched) and since the first
// dispatch (amber/red while nobody is on scene), at the configured thresholds.
function timers(inc, now = Date.now()) {
  const t = S.config.timers;
  const age = (now - Date.parse(inc.created_at)) / 1000;
  const dispatchedAt = (inc.assignments || []).map((a) => a.dispatched_at).filter(Boolean).map(Date.parse);
  const first = dispatchedAt.length ? Math.min(...dispatchedAt) : null;
  const level = (s, amber, red) => (s >= red ? "red" : s >= amber ? "amber" : "");
  const out = [{ name: "age", text: duration(age), level: first === null ? level(age, t.pending_amber_s, t.pending_red_s) : "",
    label: "time since creation" }];
  if (first !== null) {
    const arrived = inc.status === "active" || (inc.assignments || []).some((a) => a.status === "on_scene");
    const since = (now - first) / 1000;
    out.push({ name: "dispatch", text: arrived ? "on scene" : duration(since),
      level: arrived ? "" : level(since, t.response_amber_s, t.response_red_s), label: "time since dispatch" });
  }
  return out;
}

// -- login ---------------------------------------------------------------------------------------

function showLogin(message = "") {
  media?.hangupAll();
  live?.stop();
  live = null;
  $("#app-view").hidden = true;
  $("#conn-banner").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message;
  $("#login-username").focus();
}

async function login(event) {
  event.preventDefault();
  $("#login-error").textContent = "";
  try {
    await post("/api/v1/session", { username: $("#login-username").value, password: $("#login-password").value },
      { quiet401: true });
    $("#login-password").value = "";
    await start(await get("/api/v1/console/config", { quiet401: true }));
  } catch (err) {
    $("#login-error").textContent = err instanceof ApiError && err.status === 401 ? "Wrong username or password." : err.message;
  }
}

async function logout() {
  try {
    await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" });
  } finally {
    showLogin("Logged out.");
  }
}

// -- start ---------------------------------------------------------------------------------------

async function start(config) {
  S.config = config;
  S.me = config.principal;
  if (!CONSOLE_ROLES.has(S.me.role)) {
    showLogin(`The console is for dispatchers and supervisors; ${S.me.name} is ${S.me.role}.`);
    return;
  }
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#who").textContent = `${S.me.name} · ${S.me.role}${S.me.agency ? ` · ${S.me.agency}` : ""}`;
  const attribution = [config.tile_url ? config.tile_attribution : null, "Roads © OpenStreetMap contributors (ODbL)"];
  $("#attribution").textContent = [...new Set(attribution.filter(Boolean))].join(" · ");
  if (!map) {
    map = new CityMap($("#map"), {
      tileUrl: config.tile_url,
      onIncident: (id) => select(id),
      onUnit: (id) => showUnit(id),
      onPick: (lat, lon) => picked(lat, lon),
    });
  }
  chat = chat || new Chat($("#panel-chat"), { me: () => S.me, onUnread: showUnread, onEmergency: showEmergency,
    toast, unitName, agencyName, incidents: () => S.incidents });
  if (!media) {
    media = new Media({ live: () => live, me: () => S.me, toast, unitName, memberName,
      onTimeline: (incidentId) => { if (S.selected === incidentId) renderIncident(); } });
    media.wire();
  }
  await loadReference();
  live = new Live({
    onStatus: connection,
    onWelcome: (welcome, resumed) => welcomed(welcome, resumed),
    onEvent: (frame) => onEvent(frame),
    onPositions: (units) => onPositions(units),
    onResync: () => reloadAll(),
    onFrame: (frame) => {
      chat.onFrame(frame);
      media.onFrame(frame);
    },
  });
  live.start();
}

function connection(status) {
  const pill = $("#conn-status");
  pill.className = `conn ${status}`;
  pill.textContent = status === "online" ? "live" : status === "connecting" ? "connecting…" : "connection lost";
  $("#conn-banner").hidden = status !== "offline";
}

async function welcomed(welcome, resumed) {
  if (resumed) {
    await Promise.all([loadUnits(), loadIncidents()]); // positions are not replayed; incidents are cheap
  } else {
    await reloadAll(welcome.seq);
  }
  chat.connected(resumed);
  media.connected();
}

async function loadReference() {
  const [agencies, stations, plans, areas] = await Promise.all([
    get("/api/v1/agencies"), get("/api/v1/stations").catch(() => ({ stations: [] })),
    get("/api/v1/response-plans").catch(() => ({ plans: [] })), get("/api/v1/geo/areas").catch(() => null),
  ]);
  S.agencies = new Map(agencies.agencies.map((a) => [a.id, a]));
  S.stations = stations.stations;
  S.types = [...new Set(plans.plans.map((p) => p.incident_type))].sort();
  if (areas) map.setAreas(areas);
}

async function reloadAll(seq = null) {
  await Promise.all([loadUnits(), loadIncidents()]);
  await loadRoads();
  if (seq !== null) await loadHistory(seq);
  render();
}

async function loadRoads() {
  const points = [...S.stations.map((s) => s.location), ...[...S.units.values()].map((u) => u.position),
    ...[...S.incidents.values()].map((i) => i.location)].filter(Boolean);
  if (!points.length || loadRoads.done) return;
  const lons = points.map((p) => p.lon);
  const lats = points.map((p) => p.lat);
  const pad = 0.004;
  const box = [Math.min(...lons) - pad, Math.min(...lats) - pad, Math.max(...lons) + pad, Math.max(...lats) + pad];
  const clamp = (lo, hi) => (hi - lo > 0.45 ? [(lo + hi) / 2 - 0.22, (lo + hi) / 2 + 0.22] : [lo, hi]);
  [box[0], box[2]] = clamp(box[0], box[2]);
  [box[1], box[3]] = clamp(box[1], box[3]);
  map.fit(...box.map((v, n) => v + (n < 2 ? pad / 2 : -pad / 2)));
  try {
    map.setRoads(await get(`/api/v1/geo/roads?bbox=${box.map((v) => v.toFixed(5)).join(",")}`));
    loadRoads.done = true;
  } catch {
    // no road network imported: the map shows areas, incidents and units on a plain ground
  }
}

// Time in status and recent alerts from the recent log (the REST views have no history).
async function loadHistory(head) {
  let after = Math.max(0, head - 3000);
  for (let page = 0; page < 3; page++) {
    let batch;
    try {
      batch = await get(`/api/v1/events?after=${after}&limit=1000`);
    } catch {
      return;
    }
    for (const ev of batch.events) {
      if (ev.type === "unit.status_changed") S.statusSince.set(ev.data.unit_id, ev.at);
      if (ev.type === "alerts.received") addAlerts(ev, false);
    }
    if (batch.events.length < 1000) return;
    after = batch.next_after;
  }
}

async function loadUnits() {
  const { units } = await get("/api/v1/units");
  S.units = new Map(units.map((u) => [u.id, u]));
  for (const u of units) map.updateUnit(mapUnit(u));
  map.removeMissingUnits(new Set(S.units.keys()));
}

async function loadIncidents() {
  const { incidents } = await get("/api/v1/incidents?limit=500");
  const keep = S.selected && S.incidents.get(S.selected);
  S.incidents = new Map(incidents.map((i) => [i.id, i]));
  if (keep && !S.incidents.has(keep.id)) refreshIncident(keep.id);
}

function mapUnit(u) {
  const agency = S.agencies.get(u.agency_id);
  const home = S.me.agency && u.agency_id !== S.me.agency;
  return { id: u.id, callSign: u.call_sign, status: u.status, kind: agency?.kind || "fire",
    lat: u.position?.lat, lon: u.position?.lon, partner: Boolean(home) };
}

// -- live updates --------------------------------------------------------------------------------

const pendingIncidents = new Set();
const flushIncidents = debounce(async () => {
  const ids = [...pendingIncidents];
  pendingIncidents.clear();
  await Promise.all(ids.map((id) => refreshIncident(id)));
  render();
}, 120);

function scheduleIncident(id) {
  pendingIncidents.add(id);
  flushIncidents();
}

async function refreshIncident(id) {
  try {
    const inc = await get(`/api/v1/incidents/${encodeURIComponent(id)}`);
    if (inc.status === "closed" || inc.status === "cancelled") S.incidents.delete(id);
    else S.incidents.set(id, inc);
    if (S.selected === id) {
      S.detail = { ...(S.detail || {}), id, incident: inc };
      loadDetailExtras(id, false);
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) S.incidents.delete(id);
  }
}

const reloadUnitsSoon = debounce(() => loadUnits().then(render).catch(() => {}), 300);

function onEvent(ev) {
  const d = ev.data || {};
  if ((ev.type.startsWith("incident.") || ev.type.startsWith("assignment.")) && d.incident_id) {
    scheduleIncident(d.incident_id);
    if (ev.type === "assignment.mutual_aid_requested") toast(`Mutual aid requested: ${unitName(d.unit_id)} for ${d.incident_id}`);
  }
  if (ev.type === "unit.status_changed") {
    const u = S.units.get(d.unit_id);
    if (u) {
      u.status = d.to_status;
      u.assignment_id = d.assignment_id ?? null;
      map.updateUnit(mapUnit(u));
    }
    S.statusSince.set(d.unit_id, ev.at);
    renderUnitsSoon();
    updateRoutesSoon();
  }
  if (ev.type === "unit.saved") reloadUnitsSoon();
  if (ev.type === "agency.saved") loadReference().catch(() => {});
  if (ev.type.startsWith("areas.")) get("/api/v1/geo/areas").then((a) => map.setAreas(a)).catch(() => {});
  if (ev.type === "alerts.received") addAlerts(ev, true);
  if (ev.type.startsWith("message.") || ev.type.startsWith("channel.")) chat.onEvent(ev);
  // Calls, recordings and cameras of the open incident: its timeline (and camera list) again.
  if (/^(call|recording|camera)\./.test(ev.type) && d.incident_id && d.incident_id === S.selected) {
    loadDetailExtras(d.incident_id, false);
  }
}

function onPositions(list) {
  const started = performance.now();
  for (const p of list) {
    const u = S.units.get(p.unit);
    if (!u) continue;
    u.position = { lat: p.lat, lon: p.lon };
    u.position_at = p.time;
    map.updateUnit(mapUnit(u));
  }
  positionsApplied(performance.now() - started);
}

// One alerts.received event lists the alerts of one sender committed together, oldest first.
function addAlerts(ev, live) {
  const known = new Set(S.alerts.map((a) => a.alert_id));
  for (const d of (ev.data && ev.data.alerts) || []) {
    if (!known.has(d.alert_id)) S.alerts.unshift({ ...d, at: ev.at });
  }
  S.alerts.length = Math.min(S.alerts.length, 40);
  if (live) renderAlerts();
}

// -- routes of units en route --------------------------------------------------------------------

async function updateRoutes() {
  const wanted = new Map();
  for (const inc of S.incidents.values()) {
    for (const a of inc.assignments || []) {
      if (a.status === "en_route") wanted.set(a.unit_id, inc.location);
    }
  }
  for (const id of [...S.routes.keys()]) if (!wanted.has(id)) S.routes.delete(id);
  const now = Date.now();
  const asks = [];
  for (const [unitId, to] of wanted) {
    const unit = S.units.get(unitId);
    const known = S.routes.get(unitId);
    if (!unit?.position || (known && now - known.at < 15000)) continue;
    asks.push(get(`/api/v1/geo/route?from=${unit.position.lat},${unit.position.lon}&to=${to.lat},${to.lon}`)
      .then((r) => S.routes.set(unitId, { coordinates: r.geometry.coordinates, at: now }))
      .catch(() => S.routes.set(unitId, { coordinates: [[unit.position.lon, unit.position.lat], [to.lon, to.lat]], at: now })));
  }
  await Promise.all(asks);
  map.setRoutes([...S.routes.values()]);
}
const updateRoutesSoon = debounce(() => updateRoutes(), 400);

// -- rendering -----------------------------------------------------------------------------------

function render() {
  renderQueue();
  renderMapIncidents();
  renderAid();
  renderAlerts();
  renderIncident();
  renderUnitsSoon();
  updateRoutesSoon();
}

function renderMapIncidents() {
  map.setIncidents(sortedIncidents().map((i) => ({ id: i.id, lat: i.location.lat, lon: i.location.lon,
    priority: i.priority, pulsing: isNew(i) })));
  map.setSelected(S.selected);
}

function renderQueue() {
  const list = sortedIncidents();
  $("#queue-count").textContent = `(${list.length})`;
  const now = Date.now();
  clear($("#queue"), list.length ? list.map((inc) => h("li", {
    class: `qitem${isNew(inc) ? " new" : ""}`, tabindex: 0, "aria-current": inc.id === S.selected ? "true" : "false",
    dataset: { incident: inc.id }, "aria-label": `Priority ${inc.priority} ${words(inc.incident_type)}, ${inc.address}, ${inc.status}`,
    onclick: () => select(inc.id), onkeydown: (e) => { if (e.key === "Enter") select(inc.id); },
  },
  h("span", { class: `prio p${inc.priority}`, "aria-hidden": "true" }, inc.priority),
  h("span", { class: "title" }, words(inc.incident_type)),
  h("span", { class: "timers" }, timers(inc, now).map((t) => h("span", { class: `timer ${t.level}`, title: t.label,
    dataset: { timer: t.name } }, t.text)), h("span", { class: `status ${inc.status}` }, inc.status)),
  h("span", { class: "addr" }, `${short(inc.number)} · ${inc.address || `${inc.location.lat.toFixed(5)}, ${inc.location.lon.toFixed(5)}`}`),
  )) : h("li", { class: "empty" }, "No open incidents."));
}

function tickTimers() {
  const now = Date.now();
  for (const li of document.querySelectorAll("#queue .qitem")) {
    const inc = S.incidents.get(li.dataset.incident);
    if (!inc) continue;
    const spans = li.querySelectorAll(".timer");
    timers(inc, now).forEach((t, n) => {
      if (!spans[n]) return;
      spans[n].textContent = t.text;
      spans[n].className = `timer ${t.level}`;
    });
  }
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = duration((now - Date.parse(el.dataset.since)) / 1000);
}

function renderAlerts() {
  clear($("#alerts"), S.alerts.slice(0, 15).map((a) => h("li", { class: "alitem" },
    h("time", { class: "muted" }, clock(a.at)),
    h("span", { class: "what", title: a.headline || "" }, `${a.kind}${a.headline ? ` — ${a.headline}` : ""}`),
    a.incident_id
      ? h("button", { type: "button", onclick: () => select(a.incident_id), "aria-label": `Open incident ${a.incident_id}` }, short(a.incident_id))
      : h("span", { class: "muted" }, a.outcome),
    h("button", { type: "button", onclick: () => showRaw(a.alert_id), "aria-label": `Original payload of alert ${a.alert_id}` }, "raw"),
  )));
}

function pendingAid() {
  const out = [];
  for (const inc of S.incidents.values()) {
    for (const a of inc.assignments || []) {
      if (a.status !== "requested") continue;
      const unit = S.units.get(a.unit_id);
      if (unrestricted() || (unit && unit.agency_id === S.me.agency)) out.push({ inc, a });
    }
  }
  return out;
}

function renderAid() {
  const items = pendingAid();
  const box = $("#aid-requests");
  box.hidden = items.length === 0;
  clear(box, h("h2", {}, `Mutual-aid requests (${items.length})`), items.map(({ inc, a }) => h("div", { class: "aid-item",
    dataset: { assignment: a.id } },
  h("span", { class: "what" }, `${unitName(a.unit_id)} → ${words(inc.incident_type)} ${short(inc.number)}, ${inc.address}`),
  h("button", { type: "button", class: "primary", onclick: () => answerAid(a.id, "accept") }, "Accept"),
  h("button", { type: "button", class: "danger", onclick: () => answerAid(a.id, "decline") }, "Decline"))));
}

async function answerAid(assignmentId, answer) {
  try {
    const inc = await post(`/api/v1/assignments/${encodeURIComponent(assignmentId)}/${answer}`, answer === "decline"
      ? { reason: "declined from the console" } : {});
    S.incidents.set(inc.id, inc);
    toast(answer === "accept" ? "Mutual aid accepted" : "Mutual aid declined");
    render();
  } catch (err) {
    failed(err, `Could not ${answer}`);
  }
}

// -- incident view -------------------------------------------------------------------------------

function select(id) {
  if (!id) return;
  S.selected = id;
  S.detail = { id, incident: S.incidents.get(id) || null, timeline: null, alerts: null, rec: null };
  tab("incident");
  const inc = S.incidents.get(id);
  if (inc) map.centerOn(inc.location.lon, inc.location.lat);
  render();
  if (!inc) refreshIncident(id).then(render);
  loadDetailExtras(id, true);
  document.querySelector(`#queue [data-incident="${CSS.escape(id)}"]`)?.scrollIntoView({ block: "nearest" });
}

async function loadDetailExtras(id, withRecommendation) {
  const inc = S.incidents.get(id) || S.detail?.incident;
  const path = `/api/v1/incidents/${encodeURIComponent(id)}`;
  const [timeline, alerts, cameras] = await Promise.all([
    get(`${path}/timeline`).then((t) => t.events).catch(() => []),
    Promise.all((inc?.alert_ids || []).slice(-20).map((a) => get(`/api/v1/alerts/${encodeURIComponent(a)}`).catch(() => null))),
    media?.enabled ? get(`${path}/cameras`).then((c) => c.cameras).catch(() => []) : [],
  ]);
  if (S.selected !== id) return;
  Object.assign(S.detail, { timeline, alerts: alerts.filter(Boolean), cameras });
  if (withRecommendation || !S.detail.rec) await loadRecommendation(id, false);
  renderIncident();
}

async function loadRecommendation(id = S.selected, draw = true) {
  const inc = S.incidents.get(id);
  if (!inc || S.detail?.id !== id) return;
  try {
    S.detail.rec = await post(`/api/v1/incidents/${encodeURIComponent(id)}/recommendation`, {});
    S.detail.recError = null;
  } catch (err) {
    S.detail.rec = null;
    S.detail.recError = err.message;
  }
  if (draw) renderIncident();
}

async function dispatch(units) {
  const id = S.selected;
  if (!id || !units.length) return;
  try {
    const inc = await post(`/api/v1/incidents/${encodeURIComponent(id)}/assignments`, { units });
    S.incidents.set(inc.id, inc);
    toast(`Dispatched ${units.map((u) => unitName(u.unit_id || u)).join(", ")}`);
    S.detail.rec = null;
    render();
    loadDetailExtras(id, true);
  } catch (err) {
    failed(err, "Dispatch failed");
    loadRecommendation(id);
  }
}

function dispatchRecommendation() {
  const rec = S.detail?.rec;
  if (!rec || !rec.picks?.some((p) => !p.already_assigned)) {
    toast("Nothing to dispatch: no recommendation for this incident.");
    return;
  }
  const boxes = [...document.querySelectorAll("#panel-incident input[name=pick]")];
  const unticked = new Set(boxes.filter((b) => !b.checked).map((b) => b.value));
  const picks = rec.picks.filter((p) => !p.already_assigned && !unticked.has(p.unit_id));
  if (!picks.length) {
    toast("Every recommended unit is already assigned.");
    return;
  }
  dispatch(picks.map((p) => ({ unit_id: p.unit_id, ...(p.capability ? { capability: p.capability } : {}) })));
}

async function incidentCommand(action, body) {
  const id = S.selected;
  try {
    const inc = await post(`/api/v1/incidents/${encodeURIComponent(id)}/${action}`, body);
    if (inc.status === "closed" || inc.status === "cancelled") S.incidents.delete(id);
    else S.incidents.set(id, inc);
    S.detail.incident = inc;
    render();
    loadDetailExtras(id, false);
  } catch (err) {
    failed(err, `Could not ${action === "notes" ? "add the note" : action}`);
  }
}

async function assignmentCommand(assignmentId, action) {
  try {
    const inc = await post(`/api/v1/assignments/${encodeURIComponent(assignmentId)}/${action}`, {});
    S.incidents.set(inc.id, inc);
    render();
  } catch (err) {
    failed(err, `Could not ${action}`);
  }
}

function renderIncident() {
  const panel = $("#panel-incident");
  const d = S.detail;
  const inc = d && (S.incidents.get(d.id) || d.incident);
  if (!inc) {
    clear(panel, h("p", { class: "empty" }, d ? "Loading…" : "Select an incident in the queue or on the map (J / K move through the queue)."));
    return;
  }
  const open = inc.status !== "closed" && inc.status !== "cancelled";
  const hadFocus = document.activeElement && panel.contains(document.activeElement) ? document.activeElement.id : null;
  const draft = { note: $("#note-text")?.value || "", reason: $("#end-reason")?.value || "" };
  clear(panel,
    h("div", { class: "inc-head" },
      h("span", { class: `prio p${inc.priority}` }, `P${inc.priority}`),
      h("h3", { id: "incident-title" }, `${words(inc.incident_type)} ${short(inc.number)}`),
      h("span", { class: `status ${inc.status}`, id: "incident-status" }, inc.status),
      h("button", { type: "button", onclick: () => { tab("chat"); chat.open(`incident:${inc.id}`); } }, "Chat")),
    h("dl", { class: "facts" },
      h("dt", {}, "Address"), h("dd", {}, inc.address || "—"),
      h("dt", {}, "Location"), h("dd", {}, `${inc.location.lat.toFixed(5)}, ${inc.location.lon.toFixed(5)}`),
      h("dt", {}, "Zone"), h("dd", {}, inc.zone || "—"),
      h("dt", {}, "Agencies"), h("dd", {}, (inc.agency_ids || []).map(agencyName).join(", ") || "—"),
      h("dt", {}, "Created"), h("dd", {}, `${clock(inc.created_at)} (`, h("span", { dataset: { since: inc.created_at } },
        duration((Date.now() - Date.parse(inc.created_at)) / 1000)), " ago)"),
      h("dt", {}, "Alarm level"), h("dd", {}, inc.alarm_level ?? 1)),
    open && media ? media.incidentSection(inc, d.cameras) : null,
    open ? recommendationView(d) : null,
    h("h3", {}, "Assignments"),
    assignmentsView(inc),
    alertsView(d),
    h("h3", {}, "Notes"),
    h("ul", { class: "list" }, (inc.notes || []).map((n) => h("li", {}, h("time", { class: "muted" }, clock(n.at)),
      h("strong", {}, n.author), h("span", { class: "grow" }, n.text)))),
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      const text = $("#note-text").value.trim();
      if (text) incidentCommand("notes", { text }).then(() => { $("#note-text").value = ""; });
    } },
    h("label", { for: "note-text", class: "muted" }, "Note"),
    h("input", { id: "note-text", type: "text", maxlength: 10000, class: "grow" }),
    h("button", { type: "submit" }, "Add")),
    open ? h("form", { class: "row", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "end-reason", class: "muted" }, "Disposition / reason"),
      h("input", { id: "end-reason", type: "text", maxlength: 500 }),
      h("button", { type: "button", id: "close-incident", onclick: () => incidentCommand("close", { disposition: $("#end-reason").value }) }, "Close"),
      h("button", { type: "button", class: "danger", id: "cancel-incident", onclick: () => incidentCommand("cancel", { reason: $("#end-reason").value }) }, "Cancel"))
      : null,
    h("h3", {}, "Timeline"),
    h("ol", { class: "list timeline", "aria-label": "Timeline" }, (d.timeline || []).map((ev) => h("li", { dataset: { type: ev.type } },
      h("time", {}, clock(ev.at)), h("span", { class: "grow" }, describe(ev)), h("span", { class: "muted" }, ev.actor?.name || ""),
      ev.type === "recording.available" && ev.data?.url && media
        ? media.player(ev.data.recording_id, ev.data.url, `Play the ${ev.data.kind} recording of ${clock(ev.at)}`) : null))),
  );
  if ($("#note-text")) $("#note-text").value = draft.note;
  if ($("#end-reason")) $("#end-reason").value = draft.reason;
  if (hadFocus && document.getElementById(hadFocus)) document.getElementById(hadFocus).focus();
}

function describe(ev) {
  const d = ev.data || {};
  const unit = d.unit_id ? ` ${unitName(d.unit_id)}` : "";
  switch (ev.type) {
    case "incident.created": return `created: ${words(d.incident_type)}, P${d.priority}`;
    case "incident.status_changed": return `status ${d.from_status} → ${d.to_status}`;
    case "incident.note_added": return `note: ${d.text}`;
    case "incident.alert_linked": return `alert ${d.alert_id} linked`;
    case "incident.alerts_linked": return d.alert_ids.length === 1 ? `alert ${d.alert_ids[0]} linked`
      : `${d.alert_ids.length} alerts linked (${d.alert_ids[0]} …)`;
    case "call.started": return `call ${memberName(d.caller)} → ${memberName(d.callee)}`;
    case "call.ended": return `call ${words(d.state)}${d.duration_s ? `, ${duration(d.duration_s)}` : ""}${d.reason && d.reason !== "hangup" ? ` (${d.reason})` : ""}`;
    case "recording.available": return `${d.kind} recording${d.speaker ? ` of ${memberName(d.speaker)}` : ""}, ${duration(d.duration_s)}`;
    case "camera.attached": return `camera attached (${d.url ? new URL(d.url, location.href).host || d.url : ""})`;
    case "camera.detached": return "camera detached";
    case "incident.updated": return `updated${d.priority ? `: P${d.priority}` : ""}${d.incident_type ? ` ${words(d.incident_type)}` : ""}`;
    default: return `${words(ev.type.replace("assignment.", ""))}${unit}${d.reason ? ` (${d.reason})` : ""}`;
  }
}

function recommendationView(d) {
  const rec = d.rec;
  const available = [...S.units.values()].filter((u) => u.status === "available").sort((a, b) => a.call_sign.localeCompare(b.call_sign));
  return h("section", { "aria-labelledby": "rec-title" },
    h("div", { class: "row" },
      h("h3", { id: "rec-title", class: "spacer" }, "Recommendation"),
      h("button", { type: "button", onclick: () => loadRecommendation(), title: "Refresh (R)" }, "Refresh"),
      h("button", { type: "button", class: "primary", id: "dispatch-rec", disabled: !rec?.picks?.some((p) => !p.already_assigned), onclick: dispatchRecommendation },
        "Dispatch ", h("kbd", {}, "D"))),
    d.recError ? h("p", { class: "error" }, d.recError) : null,
    rec ? h("ul", { class: "list", id: "rec-picks" }, rec.picks.map((p, n) => h("li", { class: "pick" },
      h("label", {}, p.already_assigned ? h("span", { class: "status en_route" }, "assigned")
        : h("input", { type: "checkbox", name: "pick", checked: true, value: p.unit_id, "aria-describedby": `pick-reason-${n}` }),
        h("strong", {}, unitName(p.unit_id)), h("span", {}, p.capability || ""),
        h("span", { class: "muted" }, `${duration(p.eta_s)} · ${(p.distance_m / 1000).toFixed(1)} km · ${agencyName(p.agency_id)}`),
        p.mutual_aid ? h("span", { class: "status requested" }, "mutual aid") : null),
      h("span", { class: "reason", id: `pick-reason-${n}` }, p.reason))),
    rec.shortfalls.map((s) => h("li", { class: "shortfall" }, `Short: ${s.capability ?? ""} — ${s.reason}`)))
      : h("p", { class: "muted" }, d.recError ? "" : "Loading the recommendation…"),
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      const chosen = $("#choose-unit").value;
      if (chosen) dispatch([{ unit_id: chosen }]);
    } },
    h("label", { for: "choose-unit", class: "muted" }, "Or choose"),
    h("select", { id: "choose-unit" }, h("option", { value: "" }, "an available unit…"),
      available.map((u) => h("option", { value: u.id }, `${u.call_sign} (${[...u.capabilities].join(", ")}, ${agencyName(u.agency_id)})`))),
    h("button", { type: "submit" }, "Dispatch unit")));
}

function assignmentsView(inc) {
  const rows = inc.assignments || [];
  if (!rows.length) return h("p", { class: "muted" }, "No units assigned.");
  return h("ul", { class: "list", id: "assignments" }, rows.map((a) => {
    const unit = S.units.get(a.unit_id);
    const mine = unrestricted() || (unit && unit.agency_id === S.me.agency);
    const acked = ["acknowledged", "en_route", "on_scene", "cleared"].includes(a.status);
    return h("li", { dataset: { assignment: a.id, unit: a.unit_id } },
      h("strong", {}, unitName(a.unit_id)),
      h("span", { class: "muted" }, a.capability || ""),
      h("span", { class: `status ${a.status}`, "data-role": "assignment-status" }, words(a.status)),
      h("span", { class: "grow muted" }, a.status === "dispatched" && a.ack_due_at
        ? `awaiting acknowledgement (due ${clock(a.ack_due_at)})`
        : a.status === "requested" ? `awaiting ${agencyName(unit?.agency_id)}'s answer` : acked ? "acknowledged" : ""),
      a.status === "requested" && mine ? [
        h("button", { type: "button", class: "primary", onclick: () => answerAid(a.id, "accept") }, "Accept"),
        h("button", { type: "button", class: "danger", onclick: () => answerAid(a.id, "decline") }, "Decline")] : null,
      media?.enabled && LIVE_ASSIGNMENT.has(a.status)
        ? h("button", { type: "button", class: "call-btn", dataset: { call: a.unit_id }, onclick: () => media.placeCall(`unit:${a.unit_id}`, unitName(a.unit_id), inc.id),
          "aria-label": `Call ${unitName(a.unit_id)} about this incident` }, "Call")
        : null,
      ["dispatched", "acknowledged", "en_route"].includes(a.status)
        ? h("button", { type: "button", onclick: () => assignmentCommand(a.id, "cancel"), "aria-label": `Cancel ${unitName(a.unit_id)}` }, "✕")
        : null);
  }));
}

function alertsView(d) {
  if (!d.alerts?.length) return null;
  return [h("h3", {}, `Alerts (${d.alerts.length})`), h("ul", { class: "list", id: "incident-alerts" }, d.alerts.map((a) => h("li", {},
    h("time", { class: "muted" }, clock(a.received_at)),
    h("span", { class: "grow" }, `${a.report?.kind || ""} from ${a.source}${a.report?.headline ? ` — ${a.report.headline}` : ""}`),
    h("span", { class: "muted" }, a.report?.raw_format || a.content_type),
    h("button", { type: "button", onclick: () => showRaw(a.id) }, "View original"))))];
}

async function showRaw(alertId) {
  try {
    const response = await get(`/api/v1/alerts/${encodeURIComponent(alertId)}/raw`, { raw: true });
    const text = await response.text();
    const type = response.headers.get("Content-Type") || "";
    let pretty = text;
    if (type.includes("json")) {
      try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch { pretty = text; }
    }
    $("#raw-title").textContent = `Original payload of ${alertId} (${type.split(";")[0]})`;
    $("#raw-body").textContent = pretty;
    $("#raw-dialog").showModal();
  } catch (err) {
    failed(err, "Cannot show the payload");
  }
}

// -- unit board ----------------------------------------------------------------------------------

const renderUnitsSoon = debounce(() => renderUnits(), 150);

function renderUnits() {
  const panel = $("#panel-units");
  if (panel.hidden) return;
  const byAgency = new Map();
  for (const u of [...S.units.values()].sort((a, b) => a.call_sign.localeCompare(b.call_sign, undefined, { numeric: true }))) {
    if (!byAgency.has(u.agency_id)) byAgency.set(u.agency_id, []);
    byAgency.get(u.agency_id).push(u);
  }
  const focused = document.activeElement?.id;
  clear(panel, [...byAgency].map(([agencyId, units]) => h("table", { class: "units-table" },
    h("caption", {}, `${agencyName(agencyId)} — ${units.filter((u) => u.status === "available").length}/${units.length} available`),
    h("thead", {}, h("tr", {}, h("th", {}, "Unit"), h("th", {}, "Can"), h("th", {}, "Status"), h("th", {}, "For"), h("th", {}, "Incident"), media?.enabled ? h("th", {}, "Voice") : null)),
    h("tbody", {}, units.map((u) => h("tr", { dataset: { unit: u.id } },
      h("td", {}, h("button", { type: "button", onclick: () => showUnit(u.id), "aria-label": `Show ${u.call_sign} on the map` }, u.call_sign)),
      h("td", { class: "muted" }, [...u.capabilities].join(" ")),
      h("td", {}, canSupervise()
        ? h("select", { id: `status-${u.id}`, "aria-label": `Status of ${u.call_sign}`, onchange: (e) => changeStatus(u.id, e.target.value) },
          [...new Set([u.status, ...UNIT_STATUSES])].map((s) => h("option", { value: s, selected: s === u.status }, words(s))))
        : h("span", { class: `status ${u.status}` }, words(u.status))),
      h("td", {}, S.statusSince.get(u.id) ? h("span", { dataset: { since: S.statusSince.get(u.id) } },
        duration((Date.now() - Date.parse(S.statusSince.get(u.id))) / 1000)) : "—"),
      h("td", {}, incidentOf(u) ? h("button", { type: "button", onclick: () => select(incidentOf(u)), "aria-label": `Open incident ${incidentOf(u)}` }, short(incidentOf(u))) : ""),
      media?.enabled ? h("td", {}, h("button", { type: "button", class: "call-btn", dataset: { call: u.id },
        onclick: () => media.placeCall(`unit:${u.id}`, u.call_sign), "aria-label": `Call ${u.call_sign}` }, "Call")) : null))))));
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}

function incidentOf(unit) {
  if (!unit.assignment_id) return null;
  for (const inc of S.incidents.values()) if ((inc.assignments || []).some((a) => a.id === unit.assignment_id)) return inc.id;
  return null;
}

async function changeStatus(unitId, status) {
  try {
    const u = await patch(`/api/v1/units/${encodeURIComponent(unitId)}`, { status });
    S.units.set(u.id, u);
    map.updateUnit(mapUnit(u));
    toast(`${u.call_sign} is now ${words(u.status)}`);
  } catch (err) {
    failed(err, "Status not changed");
    renderUnits();
  }
}

function showUnit(id) {
  const u = S.units.get(id);
  if (u?.position) map.centerOn(u.position.lon, u.position.lat);
  const inc = u && incidentOf(u);
  if (inc) select(inc);
  else toast(`${u?.call_sign || id}: ${words(u?.status || "unknown")}`);
}

// -- tabs, chat badges, emergency ------------------------------------------------------------------

function tab(name) {
  for (const t of ["incident", "units", "chat"]) {
    $(`#tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`#panel-${t}`).hidden = t !== name;
  }
  if (name === "units") renderUnits();
  if (name === "chat") chat.shown();
}

function showUnread(count) {
  const badge = $("#chat-unread");
  badge.hidden = count === 0;
  badge.textContent = String(count);
  badge.setAttribute("aria-label", `${count} unread`);
}

function showEmergency(text) {
  const banner = $("#emergency-banner");
  banner.hidden = !text;
  banner.textContent = text ? `EMERGENCY: ${text}` : "";
  if (text) setTimeout(() => { banner.hidden = true; }, 30000);
}

// -- create incident -----------------------------------------------------------------------------

function openCreate() {
  const dialog = $("#create-dialog");
  if (dialog.open) return;
  S.create = S.create || { location: null };
  clear($("#create-type"), S.types.map((t) => h("option", { value: t }, words(t))));
  $("#create-error").textContent = "";
  dialog.showModal();
  $("#create-type").focus();
}

const suggest = debounce(async () => {
  const q = $("#create-address").value.trim();
  const list = $("#create-suggest-list");
  if (q.length < 3) {
    clear(list);
    return;
  }
  try {
    const { results } = await get(`/api/v1/geo/geocode?q=${encodeURIComponent(q)}&limit=6`);
    clear(list, results.map((r) => h("li", {}, h("button", { type: "button", onclick: () => {
      $("#create-address").value = r.label;
      S.create.location = { lat: r.lat, lon: r.lon };
      $("#create-location").textContent = `${r.lat.toFixed(5)}, ${r.lon.toFixed(5)}`;
      clear(list);
      $("#create-submit").focus();
    } }, r.label))));
  } catch {
    clear(list);
  }
}, 200);

function startPick() {
  $("#create-dialog").close();
  map.setPicking(true);
  $("#map-hint").hidden = false;
  $("#map").focus();
}

function stopPick() {
  map.setPicking(false);
  $("#map-hint").hidden = true;
}

async function picked(lat, lon) {
  S.create = S.create || {};
  S.create.location = { lat, lon };
  stopPick();
  $("#create-location").textContent = `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
  try {
    const near = await get(`/api/v1/geo/reverse?lat=${lat}&lon=${lon}`);
    $("#create-address").value = near?.label || "";
  } catch {
    $("#create-address").value = "";
  }
  openCreate();
}

async function submitCreate(event) {
  event.preventDefault();
  const body = { type: $("#create-type").value, priority: Number($("#create-priority").value) };
  const address = $("#create-address").value.trim();
  if (S.create?.location) body.location = S.create.location;
  if (address) body.address = address;
  if (!body.location && !body.address) {
    $("#create-error").textContent = "Give an address or pick the place on the map.";
    return;
  }
  try {
    const inc = await post("/api/v1/incidents", body);
    S.incidents.set(inc.id, inc);
    $("#create-dialog").close();
    S.create = null;
    $("#create-address").value = "";
    $("#create-location").textContent = "";
    select(inc.id);
    toast(`Incident ${inc.number} created`);
  } catch (err) {
    $("#create-error").textContent = err.problem?.errors?.[0]?.message || err.message;
  }
}

// -- keyboard ------------------------------------------------------------------------------------

function move(step) {
  const list = sortedIncidents();
  if (!list.length) return;
  const at = list.findIndex((i) => i.id === S.selected);
  const next = at < 0 ? (step > 0 ? 0 : list.length - 1) : (at + step + list.length) % list.length;
  select(list[next].id);
  document.querySelector(`#queue [data-incident="${CSS.escape(list[next].id)}"]`)?.focus();
}

function keys(e) {
  if (e.key === "Escape" && map?.picking) {
    stopPick();
    openCreate();
    return;
  }
  if ($("#app-view").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.closest?.("input, textarea, select, dialog")) return;
  const actions = {
    n: openCreate, j: () => move(1), k: () => move(-1), d: dispatchRecommendation, r: () => loadRecommendation(),
    i: () => tab("incident"), u: () => tab("units"), c: () => { tab("chat"); chat.focus(); }, m: () => $("#map").focus(),
    "?": () => $("#help-dialog").showModal(),
  };
  const action = actions[e.key.toLowerCase()] || actions[e.key];
  if (action) {
    e.preventDefault();
    action();
  }
}

// -- wiring --------------------------------------------------------------------------------------

function wire() {
  $("#login-form").addEventListener("submit", login);
  $("#logout-btn").addEventListener("click", logout);
  $("#new-incident-btn").addEventListener("click", openCreate);
  $("#help-btn").addEventListener("click", () => $("#help-dialog").showModal());
  for (const t of ["incident", "units", "chat"]) $(`#tab-${t}`).addEventListener("click", () => tab(t));
  $("#create-form").addEventListener("submit", submitCreate);
  $("#create-cancel").addEventListener("click", () => { $("#create-dialog").close(); S.create = null; });
  $("#create-pick").addEventListener("click", startPick);
  $("#create-address").addEventListener("input", () => { S.create.location = null; $("#create-location").textContent = ""; suggest(); });
  document.addEventListener("keydown", keys);
  setInterval(tickTimers, 1000);
  setInterval(() => { if (live?.status === "online") updateRoutes(); }, 10000);
  setUnauthorizedHandler(() => showLogin("Your session has ended; log in again."));
}

async function boot() {
  // A handle for people debugging in the browser's console, and for the browser tests.
  window.icp = { get map() { return map; }, get media() { return media; }, state: S };
  wire();
  try {
    await start(await get("/api/v1/console/config", { quiet401: true }));
  } catch {
    showLogin();
  }
}

boot();

// The city map, drawn on a canvas from ICP's own vector layers: roads (GET /api/v1/geo/roads),
// jurisdictions and zones (GET /api/v1/geo/areas), incidents, units and routes. Web Mercator,
// drag to pan, wheel or +/- to zoom, arrow keys to pan. An optional raster tile URL is drawn
// underneath (configuration: console_tile_url); nothing is fetched from elsewhere otherwise.

import { drawn } from "./perf.js";

const TILE = 256;
export const PRIORITY_COLOURS = { 1: "#d32f2f", 2: "#ef6c00", 3: "#f9a825", 4: "#1565c0", 5: "#607d8b" };
export const STATUS_COLOURS = {
  available: "#2e7d32", dispatched: "#8e24aa", en_route: "#1e88e5", on_scene: "#c62828",
  transporting: "#6d4c41", at_hospital: "#6d4c41", out_of_service: "#757575", off_duty: "#9e9e9e",
};
const AREA_COLOURS = { jurisdiction: "rgba(21,101,192,0.025)", zone: "rgba(46,125,50,0.06)",
  beat: "rgba(142,36,170,0.05)", geofence: "rgba(198,40,40,0.06)" };
const ROAD_WIDTH = { motorway: 4, trunk: 3.5, primary: 3, secondary: 2.5, tertiary: 2, residential: 1.4 };

function worldX(lon) {
  return ((lon + 180) / 360) * TILE;
}
function worldY(lat) {
  const s = Math.sin((lat * Math.PI) / 180);
  return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE;
}
function lonOf(x) {
  return (x / TILE) * 360 - 180;
}
function latOf(y) {
  const n = Math.PI - (2 * Math.PI * y) / TILE;
  return (180 / Math.PI) * Math.atan(0.5 * (Math.exp(n) - Math.exp(-n)));
}

export class CityMap {
  constructor(canvas, { onIncident, onUnit, onPick, tileUrl } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.cb = { onIncident, onUnit, onPick };
    this.tileUrl = tileUrl || null;
    this.tiles = new Map();
    this.center = { x: worldX(24.944), y: worldY(60.17) };
    this.zoom = 15;
    this.roads = [];
    this.areas = [];
    this.incidents = [];
    this.units = new Map(); // id -> {id, callSign, status, kind, from, to, t0}
    this.routes = [];
    this.picking = false;
    this.pickMarker = null;
    this.selected = null;
    this.dirty = true;
    this.installInput();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this.resize();
    const frame = (now) => {
      this.now = now;
      if (this.dirty || this.animating(now)) {
        const started = performance.now();
        this.draw(now);
        drawn(performance.now() - started);
      }
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }

  resize() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.width = Math.max(1, box.width);
    this.height = Math.max(1, box.height);
    this.canvas.width = Math.round(this.width * ratio);
    this.canvas.height = Math.round(this.height * ratio);
    this.canvas.style.width = `${this.width}px`;
    this.canvas.style.height = `${this.height}px`;
    this.ratio = ratio;
    this.dirty = true;
  }

  get scale() {
    return 2 ** this.zoom;
  }

  toScreen(lon, lat) {
    return [
      (worldX(lon) - this.center.x) * this.scale + this.width / 2,
      (worldY(lat) - this.center.y) * this.scale + this.height / 2,
    ];
  }

  toLonLat(sx, sy) {
    const x = this.center.x + (sx - this.width / 2) / this.scale;
    const y = this.center.y + (sy - this.height / 2) / this.scale;
    return [lonOf(x), latOf(y)];
  }

  bbox() {
    const [w, n] = this.toLonLat(0, 0);
    const [e, s] = this.toLonLat(this.width, this.height);
    return [w, s, e, n];
  }

  fit(minLon, minLat, maxLon, maxLat) {
    if (!(maxLon > minLon && maxLat > minLat)) return;
    this.center = { x: (worldX(minLon) + worldX(maxLon)) / 2, y: (worldY(minLat) + worldY(maxLat)) / 2 };
    const spanX = worldX(maxLon) - worldX(minLon);
    const spanY = worldY(minLat) - worldY(maxLat);
    this.zoom = Math.min(18, Math.log2(Math.min(this.width / spanX, this.height / spanY) * 0.92));
    this.dirty = true;
  }

  centerOn(lon, lat) {
    this.center = { x: worldX(lon), y: worldY(lat) };
    this.dirty = true;
  }

  zoomBy(delta, sx = this.width / 2, sy = this.height / 2) {
    const [lon, lat] = this.toLonLat(sx, sy);
    this.zoom = Math.max(3, Math.min(19, this.zoom + delta));
    const [nx, ny] = this.toScreen(lon, lat);
    this.center.x += (nx - sx) / this.scale;
    this.center.y += (ny - sy) / this.scale;
    this.dirty = true;
  }

  panBy(dx, dy) {
    this.center.x += dx / this.scale;
    this.center.y += dy / this.scale;
    this.dirty = true;
  }

  installInput() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, moved: false };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (drag.moved || Math.abs(dx) + Math.abs(dy) > 4) {
        drag.moved = true;
        this.panBy(-dx, -dy);
        drag.x = e.clientX;
        drag.y = e.clientY;
      }
    });
    c.addEventListener("pointerup", (e) => {
      const wasDrag = drag?.moved;
      drag = null;
      if (wasDrag) return;
      const r = c.getBoundingClientRect();
      this.click(e.clientX - r.left, e.clientY - r.top);
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      this.zoomBy(e.deltaY < 0 ? 0.5 : -0.5, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    c.addEventListener("keydown", (e) => {
      const step = 80;
      const keys = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (keys[e.key]) {
        this.panBy(...keys[e.key]);
        e.preventDefault();
        e.stopPropagation();
      } else if (e.key === "+" || e.key === "=") {
        this.zoomBy(0.5);
        e.stopPropagation();
      } else if (e.key === "-") {
        this.zoomBy(-0.5);
        e.stopPropagation();
      }
    });
  }

  click(sx, sy) {
    if (this.picking) {
      const [lon, lat] = this.toLonLat(sx, sy);
      this.pickMarker = { lon, lat };
      this.dirty = true;
      this.cb.onPick?.(lat, lon);
      return;
    }
    let best = null;
    for (const u of this.units.values()) {
      const p = this.unitAt(u, this.now || performance.now());
      if (!p) continue;
      const [x, y] = this.toScreen(p.lon, p.lat);
      const d = Math.hypot(x - sx, y - sy);
      if (d < 11 && (!best || d < best.d)) best = { d, kind: "unit", id: u.id };
    }
    for (const i of this.incidents) {
      const [x, y] = this.toScreen(i.lon, i.lat);
      const d = Math.hypot(x - sx, y - sy);
      if (d < 14 && (!best || d < best.d - 3)) best = { d, kind: "incident", id: i.id };
    }
    if (best?.kind === "incident") this.cb.onIncident?.(best.id);
    else if (best?.kind === "unit") this.cb.onUnit?.(best.id);
  }

  setPicking(on) {
    this.picking = on;
    this.canvas.classList.toggle("picking", on);
    if (!on) this.pickMarker = null;
    this.dirty = true;
  }

  setRoads(geojson) {
    this.roads = (geojson?.features || []).filter((f) => f.geometry?.type === "LineString");
    this.roads.sort((a, b) => (ROAD_WIDTH[a.properties?.class] || 1) - (ROAD_WIDTH[b.properties?.class] || 1));
    this.dirty = true;
  }

  setAreas(geojson) {
    this.areas = (geojson?.features || []).filter((f) => f.geometry);
    this.dirty = true;
  }

  setIncidents(list) {
    this.incidents = list;
    this.dirty = true;
  }

  setRoutes(list) {
    this.routes = list;
    this.dirty = true;
  }

  setSelected(id) {
    this.selected = id;
    this.dirty = true;
  }

  // Units: {id, callSign, status, kind, lat, lon}; a moved unit glides to its new place.
  updateUnit(u) {
    const now = performance.now();
    const known = this.units.get(u.id);
    if (!known) {
      const at = u.lat !== undefined && u.lat !== null ? { lat: u.lat, lon: u.lon } : null;
      this.units.set(u.id, { ...u, from: at, to: at, t0: now });
    } else {
      const moved = u.lat !== undefined && u.lat !== null && (!known.to || known.to.lat !== u.lat || known.to.lon !== u.lon);
      const from = moved ? this.unitAt(known, now) : known.from;
      Object.assign(known, u, moved ? { from: from || { lat: u.lat, lon: u.lon }, to: { lat: u.lat, lon: u.lon }, t0: now } : {});
    }
    this.dirty = true;
  }

  removeMissingUnits(ids) {
    for (const id of [...this.units.keys()]) if (!ids.has(id)) this.units.delete(id);
    this.dirty = true;
  }

  unitAt(u, now) {
    if (!u.to) return null;
    if (!u.from) return u.to;
    const f = Math.min(1, (now - u.t0) / 1500);
    return { lat: u.from.lat + (u.to.lat - u.from.lat) * f, lon: u.from.lon + (u.to.lon - u.from.lon) * f };
  }

  animating(now) {
    if (this.incidents.some((i) => i.pulsing)) return true;
    for (const u of this.units.values()) if (u.from && now - u.t0 < 1600) return true;
    return false;
  }

  draw(now) {
    this.dirty = false;
    const ctx = this.ctx;
    ctx.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    ctx.fillStyle = "#eef0ea";
    ctx.fillRect(0, 0, this.width, this.height);
    if (this.tileUrl) this.drawTiles(ctx);
    this.drawAreas(ctx);
    this.drawRoads(ctx);
    this.drawRoutes(ctx);
    this.drawIncidents(ctx, now);
    this.drawUnits(ctx, now);
    if (this.pickMarker) {
      const [x, y] = this.toScreen(this.pickMarker.lon, this.pickMarker.lat);
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(x - 9, y);
      ctx.lineTo(x + 9, y);
      ctx.moveTo(x, y - 9);
      ctx.lineTo(x, y + 9);
      ctx.stroke();
    }
  }

  drawTiles(ctx) {
    const z = Math.max(0, Math.min(19, Math.round(this.zoom)));
    const factor = 2 ** (this.zoom - z);
    const size = TILE * factor;
    const cx = this.center.x * 2 ** z;
    const cy = this.center.y * 2 ** z;
    const minX = Math.floor((cx - this.width / 2 / factor) / TILE);
    const maxX = Math.floor((cx + this.width / 2 / factor) / TILE);
    const minY = Math.floor((cy - this.height / 2 / factor) / TILE);
    const maxY = Math.floor((cy + this.height / 2 / factor) / TILE);
    for (let tx = minX; tx <= maxX; tx++) {
      for (let ty = minY; ty <= maxY; ty++) {
        if (ty < 0 || ty >= 2 ** z) continue;
        const key = `${z}/${tx}/${ty}`;
        let img = this.tiles.get(key);
        if (!img) {
          img = new Image();
          img.onload = () => { this.dirty = true; };
          img.src = this.tileUrl.replace("{z}", z).replace("{x}", ((tx % 2 ** z) + 2 ** z) % 2 ** z).replace("{y}", ty);
          this.tiles.set(key, img);
          if (this.tiles.size > 400) this.tiles.delete(this.tiles.keys().next().value);
        }
        if (img.complete && img.naturalWidth) {
          const sx = (tx * TILE - cx) * factor + this.width / 2;
          const sy = (ty * TILE - cy) * factor + this.height / 2;
          ctx.drawImage(img, sx, sy, size + 0.5, size + 0.5);
        }
      }
    }
  }

  pathOf(ctx, ring) {
    ring.forEach(([lon, lat], n) => {
      const [x, y] = this.toScreen(lon, lat);
      if (n === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
  }

  drawAreas(ctx) {
    const drawn = new Set(); // agencies often share one jurisdiction: draw each shape once
    for (const f of this.areas) {
      const kind = f.properties?.kind || "zone";
      const key = `${kind}:${JSON.stringify(f.geometry.coordinates).slice(0, 200)}`;
      if (drawn.has(key)) continue;
      drawn.add(key);
      const polygons = f.geometry.type === "Polygon" ? [f.geometry.coordinates]
        : f.geometry.type === "MultiPolygon" ? f.geometry.coordinates : [];
      ctx.beginPath();
      for (const poly of polygons) for (const ring of poly) { this.pathOf(ctx, ring); ctx.closePath(); }
      ctx.fillStyle = AREA_COLOURS[kind] || AREA_COLOURS.zone;
      ctx.fill("evenodd");
      ctx.strokeStyle = kind === "jurisdiction" ? "rgba(21,101,192,0.55)" : "rgba(46,125,50,0.55)";
      ctx.setLineDash(kind === "jurisdiction" ? [] : [6, 4]);
      ctx.lineWidth = kind === "jurisdiction" ? 2 : 1.2;
      ctx.stroke();
      ctx.setLineDash([]);
      if (kind === "zone" && this.zoom > 14 && polygons[0]) {
        const ring = polygons[0][0];
        const [x, y] = this.toScreen(ring[0][0], ring[0][1]);
        ctx.fillStyle = "rgba(46,125,50,0.8)";
        ctx.font = "11px system-ui, sans-serif";
        ctx.fillText(f.properties?.name || f.id || "", x + 4, y + 13);
      }
    }
  }

  drawRoads(ctx) {
    const k = Math.max(0.4, Math.min(2.2, (this.zoom - 12) / 3));
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const f of this.roads) {
      const width = (ROAD_WIDTH[f.properties?.class] || 1) * k;
      ctx.beginPath();
      this.pathOf(ctx, f.geometry.coordinates);
      ctx.lineWidth = width + 1.6;
      ctx.strokeStyle = "#c9c9c0";
      ctx.stroke();
      ctx.strokeStyle = width > 3 ? "#f6dca0" : "#ffffff";
      ctx.lineWidth = width;
      ctx.stroke();
    }
  }

  drawRoutes(ctx) {
    ctx.setLineDash([7, 5]);
    ctx.lineWidth = 3;
    for (const r of this.routes) {
      ctx.beginPath();
      this.pathOf(ctx, r.coordinates);
      ctx.strokeStyle = "rgba(30,136,229,0.85)";
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  drawIncidents(ctx, now) {
    for (const i of this.incidents) {
      const [x, y] = this.toScreen(i.lon, i.lat);
      const colour = PRIORITY_COLOURS[i.priority] || PRIORITY_COLOURS[5];
      if (i.pulsing) {
        const phase = ((now || 0) % 1400) / 1400;
        ctx.beginPath();
        ctx.arc(x, y, 9 + phase * 16, 0, Math.PI * 2);
        ctx.strokeStyle = colour;
        ctx.globalAlpha = 1 - phase;
        ctx.lineWidth = 3;
        ctx.stroke();
        ctx.globalAlpha = 1;
      }
      ctx.beginPath();
      ctx.arc(x, y, i.id === this.selected ? 11 : 9, 0, Math.PI * 2);
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.lineWidth = i.id === this.selected ? 3 : 2;
      ctx.strokeStyle = i.id === this.selected ? "#000" : "#fff";
      ctx.stroke();
      ctx.fillStyle = "#fff";
      ctx.font = "bold 10px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText(String(i.priority), x, y + 3.5);
      ctx.textAlign = "left";
    }
  }

  drawUnits(ctx, now) {
    ctx.font = "11px system-ui, sans-serif";
    for (const u of this.units.values()) {
      const p = this.unitAt(u, now || performance.now());
      if (!p) continue;
      const [x, y] = this.toScreen(p.lon, p.lat);
      ctx.beginPath();
      const r = 6;
      switch (u.kind) {
        case "ems": ctx.arc(x, y, r, 0, Math.PI * 2); break;
        case "police": ctx.moveTo(x, y - r - 1); ctx.lineTo(x + r + 1, y + r); ctx.lineTo(x - r - 1, y + r); ctx.closePath(); break;
        case "utility": ctx.moveTo(x, y - r - 1); ctx.lineTo(x + r + 1, y); ctx.lineTo(x, y + r + 1); ctx.lineTo(x - r - 1, y); ctx.closePath(); break;
        default: ctx.rect(x - r, y - r, 2 * r, 2 * r);
      }
      ctx.fillStyle = STATUS_COLOURS[u.status] || "#333";
      ctx.fill();
      ctx.lineWidth = u.partner ? 2.5 : 1.5;
      ctx.strokeStyle = u.partner ? "#ffeb3b" : "#fff";
      ctx.stroke();
      if (this.zoom > 13.5) {
        ctx.lineWidth = 3;
        ctx.strokeStyle = "rgba(255,255,255,0.9)";
        ctx.strokeText(u.callSign, x + 9, y + 4);
        ctx.fillStyle = "#1b1b1b";
        ctx.fillText(u.callSign, x + 9, y + 4);
      }
    }
  }
}

// The gateway link (GET /ws, docs/protocol.md): hello on the session cookie, resume from the last seq
// seen, heartbeats, and reconnection with a jittered backoff. The owner hears about everything
// through callbacks: onStatus("connecting" | "online" | "offline"), onWelcome(welcome, resumed),
// onEvent(frame), onPositions(units), onResync(seq), onFrame(frame).

import { ApiError, get } from "./api.js";

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 15000;

export class Live {
  constructor(handlers) {
    this.h = handlers;
    this.ws = null;
    this.lastSeq = null; // the highest event seq processed; null until the first welcome
    this.backoff = MIN_BACKOFF_MS;
    this.stopped = false;
    this.nextId = 1;
    this.pending = new Map();
    this.watchdog = null;
    this.heartbeatMs = 20000;
    this.status = "offline";
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchdog);
    if (this.ws) this.ws.close(1000, "logged out");
    this.ws = null;
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.h.onStatus?.(status);
  }

  async connect() {
    if (this.stopped) return;
    this.setStatus(this.status === "online" ? "offline" : this.status === "offline" ? "connecting" : this.status);
    // The socket authenticates with the session cookie the browser sends with the upgrade (the
    // hello carries no token); checking the session first tells an expired login (show the login
    // form) from a server that is away (retry).
    try {
      await get("/api/v1/session");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return; // the app shows the login
      this.retry();
      return;
    }
    if (this.stopped) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { op: "hello", protocol: 1, client: { app: "icp-console", version: "1" } };
      if (this.lastSeq !== null) hello.resume_from = this.lastSeq;
      ws.send(JSON.stringify(hello));
      this.resuming = this.lastSeq !== null;
      this.send({ op: "subscribe", topics: ["events", "positions"] });
    };
    ws.onmessage = (message) => this.receive(message.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.watchdog);
      for (const { reject } of this.pending.values()) reject(new Error("connection lost"));
      this.pending.clear();
      this.setStatus("offline");
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    this.setStatus("offline");
    const wait = this.backoff * (0.5 + Math.random() * 0.5);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  armWatchdog() {
    clearTimeout(this.watchdog);
    // No frame for three heartbeats: the link is dead even if the socket looks open.
    this.watchdog = setTimeout(() => this.ws?.close(4408, "heartbeat lost"), this.heartbeatMs * 3);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      if (frame.op !== "pong" && frame.op !== "ping" && frame.id === undefined) frame.id = `c${Date.now()}-${this.nextId++}`;
      this.ws.send(JSON.stringify(frame));
      return frame.id;
    }
    return null;
  }

  request(op, fields) {
    return new Promise((resolve, reject) => {
      const id = this.send({ op, ...fields });
      if (id === null) {
        reject(new Error("not connected"));
        return;
      }
      this.pending.set(id, { resolve, reject });
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    this.armWatchdog();
    switch (frame.op) {
      case "welcome":
        this.heartbeatMs = (frame.heartbeat_s || 20) * 1000;
        this.backoff = MIN_BACKOFF_MS;
        this.armWatchdog();
        if (this.lastSeq === null) this.lastSeq = frame.seq;
        this.setStatus("online");
        this.h.onWelcome?.(frame, this.resuming);
        break;
      case "event":
        if (typeof frame.seq === "number") {
          if (this.lastSeq !== null && frame.seq <= this.lastSeq) break; // seen already
          this.lastSeq = frame.seq;
        }
        this.h.onEvent?.(frame);
        break;
      case "positions":
        this.h.onPositions?.(frame.units || []);
        break;
      case "resync":
        this.lastSeq = frame.seq;
        this.h.onResync?.(frame.seq);
        break;
      case "ping":
        this.send({ op: "pong", t: frame.t });
        break;
      case "ok":
      case "error": {
        const waiting = this.pending.get(frame.ref);
        if (waiting) {
          this.pending.delete(frame.ref);
          if (frame.op === "ok") waiting.resolve(frame);
          else waiting.reject(Object.assign(new Error(frame.message || frame.code), { code: frame.code }));
        }
        break;
      }
      default:
        break;
    }
    this.h.onFrame?.(frame);
  }
}

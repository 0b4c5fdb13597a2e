// The chat panel: incident and agency channels (docs/messaging.md), unread counts, emergency
// messages. History, sending, read cursors and acknowledgements go over REST as the signed-in
// user; new messages arrive live as `message` frames on the gateway.

import { ApiError, get, post } from "./api.js";
import { $, clear, clock, h } from "./dom.js";

const ACKED_KEY = "icp.console.acked";

export class Chat {
  constructor(panel, hooks) {
    this.panel = panel;
    this.hooks = hooks;
    this.channels = new Map(); // id -> {id, kind, name, writable, read, messages: Map(seq -> message), unread}
    this.current = null;
    this.unavailable = false;
    this.acked = new Set(JSON.parse(sessionStorage.getItem(ACKED_KEY) || "[]"));
    this.reloadTimer = null;
    this.render();
  }

  get member() {
    const me = this.hooks.me();
    return me ? `${me.kind}:${me.id}` : "";
  }

  visible() {
    return !this.panel.hidden;
  }

  async connected() {
    await this.loadChannels();
  }

  async loadChannels() {
    let list;
    try {
      ({ channels: list } = await get("/api/v1/channels"));
    } catch (err) {
      this.unavailable = err instanceof ApiError && (err.status === 404 || err.status === 501 || err.status === 503);
      this.render();
      return;
    }
    this.unavailable = false;
    for (const c of list) {
      const known = this.channels.get(c.id);
      if (known) Object.assign(known, { name: c.name, writable: c.writable, read: Math.max(known.read, c.read || 0) });
      else this.channels.set(c.id, { ...c, read: c.read || 0, messages: new Map(), unread: 0, loaded: false });
    }
    await Promise.all(list.filter((c) => (c.last_seq || 0) > (c.read || 0)).map((c) => this.loadHistory(c.id)));
    if (!this.current || !this.channels.has(this.current)) this.current = this.defaultChannel();
    this.recount();
    this.render();
  }

  defaultChannel() {
    const ids = [...this.channels.keys()];
    return ids.find((id) => id.startsWith("agency:")) || ids[0] || null;
  }

  async loadHistory(id) {
    const ch = this.channels.get(id);
    if (!ch) return;
    try {
      const { messages } = await get(`/api/v1/channels/${encodeURIComponent(id)}/messages?limit=50`);
      for (const m of messages) {
        ch.messages.set(m.seq, m);
        if (m.acked_at) this.rememberAck(id, m.seq);
      }
      ch.loaded = true;
    } catch {
      // the channel may have closed to us meanwhile
    }
  }

  recount() {
    let total = 0;
    for (const ch of this.channels.values()) {
      ch.unread = [...ch.messages.values()].filter((m) => m.seq > ch.read && m.sender?.member !== this.member).length;
      if (ch.id === this.current && this.visible()) ch.unread = 0;
      total += ch.unread;
    }
    this.hooks.onUnread(total);
  }

  onFrame(frame) {
    if (frame.op === "message") this.add(frame);
  }

  onEvent() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.loadChannels(), 500);
  }

  add(m) {
    let ch = this.channels.get(m.channel);
    if (!ch) {
      ch = { id: m.channel, name: m.channel, writable: true, read: 0, messages: new Map(), unread: 0, loaded: false };
      this.channels.set(m.channel, ch);
      this.onEvent(); // learn its name and cursors
    }
    if (ch.messages.has(m.seq)) return;
    ch.messages.set(m.seq, m);
    if (m.priority === "emergency" && m.sender?.member !== this.member && !this.acked.has(`${m.channel}#${m.seq}`)) {
      this.hooks.onEmergency(`${m.sender?.name || "?"}: ${m.text}`);
    }
    if (ch.id === this.current && this.visible()) this.markRead(ch);
    this.recount();
    this.render();
  }

  shown() {
    const ch = this.channels.get(this.current);
    if (ch) {
      if (!ch.loaded) this.loadHistory(ch.id).then(() => this.render());
      this.markRead(ch);
    }
    this.recount();
    this.render();
  }

  focus() {
    $("#chat-input", this.panel)?.focus();
  }

  async open(id) {
    if (!this.channels.has(id)) await this.loadChannels();
    if (!this.channels.has(id)) {
      this.hooks.toast(`You are not a member of ${id}`);
      return;
    }
    this.current = id;
    this.shown();
  }

  async markRead(ch) {
    const last = Math.max(0, ...ch.messages.keys());
    if (last <= ch.read) return;
    ch.read = last;
    try {
      await post(`/api/v1/channels/${encodeURIComponent(ch.id)}/receipts`, { delivered: last, read: last });
    } catch {
      // cursors are best effort; the next read moves them again
    }
  }

  rememberAck(channel, seq) {
    this.acked.add(`${channel}#${seq}`);
    sessionStorage.setItem(ACKED_KEY, JSON.stringify([...this.acked].slice(-500)));
  }

  async ack(m) {
    try {
      await post(`/api/v1/channels/${encodeURIComponent(m.channel)}/messages/${m.seq}/ack`, {});
      this.rememberAck(m.channel, m.seq);
      this.hooks.onEmergency("");
      this.render();
    } catch (err) {
      this.hooks.toast(`Not acknowledged: ${err.message}`);
    }
  }

  async send(text, emergency) {
    const ch = this.channels.get(this.current);
    if (!ch || !text.trim()) return false;
    const clientId = `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    try {
      const result = await post(`/api/v1/channels/${encodeURIComponent(ch.id)}/messages`,
        { text, priority: emergency ? "emergency" : "normal", client_id: clientId });
      this.add({ ...result.message, channel: ch.id });
      this.markRead(ch);
      return true;
    } catch (err) {
      this.hooks.toast(`Message not sent: ${err.message}`);
      return false;
    }
  }

  label(ch) {
    if (ch.id.startsWith("incident:")) {
      const inc = this.hooks.incidents().get(ch.id.slice(9));
      return inc ? `#${inc.number} ${inc.incident_type.replaceAll("_", " ")}` : ch.name || ch.id;
    }
    if (ch.id.startsWith("agency:")) return this.hooks.agencyName(ch.id.slice(7));
    return ch.name || ch.id;
  }

  render() {
    const focused = document.activeElement?.id === "chat-input";
    const draft = $("#chat-input", this.panel)?.value || "";
    if (this.unavailable) {
      clear(this.panel, h("p", { class: "empty" }, "Messaging is not available on this server."));
      return;
    }
    const channels = [...this.channels.values()].sort((a, b) => (a.id.startsWith("agency:") ? 0 : 1) - (b.id.startsWith("agency:") ? 0 : 1)
      || a.id.localeCompare(b.id));
    const ch = this.channels.get(this.current);
    const messages = ch ? [...ch.messages.values()].sort((a, b) => a.seq - b.seq) : [];
    clear(this.panel,
      h("div", { class: "chat-channels", role: "group", "aria-label": "Channels" }, channels.length ? channels.map((c) => h("button", {
        type: "button", "aria-pressed": String(c.id === this.current), dataset: { channel: c.id },
        onclick: () => { this.current = c.id; this.shown(); },
      }, this.label(c), c.unread ? h("span", { class: "badge", "aria-label": `${c.unread} unread` }, c.unread) : null))
        : h("span", { class: "muted" }, "No channels yet.")),
      h("ol", { class: "chat-messages", id: "chat-messages", "aria-live": "polite", "aria-label": ch ? `Messages in ${this.label(ch)}` : "Messages" },
        messages.map((m) => h("li", { class: m.priority === "emergency" ? "emergency" : "", dataset: { seq: m.seq } },
          h("time", { class: "muted" }, `${clock(m.at)} `), h("span", { class: "author" }, `${m.sender?.name || "?"}: `),
          h("span", {}, m.text),
          m.priority === "emergency" && m.sender?.member !== this.member && !this.acked.has(`${m.channel}#${m.seq}`)
            ? h("button", { type: "button", class: "danger", onclick: () => this.ack({ ...m, channel: ch.id }) }, "Acknowledge") : null))),
      h("form", { class: "chat-form", onsubmit: async (e) => {
        e.preventDefault();
        const input = $("#chat-input", this.panel);
        const emergency = $("#chat-emergency", this.panel).checked;
        if (await this.send(input.value, emergency)) {
          $("#chat-input", this.panel).value = "";
          $("#chat-emergency", this.panel).checked = false;
        }
        $("#chat-input", this.panel)?.focus();
      } },
      h("label", { for: "chat-input", class: "muted" }, "Message"),
      h("input", { id: "chat-input", type: "text", maxlength: 4000, autocomplete: "off", disabled: !ch || ch.writable === false }),
      h("label", { class: "muted" }, h("input", { id: "chat-emergency", type: "checkbox" }), " emergency"),
      h("button", { type: "submit", disabled: !ch || ch.writable === false }, "Send")));
    const input = $("#chat-input", this.panel);
    if (input) input.value = draft;
    if (focused) input?.focus();
    const list = $("#chat-messages", this.panel);
    list.scrollTop = list.scrollHeight;
  }
}

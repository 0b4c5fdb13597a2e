// Voice and video in the console (docs/media.md; the ops and frames are in docs/protocol.md, "Media"):
// calls with units (placed from the unit board or an incident), the incoming-call prompt, the in-call
// bar, an incident's conference and its camera feeds, and push-to-talk on a talkgroup.
//
// The server terminates every peer: the console has one RTCPeerConnection with it per room, offers
// (`rtc.offer`) with the candidates it has gathered, and trickles any later ones (`rtc.candidate`).
// A browser without a microphone (or WebRTC) gets a message, not a broken console: it can still
// listen to a talkgroup and see the rest of the console.

import { ApiError, get } from "./api.js";
import { $, clear, duration, h } from "./dom.js";

const TALK_KINDS = new Set(["agency", "talkgroup", "incident"]);
const GATHER_MS = 2500; // how long an offer waits for host candidates before trickling the rest
const REQUEST_MS = 20000;

const isTextField = (el) => Boolean(el?.closest?.("input, textarea, select, [contenteditable], dialog"))
  || el?.isContentEditable;

class MicError extends Error {}

export class Media {
  constructor(hooks) {
    this.hooks = hooks; // live(), me(), toast(text), unitName(id), onTimeline(incidentId)
    this.webrtc = typeof RTCPeerConnection === "function" && Boolean(navigator.mediaDevices?.getUserMedia);
    this.enabled = false; // the server has media (GET /api/v1/media/ice answered)
    this.iceServers = [];
    this.ringTimeoutS = 30;
    this.rooms = new Map(); // room -> peer {room, pc, stream, remote, sink, video, camera, ...}
    this.call = null; // {id, room, state, direction, peer: {member, name}, incident, until, since}
    this.talk = { id: null, joined: false, floor: "idle", position: null, emergency: false, pressed: false };
    this.speakers = new Map(); // talkgroup -> {member, name, rank}
    this.conference = null; // {incident, room, participants, video, cameras}
    this.channels = [];
    this.audio = new Map(); // recording id -> <audio> (kept so a re-render does not stop playback)
    this.micProblem = null;
    this.tick = setInterval(() => this.renderCall(), 1000);
  }

  // -- set-up ------------------------------------------------------------------------------------

  async connected() {
    try {
      const ice = await get("/api/v1/media/ice");
      this.iceServers = ice.iceServers || [];
      if (ice.ring_timeout_s) this.ringTimeoutS = ice.ring_timeout_s;
      this.enabled = true;
    } catch (err) {
      this.enabled = false;
      if (!(err instanceof ApiError) || ![404, 501].includes(err.status)) this.enabled = true; // try anyway
    }
    try {
      const { channels } = await get("/api/v1/channels");
      this.channels = channels.filter((c) => TALK_KINDS.has(c.kind));
    } catch {
      this.channels = [];
    }
    // Media does not survive the link: the server left our rooms when the old socket closed.
    for (const room of [...this.rooms.keys()]) this.closePeer(room);
    if (this.call) this.endCall("the connection was lost");
    this.talk = { ...this.talk, joined: false, floor: "idle", pressed: false };
    if (this.conference) this.conference = null;
    this.render();
  }

  get usable() {
    return this.enabled && this.webrtc;
  }

  note(text) {
    const el = $("#media-note");
    el.hidden = !text;
    el.textContent = text || "";
  }

  unavailableReason() {
    if (!this.webrtc) return "This browser cannot do WebRTC: calls and push-to-talk are off.";
    if (!this.enabled) return "Voice is switched off on this server.";
    return null;
  }

  request(op, fields) {
    const live = this.hooks.live();
    if (!live) return Promise.reject(new Error("not connected"));
    return Promise.race([live.request(op, fields), new Promise((_, reject) => setTimeout(
      () => reject(new Error(`${op}: no answer from the server`)), REQUEST_MS))]);
  }

  async microphone() {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true }, video: false });
    } catch (err) {
      const why = err?.name === "NotAllowedError" ? "the browser was not allowed to use the microphone"
        : err?.name === "NotFoundError" ? "no microphone was found" : `the microphone cannot be opened (${err?.name || err})`;
      this.micProblem = `No microphone: ${why}.`;
      this.note(this.micProblem);
      throw new MicError(this.micProblem);
    }
  }

  // -- peer connections --------------------------------------------------------------------------

  async openPeer(room, { send = true, video = null, muted = false } = {}) {
    this.closePeer(room);
    const stream = send ? await this.microphone() : null;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const peer = { room, pc, stream, remote: new MediaStream(), sink: null, camera: null, videoTx: null,
      sent: false, answered: false, trickle: [], trickled: false, state: "connecting" };
    this.rooms.set(room, peer);
    if (stream) {
      const [track] = stream.getAudioTracks();
      track.enabled = !muted;
      pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    if (video) peer.videoTx = pc.addTransceiver("video", { direction: video });
    peer.sink = h("audio", { autoplay: true, dataset: { room } });
    peer.sink.srcObject = peer.remote;
    $("#media-sinks").append(peer.sink);
    pc.ontrack = (event) => {
      peer.remote.addTrack(event.track);
      if (event.track.kind === "video") { // shown while frames come (a muted track is one nobody sends)
        const track = event.track;
        track.onunmute = () => this.showVideo(room, peer.remote);
        track.onmute = () => this.hideVideo(room);
        if (!track.muted) this.showVideo(room, peer.remote);
      }
      peer.sink.play?.().catch(() => {});
    };
    pc.onicecandidate = (event) => {
      if (!peer.sent) return; // still gathering: the offer will carry it
      peer.trickled = true;
      const c = event.candidate;
      const frame = c ? { room, candidate: c.candidate, ...(c.sdpMid ? { sdpMid: c.sdpMid } : {}),
        ...(c.sdpMLineIndex !== null && c.sdpMLineIndex !== undefined ? { sdpMLineIndex: c.sdpMLineIndex } : {}) }
        : { room, candidate: "" };
      if (peer.answered) this.request("rtc.candidate", frame).catch(() => {});
      else peer.trickle.push(frame);
    };
    pc.onconnectionstatechange = () => {
      peer.state = pc.connectionState;
      if (pc.connectionState === "failed") this.hooks.toast(`Media to ${room} failed: no network path to the server (ICE).`);
      this.render();
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_MS);
      peer.sent = true;
      const answer = await this.request("rtc.offer", { room, sdp: pc.localDescription.sdp });
      if (this.rooms.get(room) !== peer) throw new Error("left meanwhile");
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      peer.answered = true;
      for (const frame of peer.trickle.splice(0)) this.request("rtc.candidate", frame).catch(() => {});
      return { peer, answer };
    } catch (err) {
      this.closePeer(room);
      throw err;
    }
  }

  closePeer(room) {
    const peer = this.rooms.get(room);
    if (!peer) return;
    this.rooms.delete(room);
    for (const track of peer.stream?.getTracks() || []) track.stop();
    for (const track of peer.camera?.getTracks() || []) track.stop();
    peer.pc.close();
    peer.sink?.remove();
  }

  async leave(room) {
    this.closePeer(room);
    try {
      await this.request("rtc.hangup", { room });
    } catch {
      // gone already (the call ended, the link dropped)
    }
  }

  showVideo(room, stream) {
    const target = this.call?.room === room ? $("#call-remote-video")
      : this.conference?.room === room ? $("#conference-video") : null;
    if (!target) return;
    target.srcObject = stream;
    target.hidden = false;
    target.play?.().catch(() => {});
  }

  hideVideo(room) {
    const target = this.call?.room === room ? $("#call-remote-video") : null;
    if (target) target.hidden = true;
  }

  // For people debugging and for the browser tests: what a room's connection has received and sent.
  async stats(room) {
    const peer = this.rooms.get(room);
    if (!peer) return null;
    const out = { state: peer.pc.connectionState, packetsReceived: 0, packetsSent: 0, audioLevel: 0, totalAudioEnergy: 0,
      framesDecoded: 0 };
    (await peer.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.packetsReceived += s.packetsReceived || 0;
        out.audioLevel = Math.max(out.audioLevel, s.audioLevel || 0);
        out.totalAudioEnergy += s.totalAudioEnergy || 0;
      }
      if (s.type === "inbound-rtp" && s.kind === "video") out.framesDecoded += s.framesDecoded || 0;
      if (s.type === "outbound-rtp" && s.kind === "audio") out.packetsSent += s.packetsSent || 0;
    });
    return out;
  }

  // -- frames from the server --------------------------------------------------------------------

  onFrame(frame) {
    switch (frame.op) {
      case "rtc.ring": this.ringing(frame); break;
      case "rtc.accepted": if (this.call?.id === frame.call) this.connectCall(); break;
      case "rtc.ended": this.ended(frame); break;
      case "rtc.room": this.roomChanged(frame); break;
      case "ptt.granted":
      case "ptt.queued":
      case "ptt.denied":
      case "ptt.revoked": this.floor(frame); break;
      case "ptt.speaker": this.speaker(frame); break;
      default: break;
    }
  }

  // -- calls -------------------------------------------------------------------------------------

  async placeCall(member, name, incident = null) {
    const why = this.unavailableReason();
    if (why) return this.hooks.toast(why);
    if (this.call) return this.hooks.toast("Hang up the current call first.");
    try {
      const stream = await this.microphone(); // ask now, not after the callee has answered
      stream.getTracks().forEach((t) => t.stop());
    } catch (err) {
      return this.hooks.toast(err.message);
    }
    this.call = { id: null, room: null, state: "calling", direction: "out", peer: { member, name }, incident,
      until: Date.now() + this.ringTimeoutS * 1000, since: null, muted: false, video: false };
    this.render();
    try {
      const { call } = await this.request("rtc.call", { to: member, ...(incident ? { incident } : {}) });
      if (!this.call || this.call.state !== "calling") { // hung up while the call was being placed
        this.request("rtc.hangup", { room: call.room }).catch(() => {});
        return;
      }
      Object.assign(this.call, { id: call.id, room: call.room, state: "ringing" });
    } catch (err) {
      this.call = null;
      this.hooks.toast(`Call to ${name} failed: ${callError(err)}`);
    }
    this.render();
  }

  ringing(frame) {
    if (this.call) { // busy: say so rather than ringing over a call
      this.request("rtc.decline", { call: frame.call, reason: "busy" }).catch(() => {});
      return;
    }
    const from = frame.from || {};
    this.call = { id: frame.call, room: frame.room, state: "incoming", direction: "in",
      peer: { member: from.member, name: this.nameOf(from.member, from.name) }, incident: frame.incident || null,
      until: Date.now() + this.ringTimeoutS * 1000, since: null, muted: false, video: false };
    this.render();
    if (!isTextField(document.activeElement)) $("#call-accept").focus();
  }

  async accept() {
    const call = this.call;
    if (!call || call.state !== "incoming") return;
    const why = this.unavailableReason();
    if (why) {
      this.hooks.toast(why);
      return;
    }
    call.state = "connecting";
    this.render();
    try {
      await this.request("rtc.accept", { call: call.id });
      await this.connectCall();
    } catch (err) {
      if (this.call === call) this.endCall(`Could not answer: ${callError(err)}`);
      this.request("rtc.decline", { call: call.id, reason: "failed" }).catch(() => {});
    }
  }

  async decline() {
    const call = this.call;
    if (!call || call.state !== "incoming") return;
    this.call = null;
    this.render();
    try {
      await this.request("rtc.decline", { call: call.id, reason: "declined at the console" });
    } catch {
      // it stopped ringing meanwhile
    }
  }

  async connectCall() {
    const call = this.call;
    if (!call) return;
    call.state = "connecting";
    this.render();
    try {
      await this.openPeer(call.room, { send: true, video: "sendrecv", muted: call.muted });
      if (this.call !== call) return this.closePeer(call.room);
      call.state = "connected";
      call.since = Date.now();
    } catch (err) {
      if (this.call === call) {
        this.request("rtc.hangup", { room: call.room }).catch(() => {});
        this.endCall(`The call could not connect: ${callError(err)}`);
      }
      return;
    }
    this.render();
  }

  async hangup() {
    const call = this.call;
    if (!call) return;
    this.endCall(null);
    if (call.room) await this.leave(call.room);
  }

  ended(frame) {
    if (!this.call || this.call.id !== frame.call) return;
    const name = this.call.peer.name;
    const why = { hangup: `${name} hung up`, declined: `${name} declined the call`, timeout: "Nobody answered",
      cancelled: `${name} withdrew the call`, failed: "The call failed" }[frame.reason] || `Call ended (${frame.reason})`;
    this.endCall(why);
  }

  endCall(message) {
    const call = this.call;
    this.call = null;
    if (call?.room) this.closePeer(call.room);
    const video = $("#call-remote-video");
    video.srcObject = null;
    video.hidden = true;
    $("#call-local-video").srcObject = null;
    $("#call-local-video").hidden = true;
    if (message) this.hooks.toast(message);
    if (call?.incident) this.hooks.onTimeline(call.incident);
    this.render();
  }

  toggleMute() {
    const call = this.call;
    const peer = call && this.rooms.get(call.room);
    if (!call) return;
    call.muted = !call.muted;
    for (const track of peer?.stream?.getAudioTracks() || []) track.enabled = !call.muted;
    this.render();
  }

  async toggleVideo() {
    const call = this.call;
    const peer = call && this.rooms.get(call.room);
    if (!peer?.videoTx) return;
    if (peer.camera) {
      await peer.videoTx.sender.replaceTrack(null);
      peer.camera.getTracks().forEach((t) => t.stop());
      peer.camera = null;
      call.video = false;
      $("#call-local-video").hidden = true;
    } else {
      try {
        peer.camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 } });
      } catch (err) {
        this.hooks.toast(`No camera: ${err?.name === "NotAllowedError" ? "not allowed" : "none found"}.`);
        return;
      }
      await peer.videoTx.sender.replaceTrack(peer.camera.getVideoTracks()[0]);
      call.video = true;
      const local = $("#call-local-video");
      local.srcObject = peer.camera;
      local.hidden = false;
    }
    this.render();
  }

  // -- conference and cameras -------------------------------------------------------------------------

  async joinConference(incident, { listen = false } = {}) {
    const why = this.unavailableReason();
    if (why) return this.hooks.toast(why);
    const room = `conference:${incident}`;
    if (this.conference && this.conference.room !== room) await this.leaveConference();
    this.conference = { incident, room, participants: [], video: null, cameras: [], muted: listen, state: "joining" };
    this.hooks.onTimeline(incident);
    let opened;
    try {
      opened = await this.openPeer(room, { send: true, video: "recvonly", muted: listen });
    } catch (err) {
      if (err instanceof MicError) {
        try {
          opened = await this.openPeer(room, { send: false, video: "recvonly" });
          this.hooks.toast(`${err.message} You are in the conference as a listener.`);
        } catch (again) {
          err = again; // eslint-disable-line no-ex-assign
        }
      }
      if (!opened) {
        this.conference = null;
        this.hooks.toast(`Could not join the conference: ${callError(err)}`);
        this.hooks.onTimeline(incident);
        return;
      }
    }
    if (this.conference?.room !== room) return;
    this.roomChanged({ room, ...opened.answer });
    this.conference.state = "joined";
    this.hooks.onTimeline(incident);
  }

  async leaveConference() {
    const conf = this.conference;
    if (!conf) return;
    this.conference = null;
    await this.leave(conf.room);
    this.hooks.onTimeline(conf.incident);
  }

  toggleConferenceMute() {
    const conf = this.conference;
    const peer = conf && this.rooms.get(conf.room);
    if (!conf) return;
    conf.muted = !conf.muted;
    for (const track of peer?.stream?.getAudioTracks() || []) track.enabled = !conf.muted;
    this.hooks.onTimeline(conf.incident);
  }

  async chooseVideo(source) {
    const conf = this.conference;
    if (!conf) return;
    try {
      let view;
      try {
        view = await this.request("rtc.video", { room: conf.room, source: source || "" });
      } catch (err) {
        // docs/protocol.md names a camera `camera:<id>`; a server that knows its cameras by bare id
        // answers not_found to that, so ask once more with the id alone.
        if (err.code !== "not_found" || !source?.startsWith("camera:")) throw err;
        view = await this.request("rtc.video", { room: conf.room, source: source.slice(7) });
      }
      this.roomChanged({ room: conf.room, ...view });
    } catch (err) {
      this.hooks.toast(`Could not switch the video: ${callError(err)}`);
    }
  }

  roomChanged(frame) {
    const conf = this.conference;
    if (!conf || frame.room !== conf.room) return;
    if (frame.participants) conf.participants = frame.participants;
    if ("video" in frame) conf.video = frame.video;
    if (frame.cameras) conf.cameras = frame.cameras;
    this.hooks.onTimeline(conf.incident);
  }

  // The incident view's media section: conference controls, who is in it, the video and cameras.
  incidentSection(inc, cameras) {
    if (!this.enabled) return null;
    const conf = this.conference?.incident === inc.id ? this.conference : null;
    const video = $("#conference-video") || h("video", { id: "conference-video", autoplay: true, playsinline: true,
      muted: true, "aria-label": "Conference video (the chosen participant or camera)", hidden: true });
    if (conf) {
      const peer = this.rooms.get(conf.room);
      if (peer && video.srcObject !== peer.remote && peer.remote.getVideoTracks().length) {
        video.srcObject = peer.remote;
        video.hidden = false;
      }
    } else {
      video.srcObject = null;
      video.hidden = true;
    }
    const list = cameras || [];
    return h("section", { class: "media-section", "aria-labelledby": "conf-title" },
      h("div", { class: "row" },
        h("h3", { id: "conf-title", class: "spacer" }, "Conference"),
        conf ? [
          h("span", { class: "status active", id: "conf-state" }, conf.state === "joined" ? "joined" : "joining…"),
          h("button", { type: "button", id: "conf-mute", "aria-pressed": String(conf.muted), onclick: () => this.toggleConferenceMute() },
            conf.muted ? "Unmute" : "Mute"),
          h("button", { type: "button", class: "danger", id: "conf-leave", onclick: () => this.leaveConference() }, "Leave")]
          : h("button", { type: "button", id: "conf-join", disabled: !this.usable, onclick: () => this.joinConference(inc.id),
            title: this.unavailableReason() || "Join the incident's conference: everyone in it hears everyone" }, "Join conference")),
      conf?.participants?.length ? h("p", { class: "muted", id: "conf-participants" },
        `In the conference: ${conf.participants.map((p) => p.name || p.member).join(", ")}`) : null,
      list.length ? h("ul", { class: "list", id: "cameras", "aria-label": "Camera feeds" }, list.map((c) => h("li", { dataset: { camera: c.id } },
        h("span", { class: "grow" }, `Camera ${c.host || c.id}`),
        conf && [`camera:${c.id}`, c.id].includes(conf.video) ? h("span", { class: "status en_route" }, "showing") : null,
        h("button", { type: "button", disabled: !this.usable, "aria-label": `Show camera ${c.host || c.id}`,
          onclick: async () => {
            if (!conf) await this.joinConference(inc.id, { listen: true });
            await this.chooseVideo(`camera:${c.id}`);
          } }, "Show")))) : null,
      video);
  }

  // -- push-to-talk ------------------------------------------------------------------------------

  async joinTalkgroup(id) {
    const why = this.unavailableReason();
    if (why) return this.hooks.toast(why);
    if (this.talk.joined) await this.leaveTalkgroup();
    this.talk = { id, joined: false, joining: true, floor: "idle", position: null, emergency: false, pressed: false, listener: false };
    this.render();
    try {
      try {
        await this.openPeer(id, { send: true, muted: true });
      } catch (err) {
        if (!(err instanceof MicError)) throw err;
        await this.openPeer(id, { send: false });
        this.talk.listener = true;
        this.hooks.toast(`${err.message} You can listen to ${this.channelName(id)} but not talk.`);
      }
      this.talk.joined = true;
    } catch (err) {
      this.hooks.toast(`Could not join ${this.channelName(id)}: ${callError(err)}`);
    }
    this.talk.joining = false;
    this.render();
  }

  async leaveTalkgroup() {
    const id = this.talk.id;
    if (!id) return;
    this.talk = { id: null, joined: false, floor: "idle", position: null, emergency: false, pressed: false };
    this.speakers.delete(id);
    this.render();
    await this.leave(id);
  }

  channelName(id) {
    return this.channels.find((c) => c.id === id)?.name || id;
  }

  setMic(on) {
    const peer = this.talk.id && this.rooms.get(this.talk.id);
    for (const track of peer?.stream?.getAudioTracks() || []) track.enabled = on;
  }

  async press({ emergency = false } = {}) {
    const t = this.talk;
    if (!t.joined || t.listener) return;
    if (t.pressed && !emergency) return;
    t.pressed = true;
    t.floor = "asking";
    t.emergency = emergency;
    this.render();
    try {
      const answer = await this.request("ptt.request", { talkgroup: t.id, ...(emergency ? { emergency: true } : {}) });
      if (this.talk !== t) return; // left the talkgroup meanwhile
      if (!t.pressed && answer.outcome !== "denied") {
        // Let go before the answer came: give the floor (or the place in line) back at once.
        t.floor = answer.outcome;
        await this.release();
        return;
      }
      this.floor({ op: `ptt.${answer.outcome}`, talkgroup: t.id, ...answer, emergency });
    } catch (err) {
      if (this.talk !== t) return;
      t.floor = "idle";
      t.pressed = false;
      this.hooks.toast(`Push-to-talk: ${callError(err)}`);
      this.render();
    }
  }

  async release() {
    const t = this.talk;
    if (!t.joined) return;
    const had = t.floor;
    t.pressed = false;
    if (had === "asking") return; // released when the answer arrives
    this.setMic(false);
    t.floor = "idle";
    t.emergency = false;
    this.render();
    if (had === "granted" || had === "queued") {
      try {
        await this.request("ptt.release", { talkgroup: t.id });
      } catch {
        // the floor went meanwhile
      }
    }
  }

  floor(frame) {
    const t = this.talk;
    if (frame.talkgroup !== t.id) return;
    const state = frame.op.slice(4);
    if (state === "granted") {
      if (!t.pressed) return; // released already; release() gives it back
      t.floor = "granted";
      t.until = frame.until;
      this.setMic(true);
    } else if (state === "queued") {
      if (!t.pressed) return;
      t.floor = "queued";
      t.position = frame.position;
    } else if (state === "denied") {
      t.floor = "idle";
      t.pressed = false;
      this.hooks.toast(`Floor denied: ${frame.reason || "the talkgroup is busy"}`);
    } else if (state === "revoked") {
      this.setMic(false);
      t.floor = "idle";
      t.pressed = false;
      t.emergency = false;
      this.hooks.toast(`Floor taken away: ${frame.reason || "revoked"}${frame.by ? ` (by ${this.hooks.memberName(frame.by)})` : ""}`);
    }
    t.last = state;
    this.render();
  }

  speaker(frame) {
    if (frame.member) this.speakers.set(frame.talkgroup, { member: frame.member, name: frame.name, rank: frame.rank });
    else this.speakers.delete(frame.talkgroup);
    this.render();
  }

  // Space held (outside text fields) talks on the joined talkgroup; letting go releases.
  keydown(event) {
    if (event.code !== "Space" || !this.talk.joined || event.ctrlKey || event.metaKey || event.altKey) return;
    if (isTextField(event.target) || event.target?.matches?.("input[type=checkbox], input[type=radio]")) return;
    event.preventDefault();
    event.stopPropagation();
    if (!event.repeat && !(this.talk.emergency && this.talk.floor === "granted")) this.press();
  }

  keyup(event) {
    if (event.code !== "Space" || !this.talk.joined || isTextField(event.target)
      || event.target?.matches?.("input[type=checkbox], input[type=radio]")) return;
    event.preventDefault(); // Space talks here: it does not also press the focused button
    if (this.talk.pressed && !this.talk.emergency) this.release();
  }

  confirmEmergency() {
    if (!this.talk.joined || this.talk.listener) return;
    $("#ptt-emergency-tg").textContent = this.channelName(this.talk.id);
    $("#ptt-emergency-dialog").showModal();
  }

  // Logging out (or the session ending): leave everything.
  hangupAll() {
    if (this.call) this.hangup();
    if (this.talk.joined) this.leaveTalkgroup();
    if (this.conference) this.leaveConference();
    for (const room of [...this.rooms.keys()]) this.closePeer(room);
  }

  // -- recordings --------------------------------------------------------------------------------

  // An <audio> player for a recording on the timeline: same-origin URL, so the browser sends the
  // session cookie and asks for ranges as it seeks. Kept per recording so a re-render does not
  // interrupt playback.
  player(recordingId, url, label) {
    let el = this.audio.get(recordingId);
    if (!el) {
      el = h("audio", { controls: true, preload: "none", src: url, "aria-label": label, dataset: { recording: recordingId } });
      this.audio.set(recordingId, el);
    }
    return el;
  }

  // -- rendering ---------------------------------------------------------------------------------

  render() {
    this.renderRadio();
    this.renderCall();
  }

  renderRadio() {
    const radio = $("#radio");
    const why = this.unavailableReason();
    radio.hidden = !this.enabled;
    if (!this.enabled) {
      this.note(why && this.webrtc ? "" : why);
      return;
    }
    if (!this.webrtc) this.note(why);
    else if (!this.micProblem) this.note("");
    const select = $("#tg-select");
    const mine = this.hooks.me()?.agency ? `agency:${this.hooks.me().agency}` : null;
    const current = this.talk.id || select.value || mine;
    if (select.options.length !== this.channels.length || [...select.options].some((o, n) => o.value !== this.channels[n]?.id)) {
      clear(select, this.channels.map((c) => h("option", { value: c.id }, c.name || c.id)));
    }
    if (current && this.channels.some((c) => c.id === current)) select.value = current;
    const t = this.talk;
    select.disabled = t.joined || t.joining || !this.webrtc;
    const join = $("#tg-join");
    join.textContent = t.joined ? "Leave" : t.joining ? "Joining…" : "Join";
    join.disabled = t.joining || !this.webrtc || !this.channels.length;
    join.setAttribute("aria-label", t.joined ? `Leave talkgroup ${this.channelName(t.id)}` : "Join the chosen talkgroup");
    const ptt = $("#ptt-btn");
    ptt.disabled = !t.joined || t.listener;
    ptt.className = `ptt ${t.floor}${t.emergency ? " emergency" : ""}`;
    ptt.setAttribute("aria-pressed", String(t.floor === "granted"));
    ptt.dataset.floor = t.floor;
    ptt.firstChild.textContent = t.floor === "granted" ? (t.emergency ? "EMERGENCY — release " : "Talking ")
      : t.floor === "queued" ? `Queued #${t.position ?? "?"} ` : t.floor === "asking" ? "Asking… " : "Talk ";
    $("#ptt-emergency").disabled = !t.joined || t.listener || (t.emergency && t.floor === "granted");
    const spk = t.id ? this.speakers.get(t.id) : null;
    const el = $("#ptt-speaker");
    el.className = `speaker${spk ? ` on ${spk.rank}` : ""}`;
    el.dataset.member = spk?.member || "";
    el.textContent = !t.joined ? "not on a talkgroup"
      : spk ? `${spk.member === this.myKey() ? "You are" : `${this.nameOf(spk.member, spk.name)} is`} talking${spk.rank === "emergency" ? " (EMERGENCY)" : ""}`
        : "channel clear";
  }

  // A unit by its call sign (its terminal's token may be called anything); others as the server names them.
  nameOf(member, name) {
    return String(member || "").startsWith("unit:") ? this.hooks.memberName(member) : name || member;
  }

  myKey() {
    const me = this.hooks.me();
    return me ? `${me.kind}:${me.id}` : "";
  }

  renderCall() {
    const call = this.call;
    const panel = $("#call-panel");
    panel.hidden = !call;
    if (!call) return;
    const ringing = call.state === "incoming";
    $("#call-incoming").hidden = !ringing;
    $("#call-bar").hidden = ringing;
    const left = Math.max(0, Math.ceil((call.until - Date.now()) / 1000));
    if (ringing) {
      $("#call-incoming-desc").textContent = `${call.peer.name}${call.incident ? ` · incident ${call.incident}` : ""}`;
      $("#call-ring-left").textContent = `rings for ${left}s more`;
      return;
    }
    const peer = call.room && this.rooms.get(call.room);
    const words = {
      calling: `Calling ${call.peer.name}…`, ringing: `Ringing ${call.peer.name}… (${left}s)`,
      connecting: `Connecting to ${call.peer.name}…`,
      connected: peer && peer.state !== "connected" && peer.state !== "connecting"
        ? `${call.peer.name}: media ${peer.state}` : `In call with ${call.peer.name}`,
    };
    const state = $("#call-state");
    const text = words[call.state] || call.state;
    if (state.textContent !== text) state.textContent = text;
    state.dataset.state = call.state;
    $("#call-timer").textContent = call.since ? duration((Date.now() - call.since) / 1000) : "";
    $("#call-incident").textContent = call.incident ? `incident ${call.incident}` : "";
    const mute = $("#call-mute");
    mute.disabled = call.state !== "connected";
    mute.setAttribute("aria-pressed", String(call.muted));
    mute.textContent = call.muted ? "Unmute" : "Mute";
    const video = $("#call-video");
    video.disabled = call.state !== "connected";
    video.setAttribute("aria-pressed", String(call.video));
    video.textContent = call.video ? "Stop video" : "Video";
    $("#call-hangup").textContent = call.state === "connected" ? "Hang up" : "Cancel call";
  }

  wire() {
    $("#tg-join").addEventListener("click", () => (this.talk.joined ? this.leaveTalkgroup() : this.joinTalkgroup($("#tg-select").value)));
    const ptt = $("#ptt-btn");
    ptt.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      ptt.setPointerCapture?.(e.pointerId);
      if (this.talk.emergency && this.talk.floor === "granted") this.release();
      else this.press();
    });
    ptt.addEventListener("pointerup", () => { if (!this.talk.emergency) this.release(); });
    ptt.addEventListener("pointercancel", () => { if (!this.talk.emergency) this.release(); });
    ptt.addEventListener("keydown", (e) => { // Enter on the focused button: a latched emergency is ended with it
      if (e.key === "Enter" && this.talk.emergency && this.talk.floor === "granted") this.release();
    });
    $("#ptt-emergency").addEventListener("click", () => this.confirmEmergency());
    $("#ptt-emergency-dialog").addEventListener("close", () => {
      if ($("#ptt-emergency-dialog").returnValue === "confirm") this.press({ emergency: true });
    });
    window.addEventListener("keydown", (e) => this.keydown(e), true);
    window.addEventListener("keyup", (e) => this.keyup(e), true);
    window.addEventListener("blur", () => { if (this.talk.pressed && !this.talk.emergency) this.release(); });
    $("#call-accept").addEventListener("click", () => this.accept());
    $("#call-decline").addEventListener("click", () => this.decline());
    $("#call-mute").addEventListener("click", () => this.toggleMute());
    $("#call-video").addEventListener("click", () => this.toggleVideo());
    $("#call-hangup").addEventListener("click", () => this.hangup());
    window.addEventListener("pagehide", () => { for (const room of this.rooms.keys()) this.closePeer(room); });
    if (!this.webrtc) this.note(this.unavailableReason());
  }
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function callError(err) {
  const known = { callee_unavailable: "not connected to this server", not_found: "not reachable from your agency",
    forbidden: "not a member", room_full: "the room is full", room_elsewhere: err?.message, conflict: err?.message,
    unsupported: "voice is switched off on this server" };
  return known[err?.code] || err?.message || String(err);
}

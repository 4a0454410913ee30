// omnirtc client: one WebRTC call to an omnirtc server.  Plain ES module, no dependencies.
//
//   import { OmniCall } from "/static/omnirtc.js";
//   const call = new OmniCall({ baseUrl: "", session: { mode: "engine" } });
//   call.addEventListener("unit", (e) => console.log(e.detail));
//   call.addEventListener("track", (e) => audioElement.srcObject = e.detail.stream);
//   await call.start(await navigator.mediaDevices.getUserMedia({ audio: true }));
//   ...
//   await call.hangup();
//
// Events (CustomEvent, payload in `detail`): every server message by its `type`
// ("session.created", "session.queued", "unit", "response.output_text.delta", ...),
// "message" for all of them, "track" ({stream}), "state" ({state}), "rtt" ({ms}),
// "ended" ({reason}).  See docs/PROTOCOL.md.

export class OmniCallError extends Error {
  constructor(code, message, { status = 0, retryAfter = null } = {}) {
    super(message);
    this.name = "OmniCallError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const GATHER_TIMEOUT_MS = 3000;
const PING_INTERVAL_MS = 1000;
const DISCONNECT_GRACE_MS = 5000;

export class OmniCall extends EventTarget {
  /**
   * token: an API key or a call token from POST /v1/tokens, when the server has auth on
   * (sent as Authorization: Bearer).
   */
  constructor({ baseUrl = "", session = {}, iceServers = [], token = null } = {}) {
    super();
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.session = session;
    this.iceServers = iceServers;
    this.pc = null;
    this.channel = null;
    this.callId = null;
    this.rttMs = null;
    this.state = "idle";
    this._pingTimer = null;
    this._pingId = 0;
    this._ended = false;
  }

  /** Offer the stream's tracks to the server and wait until the call is set up. */
  async start(stream) {
    if (this.pc) throw new OmniCallError("already_started", "this call was already started");
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this._setState("connecting");
    this.channel = pc.createDataChannel("events", { ordered: true });
    this.channel.onmessage = (e) => this._onMessage(e.data);
    this.channel.onopen = () => this._startPings();
    const audio = stream ? stream.getAudioTracks()[0] : null;
    const video = stream ? stream.getVideoTracks()[0] : null;
    if (audio) pc.addTransceiver(audio, { direction: "sendrecv", streams: [stream] });
    else pc.addTransceiver("audio", { direction: "recvonly" });
    if (video) pc.addTransceiver(video, { direction: "sendonly", streams: [stream] });
    pc.ontrack = (e) => {
      const remote = e.streams[0] || new MediaStream([e.track]);
      this._emit("track", { stream: remote, track: e.track });
    };
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      clearTimeout(this._graceTimer);
      if (s === "connected") this._setState("connected");
      if (s === "failed") this._lost(s);
      // "disconnected" often recovers (a Wi-Fi hiccup): give it a moment before giving up.
      if (s === "disconnected") this._graceTimer = setTimeout(() => this._lost(s), DISCONNECT_GRACE_MS);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await this._gathered(pc);
    const response = await fetch(`${this.baseUrl}/v1/calls`, {
      method: "POST",
      headers: this._headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session: this.session }),
    }).catch((err) => {
      this._close();
      throw new OmniCallError("network", `cannot reach the server: ${err.message}`);
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      this._close();
      const error = body.error || {};
      const retry = response.headers.get("Retry-After");
      throw new OmniCallError(error.code || "http_error", error.message || response.statusText, {
        status: response.status,
        retryAfter: retry ? Number(retry) : null,
      });
    }
    this.callId = body.call_id;
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    return this.callId;
  }

  _headers(headers) {
    return this.token ? { ...headers, Authorization: `Bearer ${this.token}` } : headers;
  }

  /** Ask the service to stop talking now (barge-in by button). */
  cancel() {
    this.send({ type: "response.cancel" });
  }

  send(message) {
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  /** End the call on both sides. */
  async hangup() {
    const id = this.callId;
    this._close();
    if (id) {
      await fetch(`${this.baseUrl}/v1/calls/${id}`, {
        method: "DELETE",
        keepalive: true,
        headers: this._headers({}),
      }).catch(() => {});
    }
    this._end("hangup");
  }

  async stats() {
    return this.pc ? this.pc.getStats() : null;
  }

  _gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  _startPings() {
    const ping = () => this.send({ type: "ping", id: ++this._pingId, t: performance.now() });
    ping();
    this._pingTimer = setInterval(ping, PING_INTERVAL_MS);
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === "pong" && typeof message.t === "number") {
      this.rttMs = performance.now() - message.t;
      this._emit("rtt", { ms: this.rttMs });
    }
    this._emit(message.type, message);
    this._emit("message", message);
    if (message.type === "session.closed") {
      this._close();
      this._end(message.reason);
    }
  }

  _lost(state) {
    if (this._ended) return;
    this._close();
    this._emit("error", { code: "connection_lost", message: `the connection was lost (${state})` });
    this._end("connection_lost");
  }

  _close() {
    clearTimeout(this._graceTimer);
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
  }

  _end(reason) {
    if (this._ended) return;
    this._ended = true;
    this._setState("ended");
    this._emit("ended", { reason });
  }

  _setState(state) {
    this.state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

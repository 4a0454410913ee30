// The call page: devices, call controls, live state, transcript and figures.
import { OmniCall, OmniCallError } from "./omnirtc.js";

const $ = (id) => document.getElementById(id);
const ui = {
  engine: $("engine"), mic: $("mic"), camera: $("camera"), mode: $("mode"),
  call: $("call"), cancel: $("cancel"), hangup: $("hangup"), error: $("error"),
  state: $("state"), speech: $("speech"), preview: $("preview"), remote: $("remote"),
  rtt: $("rtt"), iceRtt: $("ice-rtt"), unit: $("unit"), timings: $("timings"),
  level: $("level"), transcript: $("transcript"),
};

// What the page observed, for people debugging and for the browser tests.
const observed = { events: [], audio: { peakRms: 0, loudMs: 0, samples: 0 }, errors: [] };
window.omnirtcPage = observed;

let call = null;
let stream = null;
let meter = null;
let statsTimer = null;
let turn = null;

function showError(message) {
  observed.errors.push(message);
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function setBadge(el, cls, text) {
  el.className = `badge ${cls}`;
  el.textContent = text;
}

async function loadEngine() {
  try {
    const r = await fetch("/readyz");
    const body = await r.json();
    ui.engine.textContent = `engine: ${body.engine}${body.ready ? "" : " (warming up)"}`;
  } catch {
    ui.engine.textContent = "engine: server unreachable";
  }
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (select, kind, keep) => {
    const current = select.value;
    select.querySelectorAll("option[data-device]").forEach((o) => o.remove());
    devices.filter((d) => d.kind === kind && d.deviceId && d.deviceId !== "default").forEach((d, i) => {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.dataset.device = "1";
      o.textContent = d.label || `${kind} ${i + 1}`;
      select.appendChild(o);
    });
    if (keep && [...select.options].some((o) => o.value === current)) select.value = current;
  };
  fill(ui.mic, "audioinput", true);
  fill(ui.camera, "videoinput", true);
}

function describeMediaError(err) {
  if (err.name === "NotAllowedError") return "Permission to use the microphone or camera was denied. Allow it in the browser's site settings and call again.";
  if (err.name === "NotFoundError") return "No microphone (or camera) was found.";
  if (err.name === "NotReadableError") return "The microphone or camera is in use by another application.";
  return `Cannot open the microphone or camera: ${err.message}`;
}

function describeCallError(err) {
  if (err instanceof OmniCallError) {
    if (err.code === "busy") return `The server is busy. Try again${err.retryAfter ? ` in ${err.retryAfter} s` : " later"}.`;
    if (err.code === "not_ready") return "The engine is still starting. Try again in a few seconds.";
    if (err.code === "invalid_voice") return `The voice clip cannot be used: ${err.message}`;
    if (err.code === "network") return err.message;
    return `The call failed: ${err.message} (${err.code})`;
  }
  return `The call failed: ${err.message}`;
}

function startMeter(remoteStream) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(remoteStream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  source.connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  const interval = 50;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const rms = Math.sqrt(sum / data.length);
    observed.audio.samples += 1;
    observed.audio.peakRms = Math.max(observed.audio.peakRms, rms);
    if (rms > 0.01) observed.audio.loudMs += interval;
    const now = rms > 1e-5 ? `${(20 * Math.log10(rms)).toFixed(0)} dBFS now` : "silence now";
    ui.level.textContent = `${now}, ${(observed.audio.loudMs / 1000).toFixed(1)} s heard`;
  }, interval);
  return { stop: () => { clearInterval(timer); ctx.close(); } };
}

function addTranscript(who, text) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = text;
  ui.transcript.appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function onServerEvent(message) {
  observed.events.push(message);
  switch (message.type) {
    case "session.created":
      ui.engine.textContent = `engine: ${message.engine}`;
      break;
    case "session.queued":
      setBadge(ui.state, "queued", `waiting: #${message.position} of ${message.queue_length}, about ${Math.round(message.estimated_wait_s)} s`);
      break;
    case "session.queue_done":
      setBadge(ui.state, "listen", "connected");
      break;
    case "unit": {
      setBadge(ui.state, message.state, message.state);
      ui.unit.textContent = `#${message.index}${message.dropped_units ? ` (${message.dropped_units} dropped)` : ""}`;
      const t = message.timings;
      ui.timings.textContent = `${t.step_ms} / ${t.wait_ms} / ${t.late_ms}`;
      if (message.end_of_turn) turn = null;
      break;
    }
    case "response.output_text.delta":
      if (!turn) turn = addTranscript("service", "");
      turn.textContent += message.delta;
      break;
    case "input.speech_started":
      setBadge(ui.speech, "talking", "you: talking");
      break;
    case "input.speech_stopped":
      setBadge(ui.speech, "quiet", "you: quiet");
      break;
    case "input.transcript":
      addTranscript("person", message.text);
      turn = null;
      break;
    case "response.interrupted":
      turn = null;
      addTranscript("note", `interrupted (${message.reason})`);
      break;
    case "error":
      showError(`Server: ${message.message} (${message.code})`);
      break;
    default:
      break;
  }
}

async function pollStats() {
  if (!call) return;
  const stats = await call.stats();
  if (!stats) return;
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
      ui.iceRtt.textContent = `${(s.currentRoundTripTime * 1000).toFixed(1)} ms`;
    }
  });
}

async function startCall() {
  clearError();
  ui.call.disabled = true;
  try {
    const pick = (value) => (value && value !== "default" ? { exact: value } : undefined);
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { deviceId: pick(ui.mic.value), echoCancellation: true, noiseSuppression: true },
      video: ui.camera.value ? { deviceId: pick(ui.camera.value), width: 640, height: 480 } : false,
    });
  } catch (err) {
    showError(describeMediaError(err));
    ui.call.disabled = false;
    return;
  }
  await listDevices();
  if (stream.getVideoTracks().length) {
    ui.preview.srcObject = stream;
    ui.preview.hidden = false;
  }
  // With auth on, open the page as /#token=<API key or call token>: the fragment never
  // reaches the server's logs.
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  call = new OmniCall({ session: { mode: ui.mode.value }, token });
  call.addEventListener("message", (e) => onServerEvent(e.detail));
  call.addEventListener("track", (e) => {
    ui.remote.srcObject = e.detail.stream;
    meter = startMeter(e.detail.stream);
  });
  call.addEventListener("state", (e) => {
    if (e.detail.state !== "ended") setBadge(ui.state, e.detail.state, e.detail.state);
  });
  call.addEventListener("rtt", (e) => { ui.rtt.textContent = `${e.detail.ms.toFixed(1)} ms`; });
  call.addEventListener("error", (e) => showError(`Connection lost. ${e.detail.message}`));
  call.addEventListener("ended", (e) => endCall(e.detail.reason));
  try {
    observed.callId = await call.start(stream);
  } catch (err) {
    showError(describeCallError(err));
    endCall("failed");
    return;
  }
  ui.hangup.disabled = false;
  ui.cancel.disabled = false;
  statsTimer = setInterval(pollStats, 1000);
}

function endCall(reason) {
  clearInterval(statsTimer);
  if (meter) meter.stop();
  meter = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  ui.preview.hidden = true;
  setBadge(ui.state, "idle", reason ? `ended: ${reason}` : "idle");
  ui.call.disabled = false;
  ui.hangup.disabled = true;
  ui.cancel.disabled = true;
  const ended = call;
  call = null;
  if (ended && reason !== "hangup") ended.hangup();
}

ui.call.addEventListener("click", startCall);
ui.hangup.addEventListener("click", () => call && call.hangup());
ui.cancel.addEventListener("click", () => call && call.cancel());
navigator.mediaDevices.addEventListener("devicechange", listDevices);
loadEngine();
listDevices().catch(() => {});

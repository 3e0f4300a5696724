// The live page: one WebRTC session (video + audio from the server), speech from a file,
// the microphone or text, interrupt, recording, and a status line. No build step.
"use strict";

const GATHERING_TIMEOUT_MS = 3000;    // offer what has been gathered by then
const MIC_SAMPLE_RATE = 16000;        // what the server's audio stream takes (s16le mono)
const STATS_INTERVAL_MS = 1000;

const params = new URLSearchParams(location.search || location.hash.slice(1));
const token = params.get("token");
const $ = (id) => document.getElementById(id);

// What the page knows, open for inspection (and for the end-to-end test).
const lipsync = window.lipsync = { pc: null, session: null, description: null, events: [], source: null };

function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(method, path, body, isJson = true) {
  const options = { method, headers: token ? { Authorization: "Bearer " + token } : {} };
  if (body !== undefined) {
    if (isJson) { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body); }
    else options.body = body;
  }
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function say(text) { $("message").textContent = text || ""; }

function setConnected(connected) {
  $("start").disabled = connected;
  for (const id of ["stop", "interrupt", "record", "speak", "microphone", "say"]) $(id).disabled = !connected;
  if (!connected) $("state").textContent = "not connected";
}

function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHERING_TIMEOUT_MS);
  });
}

async function start() {
  say("");
  const pc = lipsync.pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => { stream.addTrack(event.track); $("video").srcObject = stream; });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed") { say("the connection failed"); stop(); }
  });
  await pc.setLocalDescription(await pc.createOffer());
  await waitForGathering(pc);
  let answer;
  try {
    answer = await api("POST", "/offer", { sdp: pc.localDescription.sdp, type: pc.localDescription.type });
  } catch (error) {
    pc.close(); lipsync.pc = null; say(error.message); return;
  }
  lipsync.session = answer.session;
  lipsync.description = answer;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  followEvents(answer.session);
  setConnected(true);
}

async function stop() {
  stopMicrophone();
  if (lipsync.source) { lipsync.source.close(); lipsync.source = null; }
  if (lipsync.session) { await api("DELETE", "/sessions/" + lipsync.session).catch(() => {}); }
  if (lipsync.pc) lipsync.pc.close();
  lipsync.pc = null; lipsync.session = null;
  $("video").srcObject = null;
  setConnected(false);
}

function followEvents(session) {
  const source = lipsync.source = new EventSource(withToken("/sessions/" + session + "/events"));
  for (const name of ["speaking_started", "speaking_ended", "interrupted", "status", "error", "recording"]) {
    source.addEventListener(name, (message) => {
      const event = JSON.parse(message.data);
      event.received = performance.now();
      if (name !== "status") lipsync.events.push(event);
      show(event);
    });
  }
}

function show(event) {
  if (event.event === "status") {
    $("state").textContent = event.state;
    $("render-fps").textContent = event.render_fps.toFixed(1);
    $("queue").textContent = event.queue_frames;
    $("queued").textContent = event.queued_utterances;
    $("repeated").textContent = event.repeated_frames;
  } else if (event.event === "speaking_started") {
    $("latency").textContent = Math.round(event.latency_ms);
  } else if (event.event === "interrupted") {
    $("interrupt-ms").textContent = Math.round(event.latency_ms);
  } else if (event.event === "error") {
    say(event.error);
  } else if (event.event === "recording" && event.error) {
    say("recording stopped: " + event.error);
  }
}

async function receivedFps() {
  if (!lipsync.pc) return;
  const stats = await lipsync.pc.getStats();
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video" && report.framesPerSecond !== undefined) {
      $("fps").textContent = report.framesPerSecond.toFixed(1);
    }
  });
}

async function speakFile(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { say("choose an audio file first"); return; }
  const form = new FormData();
  form.append("audio", file, file.name);
  try { await api("POST", "/sessions/" + lipsync.session + "/speak", form, false); say(""); }
  catch (error) { say(error.message); }
}

async function sayText(event) {
  event.preventDefault();
  try { await api("POST", "/sessions/" + lipsync.session + "/say", { text: $("text").value }); say(""); }
  catch (error) { say(error.message); }
}

async function interrupt() {
  try { await api("POST", "/sessions/" + lipsync.session + "/interrupt"); } catch (error) { say(error.message); }
}

let recording = false;
async function toggleRecording() {
  try {
    if (!recording) {
      await api("POST", "/sessions/" + lipsync.session + "/recording");
      recording = true; $("record").textContent = "Stop recording"; $("record").classList.add("active");
      $("download").hidden = true;
    } else {
      const answer = await api("DELETE", "/sessions/" + lipsync.session + "/recording");
      recording = false; $("record").textContent = "Record session"; $("record").classList.remove("active");
      $("download").href = withToken(answer.url); $("download").hidden = false;
    }
  } catch (error) { say(error.message); }
}

// Microphone: 16 kHz mono float from an AudioWorklet, sent as s16le chunks over a WebSocket.
let microphone = null;
async function toggleMicrophone() {
  if (microphone) { stopMicrophone(); return; }
  try {
    const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    const context = new AudioContext({ sampleRate: MIC_SAMPLE_RATE });
    await context.audioWorklet.addModule("/static/pcm-capture.js");
    const node = new AudioWorkletNode(context, "pcm-capture");
    const protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(protocol + "//" + location.host + withToken("/sessions/" + lipsync.session + "/audio"));
    socket.binaryType = "arraybuffer";
    node.port.onmessage = (message) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      const samples = message.data;
      const pcm = new Int16Array(samples.length);
      for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
      socket.send(pcm.buffer);
    };
    context.createMediaStreamSource(media).connect(node);
    microphone = { media, context, socket };
    $("microphone").textContent = "Stop the microphone"; $("microphone").classList.add("active");
  } catch (error) { say("microphone: " + error.message); }
}

function stopMicrophone() {
  if (!microphone) return;
  const { media, context, socket } = microphone;
  microphone = null;
  media.getTracks().forEach((track) => track.stop());
  context.close();
  if (socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify({ type: "end" })); socket.close(); }
  $("microphone").textContent = "Speak into the microphone"; $("microphone").classList.remove("active");
}

async function init() {
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("interrupt").addEventListener("click", interrupt);
  $("record").addEventListener("click", toggleRecording);
  $("microphone").addEventListener("click", toggleMicrophone);
  $("upload-form").addEventListener("submit", speakFile);
  $("say-form").addEventListener("submit", sayText);
  setInterval(receivedFps, STATS_INTERVAL_MS);
  try {
    const health = await api("GET", "/health");
    $("person").textContent = health.person;
    $("say-form").hidden = !health.tts;
  } catch (error) { say(error.message); }
}

init();

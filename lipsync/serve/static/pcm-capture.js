// AudioWorklet: passes the microphone's samples (at the context's rate, 16 kHz) to the page.
"use strict";

const CHUNK_SAMPLES = 1600;           // 100 ms per WebSocket message at 16 kHz

class PcmCapture extends AudioWorkletProcessor {
  constructor() { super(); this.buffer = new Float32Array(CHUNK_SAMPLES); this.filled = 0; }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.buffer[this.filled++] = channel[i];
      if (this.filled === CHUNK_SAMPLES) { this.port.postMessage(this.buffer.slice()); this.filled = 0; }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);

/**
 * Server-Sent Events over fetch(): a spec-following incremental parser and a
 * reconnecting reader. fetch (not EventSource) so the Authorization header is sent
 * and no token ever appears in a URL; every reconnect resumes with Last-Event-ID.
 */

const LINE_END = /\r\n|\r|\n/g;

/** Turns text chunks (split anywhere) into {id, event, data} events. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.lastEventId = "";
    this.retry = null;
    this.startConnection();
  }

  /** Forget any half-received line or event; keeps lastEventId for resuming. */
  startConnection() {
    this.buffer = "";
    this.skipLeadingLf = false;
    this.dataLines = [];
    this.eventType = "";
  }

  feed(chunk) {
    if (chunk === "") return;
    if (this.skipLeadingLf && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.skipLeadingLf = false;
    this.buffer += chunk;
    let start = 0;
    LINE_END.lastIndex = 0;
    for (let m = LINE_END.exec(this.buffer); m; m = LINE_END.exec(this.buffer)) {
      // A "\r" at the very end may be the first half of "\r\n" split across chunks.
      if (m[0] === "\r" && m.index === this.buffer.length - 1) this.skipLeadingLf = true;
      this.processLine(this.buffer.slice(start, m.index));
      start = LINE_END.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
  }

  processLine(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return; // comment, e.g. ": keepalive"
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.dataLines.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    const data = this.dataLines.join("\n");
    const event = this.eventType || "message";
    const hadData = this.dataLines.length > 0;
    this.dataLines = [];
    this.eventType = "";
    if (hadData) this.onEvent({ id: this.lastEventId, event, data });
  }
}

/** Raised for answers that reconnecting cannot fix (401, 403, 404...). */
export class StreamRefused extends Error {
  constructor(status) {
    super(`stream refused with HTTP ${status}`);
    this.status = status;
  }
}

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
const STALL_MS = 45000; // the gateway sends a keepalive comment every ~15 s

/**
 * Reads `url` as an SSE stream until close(), reconnecting with exponential backoff and
 * Last-Event-ID after a drop, a stall or a clean close. onStatus gets "connecting" |
 * "open" | "reconnecting"; onFatal gets a StreamRefused and ends the stream.
 */
export class EventStream {
  constructor({ url, headers, onEvent, onStatus, onFatal }) {
    Object.assign(this, { url, headers, onStatus, onFatal });
    this.parser = new SseParser(onEvent);
    this.closed = new AbortController();
    this.wake = null;
    this.run();
  }

  close() {
    this.closed.abort();
    this.wake?.();
  }

  /** Skip the rest of a backoff wait, e.g. when the browser comes back online. */
  reconnectNow() {
    this.wake?.();
  }

  async run() {
    let failures = 0;
    this.onStatus("connecting");
    while (!this.closed.signal.aborted) {
      try {
        failures = (await this.readOnce()) ? 0 : failures + 1;
      } catch (err) {
        if (this.closed.signal.aborted) return;
        if (err instanceof StreamRefused) return this.onFatal(err);
        failures += 1;
      }
      if (this.closed.signal.aborted) return;
      this.onStatus("reconnecting");
      await this.pause(backoff(this.parser.retry ?? MIN_DELAY_MS, failures));
    }
  }

  /** One connection. Resolves true if any bytes arrived before the stream ended. */
  async readOnce() {
    const attempt = new AbortController();
    const abort = () => attempt.abort();
    this.closed.signal.addEventListener("abort", abort, { once: true });
    let stallTimer = setTimeout(abort, STALL_MS);
    const headers = { ...this.headers, Accept: "text/event-stream" };
    if (this.parser.lastEventId) headers["Last-Event-ID"] = this.parser.lastEventId;
    this.parser.startConnection();
    let gotData = false;
    try {
      const res = await fetch(this.url, { headers, signal: attempt.signal, cache: "no-store" });
      if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
        throw new StreamRefused(res.status);
      }
      if (!res.ok || !res.body) throw new Error(`stream answered HTTP ${res.status}`);
      this.onStatus("open");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return gotData;
        gotData = true;
        clearTimeout(stallTimer);
        stallTimer = setTimeout(abort, STALL_MS);
        this.parser.feed(value);
      }
    } finally {
      clearTimeout(stallTimer);
      this.closed.signal.removeEventListener("abort", abort);
      attempt.abort();
    }
  }

  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }
}

function backoff(baseMs, failures) {
  const exp = Math.min(MAX_DELAY_MS, baseMs * 2 ** Math.max(0, failures - 1));
  return exp / 2 + Math.random() * (exp / 2);
}

// The AI SDK's own chat state machine (`AbstractChat`, what `useChat` runs) and transport against relaygate.
// Run by tests/protocols/test_aisdk_client.py:  node chat.mjs <mode>  with BASE, TOKEN, CHAT_ID, TEXT, BODY (JSON) in env.
// Modes: send | resume | send-stop | reconnect | parse (stdin: an SSE body; prints the message it builds).
// Prints progress lines ("text <n>") while it streams and one JSON line "result {...}" at the end.
import { AbstractChat, DefaultChatTransport, readUIMessageStream, parseJsonEventStream, uiMessageChunkSchema } from 'ai';

const { BASE, TOKEN, CHAT_ID, TEXT = 'Hello', BODY = '{}' } = process.env;
const mode = process.argv[2];

const transport = new DefaultChatTransport({
  api: `${BASE}/api/chat`,
  headers: { Authorization: `Bearer ${TOKEN}` },
  body: JSON.parse(BODY),
});

// Every state the assistant message went through, to prove text is never shown twice.
const texts = [];
const textOf = m => m.parts.filter(p => p.type === 'text').map(p => p.text).join('');

class MemState {
  status = 'ready'; error = undefined; messages = [];
  record(m) { if (m.role === 'assistant') { texts.push(textOf(m)); console.log(`text ${textOf(m).length}`); } }
  pushMessage(m) { this.messages = [...this.messages, m]; this.record(m); }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(i, m) { this.messages = this.messages.map((x, j) => (j === i ? m : x)); this.record(m); }
  snapshot(x) { return structuredClone(x); }
}

class NodeChat extends AbstractChat {
  constructor(init) { super({ ...init, state: new MemState() }); }
}

function report(chat, extra = {}) {
  console.log('result ' + JSON.stringify({
    status: chat.status, error: chat.error?.message ?? null, finish: extra.finish ?? null,
    messages: chat.messages.map(m => ({ id: m.id, role: m.role, text: textOf(m), metadata: m.metadata,
                                        parts: m.parts.map(p => p.type) })),
    texts, ...extra,
  }));
}

async function newChat() {
  let done;
  const chat = new NodeChat({ id: CHAT_ID, transport, onFinish: event => { done = event; } });
  const finish = () => done && { finishReason: done.finishReason ?? null, isAbort: done.isAbort,
                                 isError: done.isError, isDisconnect: done.isDisconnect };
  return { chat, finish };
}

if (mode === 'send') {
  const { chat, finish } = await newChat();
  await chat.sendMessage({ text: TEXT });
  report(chat, { finish: finish() });
} else if (mode === 'resume') {
  // A fresh process (a reloaded page): `useChat({resume: true})` calls this on mount.
  const { chat, finish } = await newChat();
  await chat.resumeStream();
  report(chat, { finish: finish() });
} else if (mode === 'send-stop') {
  // The resumable-streams recipe: POST {api}/{id}/stop; the stream itself must then end cleanly.
  const { chat, finish } = await newChat();
  const sending = chat.sendMessage({ text: TEXT });
  while (!texts.some(t => t.length > 0)) await new Promise(r => setTimeout(r, 20));
  const stopped = (await fetch(`${BASE}/api/chat/${encodeURIComponent(CHAT_ID)}/stop`,
    { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` } })).status;
  await sending;
  const ended = finish();
  await chat.resumeStream();
  report(chat, { finish: ended, stopStatus: stopped, afterResume: chat.status });
} else if (mode === 'reconnect') {
  // The transport alone, as a client without chat state would use it.
  const stream = await transport.reconnectToStream({ chatId: CHAT_ID });
  if (stream === null) {
    console.log('result ' + JSON.stringify({ none: true }));
  } else {
    let last;
    for await (const m of readUIMessageStream({ stream })) { last = m; texts.push(textOf(m)); }
    console.log('result ' + JSON.stringify({ none: false, id: last?.id, text: last && textOf(last), texts }));
  }
} else if (mode === 'parse') {
  // An SSE body through the client's own parser, schema and message assembly.
  const body = new Response(process.stdin).body;
  const chunks = parseJsonEventStream({ stream: body, schema: uiMessageChunkSchema }).pipeThrough(
    new TransformStream({ transform(part, controller) {
      if (!part.success) throw part.error;
      controller.enqueue(part.value);
    } }));
  const errors = [];
  let last;
  try {
    for await (const m of readUIMessageStream({ stream: chunks, onError: e => errors.push(e.message) })) {
      last = m; texts.push(textOf(m));
    }
  } catch (e) { errors.push(String(e?.message ?? e)); }
  const tool = last?.parts.find(p => p.type === 'dynamic-tool');
  console.log('result ' + JSON.stringify({
    id: last?.id, text: last && textOf(last), texts, errors, parts: last?.parts.map(p => p.type),
    tool: tool && { toolName: tool.toolName, toolCallId: tool.toolCallId, state: tool.state, input: tool.input,
                    output: tool.output },
  }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}

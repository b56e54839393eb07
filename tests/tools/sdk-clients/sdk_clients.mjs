// Runs one scenario of the official JavaScript SDKs (npm `openai` and `@mistralai/mistralai`) against a live
// `bora serve`, and prints one JSON object on stdout with what the SDK returned (or the error it threw), for
// tests/Bora.Clients.Tests to assert on. Usage:
//   node sdk_clients.mjs '{"scenario":"openai.chat","baseUrl":"http://127.0.0.1:PORT","key":"KEY","model":"M",...}'
// Both SDKs validate what the server sends (the Mistral SDK strictly, with zod schemas), so a body that does not
// match their schemas shows up here as an error with name ResponseValidationError / a thrown TypeError.
import OpenAI from "openai";
import { Mistral } from "@mistralai/mistralai";

const req = JSON.parse(process.argv[2]);
const messages = req.messages ?? [{ role: "user", content: "Tell me a story." }];
const maxTokens = req.maxTokens ?? 12;

const openai = () => new OpenAI({ apiKey: req.key, baseURL: req.baseUrl + "/v1", maxRetries: 0, timeout: 60_000 });
const mistral = () => new Mistral({ apiKey: req.key, serverURL: req.baseUrl, retryConfig: { strategy: "none" }, timeoutMs: 60_000 });

const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather of a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

function errorResult(e) {
  return {
    error: {
      name: e?.constructor?.name ?? typeof e,
      // openai: e.status, e.code, e.param, e.type; mistral: e.statusCode, e.body
      status: e?.status ?? e?.statusCode ?? null,
      code: e?.code ?? null,
      param: e?.param ?? null,
      type: e?.type ?? null,
      body: typeof e?.body === "string" ? e.body : null,
      message: String(e?.message ?? e),
    },
  };
}

const scenarios = {
  async "openai.models"() {
    const page = await openai().models.list();
    return { ids: page.data.map((m) => m.id) };
  },
  async "openai.chat"() {
    const r = await openai().chat.completions.create({ model: req.model, messages, max_tokens: maxTokens, temperature: 0, seed: 1 });
    return { content: r.choices[0].message.content, role: r.choices[0].message.role, finish: r.choices[0].finish_reason, usage: r.usage };
  },
  async "openai.stream"() {
    const stream = await openai().chat.completions.create({
      model: req.model, messages, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let content = "", finish = null, usage = null, chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      const choice = chunk.choices[0];
      if (choice?.delta?.content) content += choice.delta.content;
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    return { content, finish, usage, chunks };
  },
  async "openai.completion"() {
    const r = await openai().completions.create({ model: req.model, prompt: req.prompt ?? "And God said", max_tokens: maxTokens, temperature: 0 });
    return { text: r.choices[0].text, finish: r.choices[0].finish_reason, usage: r.usage };
  },
  async "openai.tools"() {
    const client = openai();
    const first = await client.chat.completions.create({
      model: req.model, messages, tools: [weatherTool], tool_choice: "required", max_tokens: 64, temperature: 0,
    });
    const call = first.choices[0].message.tool_calls?.[0];
    if (!call) return { finish: first.choices[0].finish_reason, toolCalls: 0 };
    const second = await client.chat.completions.create({
      model: req.model, max_tokens: maxTokens, temperature: 0, tools: [weatherTool],
      messages: [...messages, first.choices[0].message, { role: "tool", tool_call_id: call.id, content: "sunny, 21 C" }],
    });
    return { finish: first.choices[0].finish_reason, toolCalls: first.choices[0].message.tool_calls.length, name: call.function.name,
      arguments: call.function.arguments, id: call.id, answer: second.choices[0].message.content, answerFinish: second.choices[0].finish_reason };
  },
  async "openai.json"() {
    const r = await openai().chat.completions.create({
      model: req.model, messages, max_tokens: 64, temperature: 1, seed: 3, response_format: { type: "json_object" },
    });
    const content = r.choices[0].message.content;
    let parsed = true;
    try { JSON.parse(content); } catch { parsed = false; }
    return { content, parsed, finish: r.choices[0].finish_reason };
  },
  async "mistral.models"() {
    const r = await mistral().models.list();
    return { ids: r.data.map((m) => m.id), capabilities: r.data[0]?.capabilities ?? null };
  },
  async "mistral.chat"() {
    const r = await mistral().chat.complete({ model: req.model, messages, maxTokens, temperature: 0, randomSeed: 1 });
    return { content: r.choices[0].message.content, role: r.choices[0].message.role, finish: r.choices[0].finishReason, usage: r.usage };
  },
  async "mistral.stream"() {
    const stream = await mistral().chat.stream({ model: req.model, messages, maxTokens, temperature: 0 });
    let content = "", finish = null, usage = null, chunks = 0;
    for await (const event of stream) {
      chunks++;
      const choice = event.data.choices[0];
      if (typeof choice?.delta?.content === "string") content += choice.delta.content;
      if (choice?.finishReason) finish = choice.finishReason;
      if (event.data.usage) usage = event.data.usage;
    }
    return { content, finish, usage, chunks };
  },
  async "mistral.tools"() {
    const client = mistral();
    const first = await client.chat.complete({ model: req.model, messages, tools: [weatherTool], toolChoice: "any", maxTokens: 64, temperature: 0 });
    const msg = first.choices[0].message;
    const call = msg.toolCalls?.[0];
    if (!call) return { finish: first.choices[0].finishReason, toolCalls: 0 };
    const second = await client.chat.complete({
      model: req.model, maxTokens, temperature: 0, tools: [weatherTool],
      messages: [...messages, msg, { role: "tool", toolCallId: call.id, name: call.function.name, content: "sunny, 21 C" }],
    });
    return { finish: first.choices[0].finishReason, toolCalls: msg.toolCalls.length, name: call.function.name,
      arguments: typeof call.function.arguments === "string" ? call.function.arguments : JSON.stringify(call.function.arguments),
      id: call.id, answer: second.choices[0].message.content, answerFinish: second.choices[0].finishReason };
  },
  async "mistral.json"() {
    const r = await mistral().chat.complete({ model: req.model, messages, maxTokens: 64, temperature: 1, randomSeed: 3, responseFormat: { type: "json_object" } });
    const content = r.choices[0].message.content;
    let parsed = true;
    try { JSON.parse(content); } catch { parsed = false; }
    return { content, parsed, finish: r.choices[0].finishReason };
  },
  async "mistral.fim"() {
    const r = await mistral().fim.complete({ model: req.model, prompt: req.prompt ?? "def add(a, b):", suffix: req.suffix ?? "\n\nprint(add(1, 2))", maxTokens, temperature: 0 });
    return { content: r.choices[0].message.content, finish: r.choices[0].finishReason, usage: r.usage };
  },
};

const run = scenarios[req.scenario];
if (!run) {
  console.error(`unknown scenario ${req.scenario}; expected one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
let result;
try {
  result = await run();
} catch (e) {
  result = errorResult(e);
}
process.stdout.write(JSON.stringify(result) + "\n");

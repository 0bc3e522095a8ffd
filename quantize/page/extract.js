// The extraction specialist in the browser: transformers.js (vendored, same origin) runs the web artifact's ONNX
// decoder on WASM (every core when the page is cross-origin isolated) or WebGPU, greedy, with decoding constrained
// to the extraction schema (constraint.js). The model folder is "../" (the artifact this page sits in) or ?model=URL.
// window.extractor.extract(text, {constrained}) is what the UI and the browser test call.
import { AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, env } from "./vendor/transformers.min.js";
import { SchemaConstraint } from "./constraint.js";

const params = new URLSearchParams(location.search);
const MODEL_URL = new URL(params.get("model") || "../", location.href);
const MODEL = MODEL_URL.href.replace(/\/$/, "");

// transformers.js loads "local" models from <localModelPath>/<name>/<file>, where the path must not be a URL (it
// takes those for hub downloads, which are off): the model folder's last path segment is the name, the rest of its
// path (on this origin) the local model path.
if (MODEL_URL.origin !== location.origin) throw new Error(`the model must come from this origin, not ${MODEL_URL}`);
const segments = MODEL_URL.pathname.split("/").filter(Boolean);
const MODEL_NAME = segments.pop();
env.localModelPath = `/${segments.map((s) => s + "/").join("")}`;
env.allowRemoteModels = false; // the model comes from this origin, never from a hub
env.allowLocalModels = true;
// Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages (COOP/COEP headers).
env.backends.onnx.wasm.numThreads = Number(params.get("threads")) ||
  (self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1);

function useWasmBuild(device) {
  // onnxruntime-web's plain build on WASM, its asyncify build (which WebGPU needs) otherwise; ?wasm= overrides.
  const build = params.get("wasm") || (device === "wasm" ? "plain" : "asyncify");
  const stem = build === "plain" ? "ort-wasm-simd-threaded" : `ort-wasm-simd-threaded.${build}`;
  env.backends.onnx.wasm.wasmPaths = {
    mjs: new URL(`vendor/${stem}.mjs`, location.href).href, wasm: new URL(`vendor/${stem}.wasm`, location.href).href,
  };
  return build;
}

async function json(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function pickDevice() {
  const asked = params.get("device");
  if (asked) return asked;
  try {
    if (navigator.gpu && (await navigator.gpu.requestAdapter())) return "webgpu";
  } catch (_) { /* no adapter: WASM */ }
  return "wasm";
}

class ConstrainedLogits extends LogitsProcessor {
  // Called once per new token with the whole sequence so far; masks every token the schema does not allow next.
  constructor(constraint, promptLength, timings) {
    super();
    Object.assign(this, { constraint, promptLength, timings, state: constraint?.start(), fed: 0, failed: false,
      ms: 0 });
  }

  _call(inputIds, logits) {
    const started = performance.now();
    this.timings.push(started);
    try {
      return this.mask(inputIds, logits);
    } finally {
      this.ms += performance.now() - started;
    }
  }

  mask(inputIds, logits) {
    if (!this.constraint || this.failed) return logits;
    const generated = inputIds[0].slice(this.promptLength).map(Number);
    for (; this.fed < generated.length; this.fed++) this.state = this.constraint.advance(this.state, generated[this.fed]);
    const allowed = this.state === undefined ? [] : this.constraint.allowed(this.state);
    if (!allowed.length) { this.failed = true; return logits; }
    const data = logits.data;
    const kept = allowed.map((id) => data[id]);
    data.fill(-Infinity);
    allowed.forEach((id, i) => { data[id] = kept[i]; });
    return logits;
  }
}

async function load() {
  const started = performance.now();
  const [config, generation, texts, page] = await Promise.all([
    json(`${MODEL}/config.json`), json(`${MODEL}/generation_config.json`), json(`${MODEL}/vocab_texts.json`),
    json(new URL("extraction.json", location.href).href),
  ]);
  const dtype = params.get("dtype") || config["transformers.js_config"]?.dtype || "q4";
  const device = await pickDevice();
  const wasmBuild = useWasmBuild(device);
  if (!MODEL_NAME) throw new Error("serve the folder that holds the artifact, not the artifact itself, as the root");
  const tokenizer = await AutoTokenizer.from_pretrained(MODEL_NAME);
  const model = await AutoModelForCausalLM.from_pretrained(MODEL_NAME, { dtype, device });
  const forwards = timeForwards(model);
  const eos = [generation.eos_token_id].flat().filter((x) => x !== undefined && x !== null);
  let constraint = null, constraintError = null;
  try {
    constraint = new SchemaConstraint(page.program, texts, eos);
  } catch (err) {
    constraintError = String(err);
  }
  return {
    tokenizer, model, forwards, constraint, constraintError, systemPrompt: page.system_prompt, dtype, device,
    wasmBuild, maxNewTokens: Number(params.get("max_new_tokens")) || page.max_new_tokens,
    threads: env.backends.onnx.wasm.numThreads, isolated: self.crossOriginIsolated, loadMs: performance.now() - started,
  };
}

function timeForwards(model) {
  // Each run of the decoder session: its milliseconds and how many tokens it was fed (1 after the prompt when the
  // KV cache is reused; the whole sequence when not), so extract() can split its time.
  const session = model.sessions.model ?? Object.values(model.sessions)[0];
  const log = [];
  const run = session.run.bind(session);
  session.run = async (feeds, ...rest) => {
    const started = performance.now();
    try {
      return await run(feeds, ...rest);
    } finally {
      log.push({ ms: performance.now() - started, tokens: feeds.input_ids?.dims?.[1] ?? null });
    }
  };
  return log;
}

async function extract(text, { constrained = true, maxNewTokens = null } = {}) {
  const s = await ready;
  const started = performance.now();
  s.forwards.length = 0;
  maxNewTokens = maxNewTokens || s.maxNewTokens;
  const messages = [{ role: "system", content: s.systemPrompt }, { role: "user", content: text }];
  const prompt = s.tokenizer.apply_chat_template(messages, { add_generation_prompt: true, tokenize: false });
  const inputs = s.tokenizer(prompt, { add_special_tokens: false });
  const promptIds = Array.from(inputs.input_ids.data, Number);
  const timings = [];
  const processor = new ConstrainedLogits(constrained ? s.constraint : null, promptIds.length, timings);
  const generating = performance.now();
  const output = await s.model.generate({
    ...inputs, max_new_tokens: maxNewTokens, do_sample: false, repetition_penalty: 1.0, no_repeat_ngram_size: 0,
    logits_processor: [processor],
  });
  const ended = performance.now();
  const tokens = Array.from(output.data, Number).slice(promptIds.length);
  const reply = s.tokenizer.decode(tokens, { skip_special_tokens: true });
  const detokenizeMs = performance.now() - ended;
  let parsed = null;
  try { parsed = JSON.parse(reply); } catch (_) { /* shown as invalid */ }
  const [prefill, ...steps] = s.forwards;
  const forwardMs = steps.reduce((sum, f) => sum + f.ms, 0);
  return {
    prompt_ids: promptIds, tokens, text: reply, json: parsed,
    constrained: constrained && !!s.constraint && !processor.failed,
    ms: ended - started, first_token_ms: timings.length ? timings[0] - started : null,
    tokens_per_s: timings.length > 1 ? (timings.length - 1) / ((ended - timings[0]) / 1000) : null,
    // Where the time went: the prompt's forward, the one-token forwards after it, our schema mask, transformers.js's
    // own work per token (logits slice, sampling, cache bookkeeping) and the chat template + tokenizer.
    split_ms: {
      prompt: generating - started, prefill: prefill?.ms ?? null, forward: forwardMs, constraint: processor.ms,
      generate_other: ended - generating - (prefill?.ms ?? 0) - forwardMs - processor.ms, detokenize: detokenizeMs,
    },
    forward_tokens: s.forwards.map((f) => f.tokens),
  };
}

const ready = load();
// What the page runs on, for the browser test and `python -m benchmarks web`.
const info = async () => {
  const s = await ready;
  return { dtype: s.dtype, device: s.device, threads: s.threads, isolated: s.isolated, wasmBuild: s.wasmBuild,
    loadMs: s.loadMs, constrained: !!s.constraint };
};
window.extractor = { ready, extract, info };

// ---- the UI ----------------------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
}

function render(result) {
  $("raw").textContent = result.text;
  const table = $("table");
  table.tBodies[0].replaceChildren();
  const body = table.tBodies[0];
  const obj = result.json;
  $("validity").textContent = obj ? "valid JSON" : "not valid JSON";
  $("validity").className = obj ? "ok" : "bad";
  if (!obj) return;
  for (const a of obj.attributes || []) { const r = body.insertRow(); cell(r, "attribute"); cell(r, a.type); cell(r, a.value); }
  for (const a of obj.aspects || []) { const r = body.insertRow(); cell(r, "aspect"); cell(r, a.sentiment); cell(r, a.aspect); }
  const r = body.insertRow(); cell(r, "overall"); cell(r, obj.sentiment ?? ""); cell(r, "");
}

ready.then((s) => {
  $("status").textContent = `model loaded in ${(s.loadMs / 1000).toFixed(1)} s: ${s.dtype} on ${s.device}` +
    (s.device === "wasm" ? `, ${s.threads} thread(s)${s.isolated ? "" : " (not cross-origin isolated: one thread)"}` +
      `, ${s.wasmBuild} build` : "");
  if (!s.constraint) {
    $("constrained").checked = false;
    $("constrained").disabled = true;
    $("mode").textContent = `UNCONSTRAINED: the schema constraint could not start (${s.constraintError})`;
  }
  $("run").disabled = false;
  document.body.dataset.state = "ready";
}).catch((err) => {
  $("status").textContent = `could not load the model from ${MODEL}: ${err}`;
  document.body.dataset.state = "error";
});

$("run").addEventListener("click", async () => {
  $("run").disabled = true;
  document.body.dataset.state = "running";
  try {
    const result = await extract($("input").value, { constrained: $("constrained").checked });
    $("mode").textContent = result.constrained ? "constrained to the extraction schema"
      : "UNCONSTRAINED: the output may not follow the schema";
    $("mode").className = result.constrained ? "ok" : "bad";
    $("timing").textContent = `${result.tokens.length} tokens in ${(result.ms / 1000).toFixed(2)} s` +
      (result.tokens_per_s ? `, ${result.tokens_per_s.toFixed(1)} tokens/s` : "");
    render(result);
  } catch (err) {
    $("raw").textContent = String(err);
  } finally {
    $("run").disabled = false;
    document.body.dataset.state = "ready";
  }
});

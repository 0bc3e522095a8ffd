// Schema-constrained decoding in the page: the program compiled from the JSON Schema at export time
// (quantize/web_schema.py, which is the reference these steps mirror) run over characters, then over tokens
// through a trie of the vocabulary's texts (vocab_texts.json, written by the export).
// A state is a linked stack of frames {f, next}; null means complete (only EOS may follow); undefined: rejected.

const DONE = null;

function push(next, f) { return { f, next }; }

function expand(node, tail) {
  if (node.type === "object") {
    let st = push(tail, { k: "lit", s: "}", i: 0 });
    for (let i = node.props.length - 1; i >= 0; i--) {
      const [key, value] = node.props[i];
      st = expand(value, st);
      st = push(st, { k: "lit", s: (i === 0 ? "{" : ", ") + '"' + key + '": ', i: 0 });
    }
    return st;
  }
  if (node.type === "array") return push(push(tail, { k: "arr", node, n: 0 }), { k: "lit", s: "[", i: 0 });
  if (node.type === "enum") return push(push(tail, { k: "enum", node, p: "" }), { k: "lit", s: '"', i: 0 });
  return push(push(tail, { k: "str", node, n: 0 }), { k: "lit", s: '"', i: 0 });
}

export function step(st, ch) {
  if (!st) return undefined;
  const f = st.f, rest = st.next;
  switch (f.k) {
    case "lit":
      if (f.s[f.i] !== ch) return undefined;
      return f.i + 1 === f.s.length ? rest : push(rest, { k: "lit", s: f.s, i: f.i + 1 });
    case "enum": {
      if (ch === '"') return f.node.values.includes(f.p) ? rest : undefined;
      const p = f.p + ch;
      return f.node.values.some((v) => v.startsWith(p)) ? push(rest, { k: "enum", node: f.node, p }) : undefined;
    }
    case "str":
      if (ch === '"') return f.n >= f.node.min ? rest : undefined;
      if (ch === "\\" || ch < " " || f.n >= f.node.max) return undefined;
      return push(rest, { k: "str", node: f.node, n: f.n + 1 });
    default: // "arr": before "]" or the next item
      if (ch === "]") return rest;
      if (f.n >= f.node.max) return undefined;
      if (f.n === 0) return step(expand(f.node.items, push(rest, { k: "arr", node: f.node, n: 1 })), ch);
      if (ch !== ",") return undefined;
      return push(expand(f.node.items, push(rest, { k: "arr", node: f.node, n: f.n + 1 })), { k: "lit", s: " ", i: 0 });
  }
}

export class SchemaConstraint {
  /** program: the compiled schema; texts: each token id's text (null: never emitted); eos: the EOS ids. */
  constructor(program, texts, eos) {
    this.program = program;
    this.texts = texts;
    this.eos = eos;
    this.trie = { ids: [], kids: new Map() };
    texts.forEach((text, id) => {
      if (!text) return;
      let node = this.trie;
      for (const ch of text) {
        if (!node.kids.has(ch)) node.kids.set(ch, { ids: [], kids: new Map() });
        node = node.kids.get(ch);
      }
      node.ids.push(id);
    });
    // Inside a string most tokens are plain text, allowed by their length alone: the fast path of allowed(), as in
    // quantize/web_schema.py (walking the whole trie there costs ~1 s a token on a 49k vocabulary).
    const plain = [], other = [];
    texts.forEach((text, id) => {
      if (!text) return;
      const chars = [...text];
      if (chars.some((c) => c === '"' || c === "\\" || c < " ")) other.push(id);
      else plain.push([chars.length, id]);
    });
    plain.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    this.plainIds = plain.map((p) => p[1]);
    this.plainLengths = plain.map((p) => p[0]);
    this.otherIds = other;
  }

  start() { return expand(this.program, DONE); }

  /** The state after token `id` (undefined: not allowed). */
  advance(st, id) {
    if (this.eos.includes(id) || st === DONE) return undefined;
    const text = this.texts[id];
    if (!text) return undefined;
    for (const ch of text) {
      st = step(st, ch);
      if (st === undefined) return undefined;
    }
    return st;
  }

  /** The token ids allowed after `st`. */
  allowed(st) {
    if (st === DONE) return [...this.eos];
    if (st.f.k === "str") {
      const room = st.f.node.max - st.f.n;
      let lo = 0, hi = this.plainLengths.length; // the first plain token longer than the room left
      while (lo < hi) { const mid = (lo + hi) >> 1; if (this.plainLengths[mid] <= room) lo = mid + 1; else hi = mid; }
      const found = this.plainIds.slice(0, lo);
      for (const id of this.otherIds) if (this.advance(st, id) !== undefined) found.push(id);
      return found;
    }
    const found = [];
    const stack = [[this.trie, st]];
    while (stack.length) {
      const [node, s] = stack.pop();
      for (const [ch, child] of node.kids) {
        const next = step(s, ch);
        if (next === undefined) continue;
        for (const id of child.ids) found.push(id);
        if (child.kids.size) stack.push([child, next]);
      }
    }
    return found;
  }
}

// Checks signed documents in the browser, trusting nothing the server says about them.
//
// A signed document is {"payload": ..., "signature": {"alg", "key_id", "value"}}; the signature
// is Ed25519 over the canonical JSON of the payload as the server's Python writes it: keys
// sorted, no spaces, ASCII only (\uXXXX escapes), floats as Python's repr. JSON.parse would
// lose how numbers were written (1.0 becomes 1), so documents are read by the small parser
// below, which keeps each number's text, and numbers are written back in Python's spelling.
"use strict";

class Num {
  constructor(text) { this.text = text; }
}

// Sticky: each matches at one position, so a long document is read in one pass.
const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/y;

function parse(text) {
  let i = 0;
  const fail = (what) => { throw new SyntaxError(`${what} at character ${i}`); };
  const space = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  function value() {
    space();
    const c = text[i];
    if (c === "{") return object();
    if (c === "[") return array();
    if (c === '"') return string();
    if (text.startsWith("true", i)) { i += 4; return true; }
    if (text.startsWith("false", i)) { i += 5; return false; }
    if (text.startsWith("null", i)) { i += 4; return null; }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail("unexpected input");
    i += m[0].length;
    return new Num(m[0]);
  }
  function string() {
    STRING.lastIndex = i;
    const m = STRING.exec(text);
    if (!m) fail("bad string");
    i += m[0].length;
    return JSON.parse(m[0]);
  }
  function array() {
    i++;
    const out = [];
    space();
    if (text[i] === "]") { i++; return out; }
    for (;;) {
      out.push(value());
      space();
      if (text[i] === ",") { i++; continue; }
      if (text[i] === "]") { i++; return out; }
      fail("expected , or ]");
    }
  }
  function object() {
    i++;
    const out = new Map();
    space();
    if (text[i] === "}") { i++; return out; }
    for (;;) {
      space();
      if (text[i] !== '"') fail("expected a key");
      const key = string();
      space();
      if (text[i] !== ":") fail("expected :");
      i++;
      out.set(key, value());
      space();
      if (text[i] === ",") { i++; continue; }
      if (text[i] === "}") { i++; return out; }
      fail("expected , or }");
    }
  }
  const result = value();
  space();
  if (i !== text.length) fail("trailing input");
  return result;
}

function pyFloat(x) {
  if (!Number.isFinite(x)) throw new Error("non-finite number");
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mantissa, exp] = x.toExponential().split("e"); // shortest round-trip digits
  const neg = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  const e = parseInt(exp, 10);
  let out;
  if (e >= -5 + 1 && e < 16) {
    if (e >= 0) {
      out = digits.length <= e + 1
        ? digits + "0".repeat(e + 1 - digits.length) + ".0"
        : digits.slice(0, e + 1) + "." + digits.slice(e + 1);
    } else {
      out = "0." + "0".repeat(-e - 1) + digits;
    }
  } else {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    out = `${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  return (neg ? "-" : "") + out;
}

function pyNumber(n) {
  return /^-?\d+$/.test(n.text) ? n.text.replace(/^-0$/, "0") : pyFloat(Number(n.text));
}

function pyString(s) {
  const short = { 0x22: '\\"', 0x5c: "\\\\", 0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t", 0x08: "\\b", 0x0c: "\\f" };
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    if (short[c]) out += short[c];
    else if (c < 0x20 || c > 0x7e) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += s[k];
  }
  return out + '"';
}

function canonical(v) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (v instanceof Num) return pyNumber(v);
  if (typeof v === "string") return pyString(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  const keys = [...v.keys()].sort(byCodePoint);
  return `{${keys.map((k) => `${pyString(k)}:${canonical(v.get(k))}`).join(",")}}`;
}

// Python sorts keys by code point; JavaScript's < compares UTF-16 code units, which differs
// for characters past U+FFFF.
function byCodePoint(a, b) {
  const x = [...a].map((c) => c.codePointAt(0));
  const y = [...b].map((c) => c.codePointAt(0));
  for (let k = 0; k < Math.min(x.length, y.length); k++) {
    if (x[k] !== y[k]) return x[k] - y[k];
  }
  return x.length - y.length;
}

function pretty(v, indent = "") {
  const inner = indent + "  ";
  if (v instanceof Num) return v.text;
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return `[\n${v.map((x) => inner + pretty(x, inner)).join(",\n")}\n${indent}]`;
  }
  if (!v.size) return "{}";
  const rows = [...v.entries()].map(([k, x]) => `${inner}${JSON.stringify(k)}: ${pretty(x, inner)}`);
  return `{\n${rows.join(",\n")}\n${indent}}`;
}

function bytesOf(b64) {
  return Uint8Array.from(atob(b64.replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function importKey(pem) {
  const body = pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, "");
  const key = await crypto.subtle.importKey("spki", bytesOf(body), { name: "Ed25519" }, true, ["verify"]);
  const raw = await crypto.subtle.exportKey("raw", key);
  const id = hex(await crypto.subtle.digest("SHA-256", raw)).slice(0, 16);
  return { key, id };
}

async function verifyDocument(text, pem) {
  const doc = parse(text);
  if (!(doc instanceof Map) || !doc.has("payload") || !(doc.get("signature") instanceof Map)) {
    return { ok: false, why: "not a signed document (payload and signature expected)" };
  }
  const signature = doc.get("signature");
  if (signature.get("alg") !== "Ed25519") return { ok: false, why: "not an Ed25519 signature" };
  const { key, id } = await importKey(pem);
  if (signature.get("key_id") !== id) {
    return { ok: false, why: `signed by key ${signature.get("key_id")}, but the key field holds key ${id}` };
  }
  const data = new TextEncoder().encode(canonical(doc.get("payload")));
  const good = await crypto.subtle.verify({ name: "Ed25519" }, key, bytesOf(signature.get("value")), data);
  const digest = hex(await crypto.subtle.digest("SHA-256", data));
  return good
    ? { ok: true, why: `valid: signed by key ${id}; payload SHA-256 ${digest.slice(0, 16)}…` }
    : { ok: false, why: `INVALID: the signature does not match this document (key ${id})` };
}

async function show(section, pem) {
  const out = section.querySelector('[data-field="verdict"]');
  try {
    const result = await verifyDocument(section.querySelector('[data-field="document"]').value, pem);
    out.textContent = result.ok ? `✔ Signature ${result.why}` : `✘ ${result.why}`;
    out.className = `verdict ${result.ok ? "pass" : "fail"}`;
  } catch (err) {
    // WebCrypto's errors often carry no message: say what could not be read.
    const why = err instanceof SyntaxError ? `the document is not JSON (${err.message})`
      : err.name === "DataError" || err.name === "InvalidCharacterError" ? "the key field does not hold an Ed25519 public key (PEM)"
      : `${err.name}${err.message ? `: ${err.message}` : ""}`;
    out.textContent = `✘ Cannot check: ${why}`;
    out.className = "verdict fail";
  }
}

async function load() {
  const keyField = document.getElementById("public-key");
  if (!window.crypto || !crypto.subtle) {
    document.querySelectorAll('[data-field="verdict"]').forEach((el) => {
      el.textContent = "This browser cannot check signatures here (WebCrypto needs HTTPS).";
    });
    return;
  }
  const answer = await fetch("/console/api/signing-key", { credentials: "same-origin" });
  if (!answer.ok) {
    const why = answer.status === 401 ? "your session has ended: sign in again" : `HTTP ${answer.status}`;
    document.querySelectorAll('[data-field="verdict"]').forEach((el) => { el.textContent = why; });
    return;
  }
  keyField.value = (await answer.json()).public_key_pem;
  const showKeyId = async () => {
    try {
      document.getElementById("key-id").textContent = (await importKey(keyField.value)).id;
    } catch (err) {
      document.getElementById("key-id").textContent = "not an Ed25519 public key";
    }
  };
  keyField.addEventListener("change", showKeyId);
  await showKeyId();
  for (const section of document.querySelectorAll("section.signed")) {
    section.querySelector('[data-action="verify"]').addEventListener("click", () => show(section, keyField.value));
    if (!section.dataset.url) continue; // not issued yet: nothing to fetch, paste a copy to check
    const field = section.querySelector('[data-field="document"]');
    const response = await fetch(section.dataset.url, { credentials: "same-origin" });
    const text = await response.text();
    if (!response.ok) {
      let detail = text;
      try { detail = JSON.parse(text).detail; } catch (err) { /* not a problem document */ }
      section.querySelector('[data-field="verdict"]').textContent = `not available: ${detail}`;
      continue;
    }
    field.value = pretty(parse(text));
    await show(section, keyField.value);
  }
}

document.addEventListener("DOMContentLoaded", load);

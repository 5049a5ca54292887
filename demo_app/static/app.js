// twotier demo page: send real requests and draw what each tier reported about them.
// No framework, no build step: the proxy serves this file as it is.
"use strict";

// Server-Timing (W3C): "name;dur=1.2;desc=\"text\", name2;dur=3". Each tier adds its own header
// field; fetch() joins them with ", ". Returns {name: {dur, desc}}.
function parseServerTiming(value) {
  const entries = {};
  if (!value) return entries;
  const parts = value.match(/(?:[^,"]|"(?:[^"\\]|\\.)*")+/g) || [];
  for (const part of parts) {
    const params = part.match(/(?:[^;"]|"(?:[^"\\]|\\.)*")+/g) || [];
    const name = (params.shift() || "").trim();
    if (!name) continue;
    const entry = { dur: null, desc: "" };
    for (const param of params) {
      const eq = param.indexOf("=");
      if (eq < 0) continue;
      const key = param.slice(0, eq).trim().toLowerCase();
      let val = param.slice(eq + 1).trim();
      if (val.startsWith('"')) val = val.slice(1, -1).replace(/\\(.)/g, "$1");
      if (key === "dur") entry.dur = parseFloat(val);
      else if (key === "desc") entry.desc = val;
    }
    if (!(name in entries)) entries[name] = entry;
  }
  return entries;
}

// Headers the proxy writes itself (replacing any a client sent), marked in the table.
const SET_BY_PROXY = new Set(["forwarded", "via", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
  "x-real-ip", "x-request-id"]);

function ms(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value < 10 ? `${value.toFixed(2)} ms` : `${value.toFixed(1)} ms`;
}

function setField(name, value, className) {
  for (const el of document.querySelectorAll(`[data-field="${name}"]`)) {
    el.textContent = value;
    el.classList.remove("reused", "new");
    if (className) el.classList.add(className);
  }
}

// One stacked bar whose segments add up to the browser's round trip.
function drawBar(barId, legendId, segments) {
  const bar = document.getElementById(barId);
  const legend = document.getElementById(legendId);
  const total = segments.reduce((sum, s) => sum + Math.max(s.ms, 0), 0) || 1;
  bar.replaceChildren();
  legend.replaceChildren();
  for (const s of segments) {
    const part = document.createElement("div");
    part.className = s.cls;
    part.style.width = `${(Math.max(s.ms, 0) / total) * 100}%`;
    part.title = `${s.label}: ${ms(s.ms)}`;
    bar.append(part);
    const item = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.className = s.cls;
    const strong = document.createElement("b");
    strong.textContent = ms(Math.max(s.ms, 0));
    item.append(swatch, `${s.label} `, strong);
    legend.append(item);
  }
}

async function timedFetch(url, options) {
  const started = performance.now();
  const response = await fetch(url, { cache: "no-store", ...options });
  const headersAt = performance.now() - started; // Server-Timing describes the time to the response head
  return { response, headersAt };
}

// The browser's own account of the last request to `url` (Resource Timing; same origin, so every phase is
// visible). `wait` runs from the request leaving the browser to the first byte of the answer: what the
// network and the two tiers took, without the browser's queueing or the opening of its connection, which
// `setup` is (0 on a kept-alive connection). The entry is written once the body is in, so call this after
// reading it. Falls back to the fetch() round trip when there is no entry (a full timing buffer).
function browserTiming(url, headersAt) {
  const entries = performance.getEntriesByName(new URL(url, location.href).href, "resource");
  const entry = entries[entries.length - 1];
  const protocol = entry?.nextHopProtocol || "";
  if (!entry || !entry.responseStart || !entry.requestStart) return { wait: headersAt, setup: 0, exact: false, protocol };
  const setup = entry.connectEnd > entry.connectStart ? entry.connectEnd - entry.domainLookupStart : 0;
  return { wait: entry.responseStart - entry.requestStart, setup, exact: true, protocol };
}

// The protocol a request used to reach the proxy, from Resource Timing's nextHopProtocol: the ALPN id
// ("h2", "http/1.1"; "" when the browser does not say). The proxy forwards every request as HTTP/1.1.
const PROTOCOLS = { "h2": "HTTP/2", "h2c": "HTTP/2", "http/1.1": "HTTP/1.1", "http/1.0": "HTTP/1.0", "h3": "HTTP/3" };

function describeProtocol(id) {
  if (!id) return "(not reported)";
  return PROTOCOLS[id] ? `${PROTOCOLS[id]} (${id})` : id;
}

function describeWait(browser) {
  if (!browser.exact) return `· ${ms(browser.wait)} from the browser's point of view`;
  const setup = browser.setup > 0 ? `; opening the browser's connection took ${ms(browser.setup)} more` : "";
  return `· ${ms(browser.wait)} from the request leaving the browser to the answer's first byte${setup}`;
}

function describeProxy(timing) {
  const [handler, route] = (timing.proxy?.desc || "").split(" ");
  return { handler: handler || "?", route: route || "?" };
}

async function loadWhoami() {
  const button = document.getElementById("api-again");
  const error = document.getElementById("api-error");
  button.disabled = true;
  try {
    const { response, headersAt } = await timedFetch("/api/whoami");
    if (!response.ok) throw new Error(`GET /api/whoami answered ${response.status} ${response.statusText}`);
    const seen = await response.json();
    const browser = browserTiming("/api/whoami", headersAt);
    const rawTiming = response.headers.get("server-timing") || "";
    const timing = parseServerTiming(rawTiming);
    const { handler, route } = describeProxy(timing);
    const proxy = timing.proxy?.dur ?? null;
    const connect = timing["upstream-connect"] ?? null;
    const ttfb = timing["upstream-ttfb"]?.dur ?? null;
    const app = timing.app?.dur ?? null;

    setField("api.browser", ms(browser.wait));
    setField("api.protocol", describeProtocol(browser.protocol));
    setField("api.rid", response.headers.get("x-request-id") || "–");
    setField("api.route", route);
    setField("api.handler", handler === "proxy" ? "forwarded" : handler);
    if (connect) {
      const reused = connect.desc === "reused";
      setField("api.conn", reused ? "pooled, reused" : `new (${ms(connect.dur)} to connect)`, reused ? "reused" : "new");
      setField("api.hop2", `${seen.protocol || "HTTP/1.1"}, ${reused ? "kept-alive" : "new"} connection`);
    } else {
      setField("api.conn", "–");
    }
    setField("api.proxy", ms(proxy));
    setField("api.via", response.headers.get("via") || "–");
    setField("api.pid", String(seen.worker_pid));
    setField("api.thread", seen.thread);
    setField("api.model", seen.multithread ? "threads (gthread)" : "1 request per process (sync)");
    setField("api.hostname", seen.hostname);
    setField("api.server", seen.server_software || "–");
    setField("api.view", seen.view);
    setField("api.remote", seen.peer_addr && seen.peer_addr !== seen.remote_addr
      ? `${seen.remote_addr} (TCP peer ${seen.peer_addr})` : seen.remote_addr);
    setField("api.scheme", seen.scheme);
    setField("api.host", seen.host);
    setField("api.app", ms(app));
    setField("api.total", describeWait(browser));
    setField("api.hop1", `${PROTOCOLS[browser.protocol] || "HTTP"} · ${response.status} ${response.statusText || "OK"}`);

    const connectMs = connect?.dur ?? 0;
    drawBar("api-bar", "api-legend", [
      { label: "network + browser", ms: browser.wait - (proxy ?? 0), cls: "seg-net" },
      { label: "proxy itself", ms: (proxy ?? 0) - (ttfb ?? 0), cls: "seg-proxy" },
      { label: "upstream connect", ms: connectMs, cls: "seg-connect" },
      { label: "Gunicorn + sockets", ms: (ttfb ?? 0) - connectMs - (app ?? 0), cls: "seg-gunicorn" },
      { label: "Flask view", ms: app ?? 0, cls: "seg-app" },
    ]);

    document.getElementById("api-server-timing").textContent = `Server-Timing: ${rawTiming}`;
    const body = document.querySelector("#api-headers tbody");
    body.replaceChildren();
    for (const [name, value] of Object.entries(seen.headers || {})) {
      const row = body.insertRow();
      row.insertCell().textContent = name;
      const cell = row.insertCell();
      cell.textContent = value;
      if (SET_BY_PROXY.has(name.toLowerCase())) {
        row.className = "by-proxy";
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "set by the proxy";
        cell.append(" ", tag);
      }
    }
    error.hidden = true;
  } catch (exc) {
    error.textContent = `Could not reach the app tier: ${exc.message}. Is the app server running behind the proxy?`;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function loadStatic() {
  const button = document.getElementById("static-again");
  button.disabled = true;
  try {
    const { response, headersAt } = await timedFetch("/static/tiers.svg");
    const body = await response.blob();
    const browser = browserTiming("/static/tiers.svg", headersAt);
    const rawTiming = response.headers.get("server-timing") || "";
    const timing = parseServerTiming(rawTiming);
    const { handler, route } = describeProxy(timing);
    setField("static.browser", ms(browser.wait));
    setField("static.protocol", describeProtocol(browser.protocol));
    setField("static.hop1", PROTOCOLS[browser.protocol] || "HTTP");
    setField("static.status", `${response.status} ${response.statusText || ""}`.trim());
    setField("static.route", route);
    setField("static.handler", handler === "static" ? "file from disk" : handler);
    setField("static.proxy", ms(timing.proxy?.dur ?? null));
    setField("static.size", `${body.size} bytes, ${response.headers.get("content-type") || "?"}`);
    document.getElementById("static-server-timing").textContent = `Server-Timing: ${rawTiming}`;
  } catch (exc) {
    setField("static.status", `failed: ${exc.message}`);
  } finally {
    button.disabled = false;
  }
}

// What X-Cache-Status says about the app tier: answered by the proxy alone, or made (or checked) by Gunicorn.
const CACHE_REACHED = {
  HIT: [false, "not forwarded", "no: the proxy answered alone"],
  STALE: [false, "not forwarded", "no: a stale answer, refreshed in the background"],
  UPDATING: [false, "not forwarded", "no: a stale answer, another request refreshes it"],
  MISS: [true, "forwarded", "yes: Gunicorn made it, the proxy kept it"],
  EXPIRED: [true, "forwarded", "yes: the stored one had expired, Gunicorn made a new one"],
  REVALIDATED: [true, "If-None-Match: 304", "yes: Gunicorn said the stored one is still good"],
  BYPASS: [true, "forwarded", "yes: the cache was bypassed"],
};
const cacheSeen = { count: 0 };

async function loadCached() {
  const button = document.getElementById("cache-again");
  button.disabled = true;
  try {
    const { response, headersAt } = await timedFetch("/api/cached/report");
    const body = await response.json();
    const browser = browserTiming("/api/cached/report", headersAt);
    const rawTiming = response.headers.get("server-timing") || "";
    const timing = parseServerTiming(rawTiming);
    const { handler } = describeProxy(timing);
    const status = response.headers.get("x-cache-status") || "none";
    const [reached, hop, who] = CACHE_REACHED[status] || [true, "forwarded", "yes"];
    cacheSeen.count += 1;
    setField("cache.browser", ms(browser.wait));
    setField("cache.seen", String(cacheSeen.count));
    setField("cache.status", status, reached ? "new" : "reused");
    setField("cache.age", response.headers.get("age") !== null ? `${response.headers.get("age")} s` : "– (just made)");
    setField("cache.handler", handler === "cache" ? "answered from the cache" : "forwarded, then stored");
    setField("cache.proxy", ms(timing.proxy?.dur ?? null));
    setField("cache.hop", hop);
    setField("cache.reached", who);
    setField("cache.pid", String(body.worker_pid));
    setField("cache.made", new Date(body.generated_at * 1000).toLocaleTimeString());
    setField("cache.count", String(body.made_by_this_process));
    document.getElementById("cache-hop").classList.toggle("off", !reached);
    document.getElementById("cache-app").classList.toggle("idle", !reached);
    document.getElementById("cache-server-timing").textContent = `Server-Timing: ${rawTiming}`;
  } catch (exc) {
    setField("cache.status", `failed: ${exc.message}`);
  } finally {
    button.disabled = false;
  }
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const out = document.getElementById("upload-result");
  const { response, headersAt } = await timedFetch("/api/upload", { method: "POST", body: new FormData(form) });
  const text = await response.text();
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 1); } catch { /* not JSON: show as is */ }
  out.textContent = `${response.status} in ${ms(headersAt)} (browser round trip)\n${shown}`;
}

// The WebSocket panel: one socket through the proxy's tunnel, messages timed from send to echo.
const ws = { socket: null, sent: 0, echoed: 0, pending: new Map(), lines: [] };

function wsLog(text) {
  ws.lines.push(text);
  if (ws.lines.length > 8) ws.lines.shift();
  document.getElementById("ws-log").textContent = ws.lines.join("\n");
}

function wsConnect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/echo`;
  const socket = new WebSocket(url);
  ws.socket = socket;
  setField("ws.state", "connecting…");
  socket.addEventListener("open", () => {
    setField("ws.state", "open", "reused");
    setField("ws.hop1", "101: tunnel");
    wsLog(`open: ${url} (one upgrade request, then frames both ways)`);
  });
  socket.addEventListener("message", (event) => {
    const data = JSON.parse(event.data);
    setField("ws.pid", String(data.worker_pid));
    setField("ws.thread", data.thread);
    if (data.hello) {
      setField("ws.scheme", data.scheme);
      return;
    }
    const started = ws.pending.get(data.echo);
    ws.pending.delete(data.echo);
    ws.echoed += 1;
    setField("ws.count", `${ws.sent} / ${ws.echoed}`);
    if (started !== undefined) setField("ws.rtt", ms(performance.now() - started));
    wsLog(`echo: ${data.echo}  (worker ${data.worker_pid}, ${data.thread})`);
  });
  socket.addEventListener("close", (event) => {
    setField("ws.state", `closed (${event.code}${event.reason ? ", " + event.reason : ""})`, "new");
    setField("ws.hop1", "closed");
    wsLog(`closed: code ${event.code}. Send again to reopen.`);
  });
}

function wsSend() {
  if (!ws.socket || ws.socket.readyState > WebSocket.OPEN) wsConnect();
  const send = () => {
    const text = `message ${++ws.sent} at ${new Date().toLocaleTimeString()}`;
    ws.pending.set(text, performance.now());
    ws.socket.send(text);
    setField("ws.count", `${ws.sent} / ${ws.echoed}`);
  };
  if (ws.socket.readyState === WebSocket.OPEN) send();
  else ws.socket.addEventListener("open", send, { once: true });
}

document.getElementById("ws-send").addEventListener("click", wsSend);
document.getElementById("api-again").addEventListener("click", loadWhoami);
document.getElementById("static-again").addEventListener("click", loadStatic);
document.getElementById("cache-again").addEventListener("click", loadCached);
document.getElementById("upload-form").addEventListener("submit", upload);
// The first requests wait for the page's load event: made while the page itself is still loading, they
// would queue behind its files and mostly measure the browser warming up, not the two tiers. One after
// the other, so neither waits on the other's connection.
async function firstRequests() {
  performance.setResourceTimingBufferSize(1000);  // "Send again" many times and still read each request
  setField("page.protocol", describeProtocol(performance.getEntriesByType("navigation")[0]?.nextHopProtocol));
  await loadWhoami();
  await loadStatic();
  await loadCached();
  wsSend();
}
if (document.readyState === "complete") firstRequests();
else window.addEventListener("load", firstRequests, { once: true });

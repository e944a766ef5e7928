// The dev console's page: reads the console's JSON API (same origin) and draws it. Every
// value from the platform (names, log lines, event fields) goes in as text, never as HTML.
"use strict";

const API = "/_console/api";
const REFRESH_MS = 2000;
const MAX_EVENT_ROWS = 300;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function cell(child, className) {
  const td = el("td", undefined, className);
  td.appendChild(child);
  return td;
}

async function getJson(path) {
  const response = await fetch(API + path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.status + " " + response.statusText);
  return body;
}

function healthClass(health) {
  return health === "ready" ? "ok" : health === "not ready" ? "warn" : "bad";
}

// -- tabs ---------------------------------------------------------------------------------

const opened = new Set(["overview"]);
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("nav button")) other.classList.remove("active");
    button.classList.add("active");
    for (const tab of document.querySelectorAll("section.tab")) {
      tab.hidden = tab.id !== button.dataset.tab;
    }
    const first = !opened.has(button.dataset.tab);
    opened.add(button.dataset.tab);
    if (button.dataset.tab === "traces") loadTraces();
    if (button.dataset.tab === "explorer" && first) loadExplorer();
  });
}

// -- deployables, instances, breakers, logs -----------------------------------------------

let shownLog = null;

async function loadDeployables() {
  let data;
  try {
    data = await getJson("/deployables");
  } catch (error) {
    document.getElementById("stack-status").textContent = "console: " + error.message;
    return;
  }
  const status = document.getElementById("stack-status");
  status.textContent = "stack: " + data.stack;
  status.className = "badge " + (data.stack === "ready" ? "ok" : "warn");
  const body = document.querySelector("#deployables tbody");
  body.replaceChildren();
  for (const process of data.processes) {
    const upstream = process.upstream;
    const instances = upstream
      ? upstream.healthy_instances + "/" + upstream.instances.length + " healthy"
      : "1 (not routed)";
    const breakers = upstream
      ? upstream.instances.map((instance) => instance.breaker).join(", ")
      : "";
    const logButton = el("button", "tail", "link");
    logButton.type = "button";
    logButton.addEventListener("click", () => showLog(process.name));
    const tr = row([
      el("td", process.name),
      el("td", process.kind),
      cell(el("span", process.health, "badge " + healthClass(process.health)), "health"),
      el("td", instances),
      el("td", breakers),
      el("td", process.restarts, "restarts"),
      el("td", process.pid, "mono"),
      cell(logButton),
    ]);
    tr.dataset.name = process.name;
    tr.dataset.health = process.health;
    body.appendChild(tr);
  }
  if (shownLog) showLog(shownLog);
}

async function showLog(name) {
  shownLog = name;
  document.getElementById("log-panel").hidden = false;
  document.getElementById("log-name").textContent = name;
  const lines = document.getElementById("log-lines");
  try {
    const data = await getJson("/logs/" + encodeURIComponent(name) + "?lines=60");
    lines.textContent = data.lines.join("\n");
  } catch (error) {
    lines.textContent = error.message;
  }
}

async function loadEdge() {
  let data;
  try {
    data = await getJson("/edge");
  } catch (error) {
    document.getElementById("rate-limit").textContent = error.message;
    return;
  }
  const limit = data.rate_limit;
  document.getElementById("rate-limit").textContent =
    limit.limit + " requests per " + limit.window_seconds + " s per client, kept in " +
    limit.store + (limit.degraded ? " (degraded: per process)" : "") + "; refused so far: " +
    limit.refused;
  const body = document.querySelector("#rate-clients tbody");
  body.replaceChildren();
  if (limit.clients === null) {
    body.appendChild(row(["kept in Redis, shared by every gateway replica", ""]));
  } else {
    for (const client of limit.clients) body.appendChild(row([client.client, client.requests]));
  }
}

// -- architecture -------------------------------------------------------------------------

let diagrams = [];
let rendered = 0;

async function loadArchitecture() {
  const data = await getJson("/architecture");
  diagrams = data.diagrams;
  const choice = document.getElementById("diagram-choice");
  choice.replaceChildren();
  diagrams.forEach((diagram, index) => {
    const option = el("option", diagram.title);
    option.value = String(index);
    choice.appendChild(option);
  });
  choice.addEventListener("change", () => drawDiagram(Number(choice.value)));
  if (window.mermaid) {
    window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
  }
  if (diagrams.length) await drawDiagram(0);
  else document.getElementById("diagram").textContent = "no diagrams (generated/docs/architecture.md)";
}

async function drawDiagram(index) {
  const target = document.getElementById("diagram");
  const source = document.getElementById("diagram-source");
  source.textContent = diagrams[index].source;
  if (!window.mermaid) {
    // The bundle is vendored when the package is built; without it, show the source.
    target.textContent = "Mermaid is not installed with this package; the diagram's source:";
    source.hidden = false;
    return;
  }
  source.hidden = true;
  rendered += 1;
  const { svg } = await window.mermaid.render("diagram-svg-" + rendered, diagrams[index].source);
  target.replaceChildren(withoutInlineStyles(svg));
}

let diagramSheet = null;

// Mermaid's SVG carries a <style> element and style attributes, which this page's policy
// (no 'unsafe-inline') refuses from markup. The SVG is parsed inertly, its stylesheet
// becomes a constructed one and each style attribute is set through the CSSOM: both are
// the script's own doing, which the policy allows.
function withoutInlineStyles(svgText) {
  // As HTML: the labels are HTML inside <foreignObject> (<br> unclosed), which XML refuses.
  const parsed = new DOMParser().parseFromString(svgText, "text/html").querySelector("svg");
  const css = [];
  for (const style of parsed.querySelectorAll("style")) {
    css.push(style.textContent);
    style.remove();
  }
  const styled = [];
  for (const node of [parsed, ...parsed.querySelectorAll("[style]")]) {
    if (node.hasAttribute("style")) {
      styled.push([node, node.getAttribute("style")]);
      node.setAttribute("data-styled", String(styled.length - 1));
      node.removeAttribute("style");
    }
  }
  const svg = document.importNode(parsed, true);
  for (const node of [svg, ...svg.querySelectorAll("[data-styled]")]) {
    const index = node.getAttribute("data-styled");
    if (index === null) continue;
    node.style.cssText = styled[Number(index)][1];
    node.removeAttribute("data-styled");
  }
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(css.join("\n"));
  document.adoptedStyleSheets = [
    ...document.adoptedStyleSheets.filter((other) => other !== diagramSheet),
    sheet,
  ];
  diagramSheet = sheet;
  return svg;
}

// -- events -------------------------------------------------------------------------------

const correlation = document.getElementById("correlation");

function eventRow(event, fresh) {
  const meta = event.metadata || {};
  const follow = el("button", meta.correlationId, "link mono");
  follow.type = "button";
  follow.addEventListener("click", () => {
    correlation.value = meta.correlationId;
    loadEvents();
  });
  const traceId = (meta.traceparent || "").split("-")[1] || "";
  const trace = el("button", traceId ? traceId.slice(0, 12) : "", "link mono");
  trace.type = "button";
  if (traceId) trace.addEventListener("click", () => openTrace(traceId));
  const tr = row([
    el("td", (event.timestamp || "").replace("T", " ").replace("Z", ""), "mono"),
    el("td", event.type, "type"),
    el("td", meta.service),
    cell(follow),
    cell(trace),
  ]);
  tr.dataset.correlationId = meta.correlationId || "";
  tr.dataset.type = event.type;
  tr.dataset.id = event.id;
  if (fresh) tr.classList.add("new");
  return tr;
}

async function loadEvents() {
  const wanted = correlation.value.trim();
  const note = document.getElementById("events-note");
  const body = document.querySelector("#event-list tbody");
  const query = "?limit=200" + (wanted ? "&correlationId=" + encodeURIComponent(wanted) : "");
  try {
    const data = await getJson("/events" + query);
    body.replaceChildren(...data.items.map((event) => eventRow(event, false)));
    note.textContent = (wanted ? "events of " + wanted : "recent events") + ": " + data.total;
  } catch (error) {
    note.textContent = "no events: " + error.message;
  }
}

function listen() {
  const live = document.getElementById("events-live");
  const stream = new EventSource(API + "/events/stream");
  stream.onopen = () => {
    live.textContent = "live";
    live.className = "badge ok";
    // Anything stored while the stream was down is fetched again.
    loadEvents();
  };
  stream.onerror = () => {
    live.textContent = "live: reconnecting";
    live.className = "badge warn";
  };
  stream.addEventListener("unavailable", (message) => {
    document.getElementById("events-note").textContent = "no live events: " + JSON.parse(message.data);
  });
  // Every event arrives unnamed (the console drops the bus's per-type names).
  stream.onmessage = handle;
}

function handle(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch (error) {
    return;
  }
  const body = document.querySelector("#event-list tbody");
  if (body.querySelector('tr[data-id="' + CSS.escape(String(event.id)) + '"]')) return;
  const wanted = correlation.value.trim();
  if (wanted && (event.metadata || {}).correlationId !== wanted) return;
  body.insertBefore(eventRow(event, true), body.firstChild);
  while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(-1);
}

correlation.addEventListener("change", loadEvents);
correlation.addEventListener("search", loadEvents);

// -- traces -------------------------------------------------------------------------------

async function loadTraces() {
  const note = document.getElementById("traces-note");
  const body = document.querySelector("#trace-list tbody");
  try {
    const data = await getJson("/traces?limit=30");
    body.replaceChildren();
    for (const trace of data.traces) {
      const open = el("button", trace.trace_id, "link mono");
      open.type = "button";
      open.addEventListener("click", () => openTrace(trace.trace_id));
      body.appendChild(row([
        cell(open),
        el("td", new Date(trace.start_ms).toLocaleTimeString(), "mono"),
        el("td", trace.root),
        el("td", trace.services.join(", ")),
        el("td", trace.spans + (trace.errors ? " (" + trace.errors + " failed)" : "")),
        el("td", trace.duration_ms + " ms"),
      ]));
    }
    note.textContent = data.traces.length ? "" : "no traces kept yet";
  } catch (error) {
    note.textContent = "no traces: " + error.message;
  }
}

async function openTrace(traceId) {
  document.querySelector('nav button[data-tab="traces"]').click();
  const panel = document.getElementById("trace-panel");
  const body = document.querySelector("#trace-spans tbody");
  panel.hidden = false;
  document.getElementById("trace-id").textContent = traceId;
  try {
    const data = await getJson("/traces/" + encodeURIComponent(traceId));
    body.replaceChildren(...data.spans.map((span) => row([
      el("td", span.offset_ms + " ms", "mono"),
      el("td", span.duration_ms + " ms", "mono"),
      el("td", span.service + ": " + span.name + (span.error ? "  FAILED" : ""),
        "indent-" + Math.min(span.depth, 7)),
    ])));
  } catch (error) {
    body.replaceChildren(row([error.message, "", ""]));
  }
}

// -- API explorer -------------------------------------------------------------------------

function loadExplorer() {
  const note = document.getElementById("explorer-note");
  if (!window.SwaggerUIBundle) {
    note.textContent = "the gateway serves no docs here (GATEWAY_EXPOSE_DOCS)";
    return;
  }
  note.textContent = "every route of the gateway, from the services' merged OpenAPI document";
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger",
    deepLinking: false,
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
}

// -- start --------------------------------------------------------------------------------

function every(task, ms) {
  task();
  setInterval(task, ms);
}

every(loadDeployables, REFRESH_MS);
every(loadEdge, REFRESH_MS);
loadArchitecture().catch((error) => {
  document.getElementById("diagram").textContent = "diagram: " + error.message;
});
loadEvents();
listen();

// Charts of the dashboard (plotly.min.js, served by the dashboard itself). The run page polls
// /api/runs/<run>/metrics?since=<last step> and appends only the new points. plotly (4.8 MB) loads
// asynchronously: until it is ready the run page shows the same series as plain SVG lines (body[data-painted]),
// then the interactive charts replace them (body[data-ready]).
"use strict";

const LAYOUT = {
  margin: { l: 52, r: 16, t: 34, b: 34 },
  hovermode: "x unified",
  legend: { orientation: "h", y: -0.12, font: { size: 11 } },
  font: { family: "system-ui, sans-serif", size: 12, color: "#1f2430" },
  paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  xaxis: { gridcolor: "#eef0f3", zeroline: false },
  yaxis: { gridcolor: "#eef0f3", zeroline: false },
};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#db2777"];
const DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

function layout(title, extra) {
  return Object.assign({}, LAYOUT, { title: { text: title, font: { size: 13 }, x: 0.02 } }, extra || {});
}

function shortName(key) {
  const parts = key.split("/");
  return parts.length > 1 ? parts.slice(1).join("/") : key;
}

function trace(spec, data) {
  const t = { x: data ? data.x : [], y: data ? data.y : [], name: shortName(spec.key), meta: spec.key,
              hovertemplate: "%{y:.4g}" };
  if (spec.kind === "bar") t.type = "bar";
  else t.mode = spec.kind === "markers" ? "lines+markers" : "lines";
  if (spec.kind === "markers") t.connectgaps = true;
  if (spec.axis === "y2") t.yaxis = "y2";
  return t;
}

function panelLayout(panel) {
  const extra = {};
  if (panel.traces.some(t => t.kind === "bar")) extra.barmode = panel.stacked ? "stack" : "group";
  if (panel.traces.some(t => t.axis === "y2")) extra.yaxis2 = { overlaying: "y", side: "right", showgrid: false };
  return layout(panel.title, extra);
}

function chartDiv(container, id) {
  let div = document.getElementById(id);
  if (!div) {
    div = document.createElement("div");
    div.className = "chart";
    div.id = id;
    container.appendChild(div);
  }
  return div;
}

function showStatus(data) {
  const state = document.getElementById("state");
  if (state) { state.textContent = data.state; state.className = "state " + data.state; }
  const step = document.getElementById("last-step");
  if (step) step.textContent = data.last_step;
  const message = document.getElementById("message");
  if (message) message.textContent = data.message || "";
  const box = document.getElementById("warnings");
  if (box) {
    box.replaceChildren(...data.warnings.map(w => {
      const d = document.createElement("div"); d.className = "warning"; d.textContent = "⚠ " + w; return d;
    }));
    box.hidden = data.warnings.length === 0;
  }
}

// Runs fn once plotly.min.js has run; the script is added on the first call, after the next paint, so that
// what is already on the page shows before the browser spends seconds compiling it.
let plotlyScript = null;
function whenPlotly(fn) {
  if (window.Plotly) return fn();
  if (!plotlyScript) {
    plotlyScript = document.createElement("script");
    plotlyScript.src = "/static/plotly.min.js";
    requestAnimationFrame(() => setTimeout(() => document.head.appendChild(plotlyScript), 0));
  }
  plotlyScript.addEventListener("load", () => fn(), { once: true });
}

// A static preview of a panel: one SVG polyline per series, with the title, the y range and the names.
function previewSVG(panel, series) {
  const W = 600, H = 260, L = 46, R = 10, T = 28, B = 40;
  const lines = panel.traces.map((t, i) => ({ t, s: series[t.key], color: COLORS[i % COLORS.length] }))
    .filter(l => l.s && l.s.x.length);
  const xs = lines.flatMap(l => l.s.x), ys = lines.flatMap(l => l.s.y).filter(v => v !== null);
  const esc = v => String(v).replace(/[&<>"]/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  let body = `<text x="12" y="18" font-size="13">${esc(panel.title)}</text>`;
  if (xs.length && ys.length) {
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const sx = v => L + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * (W - L - R);
    const sy = v => T + (y1 > y0 ? 1 - (v - y0) / (y1 - y0) : 0.5) * (H - T - B);
    for (const l of lines) {
      const pts = l.s.x.map((x, k) => (l.s.y[k] === null ? "" : `${sx(x).toFixed(1)},${sy(l.s.y[k]).toFixed(1)}`));
      body += `<polyline fill="none" stroke="${l.color}" stroke-width="1.5" points="${pts.join(" ")}"/>`;
    }
    body += `<text x="4" y="${T + 4}" font-size="10">${esc(y1.toPrecision(3))}</text>`;
    body += `<text x="4" y="${H - B}" font-size="10">${esc(y0.toPrecision(3))}</text>`;
    body += `<text x="${L}" y="${H - B + 14}" font-size="10">${esc(x0)}</text>`;
    body += `<text x="${W - R}" y="${H - B + 14}" font-size="10" text-anchor="end">${esc(x1)}</text>`;
  }
  body += lines.map((l, i) => `<text x="${L + i * 110}" y="${H - 8}" font-size="11" fill="${l.color}">` +
    `${esc(shortName(l.t.key))}</text>`).join("");
  return `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(panel.title)}">${body}</svg>`;
}

function previewPanels(container, panels, series) {
  container.replaceChildren();
  for (const panel of panels) chartDiv(container, "chart-" + panel.id).innerHTML = previewSVG(panel, series);
  document.body.dataset.painted = "1";
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function inView(div) {
  const box = div.getBoundingClientRect();
  return box.top < window.innerHeight && box.bottom > 0;
}

// Draws the charts on screen at once and the others one per frame afterwards, so the first screen is
// there quickly even with dozens of charts; body[data-ready] marks the first screen, [data-complete] all.
function drawPanels(container, panels, series, extraLayout) {
  container.replaceChildren();
  document.body.dataset.complete = "0";
  const jobs = panels.map(panel => {
    const div = chartDiv(container, "chart-" + panel.id);
    return () => {
      const lay = panelLayout(panel);
      lay.xaxis = Object.assign({}, lay.xaxis, extraLayout);
      Plotly.newPlot(div, panel.traces.map(t => trace(t, series[t.key])), lay, CONFIG);
    };
  });
  const divs = [...container.children];
  const later = [];
  jobs.forEach((job, i) => (inView(divs[i]) ? job() : later.push(job)));
  (function next() {
    const job = later.shift();
    if (!job) { document.body.dataset.complete = "1"; return; }
    job();
    requestAnimationFrame(next);
  })();
}

function runPage(run, pollMs) {
  const container = document.getElementById("charts");
  const base = "/api/runs/" + encodeURIComponent(run) + "/metrics";
  let last = 0, generation = null, keys = "", first = {};

  function append(data) {
    for (const panel of data.panels) {
      const div = document.getElementById("chart-" + panel.id);
      const xs = [], ys = [], idx = [];
      panel.traces.forEach((t, i) => {
        const s = data.series[t.key];
        if (s && s.x.length) { xs.push(s.x); ys.push(s.y); idx.push(i); }
      });
      if (!idx.length) continue;
      if (div.data) { Plotly.extendTraces(div, { x: xs, y: ys }, idx); continue; }
      idx.forEach((i, k) => {  // not drawn yet: it will draw from the first answer's arrays
        const s = first[panel.traces[i].key];
        s.x.push(...xs[k]); s.y.push(...ys[k]);
      });
    }
  }

  async function poll() {
    try {
      const data = await getJSON(base + "?since=" + last);
      const newKeys = data.panels.map(p => p.id + ":" + p.traces.map(t => t.key).join(",")).join(";");
      if (generation !== null && (data.generation !== generation || newKeys !== keys)) {
        last = 0; generation = null;  // rewritten (resume) or new metric keys: draw everything again
        return poll();
      }
      if (generation === null) {
        first = data.series;
        // few steps: whole-step ticks (a run has no step 1.5); plotly picks its own spacing later on
        const ticks = (data.total_steps || data.last_step) <= 20 ? { dtick: 1 } : {};
        if (!window.Plotly) previewPanels(container, data.panels, data.series);
        await new Promise(done => whenPlotly(() => { drawPanels(container, data.panels, data.series, ticks); done(); }));
      } else {
        append(data);
      }
      generation = data.generation; keys = newKeys; last = data.last_step;
      showStatus(data);
      document.body.dataset.lastStep = String(last);
      document.body.dataset.painted = document.body.dataset.ready = "1";
      if (data.state === "gone") return;
    } catch (err) {
      console.warn(err);
    }
    setTimeout(poll, pollMs);
  }
  poll();
}

async function comparePage(runs) {
  const container = document.getElementById("charts");
  const all = await Promise.all(runs.map(r => getJSON("/api/runs/" + encodeURIComponent(r) + "/metrics")));
  const seen = new Map();
  all.forEach(data => data.panels.forEach(p => { if (!seen.has(p.id)) seen.set(p.id, p); }));
  for (const panel of seen.values()) {
    const traces = [];
    panel.traces.forEach((t, k) => {
      all.forEach((data, i) => {
        const s = data.series[t.key];
        if (!s || !s.x.length) return;
        const tr = trace(Object.assign({}, t, { kind: t.kind === "bar" ? "line" : t.kind }), s);
        tr.name = runs[i] + " · " + shortName(t.key);
        tr.line = { color: COLORS[i % COLORS.length], dash: DASHES[k % DASHES.length] };  // colour: run, dash: key
        traces.push(tr);
      });
    });
    if (traces.length) Plotly.newPlot(chartDiv(container, "chart-" + panel.id), traces, layout(panel.title), CONFIG);
  }
  document.body.dataset.ready = document.body.dataset.complete = "1";
}

function questionPage(history) {
  const x = history.map(h => h.step);
  const traces = [
    { x, y: history.map(h => h.think / h.samples), name: "think rate", mode: "lines+markers" },
    { x, y: history.map(h => h.correct / h.samples), name: "accuracy", mode: "lines+markers" },
  ];
  Plotly.newPlot("chart-question", traces, layout("This question over steps", { yaxis: { range: [-0.05, 1.05] } }), CONFIG);
  document.body.dataset.complete = "1";  // plotly loads after the first paint: tests and tools wait for this
}

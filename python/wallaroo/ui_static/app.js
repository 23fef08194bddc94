// The live metrics page: polls /status/history and /status once a second and
// draws the charts on canvases with its own small line-chart code (no
// library, no build step). What it shows is also written to data-*
// attributes (main#app, each canvas) so tests can read it.
"use strict";

const POLL_MS = 1000;
const KEEP_POINTS = 300;
const CHART_SECONDS = 120;
const COLORS = ["#0969da", "#2da44e", "#cf222e", "#8250df", "#bf8700", "#1b7c83",
                "#e16f24", "#6e7781", "#bf3989", "#4d2d00"];

const app = document.getElementById("app");
const points = [];
let lastStatus = null;
let failures = 0;

// ------------------------------------------------------------------ format

function fmtCount(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

function fmtRate(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  if (n >= 100) return Math.round(n).toLocaleString("en-US");
  return n.toFixed(n >= 10 ? 1 : 2);
}

function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s === 0) return "0";
  if (s < 1e-6) return (s * 1e9).toFixed(0) + " ns";
  if (s < 1e-3) return (s * 1e6).toFixed(s < 1e-5 ? 1 : 0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 1e-2 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n === 1 ? "1 byte" : `${fmtCount(n)} bytes`;
}

function fmtTime(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ------------------------------------------------------------------ charts

// Draw `series` ([{name, color, dash, values: [[t, v|null], ...]}]) on a canvas.
// Writes data-points (points drawn), data-max and data-last (last value of the
// first series) on the canvas.
function lineChart(canvas, legend, series, format) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400;
  const height = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const now = points.length ? points[points.length - 1].t : Date.now() / 1000;
  const t0 = now - CHART_SECONDS;
  let max = 0;
  let drawn = 0;
  for (const s of series) {
    for (const [t, v] of s.values) {
      if (t >= t0 && v !== null && v !== undefined && Number.isFinite(v)) {
        max = Math.max(max, v);
        drawn += 1;
      }
    }
  }
  const top = niceCeiling(max);
  const left = 58, right = 8, topPad = 8, bottom = 20;
  const plotW = width - left - right, plotH = height - topPad - bottom;
  const x = (t) => left + ((t - t0) / CHART_SECONDS) * plotW;
  const y = (v) => topPad + plotH - (top > 0 ? (v / top) * plotH : 0);

  // Grid and axes.
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#656d76";
  ctx.strokeStyle = "#eaeef2";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(width - right, yy);
    ctx.stroke();
    ctx.fillText(format(v), left - 6, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let s = CHART_SECONDS; s >= 0; s -= 30) {
    const xx = x(now - s);
    ctx.fillText(s === 0 ? "now" : `-${s}s`, xx, height - bottom + 5);
  }

  // Lines.
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = s.width || 2;
    ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of s.values) {
      if (t < t0 || v === null || v === undefined || !Number.isFinite(v)) {
        pen = false;
        continue;
      }
      if (pen) ctx.lineTo(x(t), y(v));
      else ctx.moveTo(x(t), y(v));
      pen = true;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
  if (drawn === 0) {
    ctx.fillStyle = "#8c959f";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("no data yet", left + plotW / 2, topPad + plotH / 2);
  }

  const first = series[0];
  const lastValue = first && first.values.length ? first.values[first.values.length - 1][1] : null;
  canvas.dataset.points = String(drawn);
  canvas.dataset.max = String(max);
  canvas.dataset.last = lastValue === null || lastValue === undefined ? "" : String(lastValue);
  canvas.dataset.series = String(series.length);

  if (legend) {
    legend.replaceChildren(...series.map((s) => {
      const last = s.values.length ? s.values[s.values.length - 1][1] : null;
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = s.color;
      if (s.dash) swatch.style.opacity = "0.6";
      return el("span", {}, swatch, `${s.name} ${last === null || last === undefined ? "–" : format(last)}`);
    }));
  }
}

function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * exp >= v) return m * exp;
  }
  return 10 * exp;
}

function sparkline(values, color) {
  const canvas = el("canvas", { class: "spark" });
  const width = 120, height = 22, dpr = window.devicePixelRatio || 1;
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const max = Math.max(0, ...values.filter((v) => Number.isFinite(v)));
  canvas.dataset.max = String(max);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const xx = (i / Math.max(values.length - 1, 1)) * (width - 2) + 1;
    const yy = height - 2 - (max > 0 ? (v / max) * (height - 4) : 0);
    if (i === 0) ctx.moveTo(xx, yy);
    else ctx.lineTo(xx, yy);
  });
  ctx.stroke();
  return canvas;
}

// ------------------------------------------------------------------ series

const seriesOf = (pick) => points.map((p) => [p.t, pick(p)]);

function pipelineNames() {
  const names = new Set();
  for (const p of points) for (const name of Object.keys(p.total.pipelines || {})) names.add(name);
  return [...names];
}

function workerNames() {
  const names = new Set();
  for (const p of points) for (const name of Object.keys(p.workers || {})) names.add(name);
  return [...names];
}

// A pipeline's steps in chain order (from /status), when known.
function stepOrder(pipeline) {
  const known = lastStatus && lastStatus.pipelines.find((p) => p.name === pipeline);
  return known ? known.steps.map((s) => s.name) : [];
}

function drawCharts() {
  lineChart(
    document.getElementById("chart-throughput"),
    document.getElementById("legend-throughput"),
    [
      { name: "in", color: COLORS[0], values: seriesOf((p) => p.total.in) },
      { name: "out", color: COLORS[1], values: seriesOf((p) => p.total.out) },
      { name: "filtered", color: COLORS[4], values: seriesOf((p) => p.total.dropped), width: 1.5 },
      { name: "bad input", color: COLORS[2], values: seriesOf((p) => p.total.bad), width: 1.5 },
    ],
    fmtRate,
  );

  const latency = [];
  pipelineNames().forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const pick = (q) => (p) => {
      const pp = p.total.pipelines[name];
      return pp ? pp[q] : null;
    };
    const prefix = pipelineNames().length > 1 ? `${name} ` : "";
    latency.push({ name: `${prefix}p99`, color, values: seriesOf(pick("p99")) });
    latency.push({ name: `${prefix}p95`, color, dash: [6, 3], width: 1.5, values: seriesOf(pick("p95")) });
    latency.push({ name: `${prefix}p50`, color, dash: [2, 3], width: 1.5, values: seriesOf(pick("p50")) });
  });
  lineChart(document.getElementById("chart-latency"), document.getElementById("legend-latency"),
            latency, fmtSeconds);

  lineChart(
    document.getElementById("chart-workers"),
    document.getElementById("legend-workers"),
    workerNames().map((name, i) => ({
      name,
      color: COLORS[i % COLORS.length],
      values: seriesOf((p) => (p.workers[name] ? p.workers[name].calls : null)),
    })),
    fmtRate,
  );

  const steps = [];
  let i = 0;
  for (const pipeline of pipelineNames()) {
    const names = new Set(stepOrder(pipeline));
    for (const p of points) {
      const pp = p.total.pipelines[pipeline];
      if (pp) for (const s of Object.keys(pp.steps || {})) names.add(s);
    }
    for (const step of names) {
      steps.push({
        name: pipelineNames().length > 1 ? `${pipeline}: ${step}` : step,
        color: COLORS[i++ % COLORS.length],
        values: seriesOf((p) => {
          const pp = p.total.pipelines[pipeline];
          const sp = pp && pp.steps ? pp.steps[step] : null;
          return sp ? sp.p99 : null;
        }),
      });
    }
  }
  lineChart(document.getElementById("chart-steps"), document.getElementById("legend-steps"),
            steps, fmtSeconds);
}

// ------------------------------------------------------------------ tables

function stepRates(pipeline, step) {
  return points.slice(-CHART_SECONDS).map((p) => {
    const pp = p.total.pipelines[pipeline];
    const sp = pp && pp.steps ? pp.steps[step] : null;
    return sp ? sp.rate : 0;
  });
}

function renderTables(status) {
  const steps = document.querySelector("#steps tbody");
  const rows = [];
  status.pipelines.forEach((pipeline, pi) => {
    const sources = pipeline.sources.join(", ") || "—";
    const sinks = pipeline.sinks.join(", ") || "—";
    const facts = [
      `${fmtCount(pipeline.records_in)} read`,
      `${fmtRate(pipeline.in_per_second)}/s`,
      `latency p50 ${fmtSeconds(pipeline.latency_seconds.p50)}, p99 ${fmtSeconds(pipeline.latency_seconds.p99)}`,
      `${fmtCount(pipeline.bad_input)} bad input`,
      `${fmtCount(pipeline.skipped_errors)} skipped after errors`,
      `${fmtCount(pipeline.sink_errors)} not delivered`,
    ];
    if (pipeline.kafka_lag) facts.push(`Kafka lag ${fmtCount(pipeline.kafka_lag)}`);
    rows.push(el("tr", { class: "pipeline", "data-pipeline": pipeline.name },
      el("td", { colSpan: 10 }, pipeline.name,
         el("span", { class: "muted" }, `  ${sources} → ${sinks} · ${facts.join(" · ")}`)),
    ));
    for (const step of pipeline.steps) {
      rows.push(el("tr", {
        class: "step",
        "data-pipeline": pipeline.name,
        "data-step": step.name,
        "data-records-in": String(step.records_in),
        "data-records-per-second": String(step.per_second),
      },
        el("td", {}, step.kind === "step" ? step.name : el("i", {}, step.name)),
        el("td", { class: "num" }, fmtCount(step.records_in)),
        el("td", { class: "num" }, fmtCount(step.records_out)),
        el("td", { class: "num" }, fmtCount(step.dropped)),
        el("td", { class: "num" }, fmtRate(step.per_second)),
        el("td", {}, sparkline(stepRates(pipeline.name, step.name), COLORS[pi % COLORS.length])),
        el("td", { class: "num" }, fmtSeconds(step.mean_seconds)),
        el("td", { class: "num" }, fmtSeconds(step.p50_seconds)),
        el("td", { class: "num" }, fmtSeconds(step.p99_seconds)),
        el("td", { class: "num" }, step.python_seconds.toFixed(3)),
      ));
    }
  });
  steps.replaceChildren(...rows);

  const workers = document.querySelector("#workers tbody");
  workers.replaceChildren(...status.workers.map((w) => {
    const state = w.up ? w.state : (w.state === "finished" ? "finished" : (w.state === "lost" ? "lost" : "unreachable"));
    const keys = Object.entries(w.state_keys).map(([s, n]) => `${s}: ${fmtCount(n)}`).join(", ") || "—";
    return el("tr", { "data-worker": w.name, "data-records-in": String(w.records_in) },
      el("td", {}, w.name, w.serving ? el("span", { class: "muted" }, " (serving)") : ""),
      el("td", { class: "num" }, w.index),
      el("td", {}, w.address || "—"),
      el("td", { class: `state-${state}` }, state),
      el("td", { class: "num" }, fmtCount(w.records_in)),
      el("td", { class: "num" }, fmtRate(w.in_per_second)),
      el("td", { class: "num" }, fmtRate(w.out_per_second)),
      el("td", {}, keys),
      el("td", { class: "num" }, fmtCount(w.epoch)),
      el("td", { class: "num" }, w.serving ? "—" : `${w.report_age_seconds.toFixed(1)} s ago`),
    );
  }));

  const kinds = document.getElementById("bad-kinds");
  const entries = Object.entries(status.bad_input);
  kinds.replaceChildren(...(entries.length
    ? entries.map(([kind, n]) => el("span", { class: "chip", "data-kind": kind, "data-count": String(n) },
                                    el("b", {}, fmtCount(n)), ` ${kind}`))
    : [el("span", { class: "muted" }, "none")]));
  const recent = document.querySelector("#bad-recent tbody");
  recent.replaceChildren(...status.recent_bad_input.slice().reverse().map((b) =>
    el("tr", {},
      el("td", {}, fmtTime(b.time)),
      el("td", {}, b.pipeline),
      el("td", {}, b.kind),
      el("td", { class: "wrap" }, b.position),
      el("td", { class: "wrap" }, b.error),
      status.payload_previews
        ? el("td", { class: "wrap" }, el("code", {}, b.payload))
        : el("td", { class: "muted", "data-payload-bytes": String(b.payload_bytes) },
             `${fmtBytes(b.payload_bytes)} · preview off (--bad-input-previews)`),
    )));
}

// The Windows panel (shown only when the application has window stages): a
// row per stage (sums over workers, the lowest watermark), then a row per
// worker. Each row carries its numbers in data-* attributes.
function renderWindows(status) {
  const stages = status.windows || [];
  document.getElementById("windows-panel").hidden = stages.length === 0;
  app.dataset.windowStages = String(stages.length);
  const rows = [];
  const optional = (v, format) => (v === null || v === undefined ? "–" : format(v));
  const row = (cls, label, who, w) => el("tr", {
    class: cls,
    "data-stage": w.stage,
    "data-pipeline": w.pipeline,
    "data-step": w.step,
    "data-worker": who,
    "data-open": String(w.open),
    "data-fired": String(w.fired),
    "data-late": String(w.late_events),
    "data-watermark": w.watermark === null ? "" : String(w.watermark),
    "data-watermark-lag": w.watermark_lag_seconds === null ? "" : String(w.watermark_lag_seconds),
  },
    el("td", {}, label),
    el("td", {}, who),
    el("td", { class: "num" }, fmtCount(w.open)),
    el("td", { class: "num" }, fmtCount(w.fired)),
    el("td", { class: "num" }, fmtCount(w.late_events)),
    el("td", {}, optional(w.watermark, fmtTime)),
    el("td", { class: "num" }, optional(w.watermark_lag_seconds, fmtSeconds)),
    el("td", { class: "num" }, optional(w.event_time_lag_seconds, fmtSeconds)),
    el("td", { class: "wrap" }, ...(w.partitions || []).map((p, i) => el(
      "span", { class: p.idle ? "idle" : "" },
      `${i ? ", " : ""}${p.source} ${p.reader}/${p.stream}: ${fmtSeconds(p.lag_seconds)}${p.idle ? " (idle)" : ""}`,
    ))),
  );
  for (const stage of stages) {
    const label = `${stage.pipeline} / ${stage.step}`;
    const kind = el("span", { class: "muted" }, ` ${stage.kind.replace("_", " ")}`);
    if (stage.workers.length === 1) {
      const only = stage.workers[0];
      rows.push(row("window-stage", el("span", {}, label, kind), only.worker, only));
      continue;
    }
    rows.push(row("window-stage", el("span", {}, label, kind), "all workers",
                  { ...stage, event_time_lag_seconds: null, partitions: [] }));
    for (const w of stage.workers) rows.push(row("window", "", w.worker, w));
  }
  document.querySelector("#windows tbody").replaceChildren(...rows);
}

function renderTiles(status) {
  const t = status.totals;
  const set = (id, text, bad) => {
    const node = document.getElementById(id);
    node.textContent = text;
    node.classList.toggle("bad", Boolean(bad));
  };
  set("tile-rate", fmtRate(t.in_per_second));
  set("tile-out-rate", fmtRate(t.out_per_second));
  set("tile-in", fmtCount(t.records_in));
  set("tile-out", fmtCount(t.records_out));
  set("tile-dropped", fmtCount(t.dropped));
  set("tile-bad", fmtCount(t.bad_input), t.bad_input > 0);
  set("tile-errors", fmtCount(t.errors), t.errors > 0);
  set("tile-undelivered", fmtCount(t.sink_errors), t.sink_errors > 0);
  const p99 = Math.max(...status.pipelines.map((p) => p.latency_seconds.p99 || 0), 0);
  set("tile-p99", p99 > 0 ? fmtSeconds(p99) : "–");
  const up = status.workers.filter((w) => w.up).length;
  set("tile-workers", `${up} / ${status.expected_workers}`, up < status.expected_workers && status.state === "running");

  document.getElementById("app-name").textContent = status.app || "(application)";
  document.title = `${status.app || "wallaroo"} · metrics`;
  const badge = document.getElementById("state");
  badge.textContent = status.state;
  badge.className = `badge ${status.state}`;
  document.getElementById("scope").textContent =
    status.scope === "cluster" ? `${status.expected_workers} worker(s)` : `worker ${status.worker} only`;
  document.getElementById("updated").textContent = `updated ${fmtTime(status.time)}`;

  app.dataset.recordsPerSecond = String(t.in_per_second);
  app.dataset.outPerSecond = String(t.out_per_second);
  app.dataset.recordsIn = String(t.records_in);
  app.dataset.recordsOut = String(t.records_out);
  app.dataset.dropped = String(t.dropped);
  app.dataset.badInput = String(t.bad_input);
  app.dataset.workers = String(up);
  app.dataset.workerNames = status.workers.map((w) => w.name).join(",");
  app.dataset.latencyP99 = p99 > 0 ? String(p99) : "";
  app.dataset.state = status.state;
  app.dataset.updated = String(status.time);
}

// ------------------------------------------------------------------ polling

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  try {
    const since = points.length ? points[points.length - 1].t : 0;
    const [history, status] = await Promise.all([
      getJSON(`status/history?since=${since}`),
      getJSON("status"),
    ]);
    points.push(...history.points);
    if (points.length > KEEP_POINTS) points.splice(0, points.length - KEEP_POINTS);
    lastStatus = status;
    failures = 0;
    renderTiles(status);
    renderTables(status);
    renderWindows(status);
    drawCharts();
  } catch (err) {
    failures += 1;
    if (failures >= 2) {
      const badge = document.getElementById("state");
      badge.textContent = "unreachable";
      badge.className = "badge unreachable";
      app.dataset.state = "unreachable";
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("resize", () => { if (lastStatus) drawCharts(); });
poll();

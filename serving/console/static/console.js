// The console page: one view per URL fragment, each drawn from /console/api/<view> JSON.
"use strict";

(() => {
  const meta = (n) => document.querySelector(`meta[name="${n}"]`).content;
  const ROOT = meta("console-root"), CSRF = meta("csrf-token"), ROLE = meta("console-role");
  const VIEWS = { segments, campaigns, experiments, models, health };
  const view = document.getElementById("view");
  const fmt = Charts.fmt;
  let timer = null;

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "onclick") e.addEventListener("click", v); else e.setAttribute(k, v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)} %`);
  const int = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-GB"));
  const card = (title, ...kids) => h("section", { class: "card" }, h("h2", {}, title), ...kids);
  const figure = (svgEl, caption) => h("figure", {}, svgEl, caption ? h("figcaption", {}, caption) : null);

  function table(cols, rows, attrs) {
    return h("div", { class: "scroll" }, h("table", attrs || {},
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => (c instanceof Node ? c : h("td", {}, c)))))))));
  }

  function missingBox(m) {
    return h("div", { class: "missing", "data-missing": "1" }, h("p", {}, m.message), h("p", {}, "To fill this view, run:"),
      h("pre", {}, m.command));
  }

  async function api(path, opts) {
    const r = await fetch(`${ROOT}/console/api/${path}`, { credentials: "same-origin", ...(opts || {}) });
    if (r.status === 401) { location.reload(); throw new Error("signed out"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
    return body;
  }

  async function post(path, payload) {
    return api(path, { method: "POST", headers: { "X-CSRF-Token": CSRF, "Content-Type": "application/json" },
      body: JSON.stringify(payload || {}) });
  }

  function flash(text, ok) {
    const f = h("p", { class: `message ${ok ? "ok" : "error"}`, role: "status", id: "flash" }, text);
    const old = document.getElementById("flash");
    if (old) old.remove();
    view.prepend(f);
  }

  // ---------------------------------------------------------------------------------------- segments
  async function segments(arg) {
    const d = await api(arg ? `segments?data=${encodeURIComponent(arg)}` : "segments");
    if (!d.available) return [h("h1", {}, "Segments and profiles"), missingBox(d.missing)];
    const clusters = d.segments.filter((s) => s.kind === "cluster"), named = d.segments.filter((s) => s.kind === "named");
    const segRows = d.segments.map((s) => h("tr", { "data-segment": `${s.kind}:${s.name}` },
      h("td", {}, s.kind), h("td", {}, s.name), h("td", { class: "num", "data-size": "1" }, int(s.size)), h("td", { class: "num" }, pct(s.share)),
      h("td", { class: "desc" }, s.rule || s.description || "")));
    const f = d.flows;
    const lc = Object.entries(d.lifecycle);
    return [
      h("h1", {}, `Segments and profiles: ${d.data}`),
      h("p", { class: "sub" }, `Snapshot ${d.snapshot_date.slice(0, 10)}; `, h("b", { id: "users-total" }, int(d.users)), " users; consent: ",
        d.consent_source || "–", d.datasets.length > 1 ? "; other data: " : "",
        d.datasets.filter((x) => x !== d.data).map((x) => h("a", { href: `#segments/${x}`, class: "data-link" }, x, " "))),
      h("div", { class: "grid2" },
        card("Clusters", figure(Charts.hbar({ labels: clusters.map((s) => s.name), values: clusters.map((s) => s.size), title: "users per cluster" }))),
        card("Named segments", figure(Charts.hbar({ labels: named.map((s) => s.name), values: named.map((s) => s.size), color: "#e07b39", title: "users per named segment" })))),
      card("Segment sizes", table(["kind", "segment", "users", "share", "rule / description"], segRows, { id: "segment-table" })),
      h("div", { class: "grid2" },
        card(`Lifecycle flows ${f.from_date || ""} → ${f.to_date || ""}`,
          f.matrix.length ? figure(Charts.heatmap({ rows: f.from, cols: f.to, colour: f.matrix.map((r) => { const t = r.reduce((a, b) => a + b, 0) || 1; return r.map((v) => v / t); }),
            text: f.matrix, hideZero: true, xlabel: `stage at ${f.to_date} →`, ylabel: `↑ stage at ${f.from_date}`, title: "users moving between lifecycle stages" }),
          "Users per (stage at the first date, stage at the second); colour = share of the row.") : h("p", {}, "no flows"),
          h("p", { class: "hint" }, "Other dates: ", h("code", {}, d.flows_command))),
        card("Lifecycle stages at the snapshot", figure(Charts.hbar({ labels: lc.map((x) => x[0]), values: lc.map((x) => x[1]), color: "#7d5bb5", title: "users per stage" })))),
      h("div", { class: "grid2" },
        card("RFM grid", figure(Charts.heatmap({ rows: d.rfm.r.map((r) => `R ${r}`), cols: d.rfm.f.map((f) => `F ${f}`), colour: d.rfm.value, text: d.rfm.counts,
          title: "RFM grid", xlabel: "frequency score →", ylabel: "recency score (5 = most recent)" }), `Users per cell; colour = ${d.rfm.value_name}.`)),
        card("RFM groups", figure(Charts.hbar({ labels: d.rfm_groups.map((g) => g.group), values: d.rfm_groups.map((g) => g.users), color: "#3a9a5b", title: "users per RFM group" })))),
      card("Segment profiles", figure(Charts.heatmap({ rows: d.profiles.rows.map((r) => `${r.kind[0]}| ${r.name}`), cols: d.profiles.features,
        colour: d.profiles.rows.map((r) => r.z), diverging: true, textFormat: (v) => (v >= 0 ? "+" : "") + v.toFixed(1), title: "segment profiles" }),
      "Mean of each feature in standard deviations from the average user (c = cluster, n = named).")),
    ];
  }

  // ---------------------------------------------------------------------------------------- campaigns
  async function campaigns() {
    const d = await api("campaigns");
    if (!d.available) return [h("h1", {}, "Campaigns"), missingBox(d.missing)];
    return [h("h1", {}, "Campaigns"), ...d.campaigns.map(campaign)];
  }

  function specRows(spec) {
    const rows = [];
    for (const [part, v] of Object.entries(spec)) {
      if (v === null || typeof v !== "object") { rows.push([part, String(v)]); continue; }
      const txt = Object.entries(v).filter(([, x]) => x !== null && x !== undefined)
        .map(([k, x]) => `${k}: ${typeof x === "object" ? JSON.stringify(x) : x}`).join("; ");
      rows.push([part, txt || "–"]);
    }
    return rows;
  }

  function campaign(c) {
    const box = h("article", { class: "campaign", "data-campaign": c.id });
    box.append(h("h2", {}, `${c.name} `, h("span", { class: "id" }, `(${c.id})`)), h("p", {}, c.description));
    box.append(h("div", { class: "kpis" },
      kpi("audience", c.counts.audience, "count-audience"), kpi("treatment", c.counts.treatment, "count-treatment"),
      kpi("control", c.counts.control, "count-control"), kpi("send date", c.send_date || "–"),
      kpi("treatment cost", c.treatment_cost === null ? "–" : c.treatment_cost.toFixed(2))));
    for (const w of c.warnings || []) box.append(h("p", { class: "message warn" }, w));
    box.append(h("div", { class: "grid2" },
      card("Audience funnel", figure(Charts.hbar({ labels: c.steps.map((s) => s.step), values: c.steps.map((s) => s.users), title: "users after every step" }),
        "Users left after every step (linear scale).")),
      card("Send schedule by local hour", figure(Charts.vbars({ labels: c.schedule.hours.map(String), series: [
        { name: "treatment", values: c.schedule.treatment }, { name: "control", values: c.schedule.control, color: "#8c8c8c" }],
      xlabel: "hour of the day in the user's time zone", title: "sends per local hour" })))));
    box.append(card("Spec", table(["part", "settings"], specRows(c.spec))));
    if (!c.readouts.length) box.append(card("Readout", missingBox({ message: "No readout yet: no outcomes measured for this campaign.", command: c.readout_command })));
    for (const r of c.readouts) box.append(readout(r));
    return box;
  }

  function kpi(label, value, id) {
    return h("div", { class: "kpi" }, h("span", { class: "kpi-label" }, label),
      h("span", { class: "kpi-value", id: id ? `${id}` : null, "data-kpi": label }, typeof value === "number" ? int(value) : value));
  }

  function readout(r) {
    const notes = [];
    if (r.simulated) notes.push(h("p", { class: "message warn" }, "Outcomes are a seeded simulation: they demo the readout, they are not evidence."));
    if (r.aa_check) notes.push(h("p", { class: `message ${r.aa_check.passed ? "ok" : "error"}` }, r.aa_check.statement));
    for (const w of r.warnings || []) notes.push(h("p", { class: "message warn" }, w));
    const e = r.effects;
    const roi = r.roi === null ? "n/a" : r.roi.toFixed(2) + (r.roi_ci ? ` [${r.roi_ci[0].toFixed(2)}, ${r.roi_ci[1].toFixed(2)}]` : "");
    return card(`Readout ${r.name}${r.backtest ? ` (backtest at ${r.backtest_cutoff})` : ""}`, ...notes,
      h("div", { class: "kpis" }, kpi("treated", r.n_treatment), kpi("control", r.n_control),
        kpi("incremental conversions", fmt(r.incremental_conversions)), kpi("incremental margin", fmt(r.incremental_margin)),
        kpi("ROI [95 % CI]", roi)),
      h("div", { class: "grid2" }, ...[["rates", e.filter((x) => x.interval !== "welch")], ["money per user", e.filter((x) => x.interval === "welch")]]
        .filter(([, xs]) => xs.length).map(([what, xs]) => figure(Charts.intervals({ labels: xs.map((x) => x.metric), values: xs.map((x) => x.uplift),
          lo: xs.map((x) => x.ci_low), hi: xs.map((x) => x.ci_high), zero: true, title: `uplift with 95 % CI: ${what}` }),
        `Uplift (treatment − control) of the ${what}, 95 % interval; the dashed line marks zero.`))),
      table(["metric", "treatment", "control", "uplift", "95 % CI", "p"], e.map((x) => [x.metric, fmt(x.treatment), fmt(x.control), fmt(x.uplift),
        `[${fmt(x.ci_low)}, ${fmt(x.ci_high)}] (${x.interval})`, fmt(x.p_value)])),
      r.by_segment.length ? figure(Charts.intervals({ labels: r.by_segment.map((s) => `segment ${s.segment}`), values: r.by_segment.map((s) => s.uplift),
        lo: r.by_segment.map((s) => s.ci_low), hi: r.by_segment.map((s) => s.ci_high), zero: true, title: "conversion uplift by segment" }), "Conversion uplift by segment (95 % CI).") : null);
  }

  // ---------------------------------------------------------------------------------------- experiments
  async function experiments() {
    const d = await api("experiments");
    if (!d.available) return [h("h1", {}, "Experiments"), missingBox(d.missing)];
    const out = [h("h1", {}, "Experiments")];
    if (d.error) out.push(h("p", { class: "message error" }, `The last change was refused: ${d.error}`));
    for (const x of d.experiments) out.push(experiment(x, d.can_act));
    return out;
  }

  function experiment(x, canAct) {
    const box = h("article", { class: "experiment", "data-experiment": x.name, "data-status": x.status });
    box.append(h("h2", {}, `${x.name} `, h("span", { class: `status s-${x.status.replace(" ", "-")}`, "data-role": "status" }, x.status)));
    if (x.error) { box.append(h("p", { class: "message error" }, x.error)); return box; }
    box.append(h("p", {}, x.description || ""), h("p", { class: "sub" },
      `${x.start.slice(0, 10)} → ${x.end.slice(0, 10)}; traffic [${x.traffic.offset}, ${x.traffic.offset + x.traffic.share}); control ${x.control}; primary metric ${x.primary_metric} within ${x.window_hours} h`));
    if (canAct) {
      const running = x.status === "running" || x.status === "scheduled";
      const ended = x.status === "finished" && !running;
      if (!ended) box.append(h("div", { class: "actions" }, h("button", {
        class: running ? "danger" : "primary", "data-action": running ? "stop" : "start",
        onclick: async (ev) => {
          ev.target.disabled = true;
          try {
            const r = await post(`experiments/${encodeURIComponent(x.name)}/${running ? "stop" : "start"}`);
            await render(); flash(`${r.experiment}: ${r.status}`, true);
          } catch (e) { await render(); flash(e.message, false); }
        } }, running ? "Stop experiment" : "Start experiment")));
    } else box.append(h("p", { class: "hint" }, "Starting and stopping needs an admin key."));
    box.append(table(["variant", "weight", "bundle", "overrides"], x.variants.map((v) => [v.name, v.weight, v.bundle || "current", JSON.stringify(v.overrides)])));
    const r = x.readout;
    if (!r) {
      box.append(h("p", { class: "hint" }, x.status === "finished" ? "No exposures of it in this service's exposure log."
        : "No exposures logged yet: start it and send recommendation traffic; the readout appears here."));
      return box;
    }
    if (r.horizon_warning) box.append(h("p", { class: "message warn" }, r.horizon_warning));
    box.append(h("div", { class: "grid2" },
      card("Traffic split", table(["variant", "units", "share", "expected"], r.split.map((s) => h("tr", { "data-variant": s.variant },
        h("td", {}, s.variant), h("td", { class: "num", "data-units": "1" }, int(s.users)), h("td", { class: "num" }, pct(s.share)), h("td", { class: "num" }, pct(s.expected))))),
        h("p", { class: `message ${r.srm_flag ? "error" : "ok"}`, "data-srm": r.srm_flag ? "mismatch" : "ok" },
          r.srm_flag ? `Sample ratio mismatch (p = ${fmt(r.srm_p_value)}): the split is broken; do not read the results.` : `Sample ratio check passes (p = ${fmt(r.srm_p_value)}).`)),
      card(`Primary metric: ${x.primary_metric}`, figure(Charts.intervals({ labels: r.primary.map((p) => p.variant), values: r.primary.map((p) => p.value),
        lo: r.primary.map((p) => p.ci[0]), hi: r.primary.map((p) => p.ci[1]), title: "primary metric per variant" }), "Per variant, with 95 % interval."),
        h("p", {}, `Lift of ${r.treatment} over ${x.control}: ${pct(r.lift)} [${pct(r.lift_ci[0])}, ${pct(r.lift_ci[1])}], p = ${fmt(r.p_value)}; planned ${int(r.planned_users_per_variant)} units per variant.`))));
    if (r.over_time.length) {
      const names = x.variants.map((v) => v.name);
      const get = (row, v, f) => (row.variants[v] ? f(row.variants[v]) : null);
      box.append(card("Primary metric over time", figure(Charts.lines({ x: r.over_time.map((p) => p.t.slice(5, 19).replace("T", " ")),
        series: names.map((v) => ({ name: v, values: r.over_time.map((p) => get(p, v, (q) => q.value)), lo: r.over_time.map((p) => get(p, v, (q) => q.ci[0])),
          hi: r.over_time.map((p) => get(p, v, (q) => q.ci[1])) })), title: "primary metric over time" }),
      "Units first exposed before each time, with their outcomes so far; bands: 95 % intervals.")));
    }
    const g = r.guardrails || {};
    box.append(card("Guardrails", table(["variant", "p99 latency (ms)", "empty answers", "degraded answers", "within limits"],
      Object.entries(g).map(([v, q]) => [v, fmt(q.latency_p99_ms), pct(q.empty_rate), pct(q.degraded_rate), q.ok ? "yes" : "NO"])),
    h("p", { class: "hint" }, `Limits: p99 ≤ ${x.guardrail_limits.latency_p99_ms} ms, empty ≤ ${pct(x.guardrail_limits.max_empty_rate)}, degraded ≤ ${pct(x.guardrail_limits.max_degraded_rate)}.`)));
    return box;
  }

  // ---------------------------------------------------------------------------------------- models
  async function models() {
    const d = await api("models");
    if (!d.available) return [h("h1", {}, "Models and bundles"), missingBox(d.missing)];
    const out = [h("h1", {}, "Models and bundles"), h("p", { class: "sub" }, "Serving (LATEST): ", h("b", { id: "serving-version" }, d.serving || "–"),
      "; loaded by this replica: ", d.loaded_here || "–")];
    if (d.can_act) {
      out.push(h("div", { class: "actions" }, d.rollback_target
        ? h("button", { class: "danger", "data-action": "rollback", onclick: async (ev) => {
          if (!confirm(`Roll back to ${d.rollback_target}?`)) return;
          ev.target.disabled = true;
          try { const r = await post("models/rollback", { to: null }); await render(); flash(`now serving ${r.version}`, true); } catch (e) { await render(); flash(e.message, false); }
        } }, `Roll back to ${d.rollback_target}`)
        : h("p", { class: "hint" }, d.rollback_blocked || "Nothing to roll back to.")));
    } else out.push(h("p", { class: "hint" }, "Rolling back needs an admin key."));
    for (const v of d.versions) {
      const figs = Object.entries(v.figures || {}).map(([kind, f]) => {
        const { protocol, ...vals } = f;
        return h("div", { class: "figs" }, h("b", {}, kind), " ", Object.entries(vals).map(([k, x]) => `${k} ${typeof x === "number" ? fmt(x) : x}`).join(" · "),
          h("div", { class: "protocol" }, "protocol: ", typeof protocol === "object" && protocol ? Object.entries(protocol).map(([k, x]) => `${k}: ${Array.isArray(x) ? x.join(" → ") : x}`).join("; ") : String(protocol)));
      });
      out.push(h("article", { class: `version${v.serving ? " serving" : ""}`, "data-version": v.version },
        h("h3", {}, v.version, v.serving ? h("span", { class: "status s-running" }, "serving") : null),
        h("p", { class: "sub" }, `created ${v.created || "–"}; parent ${v.parent || "–"}; adds ${(v.adds || []).join(", ") || "–"}`), ...figs));
    }
    if (d.history.length) out.push(card("Promotions and rollbacks", table(["at", "action", "version", "from", "by"], d.history.map((r) => [r.at, r.action, r.version, r.from || "–", r.actor]))));
    return out;
  }

  // ---------------------------------------------------------------------------------------- health
  async function health() {
    const d = await api("health");
    const t = d.totals, s = d.series.slice(-120);
    const x = s.map((p) => new Date(p.t * 1000).toISOString().slice(11, 19));
    const out = [h("h1", {}, "Health"),
      h("p", { class: "sub" }, `Bundle ${d.bundle || "not loaded"}; up ${Math.round(d.uptime_s)} s; this replica's own metrics (/metrics), refreshed every 5 s.`),
      h("div", { class: "kpis" }, kpi("requests", t.requests, "requests-total"), kpi("recommendations", t.recommendations, "recs-total"),
        kpi("request rate (/s)", d.rate ? fmt(d.rate.rps) : "–"),
        kpi("p50 / p95 / p99 (ms)", `${fmt(d.latency_ms.p50)} / ${fmt(d.latency_ms.p95)} / ${fmt(d.latency_ms.p99)}`),
        kpi("degraded", pct(d.shares.degraded)), kpi("cold start", pct(d.shares.cold_start)),
        kpi("events accepted", t.events_accepted, "events-total"), kpi("errors (4xx/5xx)", t.errors), kpi("bundle swaps", `${int(t.bundle_swaps)} (${int(t.bundle_swap_failures)} failed)`))];
    if (d.load_error) out.push(h("p", { class: "message error" }, d.load_error));
    out.push(h("div", { class: "grid2" },
      card("Request rate", s.length ? figure(Charts.lines({ x, zero: true, series: [{ name: "all requests/s", values: s.map((p) => p.rps) },
        { name: "recommendations/s", values: s.map((p) => p.rec_rps) }, { name: "events/s", values: s.map((p) => p.events_ps) }], title: "request rate" })) : h("p", { class: "hint" }, "Collecting samples…")),
      card("Recommendation latency (ms)", s.length ? figure(Charts.lines({ x, zero: true, series: [{ name: "p50", values: s.map((p) => p.p50) },
        { name: "p95", values: s.map((p) => p.p95) }, { name: "p99", values: s.map((p) => p.p99) }], title: "latency percentiles" }), "Per sample window, from the histogram buckets.") : h("p", { class: "hint" }, "Collecting samples…"))));
    out.push(card("Drift indicators", table(["indicator", "recent", "baseline", "flag"], d.drift.map((r) => r.mix
      ? [r.name, Object.entries(r.mix).map(([k, v]) => `${k} ${pct(v)}`).join(", "), r.recent_label, ""]
      : [r.name, `${pct(r.recent)} (${r.recent_label})`, `${pct(r.baseline)} (${r.baseline_label})`, r.flag ? "DRIFT" : "ok"]))));
    return out;
  }

  // ---------------------------------------------------------------------------------------- routing
  async function render() {
    clearTimeout(timer);
    const [name, arg] = (location.hash || "#segments").slice(1).split("/");
    const fn = VIEWS[name] || segments;
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
    try {
      const nodes = await fn(arg ? decodeURIComponent(arg) : undefined);
      view.replaceChildren(...nodes);
      view.dataset.loaded = name;
    } catch (e) {
      view.replaceChildren(h("p", { class: "message error" }, `Could not load ${name}: ${e.message}`));
      view.dataset.loaded = name;
    }
    if (name === "health") timer = setTimeout(render, 5000);
  }
  window.addEventListener("hashchange", render);
  document.body.dataset.role = ROLE;
  render();
})();

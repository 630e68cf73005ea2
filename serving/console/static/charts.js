// Small SVG charts for the console (no library, nothing loaded from elsewhere).
// Each function returns an <svg> element sized by its viewBox, so it scales with its container.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6db5", "#e07b39", "#3a9a5b", "#b5443a", "#7d5bb5", "#8c8c8c", "#c2a33a", "#3ab1b5"];

  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(w, h, title) {
    const s = el("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img", preserveAspectRatio: "xMinYMin meet" });
    if (title) s.appendChild(el("title", {}, title));
    s.style.maxWidth = `${Math.round(w * 1.3)}px`;  // text never grows past 1.3x (CSSOM: allowed by the CSP)
    return s;
  }

  // A label that fits in ``px`` (about 6.6 px per character at 12 px), the whole text in its tooltip.
  function label(text, px, attrs) {
    const s = String(text), n = Math.max(4, Math.floor(px / 6.6));
    const e = el("text", attrs, s.length > n ? s.slice(0, n - 1) + "…" : s);
    if (s.length > n) e.appendChild(el("title", {}, s));
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1000) return Math.round(v).toLocaleString("en-GB");
    if (a >= 10 || Number.isInteger(v)) return String(Math.round(v * 10) / 10);
    return v.toPrecision(3);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // Horizontal bars: {labels, values, color, format, title}
  function hbar(o) {
    const n = o.labels.length, rowH = 22, left = Math.min(240, 12 + 7 * Math.max(...o.labels.map((l) => String(l).length), 4));
    const w = 640, h = n * rowH + 24;
    const s = svg(w, h, o.title);
    const max = niceMax(Math.max(...o.values, 0));
    const plotW = w - left - 70;
    o.labels.forEach((lab, i) => {
      const y = 6 + i * rowH, v = o.values[i] || 0, bw = (plotW * v) / max;
      s.appendChild(label(lab, left - 10, { x: left - 6, y: y + 14, "text-anchor": "end", class: "lab" }));
      s.appendChild(el("rect", { x: left, y: y + 2, width: Math.max(bw, 0.5), height: rowH - 6, fill: o.color || PALETTE[0] }));
      s.appendChild(el("text", { x: left + bw + 4, y: y + 14, class: "val" }, (o.format || fmt)(o.values[i])));
    });
    s.appendChild(el("line", { x1: left, x2: left, y1: 4, y2: h - 18, class: "axis" }));
    return s;
  }

  // Vertical grouped bars: {labels, series: [{name, values}], title, ylabel}
  function vbars(o) {
    const w = 640, h = 240, left = 44, bottom = 36, top = 24;
    const s = svg(w, h, o.title);
    const all = o.series.flatMap((x) => x.values);
    const max = niceMax(Math.max(...all, 0));
    const plotW = w - left - 8, plotH = h - top - bottom;
    const groupW = plotW / o.labels.length, barW = Math.max(2, (groupW * 0.8) / o.series.length);
    for (let t = 0; t <= 4; t++) {
      const y = top + plotH - (plotH * t) / 4;
      s.appendChild(el("line", { x1: left, x2: w - 8, y1: y, y2: y, class: "grid" }));
      s.appendChild(el("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "tick" }, fmt((max * t) / 4)));
    }
    o.labels.forEach((lab, i) => {
      const x0 = left + i * groupW + groupW * 0.1;
      o.series.forEach((ser, j) => {
        const v = ser.values[i] || 0, bh = (plotH * v) / max;
        const r = el("rect", { x: x0 + j * barW, y: top + plotH - bh, width: barW - 1, height: Math.max(bh, 0), fill: ser.color || PALETTE[j] });
        r.appendChild(el("title", {}, `${ser.name} ${lab}: ${fmt(v)}`));
        s.appendChild(r);
      });
      if (o.labels.length <= 12 || i % Math.ceil(o.labels.length / 12) === 0)
        s.appendChild(el("text", { x: left + i * groupW + groupW / 2, y: h - bottom + 14, "text-anchor": "middle", class: "tick" }, lab));
    });
    if (o.xlabel) s.appendChild(el("text", { x: left + plotW / 2, y: h - 4, "text-anchor": "middle", class: "lab" }, o.xlabel));
    legend(s, o.series.map((x, j) => [x.name, x.color || PALETTE[j]]), left, 14);
    return s;
  }

  function legend(s, items, x, y) {
    let cx = x;
    for (const [name, color] of items) {
      s.appendChild(el("rect", { x: cx, y: y - 9, width: 10, height: 10, fill: color }));
      s.appendChild(el("text", { x: cx + 14, y: y, class: "lab" }, name));
      cx += 24 + 7 * String(name).length;
    }
  }

  // Heat map: {rows, cols, colour: [[v]], text: [[v]], title, xlabel, ylabel, diverging}
  function heatmap(o) {
    const cell = 56, left = Math.min(230, 14 + 7 * Math.max(...o.rows.map((r) => String(r).length), 3)), top = 46;
    const w = left + cell * o.cols.length + 10, h = top + 28 * o.rows.length + 26;
    const s = svg(w, h, o.title);
    const vals = o.colour.flat().filter((v) => v !== null && !Number.isNaN(v));
    const lo = o.diverging ? -2 : Math.min(...vals, 0), hi = o.diverging ? 2 : Math.max(...vals, 1e-9);
    o.cols.forEach((c, j) => {
      const t = label(c, cell + 6, { x: left + j * cell + cell / 2, y: top - 8, "text-anchor": "middle", class: "tick" });
      s.appendChild(t);
    });
    o.rows.forEach((r, i) => {
      s.appendChild(label(r, left - 10, { x: left - 6, y: top + i * 28 + 18, "text-anchor": "end", class: "lab" }));
      o.cols.forEach((c, j) => {
        const v = o.colour[i][j];
        const fill = v === null || Number.isNaN(v) ? "#f2f2f2" : (o.diverging ? diverge((v - lo) / (hi - lo)) : seq((v - lo) / (hi - lo || 1)));
        const rect = el("rect", { x: left + j * cell, y: top + i * 28, width: cell - 2, height: 26, fill });
        rect.appendChild(el("title", {}, `${r} / ${c}: ${fmt(o.text ? o.text[i][j] : v)}`));
        s.appendChild(rect);
        const shown = o.text ? o.text[i][j] : v;
        if (shown !== null && shown !== undefined && !(o.hideZero && shown === 0))
          s.appendChild(el("text", { x: left + j * cell + cell / 2 - 1, y: top + i * 28 + 17, "text-anchor": "middle", class: "cell" },
            o.textFormat ? o.textFormat(shown) : fmt(shown)));
      });
    });
    if (o.xlabel) s.appendChild(el("text", { x: left, y: 14, class: "lab" }, o.xlabel));
    if (o.ylabel) s.appendChild(el("text", { x: left, y: h - 6, class: "lab" }, o.ylabel));
    return s;
  }

  function seq(t) { // white -> blue
    t = Math.max(0, Math.min(1, t));
    const r = Math.round(247 - t * 200), g = Math.round(251 - t * 150), b = Math.round(255 - t * 75);
    return `rgb(${r},${g},${b})`;
  }

  function diverge(t) { // blue - white - red
    t = Math.max(0, Math.min(1, t));
    if (t < 0.5) { const u = t / 0.5; return `rgb(${Math.round(60 + u * 187)},${Math.round(110 + u * 137)},${Math.round(190 + u * 57)})`; }
    const u = (t - 0.5) / 0.5;
    return `rgb(${Math.round(247 - u * 40)},${Math.round(247 - u * 170)},${Math.round(247 - u * 180)})`;
  }

  // Estimates with intervals: {labels, values, lo, hi, title, zero: bool, format}
  function intervals(o) {
    const n = o.labels.length, rowH = 26, left = Math.min(260, 14 + 7 * Math.max(...o.labels.map((l) => String(l).length), 4));
    const w = 640, h = n * rowH + 40;
    const s = svg(w, h, o.title);
    const xs = [...o.lo, ...o.hi, ...o.values, ...(o.zero ? [0] : [])].filter((v) => v !== null && Number.isFinite(v));
    let a = Math.min(...xs), b = Math.max(...xs);
    if (!(b > a)) { a -= 1; b += 1; }
    const pad = (b - a) * 0.08; a -= pad; b += pad;
    const plotW = w - left - 20, X = (v) => left + ((v - a) / (b - a)) * plotW;
    for (let t = 0; t <= 4; t++) {
      const v = a + ((b - a) * t) / 4;
      s.appendChild(el("line", { x1: X(v), x2: X(v), y1: 6, y2: h - 26, class: "grid" }));
      s.appendChild(el("text", { x: X(v), y: h - 10, "text-anchor": "middle", class: "tick" }, (o.format || fmt)(v)));
    }
    if (o.zero && a < 0 && b > 0) s.appendChild(el("line", { x1: X(0), x2: X(0), y1: 6, y2: h - 26, class: "zero" }));
    o.labels.forEach((lab, i) => {
      const y = 10 + i * rowH + rowH / 2;
      s.appendChild(label(lab, left - 10, { x: left - 6, y: y + 4, "text-anchor": "end", class: "lab" }));
      if (Number.isFinite(o.lo[i]) && Number.isFinite(o.hi[i]))
        s.appendChild(el("line", { x1: X(o.lo[i]), x2: X(o.hi[i]), y1: y, y2: y, class: "ci", stroke: PALETTE[i % PALETTE.length] }));
      if (Number.isFinite(o.values[i])) {
        const c = el("circle", { cx: X(o.values[i]), cy: y, r: 4.5, fill: PALETTE[i % PALETTE.length] });
        c.appendChild(el("title", {}, `${lab}: ${fmt(o.values[i])} [${fmt(o.lo[i])}, ${fmt(o.hi[i])}]`));
        s.appendChild(c);
      }
    });
    return s;
  }

  // Lines over time with optional bands: {x: [labels], series: [{name, values, lo, hi}], title, yformat}
  function lines(o) {
    const w = 640, h = 240, left = 52, bottom = 34, top = 24;
    const s = svg(w, h, o.title);
    const all = o.series.flatMap((x) => [...x.values, ...(x.lo || []), ...(x.hi || [])]).filter((v) => v !== null && Number.isFinite(v));
    let lo = Math.min(...all, o.zero ? 0 : Infinity), hi = Math.max(...all);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
    if (!(hi > lo)) hi = lo + 1;
    const n = o.x.length, plotW = w - left - 10, plotH = h - top - bottom;
    const X = (i) => left + (n <= 1 ? plotW / 2 : (plotW * i) / (n - 1)), Y = (v) => top + plotH - ((v - lo) / (hi - lo)) * plotH;
    for (let t = 0; t <= 4; t++) {
      const v = lo + ((hi - lo) * t) / 4;
      s.appendChild(el("line", { x1: left, x2: w - 10, y1: Y(v), y2: Y(v), class: "grid" }));
      s.appendChild(el("text", { x: left - 4, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, (o.yformat || fmt)(v)));
    }
    const step = Math.max(1, Math.ceil(n / 6));
    o.x.forEach((lab, i) => {
      if (i % step === 0 || i === n - 1)
        s.appendChild(el("text", { x: X(i), y: h - bottom + 16, "text-anchor": n > 1 && i === n - 1 ? "end" : (i === 0 && n > 1 ? "start" : "middle"), class: "tick" }, lab));
    });
    o.series.forEach((ser, j) => {
      const color = ser.color || PALETTE[j];
      if (ser.lo && ser.hi) {
        const pts = [];
        ser.hi.forEach((v, i) => { if (Number.isFinite(v)) pts.push(`${X(i)},${Y(v)}`); });
        for (let i = ser.lo.length - 1; i >= 0; i--) if (Number.isFinite(ser.lo[i])) pts.push(`${X(i)},${Y(ser.lo[i])}`);
        if (pts.length > 2) s.appendChild(el("polygon", { points: pts.join(" "), fill: color, "fill-opacity": 0.15, stroke: "none" }));
      }
      const d = ser.values.map((v, i) => (Number.isFinite(v) ? `${X(i)},${Y(v)}` : null)).filter(Boolean);
      if (d.length) s.appendChild(el("polyline", { points: d.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
      ser.values.forEach((v, i) => { if (Number.isFinite(v)) s.appendChild(el("circle", { cx: X(i), cy: Y(v), r: 2.5, fill: color })); });
    });
    legend(s, o.series.map((x, j) => [x.name, x.color || PALETTE[j]]), left, 14);
    return s;
  }

  return { hbar, vbars, heatmap, intervals, lines, fmt, PALETTE };
})();

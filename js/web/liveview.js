/**
 * A live view of a subfeed's verified messages for web pages (the daemon's viewer,
 * examples/live_plot.html): one small plot per numeric field, each with its own y scale, ticks
 * and unit; the x axis is time (or message number); a field picker; pause/resume; a list of
 * rejected messages (which are never plotted). It only displays: verification is kachery.js's
 * (followFromDaemon, BucketReader.follow), and only verified messages reach add().
 *
 * Plain DOM and canvas, no dependencies, unbundled ES module.
 */

const COLORS = ['#2f6fde', '#e4572e', '#17a398', '#f3a712', '#8e44ad', '#33658a', '#c0392b', '#6a994e'];
const TIME_STEPS_S = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** Numeric fields of a payload: a number is "value"; object members (one level of nesting as "a.b"). */
export function numericFields(payload) {
  const out = {};
  if (typeof payload === 'number' && Number.isFinite(payload)) {
    out.value = payload;
    return out;
  }
  if (payload && typeof payload === 'object' && !Array.isArray(payload)) {
    for (const [k, v] of Object.entries(payload)) {
      if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
      else if (v && typeof v === 'object' && !Array.isArray(v)) {
        for (const [k2, v2] of Object.entries(v)) if (typeof v2 === 'number' && Number.isFinite(v2)) out[`${k}.${k2}`] = v2;
      }
    }
  }
  return out;
}

/** About `n` round tick values covering [lo, hi] (steps 1, 2, 5 × 10^k). */
export function niceTicks(lo, hi, n = 4) {
  if (!(hi > lo)) return { values: [lo], step: 1 };
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return { values, step };
}

function formatTick(v, step) {
  const decimals = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
  if (Math.abs(v) >= 1e6 || (Math.abs(v) > 0 && Math.abs(v) < 1e-4)) return v.toExponential(2);
  return v.toFixed(decimals);
}

function timeTicks(lo, hi, n = 6) {
  const span = (hi - lo) / 1000;
  const step = (TIME_STEPS_S.find((s) => s >= span / n) ?? 86400) * 1000;
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) values.push(v);
  return { values, step };
}

function formatTime(ms, step) {
  const d = new Date(ms);
  const p = (x) => String(x).padStart(2, '0');
  const hm = `${p(d.getHours())}:${p(d.getMinutes())}`;
  if (step >= 60_000) return hm;
  const hms = `${hm}:${p(d.getSeconds())}`;
  return step >= 1000 ? hms : `${hms}.${String(d.getMilliseconds()).padStart(3, '0').slice(0, 1)}`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

export const STYLE = `
.kv-bar { display:flex; gap:12px; align-items:center; flex-wrap:wrap; margin-bottom:8px; font-size:13px; }
.kv-status { padding:2px 10px; border-radius:10px; background:#eee; font-size:12px; }
.kv-status.live { background:#dff5e3; color:#17612b; }
.kv-status.paused { background:#fff4d6; color:#7a5a00; }
.kv-status.error { background:#fde2e2; color:#8a1c1c; }
.kv-error { display:none; margin:6px 0; padding:8px 12px; border-radius:6px; background:#fde2e2; color:#8a1c1c; font-size:13px; }
.kv-error.shown { display:block; }
.kv-fields label { margin-right:12px; font-size:12px; white-space:nowrap; cursor:pointer; }
.kv-fields i { display:inline-block; width:10px; height:10px; border-radius:2px; margin:0 4px 0 2px; vertical-align:-1px; }
.kv-canvas { width:100%; display:block; }
.kv-rejected { color:#8a1c1c; font-size:12px; margin:6px 0 0; padding-left:18px; }
.kv-rejected-count.some { color:#8a1c1c; font-weight:600; }
button.kv-pause { font:inherit; font-size:12px; padding:2px 10px; border:1px solid #ccd; border-radius:6px; background:#fff; cursor:pointer; }
`;

/**
 * The view. `root` gets a toolbar (status, counts, pause, x axis), an error banner, the field
 * picker, the plot canvas and the rejected list. Element IDs (for tests and pages):
 * `status`, `count`, `rejected-count`, `pause`, `legend` (field picker), `plot`, `rejected`,
 * `error`, `xaxis`.
 */
export class LiveView {
  constructor(root, { units = {}, fields = null, maxPoints = 5000, panelHeight = 150 } = {}) {
    this.units = units;
    this.wanted = fields ? new Set(fields) : null; // initial selection (null: all)
    this.maxPoints = maxPoints;
    this.panelHeight = panelHeight;
    this.series = new Map(); // field -> [[timestampMs, number, value], ...]
    this.selected = new Set();
    this.count = 0;
    this.rejections = new Map(); // "number|reason" -> {number, reason, times}
    this.paused = false;
    this.xMode = 'auto'; // time, unless most messages share a timestamp (a batch): then number
    this.pending = false;
    if (!document.getElementById('kv-style')) document.head.append(el('style', { id: 'kv-style' }, STYLE));
    this.statusEl = el('span', { id: 'status', class: 'kv-status' }, 'connecting…');
    this.countEl = el('span', { id: 'count' }, '0');
    this.rejectedCountEl = el('span', { id: 'rejected-count', class: 'kv-rejected-count' }, '0');
    this.pauseEl = el('button', { id: 'pause', class: 'kv-pause', onclick: () => this.togglePause() }, 'Pause');
    this.xaxisEl = el('select', { id: 'xaxis', onchange: () => { this.xMode = this.xaxisEl.value; this.schedule(); } },
      el('option', { value: 'auto' }, 'x: auto'), el('option', { value: 'time' }, 'x: time'),
      el('option', { value: 'number' }, 'x: message #'));
    this.errorEl = el('div', { id: 'error', class: 'kv-error' });
    this.legendEl = el('div', { id: 'legend', class: 'kv-fields' });
    this.canvas = el('canvas', { id: 'plot', class: 'kv-canvas' });
    this.rejectedEl = el('ul', { id: 'rejected', class: 'kv-rejected' });
    root.append(
      el('div', { class: 'kv-bar' }, this.statusEl,
        el('span', {}, this.countEl, ' verified'),
        el('span', {}, this.rejectedCountEl, ' rejected'),
        this.pauseEl, this.xaxisEl),
      this.errorEl, this.legendEl, this.canvas, this.rejectedEl);
    addEventListener('resize', () => this.schedule());
    this.schedule();
  }

  /** 'connecting' | 'live' | 'reconnecting' | 'error' (with a message shown in the banner). */
  setStatus(state, message = '') {
    const text = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', error: 'error' }[state] ?? state;
    this.statusEl.textContent = this.paused && state === 'live' ? 'paused (live)' : text;
    this.statusEl.className = 'kv-status ' + (state === 'live' ? (this.paused ? 'paused' : 'live') : state === 'error' || state === 'reconnecting' ? 'error' : '');
    this.state = state;
    this.errorEl.textContent = message;
    this.errorEl.className = 'kv-error' + (message ? ' shown' : '');
  }

  togglePause() {
    this.paused = !this.paused;
    this.pauseEl.textContent = this.paused ? 'Resume' : 'Pause';
    if (this.state) this.setStatus(this.state, this.errorEl.textContent);
    this.schedule();
  }

  /** A verified message ({number, timestampMs, payload}). */
  add(msg) {
    this.count += 1;
    this.countEl.textContent = String(this.count);
    for (const [name, v] of Object.entries(numericFields(msg.payload))) {
      if (!this.series.has(name)) {
        this.series.set(name, []);
        if (!this.wanted || this.wanted.has(name)) this.selected.add(name);
        this.renderPicker();
      }
      const pts = this.series.get(name);
      pts.push([msg.timestampMs, msg.number, v]);
      if (pts.length > this.maxPoints) pts.splice(0, pts.length - this.maxPoints);
    }
    this.schedule();
  }

  /** A message that failed verification ({number, reason}): listed, never plotted. */
  reject({ number, reason }) {
    const key = `${number}|${reason}`;
    const r = this.rejections.get(key);
    if (r) {
      r.times += 1;
      r.li.textContent = `#${number ?? '?'}: ${reason} (×${r.times})`;
      return;
    }
    const li = el('li', { 'data-number': String(number) }, `#${number ?? '?'}: ${reason}`);
    this.rejections.set(key, { number, reason, times: 1, li });
    this.rejectedEl.prepend(li);
    while (this.rejectedEl.children.length > 100) this.rejectedEl.lastChild.remove();
    this.rejectedCountEl.textContent = String(this.rejections.size);
    this.rejectedCountEl.className = 'kv-rejected-count some';
  }

  renderPicker() {
    this.legendEl.replaceChildren();
    let i = 0;
    for (const name of this.series.keys()) {
      const color = COLORS[i++ % COLORS.length];
      const box = el('input', { type: 'checkbox', 'data-field': name });
      box.checked = this.selected.has(name);
      box.addEventListener('change', () => {
        if (box.checked) this.selected.add(name); else this.selected.delete(name);
        this.schedule();
      });
      const unit = this.units[name] ? ` [${this.units[name]}]` : '';
      const swatch = el('i');
      swatch.style.background = color;
      this.legendEl.append(el('label', {}, box, swatch, name + unit));
    }
  }

  schedule() {
    if (this.pending || this.paused) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  /** 0 (time) or 1 (number): number when fewer than half the points have distinct times. */
  autoAxis(shown) {
    const pts = this.series.get(shown[0]);
    const times = new Set(pts.map((p) => p[0]));
    return times.size * 2 >= pts.length ? 0 : 1;
  }

  draw() {
    const names = [...this.series.keys()];
    const shown = names.filter((n) => this.selected.has(n));
    const dpr = globalThis.devicePixelRatio || 1;
    const cssW = this.canvas.clientWidth || 900;
    const cssH = Math.max(1, shown.length) * this.panelHeight + 24;
    this.canvas.style.height = cssH + 'px';
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    const g = this.canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    g.font = '11px system-ui, sans-serif';
    if (!shown.length) {
      g.fillStyle = '#6b7385';
      g.fillText(names.length ? 'no field selected' : 'waiting for numeric fields…', 70, 40);
      return;
    }
    const xi = this.xMode === 'time' ? 0 : this.xMode === 'number' ? 1 : this.autoAxis(shown);
    let x0 = Infinity;
    let x1 = -Infinity;
    for (const n of shown) for (const p of this.series.get(n)) { x0 = Math.min(x0, p[xi]); x1 = Math.max(x1, p[xi]); }
    if (x1 === x0) { x0 -= xi === 0 ? 1000 : 1; x1 += xi === 0 ? 1000 : 1; }
    const left = 70;
    const right = 16;
    const sx = (x) => left + (x - x0) / (x1 - x0) * (cssW - left - right);
    const xt = xi === 0 ? timeTicks(x0, x1) : niceTicks(x0, x1, 6);
    shown.forEach((name, k) => {
      const pts = this.series.get(name);
      const top = k * this.panelHeight + 18;
      const h = this.panelHeight - 34;
      let y0 = Infinity;
      let y1 = -Infinity;
      for (const p of pts) { y0 = Math.min(y0, p[2]); y1 = Math.max(y1, p[2]); }
      if (y1 === y0) { y0 -= 1; y1 += 1; }
      const pad = (y1 - y0) * 0.06;
      y0 -= pad; y1 += pad;
      const sy = (y) => top + h - (y - y0) / (y1 - y0) * h;
      const color = COLORS[names.indexOf(name) % COLORS.length];
      // frame, grid and ticks
      g.strokeStyle = '#e3e6ee'; g.fillStyle = '#6b7385'; g.lineWidth = 1;
      g.strokeRect(left, top, cssW - left - right, h);
      const yt = niceTicks(y0, y1, 4);
      g.textAlign = 'right'; g.textBaseline = 'middle';
      for (const v of yt.values) {
        const y = sy(v);
        g.beginPath(); g.moveTo(left - 4, y); g.lineTo(cssW - right, y); g.stroke();
        g.fillText(formatTick(v, yt.step), left - 6, y);
      }
      g.textAlign = 'center'; g.textBaseline = 'top';
      for (const v of xt.values) {
        const x = sx(v);
        g.beginPath(); g.moveTo(x, top); g.lineTo(x, top + h + 4); g.stroke();
        g.fillText(xi === 0 ? formatTime(v, xt.step) : formatTick(v, xt.step), x, top + h + 5);
      }
      g.textAlign = 'left'; g.textBaseline = 'bottom'; g.fillStyle = color;
      g.font = '600 12px system-ui, sans-serif';
      const unit = this.units[name] ? ` [${this.units[name]}]` : '';
      g.fillText(name + unit, left, top - 3);
      g.font = '11px system-ui, sans-serif';
      // the series
      g.save();
      g.beginPath(); g.rect(left, top, cssW - left - right, h); g.clip();
      g.strokeStyle = color; g.lineWidth = 1.6; g.beginPath();
      pts.forEach((p, j) => (j ? g.lineTo(sx(p[xi]), sy(p[2])) : g.moveTo(sx(p[xi]), sy(p[2]))));
      g.stroke();
      if (pts.length < 80) {
        g.fillStyle = color;
        for (const p of pts) { g.beginPath(); g.arc(sx(p[xi]), sy(p[2]), 2.2, 0, 2 * Math.PI); g.fill(); }
      }
      g.restore();
    });
    g.fillStyle = '#6b7385'; g.textAlign = 'right'; g.textBaseline = 'bottom';
    g.fillText(xi === 0 ? 'time (local)' : 'message number', cssW - right, cssH - 1);
    g.textAlign = 'left';
  }
}

/** `a:°C,b:hPa` (a page's ?units=) as {a: '°C', b: 'hPa'}. */
export function parseUnits(text) {
  const out = {};
  for (const part of (text || '').split(',')) {
    const i = part.indexOf(':');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

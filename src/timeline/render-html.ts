/**
 * The timeline as ONE self-contained HTML file: inline SVG (lanes, time axis, fence windows and
 * deadlines, watchdog and fault bands, events, safety margins, violations) and minimal CSS, then
 * the margins and the events as tables. Pure.
 *
 * Invariants: no external asset, no script (hover titles are SVG `<title>`s); every string from the
 * input goes through {@link escapeHtml} (after control characters are filtered), so a hostile host
 * or VM name from etcd cannot inject markup; a negative margin or a violation is drawn in red and
 * named `VIOLATION` in text, so it stands out without colour too.
 */
import type { TimelineInput } from '../domain/timeline.js';
import { formatOffset, layoutTimeline, type Severity, type TimelineLayout } from './layout.js';
import { eventRows, safeText } from './render-text.js';

/** Escapes text for HTML/SVG element content and double- or single-quoted attributes. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const e = (s: string, max = 300) => escapeHtml(safeText(s, max));

const COLOR: Record<Severity, string> = { good: '#2e7d32', info: '#546e7a', warn: '#b26a00', bad: '#c62828' };

const CSS = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:16px 24px;color:#1c2430;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.sub{color:#546e7a;margin:0 0 12px}
.banner{background:#c62828;color:#fff;font-weight:700;padding:8px 12px;border-radius:4px;margin:8px 0}
.okbanner{background:#e8f5e9;color:#1b5e20;padding:8px 12px;border-radius:4px;margin:8px 0}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #e0e4e8;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.t{font-family:ui-monospace,"DejaVu Sans Mono",monospace;text-align:right;white-space:nowrap}
tr.bad td{color:#c62828;font-weight:600}tr.warn td.k{color:#b26a00}tr.good td.k{color:#2e7d32}
.viol{color:#c62828;font-weight:700}.ok{color:#2e7d32;font-weight:700}
svg{display:block;max-width:100%;height:auto;border:1px solid #e0e4e8;background:#fcfcfd}
svg text{font-family:system-ui,"DejaVu Sans",sans-serif;font-size:11px;fill:#1c2430}
svg .lane{font-weight:700;font-size:12px}svg .axis{fill:#546e7a;font-size:10px}svg .vl{fill:#c62828;font-weight:700}
`;

const NICE_STEPS_S = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];

/** Options of {@link renderHtml}. */
export interface HtmlOptions {
  /** Width of the SVG in px. Default 1200. */
  readonly width?: number;
}

interface LaidLabel {
  readonly x: number;
  readonly row: number;
  readonly text: string;
  readonly full: string;
  readonly color: string;
  readonly markX: number;
}

/** Renders `input` (or an already computed layout) as a complete HTML document. */
export function renderHtml(input: TimelineInput | TimelineLayout, opts: HtmlOptions = {}): string {
  const l = 'lanes' in input ? input : layoutTimeline(input);
  const W = Math.max(600, opts.width ?? 1200);
  const left = 150;
  const right = W - 20;
  const span = Math.max(1, l.end - l.start);
  const pad = span * 0.02;
  const t0 = l.start - pad;
  const t1 = l.end + pad;
  const x = (t: number) => left + ((Math.min(t1, Math.max(t0, t)) - t0) / (t1 - t0)) * (right - left);
  const charW = 6.2;
  const LABEL_MAX = 56;

  // Labels per lane, stacked in rows so that they do not overlap.
  const laneLabels = new Map<string, LaidLabel[]>();
  for (const lane of l.lanes) {
    const ends: number[] = [];
    const laid: LaidLabel[] = [];
    for (const m of l.marks.filter((k) => k.lane === lane.id && !k.minor)) {
      const text = safeText(m.label, LABEL_MAX);
      const mx = x(m.t);
      const w = text.length * charW + 8;
      const lx = Math.min(mx, right - w);
      let row = ends.findIndex((end) => end <= lx);
      if (row < 0) {
        row = ends.length;
        ends.push(0);
      }
      ends[row] = lx + w;
      laid.push({ x: lx, row, text, full: `${formatOffset(m.t)} ${m.label}${m.detail === undefined ? '' : ` \u2014 ${m.detail}`}`, color: COLOR[m.severity], markX: mx });
    }
    laneLabels.set(lane.id, laid);
  }
  const AXIS = 34;
  const ROW = 14;
  const laneTop = new Map<string, number>();
  const laneHeight = new Map<string, number>();
  let y = AXIS;
  for (const lane of l.lanes) {
    const rows = Math.max(1, ...(laneLabels.get(lane.id) ?? []).map((k) => k.row + 1));
    const h = 36 + rows * ROW + (lane.kind === 'host' ? 18 : 0);
    laneTop.set(lane.id, y);
    laneHeight.set(lane.id, h);
    y += h;
  }
  const H = y + (l.violations.length > 0 ? 22 : 10);
  const svg: string[] = [];
  svg.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="timeline">`);
  svg.push('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#b0a4d8"/></pattern></defs>');
  // Lanes background and names.
  l.lanes.forEach((lane, i) => {
    const top = laneTop.get(lane.id)!;
    const h = laneHeight.get(lane.id)!;
    svg.push(`<rect x="0" y="${top}" width="${W}" height="${h}" fill="${i % 2 === 0 ? '#ffffff' : '#f5f7fa'}"/>`);
    svg.push(`<text class="lane" x="10" y="${top + 18}">${e(lane.kind === 'host' ? `host ${lane.label}` : lane.label, 22)}</text>`);
  });
  // Time axis.
  const step = (NICE_STEPS_S.find((s) => (t1 - t0) / (s * 1000) <= 12) ?? 86400) * 1000;
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    const tx = x(t);
    svg.push(`<line x1="${tx.toFixed(1)}" y1="${AXIS - 6}" x2="${tx.toFixed(1)}" y2="${H - 10}" stroke="#e3e7ec"/>`);
    svg.push(`<text class="axis" x="${tx.toFixed(1)}" y="${AXIS - 10}" text-anchor="middle">${e(formatOffset(t))}</text>`);
  }
  svg.push(`<text class="axis" x="10" y="${AXIS - 10}">t (s since t=0)</text>`);
  // Bands.
  for (const b of l.bands) {
    const top = laneTop.get(b.lane);
    if (top === undefined) continue;
    const h = laneHeight.get(b.lane)!;
    const bx = x(b.from);
    const bw = Math.max(2, x(b.to ?? t1) - bx);
    const fill = b.kind === 'fence-window' ? '#ffe0b2' : b.kind === 'watchdog' ? '#fff59d' : 'url(#hatch)';
    const opacity = b.kind === 'fault' ? 0.55 : 0.7;
    svg.push(`<rect x="${bx.toFixed(1)}" y="${top + 2}" width="${bw.toFixed(1)}" height="${h - 4}" fill="${fill}" opacity="${opacity}"><title>${e(b.label)}</title></rect>`);
    if (b.kind === 'fence-window' && b.to !== undefined) {
      const dx = x(b.to).toFixed(1);
      svg.push(`<line x1="${dx}" y1="${top}" x2="${dx}" y2="${top + h}" stroke="#e65100" stroke-width="2" stroke-dasharray="5,3"><title>${e(`fence deadline ${formatOffset(b.to)}`)}</title></line>`);
      svg.push(`<text x="${(Number(dx) + 3).toFixed(1)}" y="${top + 12}" style="fill:#e65100">deadline</text>`);
    }
  }
  // Marks and their labels.
  for (const lane of l.lanes) {
    const top = laneTop.get(lane.id)!;
    const baseY = top + 26;
    svg.push(`<line x1="${left}" y1="${baseY}" x2="${right}" y2="${baseY}" stroke="#90a4ae" stroke-width="1"/>`);
    for (const m of l.marks.filter((k) => k.lane === lane.id && k.minor)) {
      const mx = x(m.t).toFixed(1);
      svg.push(`<line x1="${mx}" y1="${baseY - 4}" x2="${mx}" y2="${baseY + 4}" stroke="#90a4ae"><title>${e(`${formatOffset(m.t)} ${m.label}`)}</title></line>`);
    }
    for (const k of laneLabels.get(lane.id) ?? []) {
      const ly = baseY + 16 + k.row * ROW;
      svg.push(`<line x1="${k.markX.toFixed(1)}" y1="${baseY}" x2="${k.markX.toFixed(1)}" y2="${ly - 9}" stroke="${k.color}" stroke-width="0.8" opacity="0.6"/>`);
      svg.push(`<circle cx="${k.markX.toFixed(1)}" cy="${baseY}" r="4.5" fill="${k.color}"><title>${e(k.full)}</title></circle>`);
      svg.push(`<text x="${k.x.toFixed(1)}" y="${ly}" style="fill:${k.color}">${e(k.text, LABEL_MAX)}<title>${e(k.full)}</title></text>`);
    }
  }
  // Safety margins: from the last VM gone to the deadline.
  for (const m of l.margins) {
    const lane = `host:${m.hostId}`;
    const top = laneTop.get(lane);
    if (top === undefined || m.lastGone === undefined || !Number.isFinite(m.deadline)) continue;
    const my = top + laneHeight.get(lane)! - 10;
    const a = x(m.lastGone);
    const b = x(m.deadline);
    const color = m.violation ? '#c62828' : '#2e7d32';
    const text = m.marginMs === undefined ? 'margin ?' : `${m.violation ? 'VIOLATION ' : ''}margin ${formatOffset(m.marginMs)}`;
    svg.push(`<line x1="${a.toFixed(1)}" y1="${my}" x2="${b.toFixed(1)}" y2="${my}" stroke="${color}" stroke-width="${m.violation ? 4 : 2.5}"/>`);
    svg.push(`<line x1="${a.toFixed(1)}" y1="${my - 5}" x2="${a.toFixed(1)}" y2="${my + 5}" stroke="${color}" stroke-width="2"/><line x1="${b.toFixed(1)}" y1="${my - 5}" x2="${b.toFixed(1)}" y2="${my + 5}" stroke="${color}" stroke-width="2"/>`);
    svg.push(`<text x="${(Math.max(a, b) + 6).toFixed(1)}" y="${my + 4}" style="fill:${color};font-weight:700">${e(text)}<title>${e(`last VM gone ${formatOffset(m.lastGone)}, fence deadline ${formatOffset(m.deadline)}`)}</title></text>`);
  }
  // Violations: red lines across every lane.
  for (const v of l.violations) {
    const vx = x(v.t).toFixed(1);
    svg.push(`<line x1="${vx}" y1="${AXIS - 4}" x2="${vx}" y2="${H - 6}" stroke="#c62828" stroke-width="2.5"><title>${e(`${v.invariant}: ${v.detail}`)}</title></line>`);
    svg.push(`<text class="vl" x="${Math.min(Number(vx) + 4, right - 200).toFixed(1)}" y="${H - 8}" style="fill:#c62828">${e(`VIOLATION ${v.invariant}`, 60)}</text>`);
  }
  svg.push('</svg>');

  const bad = l.margins.filter((m) => m.violation).length + l.violations.length;
  const html: string[] = [];
  html.push('<!doctype html>', '<html lang="en"><head><meta charset="utf-8">', `<title>${e(`tether timeline: ${l.title}`)}</title>`, `<style>${CSS}</style></head><body>`);
  html.push(`<h1>tether timeline: ${e(l.title)}</h1>`);
  const originIso = Number.isFinite(l.origin) && Math.abs(l.origin) < 8.64e15 ? new Date(l.origin).toISOString() : '?';
  html.push(`<p class="sub">source ${e(l.source, 16)} &middot; t=0 is ${e(originIso)} &middot; shown ${e(formatOffset(l.start))} .. ${e(formatOffset(l.end))}</p>`);
  html.push(bad > 0 ? `<div class="banner">VIOLATION: ${bad} safety problem(s), marked in red below</div>` : `<div class="okbanner">No violation: every safety margin known is positive.</div>`);
  html.push(svg.join('\n'));
  html.push('<h2>Safety margins</h2><p class="sub">The cluster\'s fence deadline minus the moment the host\'s last VM was gone. Negative: a VM could run twice.</p>');
  if (l.margins.length === 0) html.push('<p>None: no host detached.</p>');
  else {
    html.push('<table><tr><th>host</th><th>epoch</th><th>window opened</th><th>deadline</th><th>last VM gone</th><th>margin</th><th>note</th></tr>');
    for (const m of l.margins) {
      const verdict = m.marginMs === undefined ? (m.violation ? '<span class="viol">VIOLATION</span>' : 'unknown') : `<span class="${m.violation ? 'viol' : 'ok'}">${m.violation ? 'VIOLATION ' : ''}${e(formatOffset(m.marginMs))}</span>`;
      html.push(`<tr${m.violation ? ' class="bad"' : ''}><td>${e(m.hostId, 60)}</td><td>${Number.isFinite(m.epoch) ? m.epoch : '?'}</td><td class="t">${e(formatOffset(m.detachedAt))}</td><td class="t">${e(formatOffset(m.deadline))}</td><td class="t">${m.lastGone === undefined ? '-' : e(formatOffset(m.lastGone))}</td><td class="t">${verdict}</td><td>${e(m.note)}</td></tr>`);
    }
    html.push('</table>');
  }
  html.push('<h2>Events</h2><table><tr><th>t</th><th>lane</th><th>event</th><th>what</th></tr>');
  for (const r of eventRows(l)) html.push(`<tr class="${r.severity}"><td class="t">${e(r.time)}</td><td>${e(r.lane)}</td><td class="k">${e(r.kind)}</td><td>${e(r.what)}</td></tr>`);
  html.push('</table>');
  if (l.violations.length > 0) {
    html.push('<h2 class="viol">Violations</h2><table><tr><th>t</th><th>invariant</th><th>detail</th></tr>');
    for (const v of l.violations) html.push(`<tr class="bad"><td class="t">${e(formatOffset(v.t))}</td><td>${e(v.invariant)}</td><td>${e(v.detail, 1000)}</td></tr>`);
    html.push('</table>');
  }
  html.push('</body></html>', '');
  return html.join('\n');
}

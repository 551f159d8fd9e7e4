/**
 * The timeline as terminal text: a header, an overview strip per lane, every event in time order
 * (aligned columns), the safety margins, the violations. Pure.
 *
 * Invariants: no byte of the input reaches the terminal unfiltered — control characters (C0, DEL,
 * C1, so no escape sequences) and bidirectional overrides become `?`, and long fields are cut;
 * colour (ANSI) only when asked for; a negative margin or a violation always reads `VIOLATION`, with
 * or without colour.
 */
import type { TimelineInput } from '../domain/timeline.js';
import { formatOffset, layoutTimeline, type Severity, type TimelineLayout } from './layout.js';

/** Options of {@link renderText}. */
export interface TextOptions {
  /** ANSI colours (for a TTY). Default false. */
  readonly color?: boolean;
  /** Columns of the overview strip. Default 64. */
  readonly stripWidth?: number;
}

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** One line of text, safe for a terminal: control characters and bidi overrides become `?`, cut at `max`. */
export function safeText(s: string, max = 160): string {
  const clean = s.replace(UNSAFE, '?');
  return clean.length > max ? `${clean.slice(0, max - 3)}...` : clean;
}

const ANSI: Record<Severity | 'violation' | 'dim', string> = { good: '32', info: '0', warn: '33', bad: '31', violation: '1;31', dim: '2' };

const SYMBOL: Record<string, string> = {
  'host-detached': 'D',
  'host-fenced': 'F',
  'host-returned': 'r',
  'vm-rescheduled': 'p',
  'vm-lost': 'l',
  'controller-elected': 'e',
  'heartbeat-acked': 'h',
  detached: 'd',
  'watchdog-armed': 'w',
  'watchdog-expired': 'W',
  'fence-started': 'f',
  'vm-stop': 's',
  'vm-stop-failed': 'X',
  cleaned: 'c',
  verified: 'v',
  rejoined: 'R',
  'guardian-fired': 'G',
  fault: '*',
};

function strip(l: TimelineLayout, width: number): string[] {
  const span = Math.max(1, l.end - l.start);
  const col = (t: number) => Math.min(width - 1, Math.max(0, Math.floor(((t - l.start) / span) * width)));
  const name = Math.max(...l.lanes.map((x) => safeText(x.label, 24).length), l.violations.length > 0 ? 9 : 8);
  const lines: string[] = [];
  for (const lane of l.lanes) {
    const row = Array.from({ length: width }, () => ' ');
    for (const b of l.bands.filter((x) => x.lane === lane.id)) {
      const ch = b.kind === 'fence-window' ? '-' : b.kind === 'watchdog' ? '.' : '~';
      for (let c = col(b.from); c <= col(b.to ?? l.end); c++) row[c] = ch;
      if (b.kind === 'fence-window' && b.to !== undefined) row[col(b.to)] = '|';
    }
    // Where marks share a column, the more severe one shows.
    const rank: Record<Severity, number> = { info: 0, good: 1, warn: 2, bad: 3 };
    const marks = l.marks.filter((x) => x.lane === lane.id && !x.minor).map((m, i) => [m, i] as const);
    for (const [m] of marks.sort((a, b) => rank[a[0].severity] - rank[b[0].severity] || a[1] - b[1])) row[col(m.t)] = SYMBOL[m.kind] ?? 'o';
    if (lane.kind === 'host') for (const g of l.margins.filter((x) => `host:${x.hostId}` === lane.id && x.violation && x.lastGone !== undefined)) row[col(g.lastGone!)] = '!';
    lines.push(`  ${safeText(lane.label, 24).padEnd(name)} |${row.join('')}|`);
  }
  if (l.violations.length > 0) {
    const row = Array.from({ length: width }, () => ' ');
    for (const v of l.violations) row[col(v.t)] = '!';
    lines.push(`  ${'VIOLATION'.padEnd(name)} |${row.join('')}|`);
  }
  return lines;
}

/** One row of the events table: time, lane, event kind, what happened (all safe for a terminal). */
export interface EventRow {
  readonly t: number;
  readonly time: string;
  readonly lane: string;
  readonly kind: string;
  readonly what: string;
  readonly severity: Severity;
}

/**
 * The events table: every mark but the minor heartbeats (the last acknowledged heartbeat before other
 * news says how many it stands for), each fence deadline, each violation; in time order.
 */
export function eventRows(l: TimelineLayout): EventRow[] {
  const laneName = new Map(l.lanes.map((x) => [x.id, safeText(x.label, 24)]));
  const rows: EventRow[] = [];
  const skipped = new Map<string, number>();
  const row = (t: number, lane: string, kind: string, what: string, severity: Severity) => rows.push({ t, time: formatOffset(t), lane, kind, what, severity });
  for (const m of l.marks) {
    if (m.minor) {
      skipped.set(m.lane, (skipped.get(m.lane) ?? 0) + 1);
      continue;
    }
    const n = m.kind === 'heartbeat-acked' ? (skipped.get(m.lane) ?? 0) : 0;
    if (m.kind === 'heartbeat-acked') skipped.set(m.lane, 0);
    row(m.t, laneName.get(m.lane) ?? '?', safeText(m.kind, 24), safeText(m.label) + (n > 0 ? ` (last of ${n + 1})` : ''), m.severity);
  }
  for (const b of l.bands) if (b.kind === 'fence-window' && b.to !== undefined) row(b.to, laneName.get(b.lane) ?? '?', 'fence-deadline', `the cluster's fence deadline (window opened ${formatOffset(b.from)})`, 'warn');
  for (const v of l.violations) row(v.t, 'VIOLATION', safeText(v.invariant, 24), safeText(v.detail), 'bad');
  return rows.map((r, i) => [r, i] as const).sort((a, b) => a[0].t - b[0].t || a[1] - b[1]).map(([r]) => r);
}

/**
 * Renders `input` (or an already computed layout) as lines of text joined with `\n`, ending with
 * a newline.
 */
export function renderText(input: TimelineInput | TimelineLayout, opts: TextOptions = {}): string {
  const l = 'lanes' in input ? input : layoutTimeline(input);
  const paint = (s: string, how: Severity | 'violation' | 'dim') => (opts.color && how !== 'info' ? `\u001b[${ANSI[how]}m${s}\u001b[0m` : s);
  const out: string[] = [];
  const originIso = Number.isFinite(l.origin) && Math.abs(l.origin) < 8.64e15 ? new Date(l.origin).toISOString() : '?';
  out.push(`tether timeline: ${safeText(l.title)} (${safeText(l.source, 16)})`);
  out.push(`t=0 is ${originIso}; shown ${formatOffset(l.start)} .. ${formatOffset(l.end)}`);
  const bad = l.margins.filter((m) => m.violation).length + l.violations.length;
  if (bad > 0) out.push(paint(`VIOLATION: ${bad} safety problem(s) below`, 'violation'));
  out.push('');
  const width = Math.max(16, opts.stripWidth ?? 64);
  out.push(`OVERVIEW (one column = ${formatOffset((l.end - l.start) / width).slice(1)})`);
  out.push(...strip(l, width));
  out.push('  legend: e controller elected  D detached  F fenced  p placed again  r returned  h last heartbeat acked');
  out.push('          d host detached  w/W watchdog armed/expired  f fence start  s VM stopped  X stop failed  c cleaned  v verified  R rejoined');
  out.push('          G guardian fired  o other  --| fence window and deadline  .. watchdog  ~ fault  ! violation');
  out.push('');
  out.push('EVENTS');
  const order = eventRows(l).map((r) => [r.time, r.lane, r.kind, r.what, r.severity] as const);
  const w = [0, 1, 2].map((i) => Math.max(...order.map((r) => r[i]!.length), ['T', 'LANE', 'EVENT'][i]!.length));
  out.push(`  ${'T'.padStart(w[0]!)}  ${'LANE'.padEnd(w[1]!)}  ${'EVENT'.padEnd(w[2]!)}  WHAT`);
  for (const r of order) out.push(`  ${r[0].padStart(w[0]!)}  ${r[1].padEnd(w[1]!)}  ${paint(r[2].padEnd(w[2]!), r[4])}  ${r[3]}`);
  out.push('');
  out.push('SAFETY MARGINS (the cluster\'s fence deadline minus the moment the host\'s last VM was gone)');
  if (l.margins.length === 0) out.push('  none: no host detached');
  for (const m of l.margins) {
    const head = `  ${safeText(m.hostId, 40)} epoch ${Number.isFinite(m.epoch) ? m.epoch : '?'}: deadline ${formatOffset(m.deadline)}`;
    const gone = m.lastGone === undefined ? '' : `, last VM gone ${formatOffset(m.lastGone)}`;
    const margin = m.marginMs === undefined ? ', margin unknown' : `, margin ${formatOffset(m.marginMs)}`;
    const verdict = m.violation ? paint('  VIOLATION', 'violation') : m.marginMs !== undefined ? paint('  ok', 'good') : '';
    out.push(`${head}${gone}${margin}${verdict}${m.note ? ` (${safeText(m.note)})` : ''}`);
  }
  if (l.violations.length > 0) {
    out.push('');
    out.push(paint('VIOLATIONS', 'violation'));
    for (const v of l.violations) out.push(`  ${formatOffset(v.t)}  ${paint(safeText(v.invariant, 40), 'violation')}: ${safeText(v.detail, 300)}`);
  }
  return `${out.join('\n')}\n`;
}


/** min / median / max of a sample, in the sample's unit (rounded to whole units). */
export interface Summary {
  readonly n: number;
  readonly min: number;
  readonly median: number;
  readonly max: number;
}

/**
 * Summarises `values` (must be non-empty), rounded to `digits` decimals. The median of an even
 * count is the mean of the middle two.
 */
export function summarize(values: readonly number[], digits = 0): Summary {
  if (values.length === 0) throw new Error('summarize: no values');
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  const r = (x: number) => Math.round(x * 10 ** digits) / 10 ** digits;
  return { n: s.length, min: r(s[0]!), median: r(median), max: r(s[s.length - 1]!) };
}

/** `min / median / max` as text, with a unit. */
export function fmtSummary(s: Summary, unit = 'ms'): string {
  return s.n === 1 ? `${s.median} ${unit}` : `${s.min} / ${s.median} / ${s.max} ${unit}`;
}

/** Milliseconds as `1234 ms` (or `—` when undefined). */
export function fmtMs(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms) ? '—' : `${Math.round(ms)} ms`;
}

/** Counts of each distinct value, as `graceful×5, forced-kill×1`. */
export function countBy(values: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** `{a: 2, b: 1}` as `a×2 b×1`. */
export function fmtCounts(c: Readonly<Record<string, number>>): string {
  return Object.entries(c)
    .map(([k, n]) => `${k}×${n}`)
    .join(' ');
}

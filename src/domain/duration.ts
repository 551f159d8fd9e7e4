/**
 * Durations as people write them: `500ms`, `8s`, `2m`, `1h`, `1m30s`, or a bare number of
 * milliseconds. Parsing is strict: anything else is an error naming the input.
 */
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds for `text`; throws an Error naming the bad text. Negative values are refused. */
export function parseDuration(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new Error(`invalid duration ${text}: must be a non-negative number of milliseconds`);
    return text;
  }
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    pos = re.lastIndex;
  }
  if (pos !== s.length || s.length === 0) throw new Error(`invalid duration "${text}": use e.g. 500ms, 8s, 2m, 1m30s`);
  return total;
}

/** Short human form: `850ms`, `8s`, `2m30s`, `24h`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)}s`;
  if (ms >= 3_600_000) {
    const h = Math.floor(ms / 3_600_000);
    const min = Math.round((ms % 3_600_000) / 60_000);
    return min ? `${h}h${min}m` : `${h}h`;
  }
  const m = Math.floor(ms / 60_000);
  const s = Math.round((ms % 60_000) / 1000);
  return s ? `${m}m${s}s` : `${m}m`;
}

/** A titled table of text cells; numbers are right-aligned, text left-aligned. */
export interface Table {
  readonly title: string;
  readonly headers: readonly string[];
  readonly rows: readonly (readonly string[])[];
  /** Lines printed under the table (method notes, targets). */
  readonly notes?: readonly string[];
}

const NUMERIC = /^[-+]?[\d.,]+( ?[a-zA-Z%]+)?( \/ [-+]?[\d.,]+( ?[a-zA-Z%]+)?)*$/;

/** Renders a table as plain text with aligned columns. */
export function renderTable(t: Table): string {
  const widths = t.headers.map((h, i) => Math.max(h.length, ...t.rows.map((r) => (r[i] ?? '').length)));
  const cell = (text: string, i: number) => (NUMERIC.test(text) ? text.padStart(widths[i]!) : text.padEnd(widths[i]!));
  const line = (cells: readonly string[]) => cells.map((c, i) => cell(c, i)).join('  ').trimEnd();
  const out = [t.title, '='.repeat(t.title.length), line(t.headers), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const r of t.rows) out.push(line(r));
  for (const n of t.notes ?? []) out.push(`  ${n}`);
  return out.join('\n');
}

import { appendFileSync, renameSync, statSync } from 'node:fs';
import type { Clock } from '../ports/clock.js';

/** Every kind of line the guardian journals (`<stateDir>/guardian/journal.jsonl`). */
export type JournalEvent =
  | 'started'
  | 'lock-held'
  | 'armed'
  | 're-armed'
  | 'renewed'
  | 'suspended'
  | 'shutdown-fed'
  | 'feed-rejected'
  | 'feed-stale'
  | 'fired'
  | 'killed'
  | 'kill-skipped'
  | 'verify'
  | 'leak'
  | 'error'
  | 'watchdog'
  | 'exit';

/**
 * Append-only JSON lines, one per decision: `{"at":<wall ms>,"mono":<monotonic ms>,"event":…,…}`.
 *
 * Invariants: a line is written synchronously before the action it announces continues (so a
 * guardian killed mid-action leaves a journal that says how far it got); the file is rotated to
 * `journal.jsonl.1` past `maxBytes` (one old file kept), so renewals every heartbeat stay bounded;
 * a journal file it creates is 0600.
 * A write failure never stops the guardian: it is reported once on stderr.
 */
export class Journal {
  private size: number;
  private failed = false;

  constructor(
    readonly path: string,
    private readonly clock: Clock,
    private readonly maxBytes = 2 * 1024 * 1024,
  ) {
    try {
      this.size = statSync(path).size;
    } catch {
      this.size = 0;
    }
  }

  /** Appends one line. */
  write(event: JournalEvent, fields: Record<string, unknown> = {}): void {
    const line = `${JSON.stringify({ at: this.clock.now(), mono: Math.round(this.clock.nowMono() * 1000) / 1000, event, ...fields })}\n`;
    try {
      if (this.size + line.length > this.maxBytes && this.size > 0) {
        renameSync(this.path, `${this.path}.1`);
        this.size = 0;
      }
      appendFileSync(this.path, line, { mode: 0o600 });
      this.size += Buffer.byteLength(line);
      this.failed = false;
    } catch (err) {
      if (!this.failed) process.stderr.write(`guardian: cannot write journal ${this.path}: ${String(err)}\n`);
      this.failed = true;
    }
  }
}

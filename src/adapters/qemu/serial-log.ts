import { open } from 'node:fs/promises';

/** What the Tether guest prints on its serial console once booted. */
export const READY_MARKER = 'TETHER-GUEST-READY';

const CHUNK = 64 * 1024;

/**
 * True when the file at `path` contains `marker` (read in chunks, so a large log costs no
 * large buffer). A missing file contains nothing.
 */
export async function fileContains(path: string, marker: string): Promise<boolean> {
  const scanner = new LogScanner(path, marker);
  return scanner.poll();
}

/** The last `maxBytes` of the file as text ('' when missing), for error messages. */
export async function readTail(path: string, maxBytes = 2048): Promise<string> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return '';
  }
  try {
    const { size } = await fh.stat();
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Incremental search for a marker in a growing file: each {@link poll} reads only the bytes
 * appended since the previous one (keeping an overlap of marker length - 1, so a marker split
 * across two reads is still found).
 *
 * Invariant: once found, `poll()` keeps returning true. A file that shrank (truncated by a new
 * QEMU start) is read again from the beginning.
 */
export class LogScanner {
  private offset = 0;
  private carry = '';
  private found = false;

  constructor(
    private readonly path: string,
    private readonly marker: string,
  ) {}

  /** Reads what is new and tells whether the marker has appeared. */
  async poll(): Promise<boolean> {
    if (this.found) return true;
    let fh;
    try {
      fh = await open(this.path, 'r');
    } catch {
      return false;
    }
    try {
      const { size } = await fh.stat();
      if (size < this.offset) {
        this.offset = 0;
        this.carry = '';
      }
      const buf = Buffer.alloc(CHUNK);
      while (this.offset < size) {
        const { bytesRead } = await fh.read(buf, 0, CHUNK, this.offset);
        if (bytesRead === 0) break;
        this.offset += bytesRead;
        const text = this.carry + buf.subarray(0, bytesRead).toString('latin1');
        if (text.includes(this.marker)) {
          this.found = true;
          return true;
        }
        this.carry = text.slice(Math.max(0, text.length - (this.marker.length - 1)));
      }
      return false;
    } finally {
      await fh.close();
    }
  }
}

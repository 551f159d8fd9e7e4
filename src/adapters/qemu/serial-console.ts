import { open, rename, writeFile, type FileHandle } from 'node:fs/promises';
import { InvalidArgumentError, messageOf } from '../../domain/errors.js';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import { PRIVATE_FILE_MODE, tightenFile } from '../fs/private-files.js';
import { QmpClient } from './qmp-client.js';

/**
 * The guest's serial console, capped on disk.
 *
 * QEMU never writes the console to a file: the guest's serial port is a QEMU `ringbuf` chardev
 * ({@link CONSOLE_RING_BYTES} in QEMU's memory, oldest bytes overwritten, the guest never blocks),
 * and the agent drains it through a second QMP monitor (`con.sock`, `ringbuf-read`) into
 * `serial.log`, rotated to `serial.log.1` (one old file kept). Invariants:
 * - disk: `serial.log` + `serial.log.1` never exceed `maxBytes` together (each file at most half
 *   of it), whatever the guest writes and whether or not the agent runs: with no agent, nothing
 *   is written to disk at all; QEMU keeps only the newest {@link CONSOLE_RING_BYTES} bytes;
 * - cost: each poll reads at most {@link CONSOLE_RING_BYTES}; a flooding guest costs the agent at
 *   most that per poll, never its whole output (what the ring overwrote between polls is lost);
 * - readiness: the pump sees every byte it drains; when the ready marker passes, it writes the
 *   `ready` file (0600) beside the log, so a marker later rotated out of the logs still counts.
 *   Output the guest prints while no agent drains the ring survives in the ring (newest
 *   {@link CONSOLE_RING_BYTES} bytes) and is drained by the next agent.
 */

/** Size of the QEMU ring buffer behind the guest's serial port (a power of two, as QEMU requires). */
export const CONSOLE_RING_BYTES = 64 * 1024;
/** Chardev id of the serial ring buffer (the `device` of QMP `ringbuf-read`). */
export const CONSOLE_DEVICE = 'con0';
/** Smallest accepted `serialLogMaxBytes`. */
export const MIN_SERIAL_LOG_BYTES = 4096;
/** Default `serialLogMaxBytes`: 1 MiB for `serial.log` + `serial.log.1`. */
export const DEFAULT_SERIAL_LOG_BYTES = 1024 * 1024;

/** Throws INVALID_ARGUMENT unless `n` is an integer >= {@link MIN_SERIAL_LOG_BYTES}. */
export function checkSerialLogMaxBytes(n: number): void {
  if (!Number.isSafeInteger(n) || n < MIN_SERIAL_LOG_BYTES) {
    throw new InvalidArgumentError('serialLogMaxBytes', `must be an integer >= ${MIN_SERIAL_LOG_BYTES}, got ${n}`);
  }
}

/**
 * An append-only log of at most `maxBytes` on disk over two files: `path` (current, at most
 * `floor(maxBytes / 2)`) and `oldPath` (the previous one). Both are 0600. Not safe for concurrent
 * use: one writer (a {@link ConsolePump}) at a time.
 */
export class CappedLog {
  private fh: FileHandle | undefined;
  private size = 0;
  /** Rotations so far (each drops the older file's bytes). */
  rotations = 0;
  /** Bytes each file may hold. */
  readonly fileMax: number;

  constructor(
    readonly path: string,
    readonly oldPath: string,
    readonly maxBytes: number,
  ) {
    checkSerialLogMaxBytes(maxBytes);
    this.fileMax = Math.floor(maxBytes / 2);
  }

  /** Appends `data` (only its newest `fileMax` bytes when longer), rotating first when it would not fit. */
  async append(data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const chunk = data.length > this.fileMax ? data.subarray(data.length - this.fileMax) : data;
    if (!this.fh) await this.reopen();
    if (this.size + chunk.length > this.fileMax) await this.rotate();
    const { bytesWritten } = await this.fh!.write(chunk, 0, chunk.length, null);
    this.size += bytesWritten;
  }

  /** Closes the file (a later append reopens it). */
  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }

  private async reopen(): Promise<void> {
    this.fh = await open(this.path, 'a', PRIVATE_FILE_MODE);
    tightenFile(this.path);
    this.size = (await this.fh.stat()).size;
  }

  private async rotate(): Promise<void> {
    await this.close();
    try {
      await rename(this.path, this.oldPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    this.fh = await open(this.path, 'w', PRIVATE_FILE_MODE);
    this.size = 0;
    this.rotations++;
  }
}

/** Files and settings of one {@link ConsolePump}. */
export interface ConsolePumpOptions {
  readonly clock: Clock;
  /** The VM's console QMP monitor (`<vm folder>/con.sock`). */
  readonly socket: string;
  readonly log: CappedLog;
  /** Text whose appearance makes the pump write `readyFile`. */
  readonly marker: string;
  readonly readyFile: string;
  /** Poll period until the marker was seen, ms (default 50). */
  readonly bootPollMs?: number;
  /** Poll period afterwards, ms (default 500: up to 128 KiB/s of console output is kept whole). */
  readonly pollMs?: number;
  /** Deadline of the QMP handshake and of each read, ms (default 2000). */
  readonly timeoutMs?: number;
  readonly logger?: Logger;
  /** Marker already seen (its ready file exists): poll at `pollMs` from the start. */
  readonly ready?: boolean;
}

/**
 * Drains one VM's console ring into its {@link CappedLog} until the VM's QEMU exits (the monitor
 * connection closes) or {@link stop} is called. One pump per VM folder at a time.
 */
export class ConsolePump {
  private qmp: QmpClient | undefined;
  private stopped = false;
  private ready: boolean;
  private carry = '';
  private finished = false;
  /** Drains run one at a time, in order (the loop's and {@link drainNow}'s). */
  private chain: Promise<void> = Promise.resolve();
  private lastError = '';
  /** Bytes drained from the ring since the pump started. */
  drained = 0;
  /** Reads that returned a full ring: the guest may have written more than the ring kept since the poll before. */
  fullReads = 0;
  /** Resolves when the pump ended (never rejects). */
  readonly done: Promise<void>;

  constructor(private readonly o: ConsolePumpOptions) {
    this.ready = o.ready ?? false;
    this.done = this.run().catch((err: unknown) => {
      this.o.logger?.warn({ socket: o.socket, err: messageOf(err) }, 'serial console pump ended with an error');
    });
  }

  /** True once the pump ended. */
  get ended(): boolean {
    return this.finished;
  }

  /**
   * Drains the ring now (after any drain in progress): used before QEMU is told to quit, so the
   * guest's last words reach the log. Resolves (never rejects) once done; a no-op once ended.
   */
  drainNow(): Promise<void> {
    if (this.finished || !this.qmp) return Promise.resolve();
    return this.enqueueDrain();
  }

  private enqueueDrain(): Promise<void> {
    const timeoutMs = this.o.timeoutMs ?? 2000;
    this.chain = this.chain.then(() => this.drain(timeoutMs)).then(
      () => {
        this.lastError = '';
      },
      (err: unknown) => {
        // E.g. the disk is full: said once per distinct error, retried every poll (the ring keeps the newest bytes).
        if (messageOf(err) !== this.lastError) this.o.logger?.warn({ socket: this.o.socket, err: messageOf(err) }, 'serial console drain failed');
        this.lastError = messageOf(err);
      },
    );
    return this.chain;
  }

  /** Stops the pump after one last drain; resolves when it ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }

  private async run(): Promise<void> {
    const { clock } = this.o;
    const t0 = clock.nowMono();
    const timeoutMs = this.o.timeoutMs ?? 2000;
    try {
      this.qmp = await QmpClient.connect(this.o.socket, { clock, timeoutMs });
      this.qmp.unref();
      for (;;) {
        if (this.qmp.isClosed) break;
        const last = this.stopped;
        await this.enqueueDrain();
        if (last || this.qmp.isClosed) break;
        await clock.sleep(this.ready ? (this.o.pollMs ?? 500) : (this.o.bootPollMs ?? 50));
      }
    } finally {
      this.finished = true;
      await this.qmp?.close();
      await this.o.log.close();
      if (this.qmp) {
        this.o.logger?.info({ socket: this.o.socket, drainedBytes: this.drained, forMs: Math.round(clock.nowMono() - t0), fullRingReads: this.fullReads, rotations: this.o.log.rotations, maxBytes: this.o.log.maxBytes }, 'serial console pump ended');
      }
    }
  }

  /** Reads the ring until it is empty (each read at most the ring's size). */
  private async drain(timeoutMs: number): Promise<void> {
    for (let i = 0; i < 4; i++) {
      let b64: string;
      try {
        b64 = await this.qmp!.execute<string>('ringbuf-read', { device: CONSOLE_DEVICE, size: CONSOLE_RING_BYTES, format: 'base64' }, { timeoutMs });
      } catch (err) {
        if (this.qmp!.isClosed) return;
        this.o.logger?.debug({ socket: this.o.socket, err: messageOf(err) }, 'console read failed; retried next poll');
        return;
      }
      const data = Buffer.from(b64, 'base64');
      if (data.length === 0) return;
      this.drained += data.length;
      if (data.length === CONSOLE_RING_BYTES) this.fullReads++;
      await this.o.log.append(data);
      if (!this.ready && this.scan(data)) {
        try {
          await writeFile(this.o.readyFile, '', { mode: PRIVATE_FILE_MODE });
        } catch (err) {
          this.o.logger?.warn({ file: this.o.readyFile, err: messageOf(err) }, 'cannot write the ready file');
        }
      }
      if (data.length < CONSOLE_RING_BYTES) return;
    }
  }

  /** True when the marker appears in `data` (or across its start and the previous chunk's end). */
  private scan(data: Buffer): boolean {
    const text = this.carry + data.toString('latin1');
    if (text.includes(this.o.marker)) {
      this.ready = true;
      this.carry = '';
      return true;
    }
    this.carry = text.slice(Math.max(0, text.length - (this.o.marker.length - 1)));
    return false;
  }
}

import { connect, type Socket } from 'node:net';
import type { Clock, TimerHandle } from '../../ports/clock.js';
import { TetherError } from '../../domain/errors.js';

/** Timestamp QEMU attaches to every event. */
export interface QmpTimestamp {
  readonly seconds: number;
  readonly microseconds: number;
}

/**
 * Payloads of the QMP events Tether cares about, by event name. Other events still arrive
 * through {@link QmpClient.onAnyEvent} with an untyped payload.
 */
export interface QmpEventMap {
  /** The guest or the host asked QEMU to shut down (with `-no-reboot`, also on guest reboot). */
  SHUTDOWN: { readonly guest: boolean; readonly reason: string };
  /** `system_powerdown` pressed the ACPI power button. */
  POWERDOWN: Record<string, never>;
  /** The guest reset (without `-no-reboot`). */
  RESET: { readonly guest: boolean; readonly reason: string };
  /** The VM was paused. */
  STOP: Record<string, never>;
  /** The VM was resumed. */
  RESUME: Record<string, never>;
  /** The guest kernel panicked (with `-device pvpanic`). */
  GUEST_PANICKED: { readonly action: string };
}

/** Name of an event with a typed payload. */
export type QmpEventName = keyof QmpEventMap;

/** One event as received: `event` names it, `data` is its payload (an empty object when absent). */
export interface QmpEvent<K extends string = string> {
  readonly event: K;
  readonly data: K extends QmpEventName ? QmpEventMap[K] : Readonly<Record<string, unknown>>;
  readonly timestamp?: QmpTimestamp;
}

/** The greeting QEMU sends when a client connects. */
export interface QmpGreeting {
  readonly version: { readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number }; readonly package: string };
  readonly capabilities: readonly string[];
}

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Clock for every deadline of this client. */
  readonly clock: Clock;
  /**
   * Deadline (ms) for connecting, reading the greeting and negotiating capabilities.
   * A QEMU that is hung (or SIGSTOPped) accepts the connection in the kernel but never greets:
   * only this deadline reveals it.
   */
  readonly timeoutMs: number;
}

/** Options of {@link QmpClient.execute}. */
export interface QmpExecuteOptions {
  /** Deadline (ms) for the command's return; default 5000. */
  readonly timeoutMs?: number;
}

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: unknown) => void;
  readonly timer: TimerHandle;
}

type AnyListener = (event: QmpEvent) => void;

/**
 * A QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * Invariants:
 * - every command carries a unique `id`; a message with `return`/`error` is matched to its
 *   command by that id only, and a message with `event` is an event, whatever the order in which
 *   they arrive (QEMU may emit an event such as POWERDOWN before the command's return);
 * - every pending command settles exactly once: with its return, its error (VMM_ERROR), its
 *   deadline (TIMEOUT) or the connection's end (VMM_ERROR);
 * - all deadlines run on the injected {@link Clock}.
 */
export class QmpClient {
  /** The greeting received on connection. */
  readonly greeting: QmpGreeting;
  private readonly socket: Socket;
  private readonly clock: Clock;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Map<string, Set<AnyListener>>();
  private readonly anyListeners = new Set<AnyListener>();
  private readonly closeListeners = new Set<(err?: Error) => void>();
  private nextId = 1;
  private buffer = '';
  private closed = false;
  private closeError: Error | undefined;

  private constructor(socket: Socket, clock: Clock, greeting: QmpGreeting, leftover: string) {
    this.socket = socket;
    this.clock = clock;
    this.greeting = greeting;
    this.buffer = leftover;
    socket.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
    socket.on('error', (err) => this.handleEnd(err));
    socket.on('close', () => this.handleEnd());
  }

  /**
   * Connects to the QMP socket at `path`, reads the greeting and leaves negotiation mode with
   * `qmp_capabilities`. Rejects with VMM_ERROR (retryable) when the socket cannot be reached and
   * with TIMEOUT (retryable) when the whole handshake does not finish within `timeoutMs`.
   */
  static async connect(path: string, options: QmpConnectOptions): Promise<QmpClient> {
    const { clock, timeoutMs } = options;
    const socket = connect({ path });
    let timer: TimerHandle | undefined;
    const greetingP = new Promise<{ greeting: QmpGreeting; leftover: string }>((resolve, reject) => {
      let buf = '';
      const cleanup = (): void => {
        socket.off('data', onData);
        socket.off('error', onError);
        socket.off('close', onCloseEv);
      };
      const onData = (chunk: Buffer): void => {
        buf += chunk.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl).trim();
        cleanup();
        try {
          const msg = JSON.parse(line) as { QMP?: QmpGreeting };
          if (!msg.QMP) throw new Error(`not a QMP greeting: ${line.slice(0, 200)}`);
          resolve({ greeting: msg.QMP, leftover: buf.slice(nl + 1) });
        } catch (err) {
          reject(new TetherError('VMM_ERROR', `QMP ${path}: bad greeting`, { cause: err }));
        }
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(new TetherError('VMM_ERROR', `QMP ${path}: cannot connect: ${err.message}`, { cause: err, retryable: true }));
      };
      const onCloseEv = (): void => {
        cleanup();
        reject(new TetherError('VMM_ERROR', `QMP ${path}: closed before greeting`, { retryable: true }));
      };
      socket.on('data', onData);
      socket.on('error', onError);
      socket.on('close', onCloseEv);
      timer = clock.setTimer(timeoutMs, () => {
        cleanup();
        reject(new TetherError('TIMEOUT', `QMP ${path}: no greeting within ${timeoutMs} ms`, { retryable: true, details: { timeoutMs } }));
      });
    });
    const start = clock.nowMono();
    let client: QmpClient | undefined;
    try {
      const { greeting, leftover } = await greetingP;
      if (timer) clock.clearTimer(timer);
      client = new QmpClient(socket, clock, greeting, leftover);
      const left = Math.max(1, timeoutMs - (clock.nowMono() - start));
      await client.execute('qmp_capabilities', undefined, { timeoutMs: left });
      return client;
    } catch (err) {
      if (timer) clock.clearTimer(timer);
      socket.on('error', () => undefined); // late errors of a dead socket are not news
      socket.destroy();
      throw err;
    }
  }

  /** True once the connection ended (by {@link close}, by QEMU, or by an error). */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Runs `command` with `args` and resolves with its `return` value. Rejects with VMM_ERROR
   * (details.qmpClass) on a QMP error, TIMEOUT (retryable) after `timeoutMs`, VMM_ERROR when the
   * connection ends first. Events received meanwhile go to the event listeners, never here.
   */
  execute<T = unknown>(command: string, args?: Readonly<Record<string, unknown>>, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.closed) {
      return Promise.reject(
        new TetherError('VMM_ERROR', `QMP ${command}: connection closed`, { cause: this.closeError, retryable: true }),
      );
    }
    const id = `tether-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? 5000;
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.setTimer(timeoutMs, () => {
        if (this.pending.delete(id)) {
          reject(new TetherError('TIMEOUT', `QMP ${command}: no return within ${timeoutMs} ms`, { retryable: true, details: { command, timeoutMs } }));
        }
      });
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /** Lets the process exit while this connection is open (a long-lived reader must not hold it). */
  unref(): void {
    this.socket.unref();
  }

  /** Calls `listener` for each event named `event`; returns a function that unsubscribes. */
  on<K extends QmpEventName>(event: K, listener: (data: QmpEventMap[K], ev: QmpEvent<K>) => void): () => void {
    const wrapped: AnyListener = (ev) => listener(ev.data as QmpEventMap[K], ev as QmpEvent<K>);
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(wrapped);
    return () => set.delete(wrapped);
  }

  /** Calls `listener` for every event, typed or not; returns a function that unsubscribes. */
  onAnyEvent(listener: (ev: QmpEvent) => void): () => void {
    this.anyListeners.add(listener);
    return () => this.anyListeners.delete(listener);
  }

  /** Calls `listener` once when the connection ends (with the error, if any). */
  onClose(listener: (err?: Error) => void): () => void {
    if (this.closed) {
      listener(this.closeError);
      return () => undefined;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /**
   * Resolves with the next event named `event`, or rejects with TIMEOUT after `timeoutMs`
   * (or VMM_ERROR if the connection ends first). Subscribe before sending the command that
   * triggers the event: the event may arrive before the command's return.
   */
  waitForEvent<K extends QmpEventName>(event: K, timeoutMs: number): Promise<QmpEvent<K>> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        off();
        offClose();
        this.clock.clearTimer(timer);
      };
      const off = this.on(event, (_data, ev) => {
        done();
        resolve(ev);
      });
      const offClose = this.onClose((err) => {
        done();
        reject(new TetherError('VMM_ERROR', `QMP: closed while waiting for ${event}`, { cause: err }));
      });
      const timer = this.clock.setTimer(timeoutMs, () => {
        done();
        reject(new TetherError('TIMEOUT', `QMP: no ${event} within ${timeoutMs} ms`, { retryable: true, details: { event, timeoutMs } }));
      });
    });
  }

  /** Closes the connection; pending commands reject with VMM_ERROR. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      // A peer that never answers the FIN must not keep us waiting.
      const t = this.clock.setTimer(200, () => {
        this.socket.destroy();
        resolve();
      });
      this.socket.once('close', () => this.clock.clearTimer(t));
    });
    this.handleEnd();
  }

  private onData(text: string): void {
    this.buffer += text;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // Not JSON: QEMU never sends this; ignore rather than break the stream.
    }
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = {
        event: msg.event,
        data: (msg.data ?? {}) as Readonly<Record<string, unknown>>,
        timestamp: msg.timestamp as QmpTimestamp | undefined,
      };
      for (const l of this.listeners.get(msg.event) ?? []) l(ev);
      for (const l of this.anyListeners) l(ev);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p || id === undefined) return; // A return for a command we no longer wait for.
    this.pending.delete(id);
    this.clock.clearTimer(p.timer);
    if ('error' in msg) {
      const e = (msg.error ?? {}) as { class?: string; desc?: string };
      p.reject(
        new TetherError('VMM_ERROR', `QMP ${p.command}: ${e.class ?? 'Error'}: ${e.desc ?? 'unknown error'}`, {
          details: { command: p.command, qmpClass: e.class },
        }),
      );
    } else {
      p.resolve(msg.return);
    }
  }

  private handleEnd(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    this.socket.destroy();
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      this.clock.clearTimer(p.timer);
      p.reject(new TetherError('VMM_ERROR', `QMP ${p.command}: connection closed before the return`, { cause: err, retryable: true }));
    }
    for (const l of this.closeListeners) l(err);
    this.closeListeners.clear();
  }
}

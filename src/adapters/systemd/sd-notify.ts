import { spawn, type ChildProcess } from 'node:child_process';

/**
 * sd_notify(3) for Node, which has no unix datagram sockets: one long-lived `perl` child (perl-base
 * is Essential on Debian, so it is on every host) reads NUL-terminated messages on its stdin and
 * sends each as one datagram to `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
 *
 * Invariants:
 * - a message is sent only when the caller asks: a hung caller sends no `WATCHDOG=1`, so systemd's
 *   `WatchdogSec` still detects it (the helper never pets on its own);
 * - the sender is a child of the caller in the caller's cgroup, so the unit needs
 *   `NotifyAccess=all` (systemd rejects messages from non-main pids under the default `main`);
 *   the helper is long-lived, which avoids the race of a short-lived sender exiting before
 *   systemd read its credentials;
 * - never throws: a failed send is reported through `onError` and the helper is restarted on the
 *   next message.
 */

const SENDER = [
  'use strict; use Socket;',
  'my $p = shift; $p =~ s/^@/\\0/;',
  'socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "sd_notify: socket: $!\\n";',
  'my $a = pack_sockaddr_un($p); $/ = "\\0";',
  'while (defined(my $m = <STDIN>)) { chomp $m; next if $m eq ""; send($s, $m, 0, $a) or print STDERR "sd_notify: send: $!\\n"; }',
].join(' ');

/** Options of {@link SdNotifier}. */
export interface SdNotifierOptions {
  /** Interpreter to run the sender with (default `perl`, from PATH). */
  readonly perl?: string;
  /** Called with a message when the helper cannot be run or fails. */
  readonly onError?: (message: string) => void;
}

/** Sends `KEY=VALUE` notifications to systemd (see the module invariants). */
export class SdNotifier {
  private child: ChildProcess | undefined;
  private closed = false;

  constructor(
    /** `NOTIFY_SOCKET` as systemd passed it. */
    readonly socket: string,
    private readonly options: SdNotifierOptions = {},
  ) {}

  /** A notifier for `env.NOTIFY_SOCKET`, or undefined when the process was not started by systemd with one. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, options: SdNotifierOptions = {}): SdNotifier | undefined {
    const s = env.NOTIFY_SOCKET;
    return s ? new SdNotifier(s, options) : undefined;
  }

  /** Sends `state` (one or more `KEY=VALUE` lines). False when it could not be handed to the helper. */
  notify(state: string): boolean {
    if (this.closed || state.includes('\0')) return false;
    const child = this.helper();
    if (!child?.stdin || child.stdin.destroyed) return false;
    try {
      child.stdin.write(`${state}\0`);
      return true;
    } catch (err) {
      this.options.onError?.(`sd_notify: ${String(err)}`);
      return false;
    }
  }

  /** `READY=1` (with an optional `STATUS=`). */
  ready(status?: string): boolean {
    return this.notify(status ? `READY=1\nSTATUS=${status}` : 'READY=1');
  }

  /** `WATCHDOG=1`: call only while healthy, at least every {@link watchdogIntervalMs}. */
  watchdog(): boolean {
    return this.notify('WATCHDOG=1');
  }

  /** `STATUS=<text>`: shown by `systemctl status`. */
  status(text: string): boolean {
    return this.notify(`STATUS=${text.replace(/\n/g, ' ')}`);
  }

  /** `STOPPING=1`. */
  stopping(): boolean {
    return this.notify('STOPPING=1');
  }

  /** Flushes what was queued and ends the helper (it exits at the end of its input). */
  async close(): Promise<void> {
    this.closed = true;
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.stdin?.end();
    await exited;
  }

  private helper(): ChildProcess | undefined {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return this.child;
    try {
      const child = spawn(this.options.perl ?? 'perl', ['-e', SENDER, this.socket], { stdio: ['pipe', 'ignore', 'inherit'] });
      child.on('error', (err) => this.options.onError?.(`sd_notify helper: ${err.message}`));
      child.on('exit', (code, signal) => {
        if (!this.closed && (code !== 0 || signal)) this.options.onError?.(`sd_notify helper exited (${code ?? signal})`);
        if (this.child === child) this.child = undefined;
      });
      child.stdin?.on('error', (err) => this.options.onError?.(`sd_notify helper stdin: ${err.message}`));
      // Never keep the caller alive for the helper's sake.
      child.unref();
      (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
      this.child = child;
      return child;
    } catch (err) {
      this.options.onError?.(`sd_notify helper: ${String(err)}`);
      return undefined;
    }
  }
}

/**
 * Half of systemd's `WATCHDOG_USEC`, in ms (how often to send `WATCHDOG=1`), or undefined when no
 * watchdog is asked for this process (`WATCHDOG_PID`, when set, must be `pid`).
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== '' && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 2 / 1000));
}

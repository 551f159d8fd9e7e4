import { execFile } from 'node:child_process';
import { TetherError, messageOf } from '../domain/errors.js';

/** Options of {@link runCommand}. */
export interface RunOptions {
  /** Kill the command (SIGKILL) after this many ms. Default 30 000. */
  readonly timeoutMs?: number;
  /** Text written to the command's stdin, which is then closed. Default: stdin closed at once. */
  readonly input?: string;
  /** Largest stdout or stderr accepted, in bytes. Default 64 MiB. */
  readonly maxBuffer?: number;
}

/** What a command printed, when it exited with status 0. */
export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * A command that could not be started, exited non-zero, was killed, or timed out.
 *
 * Invariant: `stderr` holds everything the command wrote to stderr (also part of `message`, trimmed),
 * so callers can both show it and match on it. `code` is `TIMEOUT` (retryable) when the timeout
 * killed the command, `UNAVAILABLE` when the executable is missing, else `INTERNAL`. Adapters wrap it
 * in their own code (NETWORK_ERROR, VOLUME_ERROR) and pass it as `cause`.
 */
export class CommandError extends TetherError {
  /** The executable, as given. */
  readonly file: string;
  /** The arguments, as given. */
  readonly args: readonly string[];
  /** Exit status, or undefined when the command did not exit normally (signal, spawn failure). */
  readonly exitCode: number | undefined;
  /** Signal that ended the command, if any. */
  readonly signal: string | undefined;
  /** Full stderr of the command. */
  readonly stderr: string;
  /** Full stdout of the command. */
  readonly stdout: string;
  /** True when the command was killed by the timeout. */
  readonly timedOut: boolean;

  constructor(init: {
    file: string;
    args: readonly string[];
    exitCode: number | undefined;
    signal: string | undefined;
    stdout: string;
    stderr: string;
    timedOut: boolean;
    notFound: boolean;
    cause: unknown;
  }) {
    const cmd = [init.file, ...init.args].join(' ');
    const how = init.notFound
      ? `command not found: ${init.file}`
      : init.timedOut
        ? `timed out: ${cmd}`
        : init.exitCode !== undefined
          ? `exit status ${init.exitCode}: ${cmd}`
          : init.signal
            ? `killed by ${init.signal}: ${cmd}`
            : `failed: ${cmd} (${messageOf(init.cause)})`;
    const err = init.stderr.trim();
    super(init.timedOut ? 'TIMEOUT' : init.notFound ? 'UNAVAILABLE' : 'INTERNAL', err ? `${how}: ${err}` : how, {
      cause: init.cause,
      retryable: init.timedOut,
      details: { file: init.file, args: [...init.args], exitCode: init.exitCode, signal: init.signal },
    });
    this.name = 'CommandError';
    this.file = init.file;
    this.args = init.args;
    this.exitCode = init.exitCode;
    this.signal = init.signal;
    this.stdout = init.stdout;
    this.stderr = init.stderr;
    this.timedOut = init.timedOut;
  }
}

/**
 * Runs `file` with `args` through `execFile`: never a shell, so no argument is ever interpreted.
 *
 * Invariants: resolves only on exit status 0; otherwise rejects with a {@link CommandError} that
 * carries stderr. The child runs with `LC_ALL=C` so that messages are stable enough to match.
 * A timed-out child is sent SIGKILL.
 */
export function runCommand(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise<RunResult>((resolve, reject) => {
    const child = execFile(
      file,
      [...args],
      {
        encoding: 'utf8',
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: options.maxBuffer ?? 64 * 1024 * 1024,
        env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
        windowsHide: true,
      },
      (error, stdout, stderr) => {
        if (!error) {
          resolve({ stdout, stderr });
          return;
        }
        const e = error as NodeJS.ErrnoException & { code?: unknown; killed?: boolean; signal?: NodeJS.Signals | null };
        const exitCode = typeof e.code === 'number' ? e.code : undefined;
        const signal = e.signal ?? undefined;
        reject(
          new CommandError({
            file,
            args,
            exitCode,
            signal,
            stdout: String(stdout ?? ''),
            stderr: String(stderr ?? ''),
            // execFile sets `killed` when it killed the child itself: on timeout, or on an overflowing
            // buffer (which, unlike the timeout, sets a string code).
            timedOut: e.killed === true && typeof e.code !== 'string',
            notFound: e.code === 'ENOENT',
            cause: error,
          }),
        );
      },
    );
    // Always close stdin so a command that reads it never waits for us.
    child.stdin?.on('error', () => {
      /* the child may exit before reading; its exit status tells the story */
    });
    child.stdin?.end(options.input ?? '');
  });
}

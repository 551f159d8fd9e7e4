import { pino, type Logger as Pino } from 'pino';
import type { Logger } from '../../ports/logger.js';

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  readonly level?: string;
  /** File descriptor or path of the destination (default: stderr, so stdout stays for command output). */
  readonly destination?: number | string;
  readonly base?: Record<string, unknown>;
}

class PinoLogger implements Logger {
  constructor(private readonly p: Pino) {}
  debug(fields: Record<string, unknown>, msg: string): void {
    this.p.debug(fields, msg);
  }
  info(fields: Record<string, unknown>, msg: string): void {
    this.p.info(fields, msg);
  }
  warn(fields: Record<string, unknown>, msg: string): void {
    this.p.warn(fields, msg);
  }
  error(fields: Record<string, unknown>, msg: string): void {
    this.p.error(fields, msg);
  }
  child(fields: Record<string, unknown>): Logger {
    return new PinoLogger(this.p.child(fields));
  }
}

/** A structured JSON-lines logger (pino), one object per line. */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const dest = pino.destination({ dest: opts.destination ?? 2, sync: true, mkdir: true });
  return new PinoLogger(pino({ level: opts.level ?? 'info', base: opts.base ?? {}, timestamp: pino.stdTimeFunctions.isoTime }, dest));
}

import { closeSync, constants, open, writeSync } from 'node:fs';
import { TetherError, messageOf } from '../domain/errors.js';
import type { Clock } from '../ports/clock.js';

/**
 * A Linux watchdog device (`/dev/watchdog`, the kernel's watchdog API): any write pets it; if no
 * pet arrives within the device's timeout the hardware resets the host; writing the magic
 * character 'V' right before closing disarms it (unless the driver runs with `nowayout`).
 *
 * Invariants: the guardian pets only while its deadline holds (pending, suspended, or none fed
 * yet); once the deadline has passed it never pets again until a newer feed re-arms it, so a
 * guardian that could not kill (or died, or hangs) leaves the host to be reset SBD-style. The
 * magic close happens only on a clean shutdown. The device timeout itself is set outside Tether
 * (driver parameter or `wdctl`/`ioctl`): Node cannot issue the WDIOC ioctls.
 *
 * Tested here against a FIFO (this machine has no watchdog device): the FIFO's reader sees the
 * pet bytes and the final 'V'.
 */
export class WatchdogDevice {
  private fd: number | undefined;

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  /**
   * Opens `path` write-only (never creates it). A FIFO stand-in blocks until its reader opens it:
   * rejected with UNAVAILABLE after `timeoutMs`.
   */
  static async open(path: string, clock: Clock, timeoutMs = 5000): Promise<WatchdogDevice> {
    let timer: ReturnType<Clock['setTimer']> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = clock.setTimer(timeoutMs, () => reject(new TetherError('UNAVAILABLE', `watchdog device ${path} did not open within ${timeoutMs} ms`)));
    });
    try {
      // A raw fd (not a FileHandle, which would be closed when garbage-collected).
      const opened = new Promise<number>((resolve, reject) => open(path, constants.O_WRONLY, (err, fd) => (err ? reject(err) : resolve(fd))));
      const fd = await Promise.race([opened, timeout]);
      return new WatchdogDevice(path, fd);
    } catch (err) {
      if (err instanceof TetherError) throw err;
      throw new TetherError('UNAVAILABLE', `cannot open watchdog device ${path}: ${messageOf(err)}`, { cause: err });
    } finally {
      if (timer !== undefined) clock.clearTimer(timer);
    }
  }

  /** Pets the device (one byte). False when the write failed (reported by the caller). */
  pet(): boolean {
    if (this.fd === undefined) return false;
    try {
      writeSync(this.fd, '.');
      return true;
    } catch {
      return false;
    }
  }

  /** Clean shutdown: writes the magic 'V' and closes (the device stops counting). */
  closeDisarmed(): void {
    if (this.fd === undefined) return;
    try {
      writeSync(this.fd, 'V');
    } catch {
      /* closing anyway */
    }
    this.closeArmed();
  }

  /** Closes WITHOUT the magic character: the device keeps counting and resets the host unless someone pets it. */
  closeArmed(): void {
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
    this.fd = undefined;
  }
}

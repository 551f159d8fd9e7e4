/**
 * Progress lines on stderr, prefixed with the time since the bench started, so a long run shows
 * what it is doing. Results go to stdout (tables) and to the JSON file, never here.
 */
const started = performance.now();

/** Writes one progress line to stderr. */
export function progress(message: string): void {
  const s = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${s}s] ${message}\n`);
}

/** Sleeps `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Calls `onTick` at most once per `everyMs` (for "still waiting" lines inside poll loops).
 * Returns a function to call on every loop iteration.
 */
export function throttle(everyMs: number, onTick: () => void): () => void {
  let last = performance.now();
  return () => {
    const now = performance.now();
    if (now - last >= everyMs) {
      last = now;
      onTick();
    }
  };
}

/**
 * Runs `fn` over `items` with at most `limit` calls in flight, in order of start. Resolves when all
 * are done; rejects with the first error (the others still run to completion).
 */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
}

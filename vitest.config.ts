import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Real-VM and real-etcd files share the 2 cores: run files one at a time.
    fileParallelism: false,
    pool: 'forks',
    // Keeps the logs of a failing test's folders (test/support/keep-failed-logs.ts).
    setupFiles: ['test/support/keep-failed-logs.ts'],
  },
});

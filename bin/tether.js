#!/usr/bin/env node
// The `tether` command. Runs the compiled CLI (npm run build, or any README command, builds it).
import { existsSync } from 'node:fs';
// `tether guardian` loads only its own small modules (no etcd, SQLite, gRPC, pino): docs/guardian.md.
const entry = new URL(process.argv[2] === 'guardian' ? '../dist/src/guardian/main.js' : '../dist/src/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('tether is not built yet: run `npm run build` (or the README quick start) first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);

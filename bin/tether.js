#!/usr/bin/env node
// The `tether` command. Runs the compiled CLI (npm run build, or any README command, builds it).
import { existsSync } from 'node:fs';
// `tether guardian` loads only its own small modules (no etcd, SQLite, gRPC, pino): docs/guardian.md.
const entry = new URL(process.argv[2] === 'guardian' ? '../dist/src/guardian/main.js' : '../dist/src/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('tether is not built yet: run `npm run build` (or the README quick start) first\n');
  process.exit(1);
}
// grpc-js sets the TLS server name to the target even when it is an IP address (127.0.0.1 in the dev
// cluster and the tests), and Node warns about it on every connection (DEP0123). The certificate is
// still verified against the IP (its subjectAltName): the warning says nothing an operator can act on.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = (warning, ...rest) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? rest[0].code : rest[1];
  if (code === 'DEP0123') return;
  emitWarning(warning, ...rest);
};
const { main } = await import(entry.href);
await main(process.argv);

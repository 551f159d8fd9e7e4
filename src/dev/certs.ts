import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './agent-process.js';

/** Paths of the certificates made by `scripts/gen-certs.sh` (dev cluster, tests, benchmarks). */
export interface DevCerts {
  readonly dir: string;
  /** The private CA that signed every certificate below except `other*`. */
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** etcd peer certificate (server and client use). */
  readonly peerCert: string;
  readonly peerKey: string;
  /** A second CA, and a client certificate it signed: one the first CA does not vouch for. */
  readonly otherCa: string;
  readonly otherClientCert: string;
  readonly otherClientKey: string;
}

/**
 * Makes (or reuses) a certificate set in `dir` with the project's own script and Debian's openssl.
 * Servers get 127.0.0.1, ::1 and localhost as names; keys are 0600 in a 0700 folder.
 */
export function devCerts(dir: string, clientCn = 'tether'): DevCerts {
  execFileSync('bash', [join(repoRoot(), 'scripts/gen-certs.sh'), dir, clientCn], { stdio: ['ignore', 'ignore', 'pipe'] });
  const f = (name: string) => join(dir, name);
  return {
    dir,
    ca: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server-key.pem'),
    clientCert: f('client.pem'),
    clientKey: f('client-key.pem'),
    peerCert: f('peer.pem'),
    peerKey: f('peer-key.pem'),
    otherCa: f('other-ca.pem'),
    otherClientCert: f('other-client.pem'),
    otherClientKey: f('other-client-key.pem'),
  };
}

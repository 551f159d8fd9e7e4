import { readFileSync } from 'node:fs';
import { InvalidArgumentError, messageOf } from '../../domain/errors.js';

/** A certificate and its private key (PEM). */
export interface CertAndKey {
  readonly cert: Buffer;
  readonly key: Buffer;
}

/**
 * The TLS material of the peer channel. Both sides of every call present a certificate that chains
 * to {@link PeerTls.ca} (mutual TLS); anything else is refused during the handshake.
 */
export interface PeerTls {
  /** The CA (bundle) peers' certificates must chain to: the cluster CA. Nothing else is trusted. */
  readonly ca: Buffer;
  /** What the peer server presents (extended key usage serverAuth, or none). */
  readonly server: CertAndKey;
  /** What this agent presents when it asks its peers (extended key usage clientAuth, or none). */
  readonly client: CertAndKey;
}

/** Paths of the material, each with the setting it came from (named in errors). */
export interface PeerTlsFiles {
  readonly ca: { readonly path: string; readonly field: string };
  readonly serverCert: { readonly path: string; readonly field: string };
  readonly serverKey: { readonly path: string; readonly field: string };
  readonly clientCert: { readonly path: string; readonly field: string };
  readonly clientKey: { readonly path: string; readonly field: string };
}

/**
 * Reads the peer channel's material. Throws INVALID_ARGUMENT naming the setting and the file when a
 * path is empty or unreadable: the agent refuses to start rather than run a peer channel it cannot
 * authenticate.
 */
export function loadPeerTls(f: PeerTlsFiles): PeerTls {
  const read = (e: { readonly path: string; readonly field: string }): Buffer => {
    if (e.path === '') throw new InvalidArgumentError(e.field, 'required by the peer channel (peerListen is set) and not given, nor any default');
    try {
      return readFileSync(e.path);
    } catch (err) {
      throw new InvalidArgumentError(e.field, `cannot read ${e.path}: ${messageOf(err)}`, { cause: err });
    }
  };
  return { ca: read(f.ca), server: { cert: read(f.serverCert), key: read(f.serverKey) }, client: { cert: read(f.clientCert), key: read(f.clientKey) } };
}

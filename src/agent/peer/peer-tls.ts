import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
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

function parseCerts(pem: Buffer, field: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  try {
    const certs = blocks.map((b) => new X509Certificate(b));
    if (certs.length === 0) throw new Error('no PEM certificate in it');
    return certs;
  } catch (err) {
    throw new InvalidArgumentError(field, `not a PEM certificate: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * Start-time check of the material against what the peers will verify, so a mistake is refused
 * at start (naming the setting) instead of silently making every peer refuse this host: each
 * certificate must be issued by a certificate of the CA bundle, and the server certificate must name
 * the advertised host (an IP SAN for an IP address, a DNS SAN for a name). Throws INVALID_ARGUMENT.
 */
export function checkPeerTls(tls: PeerTls, files: PeerTlsFiles, advertise: string): void {
  const cas = parseCerts(tls.ca, files.ca.field);
  const issued = (cert: X509Certificate): boolean => cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey));
  const server = parseCerts(tls.server.cert, files.serverCert.field)[0]!;
  const client = parseCerts(tls.client.cert, files.clientCert.field)[0]!;
  if (!issued(server)) throw new InvalidArgumentError(files.serverCert.field, `${files.serverCert.path} is not signed by the peer CA ${files.ca.path} (${files.ca.field}): peers would refuse it`);
  if (!issued(client)) throw new InvalidArgumentError(files.clientCert.field, `${files.clientCert.path} is not signed by the peer CA ${files.ca.path} (${files.ca.field}): peers would refuse it`);
  const colon = advertise.lastIndexOf(':');
  const host = advertise.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const named = isIP(host) !== 0 ? server.checkIP(host) : server.checkHost(host);
  if (named === undefined) {
    throw new InvalidArgumentError(files.serverCert.field, `${files.serverCert.path} does not name ${host}, the address advertised to peers (${advertise}): peers would refuse it. Add it as a subjectAltName, or advertise a name it carries (peerAdvertise)`);
  }
}

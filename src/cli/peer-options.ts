/**
 * The agent's peer channel settings (issue 11, docs/peer-check.md "Peer channel"): where it listens,
 * what it advertises, and its TLS material, with defaults that reuse what the cluster already has.
 */
import { InvalidArgumentError } from '../domain/errors.js';
import { isPeerAddress, PEER_ADDRESS_RULE } from '../domain/codec/peer-address.js';
import { parseListenAddress } from '../api/listen-address.js';
import type { PeerTlsFiles } from '../agent/peer/peer-tls.js';
import type { ConfigKey } from './config-schema.js';

/** Every peer channel setting: flag `--<kebab>`, env `TETHER_<SNAKE>`, YAML key as written here. */
export const PEER_CHANNEL_SCHEMA: readonly ConfigKey[] = [
  { key: 'peerListen', type: 'string', default: '', description: "address of the agent-to-agent peer channel (mutual TLS, issue 11), ip:port or [v6]:port; '' = peer channel off" },
  { key: 'peerAdvertise', type: 'string', default: '', description: "address peers reach this agent at (host:port, written in the host record); '' = peerListen (which must then not be 0.0.0.0 or [::])" },
  { key: 'peerTlsCert', type: 'string', default: '', description: "certificate the peer server presents (PEM; must name the advertised address); '' = --tls-cert" },
  { key: 'peerTlsKey', type: 'string', default: '', description: "private key of --peer-tls-cert; '' = --tls-key" },
  { key: 'peerClientCert', type: 'string', default: '', description: "certificate this agent presents to its peers (PEM, clientAuth); '' = --etcd-cert" },
  { key: 'peerClientKey', type: 'string', default: '', description: "private key of --peer-client-cert; '' = --etcd-key" },
  { key: 'peerCheckInterval', type: 'duration', default: 1000, description: 'while detached, time between two rounds of questions to the peers (docs/peer-check.md)' },
  { key: 'peerTimeout', type: 'duration', default: 1000, description: 'a peer answer later than this after its question does not count' },
  { key: 'peerTlsCa', type: 'string', default: '', description: "the cluster CA both ends of the peer channel must chain to (PEM); '' = --etcd-ca, else --tls-client-ca" },
];

/** The resolved values of {@link PEER_CHANNEL_SCHEMA} (`''` = not set). */
export interface PeerChannelConfig {
  readonly peerListen: string;
  readonly peerAdvertise: string;
  readonly peerTlsCert: string;
  readonly peerTlsKey: string;
  readonly peerClientCert: string;
  readonly peerClientKey: string;
  readonly peerTlsCa: string;
  readonly peerCheckInterval: number;
  readonly peerTimeout: number;
}

/** The peer channel, ready to start. */
export interface PeerChannelSettings {
  /** IP to bind (no brackets) and port (0: any free port). */
  readonly listenHost: string;
  readonly listenPort: number;
  /**
   * What to write as `HostRecord.peerAddress`: the given address; undefined when it is the listen
   * address with a port still to be picked by the kernel (port 0: use the bound port).
   */
  readonly advertise: string | undefined;
  readonly files: PeerTlsFiles;
  /** Rounds of the peer check while detached (docs/peer-check.md "The host's rule"). */
  readonly check: { readonly interval: number; readonly timeout: number };
}

/** What the defaults come from (other agent settings). */
type Fallbacks = Readonly<Record<'tlsCert' | 'tlsKey' | 'tlsClientCa' | 'etcdCa' | 'etcdCert' | 'etcdKey', unknown>>;

const s = (v: unknown): string => (v === undefined || v === null ? '' : String(v));

/**
 * The peer channel from the settings, or undefined when `peerListen` is empty (off). Throws
 * INVALID_ARGUMENT naming the setting when: `peerAdvertise` is set without `peerListen`; the listen
 * address is not ip:port; the advertised address is not a reachable host:port (a wildcard listen
 * address with no `peerAdvertise`); there is no cluster (`etcdEndpoints` empty); or a piece of TLS
 * material is neither given nor defaulted (the message names the setting and its default).
 */
export function resolvePeerChannel(v: Partial<PeerChannelConfig> & Fallbacks & { readonly etcdEndpoints?: unknown }): PeerChannelSettings | undefined {
  const listenText = s(v.peerListen).trim();
  const advertiseText = s(v.peerAdvertise).trim();
  if (listenText === '') {
    if (advertiseText !== '') throw new InvalidArgumentError('peerAdvertise', 'is set but peerListen is empty (the peer channel is off): set peerListen too, or neither');
    return undefined;
  }
  const endpoints = Array.isArray(v.etcdEndpoints) ? v.etcdEndpoints : s(v.etcdEndpoints) === '' ? [] : [v.etcdEndpoints];
  if (endpoints.length === 0) throw new InvalidArgumentError('peerListen', 'the peer channel needs a cluster (etcdEndpoints is empty: this agent runs standalone)');
  const listen = parseListenAddress(listenText, 'peerListen');
  if (listen.kind !== 'tcp') throw new InvalidArgumentError('peerListen', `${JSON.stringify(listenText)}: peers connect over TCP: use ip:port or [v6]:port`);
  let advertise: string | undefined;
  if (advertiseText !== '') {
    if (!isPeerAddress(advertiseText)) throw new InvalidArgumentError('peerAdvertise', `${JSON.stringify(advertiseText)} ${PEER_ADDRESS_RULE}`);
    advertise = advertiseText;
  } else {
    if (listen.wildcard) {
      throw new InvalidArgumentError('peerListen', `${JSON.stringify(listenText)} listens on every interface and cannot be advertised to peers: set peerAdvertise to the address they reach this host at`);
    }
    const host = listen.family === 6 ? `[${listen.host}]` : listen.host;
    advertise = listen.port === 0 ? undefined : `${host}:${listen.port}`;
  }
  const pick = (field: keyof PeerChannelConfig, fallbacks: readonly (keyof Fallbacks)[]): { path: string; field: string } => {
    const own = s(v[field]);
    if (own !== '') return { path: own, field };
    for (const f of fallbacks) if (s(v[f]) !== '') return { path: s(v[f]), field: `${field} (defaulted to ${f})` };
    throw new InvalidArgumentError(field, `required by the peer channel (peerListen is set): give ${field}${fallbacks.length > 0 ? ` or ${fallbacks.join(' / ')}, its default` : ''}`);
  };
  return {
    listenHost: listen.host,
    listenPort: listen.port,
    advertise,
    files: {
      serverCert: pick('peerTlsCert', ['tlsCert']),
      serverKey: pick('peerTlsKey', ['tlsKey']),
      clientCert: pick('peerClientCert', ['etcdCert']),
      clientKey: pick('peerClientKey', ['etcdKey']),
      ca: pick('peerTlsCa', ['etcdCa', 'tlsClientCa']),
    },
    check: { interval: positive(v.peerCheckInterval, 'peerCheckInterval'), timeout: positive(v.peerTimeout, 'peerTimeout') },
  };
}

function positive(v: unknown, field: string): number {
  const n = v === undefined || v === '' ? 1000 : Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(field, `must be a duration > 0, got ${JSON.stringify(v)}`);
  return n;
}

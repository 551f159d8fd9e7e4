/**
 * The one parser of listen addresses, used for every listener of the agent (gRPC API, admin HTTP,
 * metrics) so that they all read the same text the same way.
 *
 * Accepted forms:
 *  - `a.b.c.d:port`           IPv4 (each part 0..255, no leading zeros);
 *  - `[v6]:port`              IPv6 in brackets (`[::1]:9091`, `[::]:9091`);
 *  - `port` or `:port`        loopback `127.0.0.1:port` (never every interface: an address that binds
 *                             all interfaces must say so, `0.0.0.0:port` or `[::]:port`);
 *  - `localhost:port`         the same as `127.0.0.1:port` (no name lookup);
 *  - `unix:/abs/path`         a unix socket (also `unix:///abs/path`).
 * Port 0 asks the kernel for a free port. Host names other than `localhost` are refused: whether a
 * name is loopback depends on the resolver, and the plaintext rule needs to know.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { InvalidArgumentError } from '../domain/errors.js';

/** A parsed TCP listen address. */
export interface TcpListenAddress {
  readonly kind: 'tcp';
  /** IP literal without brackets: `127.0.0.1`, `::1`, `0.0.0.0`. */
  readonly host: string;
  readonly port: number;
  /** 4 or 6. */
  readonly family: 4 | 6;
  /** True when only this machine can connect: 127.0.0.0/8, ::1, ::ffff:127.x.y.z. */
  readonly loopback: boolean;
  /** True for 0.0.0.0 and :: (every interface). */
  readonly wildcard: boolean;
}

/** A parsed unix-socket listen address. */
export interface UnixListenAddress {
  readonly kind: 'unix';
  /** Absolute path of the socket. */
  readonly path: string;
  /** A unix socket is reachable from this machine only. */
  readonly loopback: true;
  readonly wildcard: false;
}

/** A listen address as {@link parseListenAddress} returns it. */
export type ListenAddress = TcpListenAddress | UnixListenAddress;

const PORT_RE = /^\d{1,5}$/;

function parsePort(text: string, key: string, whole: string): number {
  const port = PORT_RE.test(text) ? Number(text) : NaN;
  if (!(port >= 0 && port <= 65535)) throw new InvalidArgumentError(key, `${JSON.stringify(whole)}: port must be a number from 0 to 65535`);
  return port;
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped 127.x addresses. */
export function isLoopbackIp(ip: string): boolean {
  if (isIPv4(ip)) return ip.split('.')[0] === '127';
  if (!isIPv6(ip)) return false;
  const lower = ip.toLowerCase();
  if (lower === '::1' || /^0{0,4}(:0{0,4}){6}:0{0,3}1$/.test(lower)) return true;
  const mapped = /^(?:0{0,4}:){0,5}:?ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  return mapped !== null && isIPv4(mapped[1]!) && mapped[1]!.startsWith('127.');
}

function isWildcardIp(ip: string): boolean {
  return ip === '0.0.0.0' || (isIPv6(ip) && /^[0:]+$/.test(ip));
}

function tcp(host: string, port: number): TcpListenAddress {
  const family = isIPv4(host) ? 4 : 6;
  return { kind: 'tcp', host, port, family, loopback: isLoopbackIp(host), wildcard: isWildcardIp(host) };
}

/**
 * Parses `text` (see the module comment). `key` is the setting it came from (`httpListen`, ...):
 * every error is INVALID_ARGUMENT naming it and quoting the text, with the form that would work.
 */
export function parseListenAddress(text: string, key: string): ListenAddress {
  const t = text.trim();
  if (t === '') throw new InvalidArgumentError(key, 'empty listen address (use host:port, [v6]:port, a port, or unix:/path)');
  if (t.startsWith('unix:')) {
    let path = t.slice('unix:'.length);
    if (path.startsWith('//')) path = path.slice(2);
    if (!path.startsWith('/')) throw new InvalidArgumentError(key, `${JSON.stringify(text)}: a unix socket needs an absolute path (unix:/run/tether/api.sock)`);
    if (path.includes('\0')) throw new InvalidArgumentError(key, `${JSON.stringify(text)}: NUL in the socket path`);
    return { kind: 'unix', path, loopback: true, wildcard: false };
  }
  if (/^\d+$/.test(t)) return tcp('127.0.0.1', parsePort(t, key, text));
  if (t.startsWith('[')) {
    const close = t.indexOf(']');
    const host = close > 0 ? t.slice(1, close) : '';
    if (close < 0 || t[close + 1] !== ':' || !isIPv6(host)) {
      throw new InvalidArgumentError(key, `${JSON.stringify(text)}: expected [IPv6 address]:port, e.g. [::1]:9091`);
    }
    return tcp(host, parsePort(t.slice(close + 2), key, text));
  }
  const colon = t.lastIndexOf(':');
  if (colon < 0) throw new InvalidArgumentError(key, `${JSON.stringify(text)}: missing the port (host:port, [v6]:port, or a port alone for loopback)`);
  const hostText = t.slice(0, colon);
  const portText = t.slice(colon + 1);
  if (hostText.includes(':')) throw new InvalidArgumentError(key, `${JSON.stringify(text)}: put an IPv6 address in brackets, e.g. [${hostText}]:${portText}`);
  const port = parsePort(portText, key, text);
  if (hostText === '') return tcp('127.0.0.1', port);
  if (hostText.toLowerCase() === 'localhost') return tcp('127.0.0.1', port);
  if (isIPv4(hostText)) return tcp(hostText, port);
  if (/^[\d.]+$/.test(hostText)) throw new InvalidArgumentError(key, `${JSON.stringify(text)}: ${JSON.stringify(hostText)} is not an IPv4 address`);
  throw new InvalidArgumentError(key, `${JSON.stringify(text)}: use an IP address, not a host name (${JSON.stringify(hostText)}); 'localhost' means 127.0.0.1`);
}

/** The address as text: `127.0.0.1:9091`, `[::1]:9091`, `unix:/run/tether/api.sock`. */
export function formatListenAddress(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.family === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** The same address with another port (the one the kernel picked for port 0). */
export function withPort(a: TcpListenAddress, port: number): TcpListenAddress {
  return { ...a, port };
}

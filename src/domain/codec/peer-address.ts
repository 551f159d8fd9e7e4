/**
 * The address a host advertises for its peer channel (`HostRecord.peerAddress`): `host:port` where
 * host is an IPv4 address, an IPv6 address in brackets, or a DNS name; port 1-65535. Not a wildcard
 * (`0.0.0.0`, `[::]`): nobody can reach a host there. Imports nothing (used by the record schemas
 * and the peer channel alike).
 */

/** Shape of a peer address (the port range and wildcards are checked by {@link isPeerAddress}). */
export const PEER_ADDRESS_RE = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):[1-9]\d{0,4}$/;

/** What {@link isPeerAddress} requires, in words (for error messages). */
export const PEER_ADDRESS_RULE = 'must be host:port (an IPv4 address, [IPv6] or a DNS name; port 1-65535; not 0.0.0.0 or [::])';

/** True when `s` is an address a peer can be asked at. */
export function isPeerAddress(s: unknown): s is string {
  if (typeof s !== 'string' || !PEER_ADDRESS_RE.test(s)) return false;
  const colon = s.lastIndexOf(':');
  const port = Number(s.slice(colon + 1));
  const host = s.slice(0, colon);
  if (port > 65535) return false;
  if (host === '0.0.0.0' || /^\[[0:]+\]$/.test(host)) return false;
  return true;
}

import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

/** PEM files for an https request to a member with `--client-cert-auth`. */
export interface HttpTls {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

const pem = (path: string): Buffer => readFileSync(path);

/** What one etcd member says about itself (`/v3/maintenance/status` through the JSON gateway). */
export interface EtcdMemberStatus {
  /** This member's raft id, as a decimal string (uint64 does not fit a JS number). */
  readonly memberId: string;
  /** The leader's raft id as this member sees it; `'0'` when it knows no leader. */
  readonly leaderId: string;
  /** Raft term. */
  readonly raftTerm: number;
  /** Raft index of the last entry in this member's log. */
  readonly raftIndex: number;
  /** Raft index this member has applied. */
  readonly raftAppliedIndex: number;
  /** Server version, e.g. `3.4.23`. */
  readonly version: string;
}

interface RawStatus {
  header?: { member_id?: string };
  leader?: string;
  raftTerm?: string;
  raftIndex?: string;
  raftAppliedIndex?: string;
  version?: string;
}

/**
 * One HTTP(S) request to `url` with a hard deadline (https: verified against `tls.ca`, with its
 * client certificate). Uses a fresh connection (`agent: false`,
 * `Connection: close`) so no pooled socket keeps the event loop alive or reaches a dead member.
 *
 * Invariant: settles within about `timeoutMs` whatever the peer does (a SIGSTOPped etcd accepts the
 * TCP connection in the kernel but never answers: the timeout is what ends the request).
 */
export function httpText(url: string, method: 'GET' | 'POST', body: unknown, timeoutMs: number, tls?: HttpTls): Promise<string> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const options = {
      method,
      agent: false,
      headers: { connection: 'close', ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
    } as const;
    let req;
    try {
      req = url.startsWith('https:')
        ? httpsRequest(url, { ...options, ...(tls ? { ca: pem(tls.ca), cert: pem(tls.cert), key: pem(tls.key) } : {}) })
        : httpRequest(url, options);
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)), timeoutMs);
    req.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      res.once('end', () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        if ((res.statusCode ?? 0) >= 400) {
          reject(new Error(`${method} ${url}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
          return;
        }
        resolve(text);
      });
    });
    req.end(payload);
  });
}

/** {@link httpText}, parsed as JSON (a body that is not JSON rejects, quoting its start). */
export async function httpJson(url: string, method: 'GET' | 'POST', body: unknown, timeoutMs: number, tls?: HttpTls): Promise<unknown> {
  const text = await httpText(url, method, body, timeoutMs, tls);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new Error(`${method} ${url}: not JSON: ${text.slice(0, 200)}`, { cause: err });
  }
}

/** Reads one member's status through etcd's gRPC-gateway (`POST /v3/maintenance/status`). */
export async function fetchMemberStatus(clientUrl: string, timeoutMs: number, tls?: HttpTls): Promise<EtcdMemberStatus> {
  const raw = (await httpJson(`${clientUrl}/v3/maintenance/status`, 'POST', {}, timeoutMs, tls)) as RawStatus;
  const memberId = raw.header?.member_id;
  if (memberId === undefined) throw new Error(`${clientUrl}: status without header.member_id`);
  return {
    memberId,
    leaderId: raw.leader ?? '0',
    raftTerm: Number(raw.raftTerm ?? 0),
    raftIndex: Number(raw.raftIndex ?? 0),
    raftAppliedIndex: Number(raw.raftAppliedIndex ?? 0),
    version: raw.version ?? '',
  };
}

/** True when `GET /health` on the member answers `{"health":"true"}` (it has a leader, no alarm). */
export async function fetchMemberHealthy(clientUrl: string, timeoutMs: number, tls?: HttpTls): Promise<boolean> {
  const raw = (await httpJson(`${clientUrl}/health`, 'GET', undefined, timeoutMs, tls)) as { health?: string };
  return raw.health === 'true';
}

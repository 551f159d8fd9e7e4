/**
 * The freeze contract (issue 11, docs/peer-check.md "What the controller commits to"): what the
 * leader publishes at `controller/freeze-contract` and the rule it applies.
 *
 * Publication: after the host view is synced (the listing also reads what is published), and
 * whenever the share or the resume delay this replica wants differ from the published ones, it
 * writes a new version (`version + 1`); a change of the pool size alone is written too, but at most
 * once per `contractPoolInterval` (coalesced: never one write per host event). The written document
 * carries `floor`, the tightest share and resume delay of every version ever published.
 *
 * The rule applied ({@link freezeRule}): the tightest of what this replica wants, what is published,
 * and what every pool host acknowledged (`freezeContractSeen`): the published version's parameters
 * when a host acknowledged it, else (an older version, or none: a host that registered since and has
 * not acknowledged yet may still rely on one it held before) the floor. Invariant: the share applied is
 * never above, and the resume delay never below, those of any contract a pool host may rely on.
 */
import { parseFreezeContract, tightest } from '../freeze-contract.js';
import { call, log, setTimer, timerSet } from './effects.js';
import type { Ctx, StoredContract } from './types.js';

/**
 * Parses the published document; undefined (with `bad`) when it does not read as a contract. A
 * document without `floor` (written by hand) is its own floor.
 */
export function parseStoredContract(raw: unknown): { contract?: StoredContract; bad?: string } {
  if (raw === undefined) return {};
  try {
    const c = parseFreezeContract(raw);
    const f = (raw as { floor?: unknown }).floor;
    let floor = { share: c.share, resumeDelay: c.resumeDelay };
    if (f !== undefined) {
      const p = f !== null && typeof f === 'object' ? (f as Record<string, unknown>) : {};
      if (typeof p.share !== 'number' || !(p.share > 0 && p.share < 1) || typeof p.resumeDelay !== 'number' || !(p.resumeDelay >= 0) || !Number.isFinite(p.resumeDelay)) {
        return { bad: 'freeze contract: floor must be {share in (0,1), resumeDelay >= 0}' };
      }
      floor = tightest(floor, [{ share: p.share, resumeDelay: p.resumeDelay }]);
    }
    return { contract: { ...c, floor } };
  } catch (err) {
    return { bad: err instanceof Error ? err.message : String(err) };
  }
}

/** The contract this replica wants: its configured share; the resume delay is `window` (the pool's longest fence window) or the configured longer one. */
export function wantedContract(c: Ctx, window: number): { share: number; resumeDelay: number } {
  return { share: c.s.cfg.freezeShare, resumeDelay: Math.max(window, c.s.cfg.resumeDelay ?? 0) };
}

/**
 * The rule to apply: tightest(wanted, published, what each acknowledged version stands for). `acks`
 * are the `freezeContractSeen` of the pool hosts (undefined: none acknowledged).
 */
export function freezeRule(c: Ctx, wanted: { share: number; resumeDelay: number }, acks: Iterable<number | undefined>): { share: number; resumeDelay: number } {
  const pub = c.s.contract;
  if (pub === undefined) return wanted;
  let older = false;
  for (const v of acks) {
    if (v !== pub.version) {
      older = true;
      break;
    }
  }
  return tightest(wanted, older ? [pub, pub.floor] : [pub]);
}

/** The listing's read of `controller/freeze-contract`. */
export function contractListed(c: Ctx, raw: unknown): void {
  const s = c.s;
  if (!s.leader) return;
  const { contract, bad } = parseStoredContract(raw);
  if (bad !== undefined) log(c, 'error', { err: bad }, 'the published freeze contract is unreadable: a new one is written (acknowledgements of the old one are not honoured)');
  s.contract = contract;
  s.contractKnown = true;
}

/**
 * After a freeze evaluation: writes the contract when the wanted share or resume delay differ from
 * the published ones (at once), or only the pool size does (at most every `contractPoolInterval`).
 */
export function maybePublishContract(c: Ctx, wanted: { share: number; resumeDelay: number }, poolSize: number): void {
  const s = c.s;
  s.contractWanted = { ...wanted, poolSize };
  if (!s.leader || !s.synced || !s.contractKnown || s.contractWriting) return;
  const pub = s.contract;
  if (pub !== undefined && pub.share === wanted.share && pub.resumeDelay === wanted.resumeDelay) {
    if (pub.poolSize === poolSize || timerSet(c, 'contract')) return;
    const since = s.contractWrittenMono === undefined ? Infinity : c.now.mono - s.contractWrittenMono;
    if (since < s.cfg.contractPoolInterval) {
      setTimer(c, 'contract', s.cfg.contractPoolInterval - since);
      return;
    }
  }
  publishContract(c);
}

/** Writes the wanted contract now (a new version when share or resume delay change). */
export function publishContract(c: Ctx): void {
  const s = c.s;
  const w = s.contractWanted;
  if (!s.leader || !s.synced || !s.contractKnown || s.contractWriting || w === undefined) return;
  const pub = s.contract;
  const same = pub !== undefined && pub.share === w.share && pub.resumeDelay === w.resumeDelay;
  if (same && pub.poolSize === w.poolSize) return;
  const version = pub === undefined ? 1 : same ? pub.version : pub.version + 1;
  const floor = pub === undefined ? { share: w.share, resumeDelay: w.resumeDelay } : tightest(pub.floor, [w]);
  const contract: StoredContract = { version, share: w.share, resumeDelay: w.resumeDelay, poolSize: w.poolSize, floor };
  s.contractWriting = true;
  call(c, { op: 'put-contract', contract }, { for: 'put-contract', contract });
}

/** Outcome of a contract write: published (then anything changed meanwhile follows), or retried. */
export function contractWritten(c: Ctx, contract: StoredContract, error: { readonly message: string } | undefined): void {
  const s = c.s;
  s.contractWriting = false;
  if (!s.leader) return;
  if (error !== undefined) {
    log(c, 'warn', { err: error.message, version: contract.version }, 'writing the freeze contract failed; retrying');
    if (!timerSet(c, 'contract')) setTimer(c, 'contract', s.cfg.retryDelay);
    return;
  }
  const changed = s.contract === undefined || s.contract.version !== contract.version;
  s.contract = contract;
  s.contractWrittenMono = c.now.mono;
  if (changed) log(c, 'info', { version: contract.version, share: contract.share, resumeDelay: contract.resumeDelay, poolSize: contract.poolSize }, 'freeze contract published');
  const w = s.contractWanted;
  if (w !== undefined && (w.share !== contract.share || w.resumeDelay !== contract.resumeDelay)) publishContract(c);
  else if (w !== undefined && w.poolSize !== contract.poolSize && !timerSet(c, 'contract')) setTimer(c, 'contract', s.cfg.contractPoolInterval);
}

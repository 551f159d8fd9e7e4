/**
 * The peer channel of the simulator (issue 11, docs/peer-check.md): agent-to-agent questions over
 * simulated links between host machines, with their own faults, independent of the links to etcd.
 * Each agent gets a {@link PeerTransport} (what `src/agent/peer/peer-client.ts` is in production) and
 * a {@link PeerDirectory} (the other hosts of the world).
 *
 * A question from A to B travels A→B with seeded latency (lost when that way is cut); it is answered
 * in an entry owned by B's current agent process, by its real `HostGc.peerAnswer(ask)` — so a dead
 * agent never answers and a hung one answers only when it resumes (long after the round: its answer
 * is late); the answer travels B→A (lost when cut, dropped by a `partial-answers` fault, delayed past
 * the round by a `stale-answers` fault) and is received in an entry owned by the asking process, at
 * its machine's monotonic clock.
 *
 * Invariants:
 * - `query` resolves exactly once, in an entry of the asking process: when every peer answered this
 *   nonce, or `timeoutMs` (its own clock) after it was called; it never rejects;
 * - an answer that arrives after its query resolved is not lost silently: it is offered to the
 *   asker's query open at that time (a replayed, stale answer with its old nonce — the rule must
 *   refuse it), filling only the slot of a host that has not answered that query; a fresh answer
 *   replaces it;
 * - nothing here reads the system clock or Math.random.
 */
import type { PeerAnswer, ReceivedAnswer } from '../../domain/peer-check.js';
import type { PeerDirectory, PeerEndpoint, PeerTransport } from '../../ports/peers.js';
import type { ProcessClock } from './clock.js';
import type { Prng } from './prng.js';
import type { Scheduler, SimProcess } from './scheduler.js';

/** The question a round asks (the port's: its nonce, and what else the asking host sends). */
export type PeerAsk = Parameters<PeerTransport['query']>[1];

/** The nonce of a question (a bare nonce, or the question that carries it). */
function nonceOf(ask: PeerAsk): string {
  return typeof ask === 'string' ? ask : (ask as { readonly nonce: string }).nonce;
}

/** Who answers for a host id now: its agent process and its answer function (undefined: no agent). */
export type PeerResponder = (hostId: string) => { readonly proc: SimProcess; readonly node: string; answer(ask: PeerAsk): PeerAnswer } | undefined;

interface OpenQuery {
  readonly nonce: string;
  readonly answers: Map<string, ReceivedAnswer>;
  readonly waiting: Set<string>;
  finish(): void;
}

/** The links between host machines for peer questions, and their faults. */
export class SimPeerNet {
  /** Cut ways between nodes, as `from>to`. */
  private readonly cuts = new Set<string>();
  /** Answers from this node arrive this much later (ms; `stale-answers`). */
  private readonly answerDelay = new Map<string, number>();
  /** Answers from node `a` to node `b` never arrive, as `a>b` (`partial-answers`). */
  private readonly dropped = new Set<string>();
  private readonly base = new Map<string, number>();
  /** The query each asking process has open now. */
  private readonly open = new Map<SimProcess, OpenQuery>();
  /** Questions sent / answered in time / answers lost / answers late. */
  readonly counts = { asked: 0, answered: 0, lost: 0, late: 0 };

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Prng,
    private readonly responder: PeerResponder,
  ) {}

  /** Cuts `from`→`to` (and back with `both`). */
  cut(from: string, to: string, both: boolean): void {
    this.cuts.add(`${from}>${to}`);
    if (both) this.cuts.add(`${to}>${from}`);
    this.sched.trace.add(this.sched.now, `peer cut ${from}${both ? '<' : ''}>${to}`);
  }

  /** Heals `a`↔`b` both ways. */
  heal(a: string, b: string): void {
    this.cuts.delete(`${a}>${b}`);
    this.cuts.delete(`${b}>${a}`);
    this.sched.trace.add(this.sched.now, `peer heal ${a}<>${b}`);
  }

  /** `node`'s answers arrive `ms` later than the network carries them (0: no delay). */
  delayAnswers(node: string, ms: number): void {
    if (ms > 0) this.answerDelay.set(node, ms);
    else this.answerDelay.delete(node);
    this.sched.trace.add(this.sched.now, `peer answers of ${node} delayed by ${Math.round(ms)} ms`);
  }

  /** `from`'s answers to `to` are dropped (or delivered again with `on` false). */
  dropAnswers(from: string, to: string, on: boolean): void {
    if (on) this.dropped.add(`${from}>${to}`);
    else this.dropped.delete(`${from}>${to}`);
    this.sched.trace.add(this.sched.now, `peer answers ${from}>${to} ${on ? 'dropped' : 'delivered'}`);
  }

  /** Every peer fault ends. */
  healAll(): void {
    this.cuts.clear();
    this.answerDelay.clear();
    this.dropped.clear();
    this.sched.trace.add(this.sched.now, 'peer heal all');
  }

  /** One way's latency between two nodes: the pair's base plus seeded jitter, with rare spikes. */
  private latency(from: string, to: string): number {
    const key = from < to ? `${from}|${to}` : `${to}|${from}`;
    let b = this.base.get(key);
    if (b === undefined) {
      b = 0.3 + this.rng.float() * 4;
      this.base.set(key, b);
    }
    const spike = this.rng.chance(0.01) ? this.rng.float() * 400 : 0;
    return b * (0.5 + this.rng.float()) + spike;
  }

  /** The transport of one asking process on `node`, receiving at its `clock`. */
  transport(proc: SimProcess, node: string, clock: ProcessClock): PeerTransport {
    return { query: (peers, ask, timeoutMs) => this.query(proc, node, clock, peers, ask, timeoutMs) };
  }

  private query(proc: SimProcess, node: string, clock: ProcessClock, peers: readonly PeerEndpoint[], ask: PeerAsk, timeoutMs: number): Promise<Map<string, ReceivedAnswer>> {
    const nonce = nonceOf(ask);
    return new Promise((resolve) => {
      const answers = new Map<string, ReceivedAnswer>();
      const waiting = new Set(peers.map((p) => p.hostId));
      let done = false;
      const q: OpenQuery = {
        nonce,
        answers,
        waiting,
        finish: () => {
          if (done) return;
          done = true;
          clock.clearTimer(timer);
          if (this.open.get(proc) === q) this.open.delete(proc);
          resolve(answers);
        },
      };
      this.open.set(proc, q);
      const timer = clock.setTimer(timeoutMs, () => q.finish());
      if (waiting.size === 0) {
        q.finish();
        return;
      }
      for (const p of peers) this.ask(proc, node, clock, p.hostId, ask);
    });
  }

  private ask(asker: SimProcess, from: string, clock: ProcessClock, hostId: string, question: PeerAsk): void {
    this.counts.asked++;
    const target = this.responder(hostId);
    if (target === undefined || this.cuts.has(`${from}>${target.node}`)) {
      this.counts.lost++;
      return;
    }
    const to = target.node;
    // The question is handled by the target's agent process (a dead one never, a hung one on resume).
    this.sched.after(this.latency(from, to), `peer ask ${from}>${hostId}`, () => {
      const answer = target.answer(question);
      if (this.cuts.has(`${to}>${from}`) || this.dropped.has(`${to}>${from}`)) {
        this.counts.lost++;
        return;
      }
      const delay = this.latency(to, from) + (this.answerDelay.get(to) ?? 0);
      this.sched.after(delay, `peer answer ${hostId}>${from}`, () => this.receive(asker, clock, hostId, answer), asker);
    }, target.proc);
  }

  private receive(asker: SimProcess, clock: ProcessClock, hostId: string, answer: PeerAnswer): void {
    const q = this.open.get(asker);
    if (q === undefined) {
      this.counts.late++;
      return;
    }
    const got: ReceivedAnswer = { answer, receivedAt: clock.nowMono() };
    if (answer.nonce === q.nonce) {
      this.counts.answered++;
      q.answers.set(hostId, got);
      q.waiting.delete(hostId);
      if (q.waiting.size === 0) q.finish();
      return;
    }
    // A stale answer (an earlier round's): offered to the round open now, never over a fresh one.
    this.counts.late++;
    if (!q.answers.has(hostId)) q.answers.set(hostId, got);
  }
}

/** The directory of one host: every other host of the world (with a made-up peer address). */
export function simDirectory(self: string, hostIds: readonly string[]): PeerDirectory {
  const peers = hostIds.filter((h) => h !== self).map((h) => ({ hostId: h, address: `${h}:7443` }));
  const ids = peers.map((p) => p.hostId);
  return { peers: () => peers, peerIds: () => ids };
}

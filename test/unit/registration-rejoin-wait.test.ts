/**
 * A clean host whose `ready` registration finds the record at a newer epoch, not fenced yet (another
 * agent instance with this host id registered it after this host fenced, then went away): the host
 * waits and retries until the cluster fences that epoch, then rejoins. Found by the simulator, seed
 * 1079 (partition + duplicate agent): the refusal ended the registration loop and the host stayed
 * `rejoining` forever. The safety rules (src/domain/registration.ts) are unchanged and checked here.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import { evaluate, type HostState } from '../../src/domain/host-lifecycle.js';
import { judgeRegistration, registrationWanted, type RegistrationAnswer } from '../../src/domain/registration-loop.js';
import { decideRegistration } from '../../src/domain/registration.js';

const mine = 'agent-a';
const other = { agentId: 'agent-b', holder: 'pid 7 on m2', lease: '99' };

describe('a clean host rejoining after another agent instance used its host id', () => {
  it('the cluster refuses ready while the other instance is alive (duplicate) or its epoch is not fenced (epoch-mismatch), allows it once fenced', () => {
    const reg = { mode: 'ready' as const, epoch: 1, agentId: mine };
    expect(decideRegistration(reg, { state: 'ready', epoch: 2 }, other)).toMatchObject({ ok: false, reason: 'duplicate' });
    expect(decideRegistration(reg, { state: 'ready', epoch: 2 })).toMatchObject({ ok: false, reason: 'epoch-mismatch' });
    expect(decideRegistration(reg, { state: 'detached', epoch: 2 })).toMatchObject({ ok: false, reason: 'epoch-mismatch' });
    expect(decideRegistration(reg, { state: 'attached', epoch: 2 })).toMatchObject({ ok: false, reason: 'epoch-mismatch' });
    // The fence window of epoch 2 passed: every VM of epoch 2 is rescheduled anyway; epoch 3 makes older ones stale.
    expect(decideRegistration(reg, { state: 'fenced', epoch: 2 })).toEqual({ ok: true, state: 'ready', epoch: 3 });
    // A fenced record with a live holder is still one agent per host id.
    expect(decideRegistration(reg, { state: 'fenced', epoch: 2 }, other)).toMatchObject({ ok: false, reason: 'duplicate' });
  });

  it('a ready registration refused as epoch-mismatch is waited out (retried every TTL, reported once per detail), no lifecycle event', () => {
    const answer: RegistrationAnswer = { ok: false, reason: 'epoch-mismatch', detail: 'record is detached at epoch 2' };
    const first = judgeRegistration(T, answer, 50, undefined, 'ready', undefined);
    expect(first).toEqual({ kind: 'wait', detail: answer.detail, report: true, retryAfterMs: T.ttl });
    expect(judgeRegistration(T, answer, 50, undefined, 'ready', answer.detail)).toMatchObject({ kind: 'wait', report: false });
    expect(judgeRegistration(T, { ...answer, detail: 'record is attached at epoch 2' }, 50, undefined, 'ready', answer.detail)).toMatchObject({ kind: 'wait', report: true });
  });

  it('a reattach refused as epoch-mismatch or fenced still ends the loop and the lifecycle fences', () => {
    for (const reason of ['epoch-mismatch', 'fenced'] as const) {
      const v = judgeRegistration(T, { ok: false, reason, detail: 'd' }, 50, undefined, 'reattach');
      expect(v).toEqual({ kind: 'refused', event: { kind: 'register-refused', reason }, reason, detail: 'd' });
      const attached: HostState = { phase: 'attached', epoch: 1, lastAck: 0, held: false, heldAtDetach: false };
      expect(evaluate(T, attached, v.kind === 'refused' ? v.event : { kind: 'tick' }, 10).state.phase).toBe('fencing');
    }
  });

  it('the wait lasts only while the host is clean or rejoining (it runs no VM then), and ends with a ready rejoin at the next epoch', () => {
    expect(registrationWanted('ready', 'rejoining', false)).toBe(true);
    expect(registrationWanted('ready', 'clean', false)).toBe(true);
    for (const p of ['starting', 'attached', 'suspect', 'detached', 'fencing', 'cleaning'] as const) expect(registrationWanted('ready', p, false)).toBe(false);
    const rejoining: HostState = { phase: 'rejoining', epoch: 1, lastAck: 0, held: false, heldAtDetach: false };
    const ok = judgeRegistration(T, { ok: true, epoch: 3 }, 70, undefined, 'ready', 'record is detached at epoch 2');
    expect(ok.kind).toBe('registered');
    const next = evaluate(T, rejoining, ok.kind === 'registered' ? ok.event : { kind: 'tick' }, 80).state;
    expect(next).toMatchObject({ phase: 'attached', epoch: 3 });
  });
});

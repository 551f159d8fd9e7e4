import { describe, expect, it } from 'vitest';
import { runPlan, type Step } from '../../src/domain/plan.js';
import { TetherError } from '../../src/domain/errors.js';

function counterStep(state: { n: number }, target: number, name = 'inc'): Step {
  return {
    name,
    shouldDo: async () => state.n < target,
    do: async () => {
      state.n++;
    },
    verify: async () => true,
  };
}

describe('runPlan', () => {
  it('re-plans until the planner returns no steps', async () => {
    const state = { n: 0 };
    const res = await runPlan('count', async () => (state.n < 3 ? [counterStep(state, 3)] : []));
    expect(state.n).toBe(3);
    expect(res.stepsDone).toEqual(['inc', 'inc', 'inc']);
    expect(res.rounds).toBe(4);
  });

  it('terminates with PLAN_NOT_CONVERGING when the planner never empties (the "DO NOT REMOVE" guard)', async () => {
    const state = { n: 0 };
    const err = await runPlan('forever', async () => [counterStep(state, Infinity)], { maxRounds: 7 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).code).toBe('PLAN_NOT_CONVERGING');
    expect(state.n).toBe(7);
  });

  it('fails at once when every planned step says there is nothing to do', async () => {
    const state = { n: 5 };
    const err = await runPlan('stuck', async () => [counterStep(state, 3)]).catch((e: unknown) => e);
    expect((err as TetherError).code).toBe('PLAN_NOT_CONVERGING');
  });

  it('fails with STEP_FAILED when a step does its work but does not verify', async () => {
    const step: Step = { name: 'liar', shouldDo: async () => true, do: async () => {}, verify: async () => false };
    const err = await runPlan('p', async () => [step]).catch((e: unknown) => e);
    expect((err as TetherError).code).toBe('STEP_FAILED');
    expect((err as TetherError).message).toContain('liar');
  });

  it('wraps a failing step with its name and keeps the cause and code', async () => {
    const cause = new TetherError('NETWORK_ERROR', 'ip said no', { retryable: true });
    const step: Step = { name: 'tap-create:tt1', shouldDo: async () => true, do: async () => Promise.reject(cause), verify: async () => true };
    const err = (await runPlan('create x', async () => [step]).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('NETWORK_ERROR');
    expect(err.retryable).toBe(true);
    expect(err.message).toBe('create x: executing step tap-create:tt1: ip said no');
    expect(err.cause).toBe(cause);
  });
});

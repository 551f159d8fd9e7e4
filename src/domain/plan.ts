/**
 * Plans of idempotent steps (after Flintlock's `pkg/planner`), run by an actuator that re-plans
 * until no step is left.
 *
 * Invariants:
 * - every step is idempotent: `do()` on work already done succeeds;
 * - a step that did its work must pass `verify()`, or the plan fails with STEP_FAILED;
 * - the actuator stops with PLAN_NOT_CONVERGING after `maxRounds` rounds that still produced steps,
 *   so a planner bug can never spin forever (tested, not commented).
 */
import { TetherError, wrapError } from './errors.js';

/** One idempotent unit of work: check, act, verify. */
export interface Step {
  /** Stable name, used in logs, journals and errors (e.g. `tap-create:tt0123abcd0`). */
  readonly name: string;
  /** True when the work is not done yet. Must only read. */
  shouldDo(): Promise<boolean>;
  /** Does the work; must be safe to repeat. */
  do(): Promise<void>;
  /** Checks, on the real system, that the work is done. */
  verify(): Promise<boolean>;
}

/** Produces the steps still needed, from the current state. An empty list means done. */
export type Planner = () => Promise<Step[]>;

/** What the actuator reports as it goes (for journals, logs and progress). */
export type PlanProgress =
  | { readonly kind: 'step-started'; readonly step: string; readonly round: number }
  | { readonly kind: 'step-done'; readonly step: string; readonly round: number }
  | { readonly kind: 'step-skipped'; readonly step: string; readonly round: number };

/** Options of {@link runPlan}. */
export interface RunPlanOptions {
  /** Rounds of planning allowed before PLAN_NOT_CONVERGING (default 20). */
  readonly maxRounds?: number;
  readonly onProgress?: (p: PlanProgress) => void;
}

/** Summary of a finished plan. */
export interface PlanResult {
  readonly rounds: number;
  readonly stepsDone: readonly string[];
}

/**
 * Runs `planner` until it returns no steps. Each round runs the planned steps in order; a step
 * whose `shouldDo()` is false is skipped. A round in which every step was skipped while the planner
 * still returns steps cannot make progress and fails at once with PLAN_NOT_CONVERGING.
 */
export async function runPlan(planName: string, planner: Planner, options: RunPlanOptions = {}): Promise<PlanResult> {
  const maxRounds = options.maxRounds ?? 20;
  const done: string[] = [];
  for (let round = 1; round <= maxRounds; round++) {
    const steps = await planner();
    if (steps.length === 0) return { rounds: round, stepsDone: done };
    let acted = false;
    for (const step of steps) {
      if (!(await step.shouldDo())) {
        options.onProgress?.({ kind: 'step-skipped', step: step.name, round });
        continue;
      }
      options.onProgress?.({ kind: 'step-started', step: step.name, round });
      try {
        await step.do();
      } catch (err) {
        throw wrapError(`${planName}: executing step ${step.name}`, err);
      }
      let ok: boolean;
      try {
        ok = await step.verify();
      } catch (err) {
        throw wrapError(`${planName}: verifying step ${step.name}`, err);
      }
      if (!ok) {
        throw new TetherError('STEP_FAILED', `${planName}: step ${step.name} did not verify`, {
          retryable: true,
          details: { step: step.name },
        });
      }
      acted = true;
      done.push(step.name);
      options.onProgress?.({ kind: 'step-done', step: step.name, round });
    }
    if (!acted) {
      throw new TetherError('PLAN_NOT_CONVERGING', `${planName}: planner keeps returning steps with nothing to do: ${steps.map((s) => s.name).join(', ')}`);
    }
  }
  throw new TetherError('PLAN_NOT_CONVERGING', `${planName}: still planning steps after ${maxRounds} rounds`);
}

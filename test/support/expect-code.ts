import { expect } from 'vitest';
import { TetherError } from '../../src/domain/errors.js';

/** Awaits `p`, asserts it rejected with a TetherError of `code`, and returns that error. */
export async function expectCode(p: Promise<unknown>, code: string): Promise<TetherError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a TetherError ${code}`).toBeInstanceOf(TetherError);
  expect((err as TetherError).code).toBe(code);
  return err as TetherError;
}

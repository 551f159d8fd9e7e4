import { Command, CommanderError } from 'commander';
import { registerGuardianCommand } from '../cli/commands/guardian.js';
import { TetherError, messageOf } from '../domain/errors.js';

/**
 * Entry of `tether guardian` (bin/tether.js dispatches here for that command): the same command
 * as registered in the full CLI, without loading the agent, etcd, SQLite, gRPC or pino, so the
 * guardian stays small. Errors print `error [CODE]: message` and exit 1 (2 for bad input).
 */
export async function main(argv: string[]): Promise<void> {
  const program = new Command('tether').exitOverride().showHelpAfterError('(run with --help for usage)');
  registerGuardianCommand(program);
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.code === 'commander.helpDisplayed' || err.exitCode === 0 ? 0 : 2;
      return;
    }
    const code = err instanceof TetherError ? err.code : 'INTERNAL';
    process.stderr.write(`error [${code}]: ${messageOf(err)}\n`);
    process.exitCode = code === 'INVALID_ARGUMENT' ? 2 : 1;
  }
}

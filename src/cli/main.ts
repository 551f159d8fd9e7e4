import { Command, CommanderError } from 'commander';
import { TetherError, messageOf } from '../domain/errors.js';
import { registerAdminCommands } from './commands/admin.js';
import { registerAgentCommand, VERSION } from './commands/agent.js';
import { registerControllerCommand } from './commands/controller.js';
import { registerDevCommands } from './commands/dev.js';
import { registerGcCommands } from './commands/gc.js';
import { registerGuardianCommand } from './commands/guardian.js';
import { registerHostCommands } from './commands/host.js';
import { registerTimelineCommand } from './commands/timeline.js';
import { registerVmCommands } from './commands/vm.js';

/** Builds the `tether` command tree. */
export function buildProgram(): Command {
  const program = new Command('tether')
    .description('Tether: microVM hosts that heartbeat to etcd and clean up after themselves when cut off')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerAgentCommand(program);
  registerVmCommands(program);
  registerGcCommands(program);
  registerDevCommands(program);
  registerControllerCommand(program);
  registerHostCommands(program);
  registerGuardianCommand(program);
  registerTimelineCommand(program);
  registerAdminCommands(program);
  return program;
}

/** Runs the CLI; errors print `error [CODE]: message` and exit 1 (2 for usage errors). */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0 ? 0 : 2;
      return;
    }
    const code = err instanceof TetherError ? err.code : 'INTERNAL';
    process.stderr.write(`error [${code}]: ${messageOf(err)}\n`);
    process.exitCode = code === 'INVALID_ARGUMENT' || code === 'UNSAFE_CONFIG' ? 2 : 1;
  }
}

import type { HostContext } from './host-context.js';
import { Reconciler } from './reconciler.js';
import { AgentVmService, type AdmissionGate } from './vm-service.js';

/**
 * The host agent core: inventory-driven reconciler plus the VM service the APIs call.
 * Composed by the CLI with real adapters, by tests with fakes.
 */
export class Agent {
  readonly reconciler: Reconciler;
  readonly service: AgentVmService;

  constructor(
    readonly ctx: HostContext,
    admission?: AdmissionGate,
  ) {
    this.reconciler = new Reconciler(ctx);
    this.service = new AgentVmService(ctx, this.reconciler, admission);
  }

  /** Resumes interrupted plans and adopts running VMs; returns at once (work continues in background). */
  async start(): Promise<void> {
    this.ctx.inventory.addEvent('agent-started', this.ctx.clock.now(), { hostId: this.ctx.hostId });
    this.ctx.logger.info({ vms: this.ctx.inventory.listVms().length }, 'agent starting');
    await this.reconciler.resumeAll();
  }

  /**
   * Records the stop. Plans still running are not awaited: every step is write-ahead and
   * idempotent, so the next agent resumes them; VMs keep running and are adopted.
   */
  stop(): void {
    this.ctx.inventory.addEvent('agent-stopped', this.ctx.clock.now(), {});
  }
}

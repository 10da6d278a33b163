import { AGENT_ALIVE_MS } from './protocol.js';

/**
 * The child side of the agent-alive check, shared by worker and standalone processes: the agent
 * sends `{ t: 'alive' }` every AGENT_ALIVE_MS; a child that heard nothing from it for `limitMs`
 * calls `onSilent` once. A paused or hung agent cannot renew its lease nor heartbeat, so what
 * its children run may soon be started elsewhere. A tick that comes late means this process
 * itself was paused or busy (a CPU throttle, a synchronous task): the agent's messages are
 * still unread in the pipe, so that tick judges nothing.
 */
export class AgentSilence {
  private lastHeard = Date.now();
  private lastTick = Date.now();
  private readonly timer: NodeJS.Timeout;
  private fired = false;

  constructor(
    private readonly limitMs: number,
    private readonly onSilent: (silentMs: number) => void,
  ) {
    this.timer = setInterval(() => this.tick(), AGENT_ALIVE_MS);
    this.timer.unref();
  }

  /** A message from the agent came. */
  heard(): void {
    this.lastHeard = Date.now();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private tick(): void {
    const now = Date.now();
    const late = now - this.lastTick > 3 * AGENT_ALIVE_MS;
    this.lastTick = now;
    if (this.fired || late || now - this.lastHeard <= this.limitMs) return;
    this.fired = true;
    this.onSilent(now - this.lastHeard);
  }
}

/** What an agent tells a standalone run's process, and the exit codes it answers with. */

export interface StandaloneInit {
  configPath: string;
  name: string;
  node: string;
  agentId: string;
  cluster: string;
  /** Pampa's own schema (runOnce completions). */
  schema: string;
  /** The run is stopped when no message came from the agent for this long (ms). */
  agentSilentMs: number;
  /** An aborted run (ctx.signal) is given this long before its process exits (ms). */
  graceMs: number;
}

/** Another instance holds the process's advisory lock: this run was skipped. */
export const EXIT_STANDALONE_BUSY = 77;
/** A runOnce process already completed in the cluster: nothing was run. */
export const EXIT_STANDALONE_DONE = 78;
/**
 * The run was aborted (ctx.signal): its agent stopped it or went silent, or the connection
 * holding its lock was lost.
 */
export const EXIT_STANDALONE_STOPPED = 79;

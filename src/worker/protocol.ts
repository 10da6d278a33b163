/**
 * Messages between an agent and its worker processes (Node IPC). The init goes on the command
 * line, which any local user can read: it holds no secret. The database URL (its password with
 * it) goes in the child's environment as DATABASE_URL, readable by the same user only.
 */

export interface WorkerInit {
  configPath: string;
  workerId: string;
  /** The job assigned to this worker when it starts; null: none yet. */
  job: string | null;
  agentId: string;
  pollMs: number;
  /**
   * The worker stops (exits, its running task with it) when no message from its agent came for
   * this long (ms): a paused or hung agent cannot heartbeat, so its node will soon be taken for
   * dead and its tasks relaunched elsewhere.
   */
  agentSilentMs: number;
}

export type ToWorker =
  /** Tasks were reserved to this worker; `job` when its assignment is known to have changed. */
  | { t: 'wake'; job?: string | null }
  /** Serve `job` from now on (null: none); queued tasks of the previous job are given back. */
  | { t: 'assign'; job: string | null }
  /** Start nothing new; finish the task at hand, give back the rest, then exit. */
  | { t: 'drain' }
  /** The shutdown grace is over: abort the running task's signal; the agent kills us soon. */
  | { t: 'stop' }
  /** The agent is alive (every AGENT_ALIVE_MS); wakes nothing. */
  | { t: 'alive' };

/** Exit code after a task overran: the process goes, and any code it left running with it. */
export const EXIT_OVERRUN = 75;
/** Exit code of a worker whose agent went silent for agentSilentMs. */
export const EXIT_AGENT_SILENT = 76;

/** How often an agent tells its workers that it is alive (ms). */
export const AGENT_ALIVE_MS = 250;

/**
 * How long a child process (worker or standalone run) waits for its silent agent before it
 * stops (ms): half of nodeDeadAfterMs, well before another node may take the agent's node for
 * dead (nodeDeadAfterMs after its last registry heartbeat) and relaunch its tasks.
 */
export function agentSilentMs(nodeDeadAfterMs: number): number {
  return Math.floor(nodeDeadAfterMs / 2);
}

export type FromWorker =
  | { t: 'ready' }
  /** Started `n` tasks; the queue the dispatcher tops up just shrank. */
  /** Which task of batch `batch` is about to run goes through the progress pipe (progress.ts). */
  | {
      t: 'started';
      job: string;
      n: number;
      batch: number;
      tasks: { pk: string; attempt: number }[];
    }
  | { t: 'finished'; job: string; ok: number; failed: number; stale: number }
  /** Every 500 ms: whether a task is running and since when (epoch ms). */
  | { t: 'heartbeat'; runningSince: number | null; task: string | null }
  | { t: 'fatal'; message: string };

/** The database URL a child process was given by its agent (DATABASE_URL in its environment). */
export function childDatabaseUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: this process is started by a pampa agent');

  return url;
}

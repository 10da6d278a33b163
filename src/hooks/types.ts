import type pg from 'pg';
import type { Logger } from 'pino';

/**
 * The signatures of a job's hooks (the original's occupied, allowing, selecting, relaunching,
 * relauncher, starter, finisher and counter functions). Every hook may be async. The
 * dispatcher's hooks run in the agent that holds the lease, between its statements, so they
 * should be quick: each is given at most Defaults.hookTimeoutMs.
 */
export interface HookContext {
  /** The job's name. */
  job: string;
  /** The job's table, quoted for SQL: `"schema"."table"`. */
  table: string;
  /**
   * The job's reservation columns, quoted for SQL; startedAt, endedAt, success and error are null
   * when the job does not keep them.
   */
  columns: {
    reservedBy: string;
    reservedAt: string;
    tries: string;
    startedAt: string | null;
    endedAt: string | null;
    success: string | null;
    error: string | null;
  };
  /**
   * SQL conditions on a row of the job's table, right whichever columns the job keeps:
   * `queued` (reserved to a worker, not started), `running` (started, not closed) and `closed`
   * (succeeded, or failed for good).
   */
  state: { queued: string; running: string; closed: string };
  /**
   * Where to run the hook's own queries. For starter and finisher it is the transaction of the
   * start or finish statement, so the hook's update commits or rolls back with it.
   */
  db: pg.Pool | pg.PoolClient;
  log: Logger;
}

/** Tasks a worker has queued (reserved, not started); its free slots are queueSize − this. */
export type OccupiedHook = (worker: string, ctx: HookContext) => number | Promise<number>;

/** Whether a worker may receive tasks of this job now. */
export type AllowingHook = (worker: string, ctx: HookContext) => boolean | Promise<boolean>;

/**
 * Trusted SQL from the config, added to the reservation's free-row query:
 * `… AND (where) ORDER BY orderBy, pk LIMIT n FOR UPDATE SKIP LOCKED`. `$1`, `$2`, … in the
 * fragments are the hook's own `params`, bound, never inlined.
 */
export interface Selection {
  where?: string;
  orderBy?: string;
  params?: unknown[];
}
export type SelectingHook = (
  n: number,
  ctx: HookContext,
) => Selection | null | undefined | Promise<Selection | null | undefined>;

/** Closed rows (succeeded or failed) to run again: a condition with its own params. */
export interface Relaunching {
  where: string;
  params?: unknown[];
}
export type RelaunchingHook = (
  ctx: HookContext,
) => Relaunching | null | undefined | Promise<Relaunching | null | undefined>;

/** A row the dispatcher just relaunched (its columns as they are after the relaunch). */
export type RelauncherHook = (row: Record<string, unknown>, ctx: HookContext) => unknown;

/** A row a worker just started, inside the start's transaction. */
export type StarterHook = (row: Record<string, unknown>, ctx: HookContext) => unknown;

export interface FinishResult {
  ok: boolean;
  /** Error text of a failed attempt, null on success. */
  error: string | null;
  attempt: number;
  /** True when the task is closed (success, or the last try failed). */
  closed: boolean;
}

/** A row a worker just finished, inside the finish's transaction. */
export type FinisherHook = (
  row: Record<string, unknown>,
  result: FinishResult,
  ctx: HookContext,
) => unknown;

/** A figure of the job for /status, replacing Pampa's own count. */
export type CounterHook = (
  ctx: Omit<HookContext, 'db'> & { db: pg.Pool },
) => number | Promise<number>;

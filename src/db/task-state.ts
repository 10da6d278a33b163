import type { ReservationColumns } from '../config/schema.js';

/** A job's reservation columns quoted for SQL; null for a column the job does not keep. */
export type QuotedColumns = ReservationColumns;

/**
 * The states of a task as SQL conditions on a row of the job's table, derived once per job from
 * the columns it keeps. Every statement, the partial indexes of `pampa migrate` and the hooks'
 * `ctx.state` use these, so the encoding of each state is written here and nowhere else.
 *
 * - Every column kept: queued = reservedBy set, startedAt NULL; running = startedAt set;
 *   closed = endedAt set.
 * - No startedAt: reservedAt carries the start instead. A reservation sets reservedBy and leaves
 *   reservedAt NULL; the start sets reservedAt. So queued = reservedBy set, reservedAt NULL;
 *   running = reservedBy and reservedAt set. A task waiting for a retry keeps its not-before time
 *   in reservedAt with reservedBy NULL, as when every column is kept.
 * - No endedAt: the success column carries the closure (the config requires one then). Success
 *   is written only when a task closes, true or false, and is NULL while the task is open, so
 *   closed = success set. This holds with endedAt too; only then endedAt is the marker.
 *
 * `started` and `unstarted` describe a held row (reservedBy set) that is open; the other
 * conditions stand alone. Each is safe to combine with AND, OR and NOT as it is.
 */
export interface TaskState {
  /** Not closed: the task may still run. */
  open: string;
  /** Closed: succeeded, or failed for good. */
  closed: string;
  /** The current attempt of a held row has started. */
  started: string;
  /** A held row waits for its start. */
  unstarted: string;
  /** Reserved to a worker, not started, not closed. */
  queued: string;
  /** Started, not closed. */
  running: string;
}

export function taskState(col: QuotedColumns): TaskState {
  const marker = col.endedAt ?? col.success;
  if (!marker) {
    throw new Error('a job without an endedAt column needs a success column to mark closed tasks');
  }
  const open = `${marker} IS NULL`;
  const started = col.startedAt
    ? `${col.startedAt} IS NOT NULL`
    : `(${col.reservedBy} IS NOT NULL AND ${col.reservedAt} IS NOT NULL)`;
  const unstarted = `${col.startedAt ?? col.reservedAt} IS NULL`;

  return {
    open,
    closed: `${marker} IS NOT NULL`,
    started,
    unstarted,
    queued: `(${col.reservedBy} IS NOT NULL AND ${unstarted} AND ${open})`,
    running: `(${started} AND ${open})`,
  };
}

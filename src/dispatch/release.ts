import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import { safeErrorText } from '../worker/statements.js';

/**
 * Gives back the tasks held by workers that are gone (a dead worker process, a dead node, a
 * shutdown past its grace period) or that overran. One statement:
 * - a reserved task never started goes back to the queue with its tries unchanged;
 * - a started task counts as an attempt: with tries left it goes back with `reason` as its
 *   error text; on its last try it is closed as failed with that reason.
 */
export interface ReleaseOptions {
  reason: string;
  /** Only the tasks of these workers. */
  workers?: string[];
  /** Only the tasks of these nodes' workers. */
  nodes?: string[];
  /** Only started tasks whose start is older than this (seconds), and unstarted ones whose
   *  reservation is older than `reservedOlderThanSeconds` (none for a job without startedAt:
   *  its queued tasks keep no reservation time). */
  startedOlderThanSeconds?: number;
  reservedOlderThanSeconds?: number;
  /** Leave started tasks alone (shutdown releases queued tasks first). */
  onlyUnstarted?: boolean;
  /** A dispatcher write: the fence sub-select and its three parameters. */
  fence?: { sql: (first: number) => string; params: unknown[] };
  /** Return the requeued rows (for the relauncher hook). */
  returnRows?: boolean;
}

export interface Released {
  requeued: number;
  closed: number;
  /** The requeued rows, with returnRows. */
  rows?: Record<string, unknown>[];
}

export async function releaseTasks(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  o: ReleaseOptions,
): Promise<Released> {
  const { col, state } = t;
  const values: unknown[] = [safeErrorText(o.reason), t.job.maxTryTimes];
  const where = [
    `${col.reservedBy} IS NOT NULL`,
    state.open,
    '$1::text IS NOT NULL' /* types $1 for jobs without an error column */,
  ];
  if (o.workers) {
    values.push(o.workers);
    where.push(`${col.reservedBy} = ANY($${values.length}::text[])`);
  }
  if (o.nodes) {
    // Worker ids are `<node>.<n>`, and node names hold no dot.
    values.push(o.nodes);
    where.push(`split_part(${col.reservedBy}, '.', 1) = ANY($${values.length}::text[])`);
  }
  if (o.onlyUnstarted) where.push(state.unstarted);
  if (o.startedOlderThanSeconds !== undefined || o.reservedOlderThanSeconds !== undefined) {
    const parts: string[] = [];
    if (o.startedOlderThanSeconds !== undefined) {
      values.push(o.startedOlderThanSeconds);
      const { col: at, now } = t.startTime;
      parts.push(
        `(${state.started} AND ${at} < ${now} - make_interval(secs => $${values.length}))`,
      );
    }
    // Without startedAt a queued task keeps no reservation time, so none is too old.
    const reserved = t.reservedTime;
    if (o.reservedOlderThanSeconds !== undefined && reserved) {
      values.push(o.reservedOlderThanSeconds);
      parts.push(
        `(${state.unstarted} AND ${reserved.col} < ${reserved.now} - make_interval(secs => $${values.length}))`,
      );
    }
    where.push(parts.length > 0 ? `(${parts.join(' OR ')})` : 'false');
  }
  if (o.fence) {
    where.push(`EXISTS (${o.fence.sql(values.length + 1)})`);
    values.push(...o.fence.params);
  }

  const started = state.started;
  const closing = `(${started} AND COALESCE(${col.tries}, 0) >= $2::int)`;
  const sets = [
    `${col.reservedBy} = CASE WHEN ${closing} THEN ${col.reservedBy} END`,
    `${col.reservedAt} = CASE WHEN ${closing} THEN ${col.reservedAt} END`,
  ];
  if (t.endTime) {
    sets.push(`${t.endTime.col} = CASE WHEN ${closing} THEN ${t.endTime.now} END`);
  }
  if (col.startedAt) {
    sets.push(`${col.startedAt} = CASE WHEN ${closing} THEN ${col.startedAt} END`);
  }
  if (col.success) {
    sets.push(
      `${col.success} = CASE WHEN ${closing} THEN false WHEN ${started} THEN NULL ELSE ${col.success} END`,
    );
  }
  if (col.error) {
    sets.push(
      `${col.error} = CASE WHEN ${closing} THEN $1 || '; tries used up (' || $2::int || ')'
         WHEN ${started} THEN $1 ELSE ${col.error} END`,
    );
  }
  const rows = o.returnRows ? `${t.table}.*, ` : '';
  const res = await db.query<{ __pampa_closed: boolean }>({
    text: `UPDATE ${t.table} SET ${sets.join(', ')} WHERE ${where.join(' AND ')}
           RETURNING ${rows}${state.closed} AS "__pampa_closed"`,
    values,
  });
  const closed = res.rows.filter((r) => r.__pampa_closed).length;
  const out: Released = { requeued: res.rows.length - closed, closed };
  if (o.returnRows) {
    out.rows = res.rows
      .filter((r) => !r.__pampa_closed)
      .map(({ __pampa_closed: _, ...row }) => row);
  }

  return out;
}

import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import { shiftPlaceholders } from '../hooks/run.js';

/**
 * The dispatcher's statements over a job's table. Writes carry the lease fence.
 *
 * Reservation claims a whole round in one statement: the free rows are locked with
 * FOR UPDATE SKIP LOCKED (two dispatchers, or a dispatcher and a user's query, never wait on
 * nor take the same row), numbered, and matched to the free slots (one array element per
 * slot, holding the worker id). Select-then-update in two statements would let a second
 * dispatcher reserve the same rows; one UPDATE per worker costs a round trip per worker.
 */
export async function reserveTasks(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  slots: string[],
  fence: { sql: (first: number) => string; params: unknown[] },
  selection: FreeRowSelection = NO_SELECTION,
): Promise<Map<string, number>> {
  const given = new Map<string, number>();
  if (slots.length === 0) return given;
  const { col } = t;
  const sel = selectionSql(selection, 6);
  // The reservation time goes in reservedAt; without startedAt, reservedAt stays NULL until the
  // start (it carries the start time then).
  const sets = [`${col.reservedAt} = ${t.reservedTime ? t.reservedTime.now : 'NULL'}`];
  if (col.startedAt) sets.push(`${col.startedAt} = NULL`);
  const res = await db.query<{ worker: string; n: string }>({
    text: `WITH lease AS (${fence.sql(4)}),
           free AS (
             SELECT ${t.pk} AS pk FROM ${t.table}
              WHERE ${freeRowCondition(t)}${sel.where}
                AND EXISTS (SELECT 1 FROM lease)
              ORDER BY ${sel.orderBy}${t.pk} LIMIT $3 FOR UPDATE SKIP LOCKED),
           numbered AS (SELECT pk, row_number() OVER () AS n FROM free),
           slot AS (SELECT w, n FROM unnest($1::text[]) WITH ORDINALITY AS s(w, n)),
           done AS (
             UPDATE ${t.table} SET ${col.reservedBy} = slot.w, ${sets.join(', ')}
               FROM numbered JOIN slot ON slot.n = numbered.n
              WHERE ${t.table}.${t.pk} = numbered.pk
             RETURNING slot.w)
           SELECT w AS worker, count(*)::text AS n FROM done GROUP BY w`,
    values: [slots, t.job.maxTryTimes, slots.length, ...fence.params, ...selection.params],
  });
  for (const r of res.rows) given.set(r.worker, Number(r.n));

  return given;
}

/** The selecting hook's fragments, checked; `params` are bound after the statement's own. */
export interface FreeRowSelection {
  where: string | null;
  orderBy: string | null;
  params: unknown[];
}

export const NO_SELECTION: FreeRowSelection = { where: null, orderBy: null, params: [] };

function selectionSql(s: FreeRowSelection, offset: number): { where: string; orderBy: string } {
  const shift = (sql: string) => shiftPlaceholders(sql, offset, s.params.length);

  return {
    where: s.where ? `\n                AND (${shift(s.where)})` : '',
    orderBy: s.orderBy ? `${shift(s.orderBy)}, ` : '',
  };
}

/**
 * A row that may be reserved: not held, not closed, tries left, past its retry backoff and
 * its not-before time. `$2` is maxTryTimes.
 */
function freeRowCondition(t: JobTable): string {
  const { col } = t;
  const due = t.notBefore
    ? `\n                AND (${t.notBefore.col} IS NULL OR ${t.notBefore.col} <= ${t.notBefore.now})`
    : '';

  return `${col.reservedBy} IS NULL AND ${t.state.open}
                AND COALESCE(${col.tries}, 0) < $2
                AND (${col.reservedAt} IS NULL OR ${col.reservedAt} <= ${t.now.reservedAt})${due}`;
}

/**
 * The backlog elastic assignment sizes a job by: tasks due and free (as the reservation would
 * see them, selecting hook included) plus tasks queued to workers, counted up to `cap` so a
 * large table costs no more than the decision needs.
 */
export async function countBacklog(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  cap: number,
  selection: FreeRowSelection = NO_SELECTION,
): Promise<number> {
  const sel = selectionSql(selection, 3);
  const res = await db.query<{ n: number }>({
    text: `SELECT count(*)::int AS n FROM (
             (SELECT 1 FROM ${t.table} WHERE ${freeRowCondition(t)}${sel.where} LIMIT $1)
             UNION ALL
             (SELECT 1 FROM ${t.table} WHERE ${t.state.queued} LIMIT $1)
             LIMIT $3) AS backlog`,
    values: [cap, t.job.maxTryTimes, cap, ...selection.params],
  });

  return res.rows[0].n;
}

/**
 * Reopens closed rows so they run again, with tries reset and success cleared (the error text
 * stays until the next finish): rows the relaunching hook names, or rows of a recurrent job
 * whose period has come round (a recurrent job keeps endedAt: the config requires it). Only
 * closed rows are touched, never one in flight; fenced; locked rows are skipped; at most `limit`
 * per call, those that ended first (by key without endedAt). Returns the reopened rows.
 */
export async function reopenTasks(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  o: {
    /** A condition on the row, with its own `$1…` params (relaunching hook). */
    where?: { sql: string; params: unknown[] };
    /** Only rows that ended before this much time ago (s). */
    endedMoreThanSecondsAgo?: number;
    /** Only rows that ended before this instant (a cron tick). */
    endedBefore?: Date;
    limit: number;
    fence: { sql: (first: number) => string; params: unknown[] };
  },
): Promise<Record<string, unknown>[]> {
  const { col, endTime } = t;
  const values: unknown[] = [o.limit];
  const where = [t.state.closed];
  if ((o.endedMoreThanSecondsAgo !== undefined || o.endedBefore !== undefined) && !endTime) {
    throw new Error(`job "${t.job.name}" keeps no endedAt column: its rows cannot recur`);
  }
  if (o.endedMoreThanSecondsAgo !== undefined && endTime) {
    values.push(o.endedMoreThanSecondsAgo);
    where.push(
      `${endTime.col} <= ${endTime.now} - make_interval(secs => $${values.length}::float8)`,
    );
  }
  if (o.endedBefore !== undefined && endTime) {
    values.push(o.endedBefore.toISOString());
    const before =
      endTime.now === 'now()'
        ? `$${values.length}::timestamptz`
        : `($${values.length}::timestamptz AT TIME ZONE 'UTC')`;
    where.push(`${endTime.col} < ${before}`);
  }
  where.push(`EXISTS (${o.fence.sql(values.length + 1)})`);
  values.push(...o.fence.params);
  if (o.where) {
    where.push(`(${shiftPlaceholders(o.where.sql, values.length, o.where.params.length)})`);
    values.push(...o.where.params);
  }
  const sets = [`${col.reservedBy} = NULL`, `${col.reservedAt} = NULL`, `${col.tries} = 0`];
  for (const c of [col.startedAt, col.endedAt, col.success]) if (c) sets.push(`${c} = NULL`);
  const res = await db.query<Record<string, unknown>>({
    text: `WITH due AS (
             SELECT ${t.pk} AS pk FROM ${t.table} WHERE ${where.join(' AND ')}
              ORDER BY ${endTime?.col ?? t.pk} LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE ${t.table} SET ${sets.join(', ')} FROM due
            WHERE ${t.table}.${t.pk} = due.pk
           RETURNING ${t.table}.*`,
    values,
  });

  return res.rows;
}

/** Reserved-but-unstarted tasks per worker (the queue the dispatcher tops up). */
export async function queuedPerWorker(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  workers: string[],
): Promise<Map<string, number>> {
  const { col, state } = t;
  const res = await db.query<{ worker: string; n: string }>({
    text: `SELECT ${col.reservedBy} AS worker, count(*)::text AS n FROM ${t.table}
            WHERE ${col.reservedBy} = ANY($1::text[]) AND ${state.unstarted} AND ${state.open}
            GROUP BY 1`,
    values: [workers],
  });

  return new Map(res.rows.map((r) => [r.worker, Number(r.n)]));
}

export interface JobCounters {
  total: number;
  completed: number;
  pending: number;
  failed: number;
  running: number;
}

/**
 * The counters of a job. completed: closed with success; failed: closed without it (every try
 * used); running: started, not closed; pending: neither closed nor running. Without a success
 * column, every closed task counts as completed.
 */
export async function countTasks(db: pg.Pool | pg.PoolClient, t: JobTable): Promise<JobCounters> {
  const { col, state } = t;
  const ok = col.success ? `${col.success} IS TRUE` : 'true';
  const res = await db.query<Record<keyof JobCounters, string>>(
    `SELECT count(*)::text AS total,
            count(*) FILTER (WHERE ${state.closed} AND ${ok})::text AS completed,
            count(*) FILTER (WHERE ${state.closed} AND NOT (${ok}))::text AS failed,
            count(*) FILTER (WHERE ${state.running})::text AS running,
            count(*) FILTER (WHERE ${state.open} AND NOT (${state.started}))::text AS pending
       FROM ${t.table}`,
  );
  const r = res.rows[0];

  return {
    total: Number(r.total),
    completed: Number(r.completed),
    pending: Number(r.pending),
    failed: Number(r.failed),
    running: Number(r.running),
  };
}

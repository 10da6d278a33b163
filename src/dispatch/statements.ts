import type pg from 'pg';
import type { JobTable } from '../db/table.js';

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
): Promise<Map<string, number>> {
  const given = new Map<string, number>();
  if (slots.length === 0) return given;
  const { col } = t;
  const res = await db.query<{ worker: string; n: string }>({
    text: `WITH lease AS (${fence.sql(4)}),
           free AS (
             SELECT ${t.pk} AS pk FROM ${t.table}
              WHERE ${col.reservedBy} IS NULL AND ${col.endedAt} IS NULL
                AND COALESCE(${col.tries}, 0) < $2
                AND (${col.reservedAt} IS NULL OR ${col.reservedAt} <= ${t.now.reservedAt})
                AND EXISTS (SELECT 1 FROM lease)
              ORDER BY ${t.pk} LIMIT $3 FOR UPDATE SKIP LOCKED),
           numbered AS (SELECT pk, row_number() OVER () AS n FROM free),
           slot AS (SELECT w, n FROM unnest($1::text[]) WITH ORDINALITY AS s(w, n)),
           done AS (
             UPDATE ${t.table} SET ${col.reservedBy} = slot.w, ${col.reservedAt} = ${t.now.reservedAt},
                    ${col.startedAt} = NULL
               FROM numbered JOIN slot ON slot.n = numbered.n
              WHERE ${t.table}.${t.pk} = numbered.pk
             RETURNING slot.w)
           SELECT w AS worker, count(*)::text AS n FROM done GROUP BY w`,
    values: [slots, t.job.maxTryTimes, slots.length, ...fence.params],
  });
  for (const r of res.rows) given.set(r.worker, Number(r.n));

  return given;
}

/** Reserved-but-unstarted tasks per worker (the queue the dispatcher tops up). */
export async function queuedPerWorker(
  db: pg.Pool | pg.PoolClient,
  t: JobTable,
  workers: string[],
): Promise<Map<string, number>> {
  const { col } = t;
  const res = await db.query<{ worker: string; n: string }>({
    text: `SELECT ${col.reservedBy} AS worker, count(*)::text AS n FROM ${t.table}
            WHERE ${col.reservedBy} = ANY($1::text[]) AND ${col.startedAt} IS NULL
              AND ${col.endedAt} IS NULL
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
  const { col } = t;
  const ok = col.success ? `${col.success} IS TRUE` : 'true';
  const res = await db.query<Record<keyof JobCounters, string>>(
    `SELECT count(*)::text AS total,
            count(*) FILTER (WHERE ${col.endedAt} IS NOT NULL AND ${ok})::text AS completed,
            count(*) FILTER (WHERE ${col.endedAt} IS NOT NULL AND NOT (${ok}))::text AS failed,
            count(*) FILTER (WHERE ${col.endedAt} IS NULL AND ${col.startedAt} IS NOT NULL)::text
              AS running,
            count(*) FILTER (WHERE ${col.endedAt} IS NULL AND ${col.startedAt} IS NULL)::text
              AS pending
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

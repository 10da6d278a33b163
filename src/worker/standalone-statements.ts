import type pg from 'pg';
import { quoteIdent } from '../db/quote.js';

/**
 * The standalone processes' statements. One instance at a time is a transaction-level advisory
 * lock, taken by the run's process in a transaction it keeps open on a connection of its own
 * for the whole run (so it holds behind a pooler in transaction mode too, which pins the
 * server session to the transaction), and released when that transaction ends: the two-key
 * form, `(STANDALONE_LOCK_CLASS, hashtext('<cluster>/<name>'))`. The first key is Pampa's
 * namespace, so the lock cannot collide with one-key advisory locks (a separate key space in
 * PostgreSQL) nor with two-key locks whose first key differs.
 */

/** First key of the standalone processes' advisory locks: 'pams' (0x70616d73). */
export const STANDALONE_LOCK_CLASS = 0x70616d73;

export function lockName(cluster: string, name: string): string {
  return `${cluster}/${name}`;
}

/**
 * Opens the run's transaction and takes the lock in it if the lock is free (never waits); when
 * it is not, the transaction is rolled back. A taken lock lasts until commitRun or until the
 * connection ends.
 */
export async function tryLock(db: pg.ClientBase, cluster: string, name: string): Promise<boolean> {
  await db.query('BEGIN');
  const r = await db.query<{ locked: boolean }>(
    'SELECT pg_try_advisory_xact_lock($1, hashtext($2)) AS locked',
    [STANDALONE_LOCK_CLASS, lockName(cluster, name)],
  );
  if (!r.rows[0].locked) await db.query('ROLLBACK');

  return r.rows[0].locked;
}

/** Ends the run's transaction, and with it the lock (and writes a runOnce completion). */
export async function commitRun(db: pg.ClientBase): Promise<void> {
  await db.query('COMMIT');
}

export interface LockHolder {
  application: string;
  pid: number;
  since: Date;
}

/** The session holding the lock (its application_name names the agent), or null. */
export async function lockHolder(
  db: pg.ClientBase,
  cluster: string,
  name: string,
): Promise<LockHolder | null> {
  const r = await db.query<LockHolder>(
    `SELECT a.application_name AS application, a.pid, a.backend_start AS since
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid`,
    [STANDALONE_LOCK_CLASS, lockName(cluster, name)],
  );

  return r.rows[0] ?? null;
}

/** When a runOnce process completed in the cluster, or null: not yet. */
export async function completedAt(
  db: pg.Pool | pg.ClientBase,
  schema: string,
  cluster: string,
  name: string,
): Promise<Date | null> {
  const r = await db.query<{ completed_at: Date }>(
    `SELECT completed_at FROM ${quoteIdent(schema)}.standalone_completions
      WHERE cluster = $1 AND name = $2`,
    [cluster, name],
  );

  return r.rows[0]?.completed_at ?? null;
}

/** Records that a runOnce process completed, in the run's transaction (committed with it). */
export async function recordCompletion(
  db: pg.ClientBase,
  schema: string,
  row: { cluster: string; name: string; node: string; agentId: string; startedAt: Date },
): Promise<void> {
  await db.query(
    `INSERT INTO ${quoteIdent(schema)}.standalone_completions
       (cluster, name, node, agent_id, started_at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (cluster, name) DO NOTHING`,
    [row.cluster, row.name, row.node, row.agentId, row.startedAt],
  );
}

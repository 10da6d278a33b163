import type pg from 'pg';
import { quoteIdent } from '../db/quote.js';

/**
 * The standalone processes' statements. One instance at a time is a session-level advisory
 * lock, taken by the run's process on a connection of its own and held until that connection
 * ends: the two-key form, `(STANDALONE_LOCK_CLASS, hashtext('<cluster>/<name>'))`. The first
 * key is Pampa's namespace, so the lock cannot collide with one-key advisory locks (a separate
 * key space in PostgreSQL) nor with two-key locks whose first key differs.
 */

/** First key of the standalone processes' advisory locks: 'pams' (0x70616d73). */
export const STANDALONE_LOCK_CLASS = 0x70616d73;

export function lockName(cluster: string, name: string): string {
  return `${cluster}/${name}`;
}

/** Takes the lock for this session if it is free; never waits. */
export async function tryLock(db: pg.ClientBase, cluster: string, name: string): Promise<boolean> {
  const r = await db.query<{ locked: boolean }>(
    'SELECT pg_try_advisory_lock($1, hashtext($2)) AS locked',
    [STANDALONE_LOCK_CLASS, lockName(cluster, name)],
  );

  return r.rows[0].locked;
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

/** Records that a runOnce process completed; written while its lock is held. */
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

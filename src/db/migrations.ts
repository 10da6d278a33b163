import type pg from 'pg';
import { withTransaction } from './pool.js';
import { quoteIdent } from './quote.js';

/**
 * Pampa's own tables, as numbered forward-only migrations. Each runs in a transaction holding
 * a transaction-level advisory lock, so two agents starting at the same moment apply each
 * migration exactly once; the second waits, then sees it recorded and skips it.
 */
export const MIGRATIONS: readonly { id: number; name: string; sql: (s: string) => string }[] = [
  {
    id: 1,
    name: 'leases',
    sql: (s) => `
      CREATE TABLE ${s}.leases (
        cluster     text PRIMARY KEY,
        holder      text,
        epoch       bigint NOT NULL DEFAULT 0,
        expires_at  timestamptz NOT NULL DEFAULT '-infinity',
        acquired_at timestamptz,
        renewed_at  timestamptz
      )`,
  },
  {
    id: 2,
    name: 'nodes',
    sql: (s) => `
      CREATE TABLE ${s}.nodes (
        cluster      text NOT NULL,
        name         text NOT NULL,
        agent_id     text NOT NULL,
        peer_id      text,
        addresses    text[] NOT NULL DEFAULT '{}',
        status_url   text,
        version      text,
        workers      text[] NOT NULL DEFAULT '{}',
        started_at   timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        stopped_at   timestamptz,
        PRIMARY KEY (cluster, name)
      )`,
  },
  {
    id: 3,
    name: 'assignments',
    sql: (s) => `
      CREATE TABLE ${s}.assignments (
        cluster     text NOT NULL,
        worker      text NOT NULL,
        job         text,
        epoch       bigint NOT NULL,
        assigned_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (cluster, worker)
      )`,
  },
  {
    id: 4,
    name: 'standalone_completions',
    // One row per runOnce standalone process that succeeded; deleting it runs it again.
    sql: (s) => `
      CREATE TABLE ${s}.standalone_completions (
        cluster      text NOT NULL,
        name         text NOT NULL,
        node         text NOT NULL,
        agent_id     text NOT NULL,
        started_at   timestamptz NOT NULL,
        completed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (cluster, name)
      )`,
  },
];

const LOCK_KEY = 0x70616d70; // 'pamp'

export async function migrate(pool: pg.Pool, schema: string): Promise<number[]> {
  const s = quoteIdent(schema);
  const applied: number[] = [];
  await withTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${s}.migrations (id integer PRIMARY KEY, name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const done = await client.query<{ id: number }>(`SELECT id FROM ${s}.migrations`);
    const have = new Set(done.rows.map((r) => r.id));
    for (const m of MIGRATIONS) {
      if (have.has(m.id)) continue;
      await client.query(m.sql(s));
      await client.query(`INSERT INTO ${s}.migrations (id, name) VALUES ($1, $2)`, [m.id, m.name]);
      applied.push(m.id);
    }
  });

  return applied;
}

/**
 * The core-* tests' names for the shared fixture (fixture.ts): Fixture F in a fresh database
 * with agents on a qa config module, and the invariant checks of cases.md §2.
 */
import type pg from 'pg';
import { createTestDatabase, type TestDatabase } from './database.js';
import {
  agentGroup,
  createQaTables,
  killAllAgents,
  migrateQaJob,
  tempDir,
  writeQaConfig,
  type AgentGroup,
  type QaConfigOptions,
} from './fixture.js';

export {
  CLI,
  INDEX_URL,
  QA_COLUMNS,
  ROOT,
  createQaTables,
  killAllAgents,
  startAgent,
  tempDir,
  waitFor,
  writeQaConfig,
  type AgentProcess,
  type QaConfigOptions,
} from './fixture.js';

export interface QaSetup extends AgentGroup {
  db: TestDatabase;
}

const databases: TestDatabase[] = [];

/** A fresh database with Fixture F and `rows` (id, payload) in qa_task, and a qa config. */
export async function setupQa(rows: [number, string][], o: QaConfigOptions = {}): Promise<QaSetup> {
  const db = await createTestDatabase();
  databases.push(db);
  await createQaTables(db.pool);
  await migrateQaJob(db.pool);
  if (rows.length > 0) {
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT * FROM unnest($1::bigint[], $2::text[])`,
      [rows.map((r) => r[0]), rows.map((r) => r[1])],
    );
  }
  const dir = tempDir('pampa-core-');

  return { db, ...agentGroup(dir, writeQaConfig(dir, o), db.url) };
}

/** Kills every agent still running and drops the databases of setupQa. */
export async function cleanUpQa(): Promise<void> {
  killAllAgents();
  await Promise.all(databases.splice(0).map((d) => d.drop().catch(() => undefined)));
}

/** Invariant checks of cases.md §2 that hold after every scenario; returns violations. */
export async function invariantViolations(db: pg.Pool, maxTries = 3): Promise<string[]> {
  const out: string[] = [];
  const i1a = await db.query(`SELECT id, rsv_tries FROM qa_task WHERE rsv_tries > $1`, [maxTries]);
  if (i1a.rowCount) out.push(`I1 tries > max: ${JSON.stringify(i1a.rows)}`);
  const i1b = await db.query(
    `SELECT task_id, count(*)::int AS n FROM qa_exec_log GROUP BY 1 HAVING count(*) > $1`,
    [maxTries],
  );
  if (i1b.rowCount) out.push(`I1 execs > max: ${JSON.stringify(i1b.rows)}`);
  const i3 = await db.query(
    `SELECT t.id FROM qa_task t JOIN qa_exec_log e ON e.task_id = t.id
      WHERE t.ok AND t.ended_at IS NOT NULL AND e.t_start > (t.ended_at AT TIME ZONE 'UTC')`,
  );
  if (i3.rowCount) out.push(`I3 exec after done: ${JSON.stringify(i3.rows)}`);
  const i6 = await db.query(`SELECT id FROM qa_task WHERE note IS DISTINCT FROM 'keep-me'`);
  if (i6.rowCount) out.push(`I6 note changed: ${JSON.stringify(i6.rows)}`);
  const okZero = await db.query(`SELECT id FROM qa_task WHERE ok AND COALESCE(rsv_tries, 0) = 0`);
  if (okZero.rowCount) out.push(`ok with tries 0: ${JSON.stringify(okZero.rows)}`);
  const i7 = await db.query(
    `SELECT id, rsv_tries, ok, ended_at, err FROM qa_task
      WHERE ended_at IS NOT NULL AND ok IS NOT TRUE
        AND (err IS NULL OR rsv_tries IS DISTINCT FROM $1)`,
    [maxTries],
  );
  if (i7.rowCount) out.push(`I7 badly closed: ${JSON.stringify(i7.rows)}`);

  return out;
}

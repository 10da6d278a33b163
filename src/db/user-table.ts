import type pg from 'pg';
import { reservationColumns, type JobConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { withTransaction } from './pool.js';
import { derivedName, quoteIdent, quoteTable, splitTable } from './quote.js';
import { describeColumns, quoteColumns, TableError } from './table.js';
import { taskState } from './task-state.js';

/** Channel of the insert trigger's NOTIFY; the payload is the job name. */
export const NEW_TASKS_CHANNEL = 'pampa_new_tasks';

/**
 * `pampa migrate` for one job: adds the reservation columns the table lacks (only those the job
 * keeps), the indexes the dispatcher's queries use, and an insert trigger that NOTIFYs the
 * dispatcher. Touches nothing else, runs in one transaction, and is idempotent. A missing table
 * or primary key fails before anything is written.
 *
 * The two partial indexes hold the open rows, free and held; "open" is the job's own condition
 * (task-state.ts: endedAt NULL, or success NULL for a job without endedAt). The indexes of a job
 * without endedAt have names of their own, so that switching a job to it creates them instead of
 * keeping same-named indexes whose condition its queries no longer match.
 */
export async function migrateJobTable(
  pool: pg.Pool,
  job: JobConfig,
  schema: string,
  log: Logger,
): Promise<string[]> {
  const columns = await describeColumns(pool, job.table);
  const existing = columns.map((c) => c.name);
  if (columns.length === 0) {
    throw new TableError(`job "${job.name}": table ${job.table} does not exist; create it first`);
  }
  if (!existing.includes(job.primaryKey)) {
    throw new TableError(
      `job "${job.name}": table ${job.table} has no column ${job.primaryKey} (option primaryKey); ` +
        `its columns are: ${existing.join(', ')}`,
    );
  }

  const names = reservationColumns(job);
  const wanted: [string | null, string][] = [
    [names.reservedBy, 'varchar(500)'],
    [names.reservedAt, 'timestamptz'],
    [names.tries, 'integer NOT NULL DEFAULT 0'],
    [names.startedAt, 'timestamptz'],
    [names.endedAt, 'timestamptz'],
    [names.success, 'boolean'],
    [names.error, 'text'],
  ];
  const table = quoteTable(job.table);
  const bare = splitTable(job.table).pop()!;
  const tableSchema =
    splitTable(job.table).length === 2 ? quoteIdent(splitTable(job.table)[0]) : null;
  const col = quoteColumns(names);
  const { open } = taskState(col);
  const rb = col.reservedBy;
  const pk = quoteIdent(job.primaryKey);
  const fn = `${quoteIdent(schema)}.${quoteIdent(derivedName('notify', job.name))}`;
  const statements: string[] = [];
  for (const [name, type] of wanted) {
    if (name && !existing.includes(name)) {
      statements.push(`ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS ${quoteIdent(name)} ${type}`);
    }
  }
  const idx = (suffix: string) => quoteIdent(derivedName(bare, job.name, suffix));
  const openBy = names.endedAt ? '' : '_by_success';
  statements.push(
    `CREATE INDEX IF NOT EXISTS ${idx(`free${openBy}`)} ON ${table} (${pk}) WHERE ${rb} IS NULL AND ${open}`,
    `CREATE INDEX IF NOT EXISTS ${idx(`held${openBy}`)} ON ${table} (${rb}) WHERE ${rb} IS NOT NULL AND ${open}`,
    `CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`,
    `CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $f$
       BEGIN PERFORM pg_notify('${NEW_TASKS_CHANNEL}', ${literal(job.name)}); RETURN NULL; END $f$`,
    `DROP TRIGGER IF EXISTS ${idx('notify')} ON ${table}`,
    `CREATE TRIGGER ${idx('notify')} AFTER INSERT ON ${table} FOR EACH STATEMENT EXECUTE FUNCTION ${fn}()`,
  );

  await withTransaction(pool, async (client) => {
    // Serialise concurrent migrations of the same table (two agents starting together).
    await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`pampa:${job.table}`]);
    for (const sql of statements) await client.query(sql);
  });
  log.info(
    { job: job.name, table: job.table, schema: tableSchema, statements: statements.length },
    'job table migrated',
  );

  return statements;
}

/** A string literal for the one place a value must be inlined (a trigger body). */
function literal(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

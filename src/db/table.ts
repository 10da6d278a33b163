import type pg from 'pg';
import { reservationColumns, type JobConfig, type ReservationColumns } from '../config/schema.js';
import { quoteIdent, quoteTable } from './quote.js';
import { taskState, type QuotedColumns, type TaskState } from './task-state.js';

/** Raised when a job's table or columns do not match the configuration. */
export class TableError extends Error {
  override name = 'TableError';
}

export interface ColumnInfo {
  name: string;
  /** format_type(), e.g. `bigint`, `timestamp without time zone`. */
  type: string;
}

/** A time column, quoted, with the expression that gives "now" in its type. */
export interface TimeColumn {
  col: string;
  now: string;
}

/**
 * A job's table as found in the database: quoted names ready for SQL, and the expressions that
 * give "now" in the type of each time column. `timestamp` (no zone) columns hold UTC wall time
 * from the database clock; `timestamptz` columns hold now() itself. Both compare correctly
 * whatever the server's and session's TimeZone.
 */
export interface JobTable {
  job: JobConfig;
  /** `"schema"."table"` */
  table: string;
  /** Quoted primary-key column. */
  pk: string;
  /** SQL type of the primary key, used to cast bound text arrays. */
  pkType: string;
  /** Unquoted reservation column names. */
  names: ReservationColumns;
  /** Quoted reservation column names (null for a column the job does not keep). */
  col: QuotedColumns;
  /** "now" expressions matching the type of reservedAt, startedAt, endedAt (null: not kept). */
  now: { reservedAt: string; startedAt: string | null; endedAt: string | null };
  /** The states of a task as SQL conditions (task-state.ts). */
  state: TaskState;
  /** The current attempt's start: startedAt, or reservedAt for a job without startedAt. */
  startTime: TimeColumn;
  /**
   * A queued task's reservation time: reservedAt; null for a job without startedAt, whose
   * queued tasks have reservedAt NULL.
   */
  reservedTime: TimeColumn | null;
  /** A closed task's end: endedAt; null for a job without endedAt (success marks closure). */
  endTime: TimeColumn | null;
  /** The job's notBeforeColumn, quoted, with "now" in its type; null without one. */
  notBefore: { col: string; now: string } | null;
}

const NOW_TZ = 'now()';
const NOW_UTC = "(now() AT TIME ZONE 'UTC')";

export async function describeColumns(pool: pg.Pool, tableName: string): Promise<ColumnInfo[]> {
  const res = await pool.query<{ name: string; type: string }>(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a
      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [quoteTable(tableName)],
  );

  return res.rows;
}

function timeNow(table: string, columns: ColumnInfo[], name: string): string {
  const col = columns.find((c) => c.name === name);
  if (!col) throw new TableError(`column ${name} missing in ${table}`);
  if (col.type === 'timestamp with time zone') return NOW_TZ;
  if (col.type.startsWith('timestamp')) return NOW_UTC;
  throw new TableError(
    `column ${name} of table ${table} has type ${col.type}; a reservation time column must be ` +
      'timestamp or timestamptz',
  );
}

/**
 * Checks a job's table against its configuration and returns the SQL pieces. Reads only:
 * a missing table or column fails with the table, the column and the columns that exist.
 */
export async function inspectJobTable(pool: pg.Pool, job: JobConfig): Promise<JobTable> {
  const columns = await describeColumns(pool, job.table);
  if (columns.length === 0) {
    throw new TableError(
      `job "${job.name}": table ${job.table} does not exist (or has no columns); create it, ` +
        'or fix the job\'s "table" option',
    );
  }

  const existing = columns.map((c) => c.name);
  const names = reservationColumns(job);
  const need: [string, string][] = [
    ['primaryKey', job.primaryKey],
    ['columns.reservedBy', names.reservedBy],
    ['columns.reservedAt', names.reservedAt],
    ['columns.tries', names.tries],
  ];
  if (names.startedAt) need.push(['columns.startedAt', names.startedAt]);
  if (names.endedAt) need.push(['columns.endedAt', names.endedAt]);
  if (job.notBeforeColumn) need.push(['notBeforeColumn', job.notBeforeColumn]);
  if (names.success) need.push(['columns.success', names.success]);
  if (names.error) need.push(['columns.error', names.error]);
  const missing = need.filter(([, col]) => !existing.includes(col));
  if (missing.length > 0) {
    const list = missing.map(([opt, col]) => `${col} (option ${opt})`).join(', ');
    throw new TableError(
      `job "${job.name}": table ${job.table} has no column ${list}; its columns are: ` +
        `${existing.join(', ')}. Run \`pampa migrate --config FILE\` to add the reservation ` +
        'columns, or name existing ones in the job\'s "columns" option',
    );
  }

  const pkType = columns.find((c) => c.name === job.primaryKey)!.type;
  const col = quoteColumns(names);
  const now = {
    reservedAt: timeNow(job.table, columns, names.reservedAt),
    startedAt: names.startedAt ? timeNow(job.table, columns, names.startedAt) : null,
    endedAt: names.endedAt ? timeNow(job.table, columns, names.endedAt) : null,
  };
  const reservedAt = { col: col.reservedAt, now: now.reservedAt };

  return {
    job,
    table: quoteTable(job.table),
    pk: quoteIdent(job.primaryKey),
    pkType,
    names,
    col,
    now,
    state: taskState(col),
    startTime:
      col.startedAt && now.startedAt ? { col: col.startedAt, now: now.startedAt } : reservedAt,
    reservedTime: col.startedAt ? reservedAt : null,
    endTime: col.endedAt && now.endedAt ? { col: col.endedAt, now: now.endedAt } : null,
    notBefore: job.notBeforeColumn
      ? {
          col: quoteIdent(job.notBeforeColumn),
          now: timeNow(job.table, columns, job.notBeforeColumn),
        }
      : null,
  };
}

/** The reservation column names quoted for SQL; a column the job does not keep stays null. */
export function quoteColumns(names: ReservationColumns): QuotedColumns {
  const q = (name: string | null) => (name === null ? null : quoteIdent(name));

  return {
    reservedBy: quoteIdent(names.reservedBy),
    reservedAt: quoteIdent(names.reservedAt),
    tries: quoteIdent(names.tries),
    startedAt: q(names.startedAt),
    endedAt: q(names.endedAt),
    success: q(names.success),
    error: q(names.error),
  };
}

import type pg from 'pg';
import { quoteIdent } from '../db/quote.js';

/**
 * The lease statements. Each is one statement judged by the database clock (`now()`), so agents
 * whose clocks disagree still agree on who holds the lease and until when. Every call takes an
 * optional `timeoutMs`, passed to pg as `query_timeout`: when it fires the query fails and the
 * pool discards the connection, so a hung server cannot pin a pool client forever.
 */

/** The lease row as the database saw it when the statement ran. */
export interface LeaseRow {
  holder: string | null;
  epoch: number;
  expiresAt: Date;
  /** Milliseconds from the statement's `now()` to `expires_at`; 0 once expired. */
  msToExpiry: number;
}

/** What an acquire attempt returns: the row it wrote, or the row that stopped it. */
export interface AcquireResult extends LeaseRow {
  acquired: boolean;
}

export interface AcquireOptions {
  cluster: string;
  holder: string;
  ttlMs: number;
  timeoutMs?: number;
}

export interface TermOptions {
  cluster: string;
  holder: string;
  epoch: number;
}

export interface RenewOptions extends TermOptions {
  ttlMs: number;
  timeoutMs?: number;
}

export interface ResignOptions extends TermOptions {
  timeoutMs?: number;
}

/** `"schema".leases`, the table that `fenceSql()` takes. */
export function leasesTable(schema: string): string {
  return `${quoteIdent(schema)}.leases`;
}

const MS_TO_EXPIRY = `CASE WHEN expires_at > now()
    THEN floor(extract(epoch FROM expires_at - now()) * 1000)::float8 ELSE 0 END`;

const RETURNING = `holder, epoch, expires_at, ${MS_TO_EXPIRY} AS ms_to_expiry`;

interface RawRow {
  holder: string | null;
  epoch: string | number;
  expires_at: Date;
  ms_to_expiry: number;
  acquired?: boolean;
}

/**
 * Takes the lease when it is free, expired or already ours. Every successful acquire starts a
 * new term: the epoch grows by 1, even when the same holder takes back a lease it still names
 * (after it stepped down locally, or after an acquire whose reply was lost), so a write fenced
 * with a token from before the step-down can never land in the new term. A holder that keeps
 * its term calls `renew()`, which never changes the epoch.
 *
 * When the lease is held by someone else the ON CONFLICT update writes nothing and the CTE
 * falls back to reading the row, so the caller learns who holds it. That read uses the
 * statement's snapshot: under a concurrent change it may show the previous holder or nothing
 * (then the result is null), which is only ever used for status.
 */
export async function acquire(
  pool: pg.Pool,
  schema: string,
  options: AcquireOptions,
): Promise<AcquireResult | null> {
  const t = leasesTable(schema);
  const text = `
    WITH attempt AS (
      INSERT INTO ${t} AS l (cluster, holder, epoch, expires_at, acquired_at, renewed_at)
      VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', now(), now())
      ON CONFLICT (cluster) DO UPDATE
        SET holder = excluded.holder,
            epoch = l.epoch + 1,
            expires_at = excluded.expires_at,
            acquired_at = now(),
            renewed_at = now()
        WHERE l.expires_at <= now() OR l.holder = excluded.holder
      RETURNING ${RETURNING}
    )
    SELECT true AS acquired, * FROM attempt
    UNION ALL
    SELECT false AS acquired, ${RETURNING} FROM ${t}
      WHERE cluster = $1 AND NOT EXISTS (SELECT 1 FROM attempt)`;
  const rows = await run(pool, text, [options.cluster, options.holder, options.ttlMs], options);
  const row = rows[0];
  if (!row) return null;

  return { acquired: row.acquired === true, ...toLeaseRow(row) };
}

/**
 * Extends the current term by `ttlMs` from the database's `now()`. Writes only while the row
 * still names this holder and epoch and has not expired; null means the term is over (another
 * agent took over, or it expired), which the caller must treat as a definite loss.
 */
export async function renew(
  pool: pg.Pool,
  schema: string,
  options: RenewOptions,
): Promise<LeaseRow | null> {
  const text = `
    UPDATE ${leasesTable(schema)}
       SET expires_at = now() + $4 * interval '1 millisecond', renewed_at = now()
     WHERE cluster = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()
    RETURNING ${RETURNING}`;
  const values = [options.cluster, options.holder, options.epoch, options.ttlMs];
  const rows = await run(pool, text, values, options);

  return rows[0] ? toLeaseRow(rows[0]) : null;
}

/**
 * Ends the term now (expires_at = now()), so the next acquire by any agent succeeds at once
 * instead of waiting for the TTL. Guarded by holder and epoch: it can only end this term.
 * Returns whether it did.
 */
export async function resign(
  pool: pg.Pool,
  schema: string,
  options: ResignOptions,
): Promise<boolean> {
  const text = `
    UPDATE ${leasesTable(schema)} SET expires_at = now()
     WHERE cluster = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()
    RETURNING holder`;
  const rows = await run(pool, text, [options.cluster, options.holder, options.epoch], options);

  return rows.length > 0;
}

/** The lease row of `cluster`, or null when no agent ever acquired it. */
export async function readLease(
  pool: pg.Pool,
  schema: string,
  cluster: string,
  options: { timeoutMs?: number } = {},
): Promise<LeaseRow | null> {
  const text = `SELECT ${RETURNING} FROM ${leasesTable(schema)} WHERE cluster = $1`;
  const rows = await run(pool, text, [cluster], options);

  return rows[0] ? toLeaseRow(rows[0]) : null;
}

async function run(
  pool: pg.Pool,
  text: string,
  values: unknown[],
  options: { timeoutMs?: number },
): Promise<RawRow[]> {
  // query_timeout is honoured by pg's Client.query but missing from @types/pg's QueryConfig.
  const config: pg.QueryConfig & { query_timeout?: number } = { text, values };
  if (options.timeoutMs !== undefined) config.query_timeout = options.timeoutMs;
  const result = await pool.query<RawRow>(config);

  return result.rows;
}

function toLeaseRow(row: RawRow): LeaseRow {
  return {
    holder: row.holder,
    epoch: Number(row.epoch),
    expiresAt: row.expires_at,
    msToExpiry: Number(row.ms_to_expiry),
  };
}

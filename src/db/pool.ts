import pg from 'pg';
import type { Logger } from '../log.js';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export interface PoolOptions {
  url: string;
  /** Shown in pg_stat_activity; the agent id, so writes can be attributed. */
  applicationName: string;
  max?: number;
  log: Logger;
}

/**
 * A pg pool that survives the server going away: errors of idle clients are logged, not
 * thrown (pg emits them on the pool, and an unhandled 'error' event would kill the agent).
 */
export function createPool(options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.url,
    application_name: options.applicationName.slice(0, 63),
    max: options.max ?? 4,
    idleTimeoutMillis: 30000,
    connectionTimeoutMillis: 5000,
    keepAlive: true,
  });
  pool.on('error', (err) => {
    const code = (err as { code?: string }).code;
    // 57P01: the server is shutting down (or an admin ended the session); the pool reconnects.
    const level = code === '57P01' ? 'info' : 'warn';
    options.log[level]({ err: { message: err.message, code } }, 'idle database connection lost');
  });
  // pg-pool listens for a client's errors only while it is idle. A connection killed while its
  // client is checked out but between queries (pg_terminate_backend, seen in S10) would emit
  // 'error' with no listener and kill the process; its next query fails instead, as a
  // transient error the caller retries, and the pool drops the client on release.
  pool.on('connect', (client) => {
    client.on('error', (err) =>
      options.log.debug({ err: { message: err.message } }, 'database connection lost in use'),
    );
  });

  return pool;
}

/** SQLSTATE classes and errno codes that mean "the connection or server went away; retry". */
const TRANSIENT_CODES = new Set([
  '57P01', // admin_shutdown (pg_terminate_backend, fast shutdown)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up)
  '08000',
  '08003',
  '08006',
  '08001',
  '08004',
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
]);

export function isTransientDbError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: string }).code;
  if (code && TRANSIENT_CODES.has(code)) return true;

  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|terminating connection/i.test(
    err.message,
  );
}

/** Network errors that mean the database server cannot be reached at all. */
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/**
 * For an error that means the database server cannot be reached: one line naming where it was
 * looked for, where that address comes from and what to check; null for any other error.
 */
export function unreachableHint(err: unknown): string | null {
  const e = err as { code?: unknown; address?: unknown; port?: unknown; hostname?: unknown };
  if (!(err instanceof Error) || typeof e.code !== 'string' || !UNREACHABLE_CODES.has(e.code)) {
    return null;
  }
  const where =
    typeof e.hostname === 'string'
      ? `host "${e.hostname}" (${e.code === 'ENOTFOUND' ? 'no such host' : e.code})`
      : typeof e.address === 'string'
        ? `${e.address}:${String(e.port ?? '')} (${e.code})`
        : e.code;

  return (
    `cannot reach the database at ${where}: check DATABASE_URL, or databaseUrl in the config, ` +
    'and that PostgreSQL runs there and accepts TCP connections from this machine'
  );
}

/**
 * Runs `fn` inside a transaction on one client of the pool. While checked out, a client whose
 * connection dies emits 'error' with nobody listening, which would kill the process; the
 * listener here turns that into the failure of the transaction instead.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken = err;
  };
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');

    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.off('error', onError);
    client.release(broken ?? false);
  }
}

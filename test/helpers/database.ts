import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { pino } from 'pino';
import { startLocalPostgres, type LocalPostgres } from '../../src/db/launcher.js';
import { quoteIdent } from '../../src/db/quote.js';

export interface TestDatabase {
  /** URL of the fresh database. */
  url: string;
  /** A pool on it, max 10 connections. */
  pool: pg.Pool;
  /** End the pool, disconnect everyone else (leaked pool clients too), drop the database. */
  drop(): Promise<void>;
}

/**
 * Server for this process when PAMPA_TEST_DATABASE_URL is absent (a test file run on its own,
 * without scripts/run-tests.mjs). Stopped when the last database made on it is dropped.
 */
let privateServer: Promise<LocalPostgres> | undefined;
let liveDatabases = 0;

async function adminUrl(): Promise<string> {
  const url = process.env.PAMPA_TEST_DATABASE_URL;
  if (url) return url;

  privateServer ??= startLocalPostgres({ log: pino({ level: 'warn' }), fsync: false });

  return (await privateServer).url;
}

async function withAdmin<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A fresh database `t_<random>` on the test server, so each test runs in isolation. */
export async function createTestDatabase(): Promise<TestDatabase> {
  liveDatabases++;
  try {
    const admin = await adminUrl();
    const name = `t_${randomBytes(6).toString('hex')}`;
    await withAdmin(admin, (c) => c.query(`create database ${quoteIdent(name)}`));

    const url = new URL(admin);
    url.pathname = `/${name}`;
    const pool = new pg.Pool({ connectionString: url.toString(), max: 10 });
    pool.on('error', () => undefined);

    let dropped: Promise<void> | undefined;
    const drop = (): Promise<void> => {
      dropped ??= (async () => {
        try {
          // pool.end() waits for checked-out clients to come back; a test that leaked one
          // would hang here, so end the pool without waiting and let the terminate below
          // disconnect the leaked clients.
          const checkedOut = pool.totalCount - pool.idleCount;
          const ended = pool.end();
          if (checkedOut === 0) await ended;
          else ended.catch(() => undefined);
          await withAdmin(admin, async (c) => {
            await c.query(
              'select pg_terminate_backend(pid) from pg_stat_activity ' +
                'where datname = $1 and pid <> pg_backend_pid()',
              [name],
            );
            await c.query(`drop database if exists ${quoteIdent(name)} with (force)`);
          });
        } finally {
          await release();
        }
      })();

      return dropped;
    };

    return { url: url.toString(), pool, drop };
  } catch (err) {
    await release();
    throw err;
  }
}

async function release(): Promise<void> {
  liveDatabases--;
  if (liveDatabases > 0 || !privateServer) return;

  const server = privateServer;
  privateServer = undefined;
  await (await server.catch(() => undefined))?.stop();
}

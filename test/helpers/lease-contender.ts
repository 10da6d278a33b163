/**
 * One contender of the lease race (test/lease-race.test.ts), a process of its own:
 *
 *   node dist/test/helpers/lease-contender.js <database url> <holder> <run ms>
 *
 * Runs the agent's lease (LeaseThread) against the `race` row again and again: each round
 * starts one, keeps it for a random while (blocking its own event loop at times), then stops
 * it (which resigns). It records every election it is told of in lease_claims (epoch, holder,
 * and the row's acquired_at when it still names this term), without any fence: that is what
 * this process believed. While token() is non-null it also writes fenced rows to lease_audit.
 */
import pg from 'pg';
import { pino } from 'pino';
import { fenceParams, fenceSql, LeaseThread, leasesTable } from '../../src/lease/index.js';

const [url, holder, runMsText] = process.argv.slice(2);
if (!url || !holder || !runMsText) {
  throw new Error('usage: lease-contender.js <database url> <holder> <run ms>');
}
const SCHEMA = 'pampa';
const CLUSTER = 'race';
const table = leasesTable(SCHEMA);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const db = new pg.Pool({ connectionString: url, max: 2, application_name: `race-${holder}` });
db.on('error', () => undefined);

async function round(until: number): Promise<void> {
  const lease = new LeaseThread({
    url,
    applicationName: `race-${holder}-lease`,
    schema: SCHEMA,
    cluster: CLUSTER,
    holder,
    ttlMs: 600,
    renewIntervalMs: 100,
    renewDeadlineMs: 400,
    log: pino({ level: 'silent' }),
  });
  const claims: Promise<unknown>[] = [];
  lease.on('elected', (epoch) => {
    claims.push(
      db
        .query(
          `INSERT INTO lease_claims (epoch, holder, acquired_at)
           SELECT $1::bigint, $2::text,
                  (SELECT acquired_at FROM ${table} WHERE cluster = $3 AND epoch = $1 AND holder = $2)`,
          [epoch, holder, CLUSTER],
        )
        .catch(() => undefined),
    );
  });
  await lease.start();
  const end = Math.min(until, Date.now() + 100 + Math.random() * 700);
  while (Date.now() < end) {
    if (Math.random() < 0.05) {
      const frozen = performance.now() + 100 + Math.random() * 400;
      while (performance.now() < frozen) {
        // the main thread blocked; the lease thread goes on
      }
    }
    const token = lease.token();
    if (token) {
      await db
        .query(
          `INSERT INTO lease_audit (epoch, holder) SELECT $3, $2 WHERE EXISTS (${fenceSql(table, 1)})`,
          fenceParams(token),
        )
        .catch(() => undefined);
    }
    await sleep(5 + Math.random() * 20);
  }
  await lease.stop();
  await Promise.all(claims);
}

const until = Date.now() + Number(runMsText);
while (Date.now() < until) await round(until);
await db.end();

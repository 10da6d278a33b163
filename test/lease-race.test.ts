import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type pg from 'pg';
import { pino } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { createPool } from '../src/db/pool.js';
import { fenceParams, fenceSql, Lease, leasesTable, readLease } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';

const SCHEMA = 'pampa';
const CLUSTER = 'race';
const CONTENDERS = 5;
const RUN_MS = 6_000;
const silent = pino({ level: 'silent' });

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

let db: TestDatabase;
const pools: pg.Pool[] = [];

before(async () => {
  db = await createTestDatabase();
  await migrate(db.pool, SCHEMA);
  await db.pool.query(
    'CREATE TABLE lease_audit (id bigserial PRIMARY KEY, epoch bigint NOT NULL, holder text NOT NULL)',
  );
});
after(async () => {
  await Promise.all(pools.map((p) => p.end()));
  await db.drop();
});

/** Assert that every epoch in the list belongs to one holder; return the epochs in order. */
function checkOneHolderPerEpoch(what: string, seen: { epoch: number; holder: string }[]): void {
  const holders = new Map<number, string>();
  for (const { epoch, holder } of seen) {
    const first = holders.get(epoch) ?? holder;
    assert.equal(holder, first, `${what}: epoch ${epoch} has two holders, ${first} and ${holder}`);
    holders.set(epoch, holder);
  }
}

test('five contenders with short TTLs and random restarts never share an epoch', async (t) => {
  const leases = Array.from({ length: CONTENDERS }, (_, i) => {
    const pool = createPool({ url: db.url, applicationName: `race-${i}`, max: 2, log: silent });
    pools.push(pool);

    return new Lease({
      pool,
      schema: SCHEMA,
      cluster: CLUSTER,
      holder: `agent-${i}`,
      ttlMs: 300,
      renewIntervalMs: 50,
      renewDeadlineMs: 200,
      log: silent,
    });
  });

  // Election events in the order they were emitted (one process, so that is time order).
  const elected: { epoch: number; holder: string }[] = [];
  leases.forEach((lease, i) =>
    lease.on('elected', (epoch) => elected.push({ epoch, holder: `agent-${i}` })),
  );

  let running = true;

  // Audit 1: the row itself, polled on a connection of its own.
  const polled: { epoch: number; holder: string }[] = [];
  const poller = (async () => {
    while (running) {
      const row = await readLease(db.pool, SCHEMA, CLUSTER);
      if (row?.holder) polled.push({ epoch: row.epoch, holder: row.holder });
      await sleep(5);
    }
  })();

  // Audit 2: every holder writes fenced rows as fast as it can while it thinks it holds.
  const table = leasesTable(SCHEMA);
  const writers = leases.map(async (lease, i) => {
    while (running) {
      const token = lease.token();
      if (token) {
        await pools[i]
          .query(
            `INSERT INTO lease_audit (epoch, holder) SELECT $3, $2 WHERE EXISTS (${fenceSql(table, 1)})`,
            fenceParams(token),
          )
          .catch(() => undefined);
      }
      await sleep(5 + Math.random() * 10);
    }
  });

  // Audit 3: never two instances that both believe they hold the lease.
  let maxHolders = 0;
  const sampler = setInterval(() => {
    maxHolders = Math.max(maxHolders, leases.filter((l) => l.isHeld()).length);
  }, 2);

  // Chaos: random stops (which resign) and starts, serialized per instance, and freezes.
  const up = leases.map(() => false);
  const chains = leases.map(() => Promise.resolve());
  await Promise.all(leases.map((l, i) => l.start().then(() => (up[i] = true))));
  const until = Date.now() + RUN_MS;
  while (Date.now() < until) {
    if (Math.random() < 0.2) {
      // Freeze the whole process, sometimes past the renew deadline or the TTL, like a GC
      // pause or SIGSTOP: every contender wakes up late and they race for the lease.
      const frozenUntil = performance.now() + 100 + Math.random() * 300;
      while (performance.now() < frozenUntil) {
        // busy wait
      }
    }
    const i = Math.floor(Math.random() * CONTENDERS);
    const lease = leases[i];
    chains[i] = chains[i].then(async () => {
      if (up[i]) await lease.stop();
      else await lease.start();
      up[i] = !up[i];
    });
    await sleep(30 + Math.random() * 150);
  }

  await Promise.all(chains);
  await Promise.all(leases.map((l) => l.start()));
  const deadline = Date.now() + 10_000;
  while (leases.filter((l) => l.isHeld()).length !== 1 && Date.now() < deadline) await sleep(10);
  const finalHolders = leases.filter((l) => l.isHeld());
  running = false;
  clearInterval(sampler);
  await Promise.all([poller, ...writers]);
  await Promise.all(leases.map((l) => l.stop()));

  t.diagnostic(
    `${elected.length} elections, ${polled.length} polls, max ${maxHolders} holder at once`,
  );
  assert.ok(maxHolders <= 1, `at most one instance held the lease at a time, saw ${maxHolders}`);
  assert.equal(finalHolders.length, 1, 'someone holds the lease once the chaos ends');

  assert.ok(elected.length >= 5, `elections happened: ${elected.length}`);
  checkOneHolderPerEpoch('elections', elected);
  for (let k = 1; k < elected.length; k++) {
    assert.ok(
      elected[k].epoch > elected[k - 1].epoch,
      `elected epochs strictly increase: ${elected[k - 1].epoch} then ${elected[k].epoch}`,
    );
  }

  checkOneHolderPerEpoch('polled row', polled);
  for (let k = 1; k < polled.length; k++) {
    assert.ok(polled[k].epoch >= polled[k - 1].epoch, 'the polled epoch never goes back');
  }

  const audit = await db.pool.query<{ epoch: string; holder: string }>(
    'SELECT epoch, holder FROM lease_audit ORDER BY id',
  );
  const writes = audit.rows.map((r) => ({ epoch: Number(r.epoch), holder: r.holder }));
  t.diagnostic(
    `${writes.length} fenced writes over ${new Set(writes.map((w) => w.epoch)).size} epochs`,
  );
  assert.ok(writes.length > 0, 'fenced writes went through');
  checkOneHolderPerEpoch('fenced writes', writes);
  for (let k = 1; k < writes.length; k++) {
    assert.ok(
      writes[k].epoch >= writes[k - 1].epoch,
      'fenced writes of an old epoch never follow a newer one',
    );
  }
});

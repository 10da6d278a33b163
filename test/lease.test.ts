import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino, type Logger } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { createPool } from '../src/db/pool.js';
import {
  acquire,
  fenceParams,
  fenceSql,
  Lease,
  leasesTable,
  readLease,
  renew,
  resign,
  type LeaseOptions,
} from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { waitFor as poll } from './helpers/fixture.js';

const SCHEMA = 'pampa';

interface LogLine {
  level: number;
  msg: string;
  component?: string;
  epoch?: number;
  reason?: string;
}

function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s)) });

  return { log, lines };
}

/** Polls every 10 ms (lease timings are tight); fails naming `what` after `timeoutMs`. */
async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  await poll(what, check, timeoutMs, 10);
}

describe('lease statements', () => {
  let db: TestDatabase;

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
  });
  after(() => db.drop());

  test('acquire, renew, resign and read follow the epoch rules', async () => {
    const c = 'statements';
    const ttlMs = 60_000;
    assert.equal(await readLease(db.pool, SCHEMA, c), null);

    const first = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'a', ttlMs });
    assert.equal(first?.acquired, true);
    assert.equal(first?.holder, 'a');
    assert.equal(first?.epoch, 1);
    assert.ok(first.msToExpiry > 50_000 && first.msToExpiry <= ttlMs, `${first.msToExpiry}`);

    const refused = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs });
    assert.equal(refused?.acquired, false);
    assert.equal(refused?.holder, 'a');
    assert.equal(refused?.epoch, 1);

    const renewed = await renew(db.pool, SCHEMA, { cluster: c, holder: 'a', epoch: 1, ttlMs });
    assert.equal(renewed?.epoch, 1, 'a renewal keeps the epoch');
    assert.equal(await renew(db.pool, SCHEMA, { cluster: c, holder: 'a', epoch: 2, ttlMs }), null);
    assert.equal(await renew(db.pool, SCHEMA, { cluster: c, holder: 'b', epoch: 1, ttlMs }), null);

    assert.equal(await resign(db.pool, SCHEMA, { cluster: c, holder: 'b', epoch: 1 }), false);
    assert.equal(await resign(db.pool, SCHEMA, { cluster: c, holder: 'a', epoch: 1 }), true);
    assert.equal((await readLease(db.pool, SCHEMA, c))?.msToExpiry, 0);
    assert.equal(
      await renew(db.pool, SCHEMA, { cluster: c, holder: 'a', epoch: 1, ttlMs }),
      null,
      'a resigned term cannot be renewed',
    );

    const second = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs });
    assert.deepEqual([second?.acquired, second?.holder, second?.epoch], [true, 'b', 2]);

    // A new acquire by the current holder starts a new term, so old tokens are fenced out.
    const again = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs });
    assert.deepEqual([again?.acquired, again?.epoch], [true, 3]);

    const read = await readLease(db.pool, SCHEMA, c);
    assert.equal(read?.holder, 'b');
    assert.equal(read?.epoch, 3);
  });

  test('an expired lease goes to the next contender with a higher epoch', async () => {
    const c = 'expiry';
    await acquire(db.pool, SCHEMA, { cluster: c, holder: 'a', ttlMs: 50 });
    let next = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs: 60_000 });
    while (!next?.acquired) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      next = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs: 60_000 });
    }
    assert.deepEqual([next.holder, next.epoch], ['b', 2]);
    assert.equal(
      await renew(db.pool, SCHEMA, { cluster: c, holder: 'a', epoch: 1, ttlMs: 50 }),
      null,
    );
  });

  test('a write fenced with a stale token changes 0 rows', async () => {
    const c = 'fence';
    await db.pool.query('CREATE TABLE "Fenced Tasks" (id int PRIMARY KEY, rsv_by text)');
    await db.pool.query('INSERT INTO "Fenced Tasks" VALUES (1, NULL), (2, NULL)');
    const a = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'a', ttlMs: 60_000 });
    assert.ok(a?.acquired);
    const stale = { cluster: c, holder: 'a', epoch: a.epoch };
    const write = (token: typeof stale, id: number) =>
      db.pool.query(
        `UPDATE "Fenced Tasks" SET rsv_by = $1 WHERE id = $2
           AND EXISTS (${fenceSql(leasesTable(SCHEMA), 3)})`,
        [token.holder, id, ...fenceParams(token)],
      );

    assert.equal((await write(stale, 1)).rowCount, 1, 'the current token writes');
    await resign(db.pool, SCHEMA, stale);
    const b = await acquire(db.pool, SCHEMA, { cluster: c, holder: 'b', ttlMs: 60_000 });
    assert.ok(b?.acquired);

    assert.equal((await write(stale, 2)).rowCount, 0, 'the stale token changes nothing');
    assert.equal((await write({ cluster: c, holder: 'b', epoch: b.epoch }, 2)).rowCount, 1);
  });

  test('identifiers are quoted: a mixed-case schema with a quote in its name works', async () => {
    const schema = 'Lease "Odd" Schema';
    await migrate(db.pool, schema);
    const row = await acquire(db.pool, schema, { cluster: 'q', holder: 'a', ttlMs: 1000 });
    assert.equal(row?.epoch, 1);
    assert.equal((await readLease(db.pool, schema, 'q'))?.holder, 'a');
  });
});

describe('Lease', () => {
  let db: TestDatabase;
  const leases: Lease[] = [];

  function makeLease(overrides: Partial<LeaseOptions> & { holder: string }): Lease {
    const lease = new Lease({
      pool: db.pool,
      schema: SCHEMA,
      cluster: 'c1',
      ttlMs: 2000,
      renewIntervalMs: 250,
      renewDeadlineMs: 1200,
      log: pino({ level: 'silent' }),
      ...overrides,
    });
    leases.push(lease);

    return lease;
  }

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
  });
  after(async () => {
    await Promise.all(leases.map((l) => l.stop()));
    await db.drop();
  });

  test('acquires with epoch 1, renews keeping it, logs the election', async () => {
    const { log, lines } = captureLog();
    const cluster = 'basic';
    const a = makeLease({ holder: 'a', cluster, log });
    const elected: number[] = [];
    a.on('elected', (epoch) => elected.push(epoch));

    await a.start();
    await a.start();
    await waitFor('a elected', () => a.isHeld());
    assert.deepEqual(a.token(), { cluster, holder: 'a', epoch: 1 });
    assert.deepEqual(elected, [1]);

    const firstRenewal = (await readLease(db.pool, SCHEMA, cluster))?.expiresAt.getTime() ?? 0;
    await waitFor('a few renewals', async () => {
      const row = await readLease(db.pool, SCHEMA, cluster);
      assert.equal(row?.epoch, 1);
      return (row?.expiresAt.getTime() ?? 0) > firstRenewal + 250;
    });
    assert.equal(a.token()?.epoch, 1, 'renewals keep the epoch');
    assert.deepEqual(elected, [1]);
    const status = a.status();
    assert.equal(status.holder, 'a');
    assert.equal(status.epoch, 1);
    assert.equal(status.isHolder, true);
    assert.ok(status.msToExpiry !== null && status.msToExpiry > 0);
    assert.equal(status.lastError, null);

    await a.stop();
    await a.stop();
    assert.equal(a.isHeld(), false);
    assert.equal(a.token(), null);

    const electedLine = lines.find((l) => l.msg === 'lease elected');
    assert.equal(electedLine?.component, 'lease');
    assert.equal(electedLine?.epoch, 1);
    const stepDownLine = lines.find((l) => l.msg === 'lease stepped down');
    assert.deepEqual([stepDownLine?.epoch, stepDownLine?.reason], [1, 'stop']);
  });

  test('a second contender takes over only after the holder expires, with epoch 2', async () => {
    const cluster = 'takeover';
    // The holder gets its own pool, ended below: it can neither renew nor resign, like a
    // holder that died or lost the network.
    const doomedPool = createPool({
      url: db.url,
      applicationName: 'lease-doomed',
      log: pino({ level: 'silent' }),
    });
    const a = makeLease({ holder: 'a', cluster, pool: doomedPool });
    const b = makeLease({ holder: 'b', cluster });
    // Under load a's acquire may have committed after its reply timed out, so epochs can skip.
    const order: { event: string; epoch: number }[] = [];
    a.on('stepped-down', (epoch, reason) => order.push({ event: `a ${reason}`, epoch }));
    b.on('elected', (epoch) => order.push({ event: 'b elected', epoch }));

    await a.start();
    await waitFor('a elected', () => a.isHeld());
    await b.start();
    await waitFor('b to see a', () => b.status().holder === 'a');
    assert.equal(b.isHeld(), false);

    // While a renews, b never gets in.
    const until = Date.now() + 600;
    await waitFor('a few of b attempts', () => Date.now() > until && !b.isHeld());
    assert.equal(b.isHeld(), false);

    await doomedPool.end();
    await waitFor('b elected', () => b.isHeld());
    const [down, up] = order.slice(-2);
    assert.deepEqual([down?.event, up?.event], ['a deadline', 'b elected']);
    assert.ok(up.epoch > down.epoch, `b's epoch ${up.epoch} follows a's ${down.epoch}`);
    assert.equal(b.token()?.epoch, up.epoch);
    assert.ok(a.status().errors > 0);
    assert.notEqual(a.status().lastError, null);
    await a.stop();
    await b.stop();
  });

  test('resign lets the other contender take over on its next attempt', async () => {
    const cluster = 'resign';
    const ttlMs = 30_000;
    const a = makeLease({ holder: 'a', cluster, ttlMs, renewDeadlineMs: 10_000 });
    const b = makeLease({ holder: 'b', cluster, ttlMs, renewDeadlineMs: 10_000 });
    await a.start();
    await waitFor('a elected', () => a.isHeld());
    await b.start();
    assert.equal(b.isHeld(), false);

    const epochOfA = a.token()?.epoch ?? 0;
    const stoppedAt = Date.now();
    await a.stop();
    // Far below the 30 s TTL: only the resign can explain it.
    await waitFor('b elected', () => b.isHeld(), 5_000);
    assert.ok(Date.now() - stoppedAt < 5_000);
    assert.ok((b.token()?.epoch ?? 0) > epochOfA);

    // Restarting a makes it a contender again, never a second holder.
    await a.start();
    await waitFor('a to see b', () => a.status().holder === 'b');
    assert.equal(a.isHeld(), false);
  });

  test('a contender tries again right after the holder’s known expiry, not a whole interval later', async () => {
    const cluster = 'aim';
    // A holder that dies at once: its row expires 600 ms from now and is never renewed.
    const dead = await acquire(db.pool, SCHEMA, { cluster, holder: 'dead', ttlMs: 600 });
    assert.ok(dead?.acquired);
    const b = makeLease({
      holder: 'b',
      cluster,
      ttlMs: 60_000,
      renewIntervalMs: 20_000,
      renewDeadlineMs: 30_000,
    });
    const startedAt = Date.now();
    await b.start();
    assert.equal(b.isHeld(), false, 'the first attempt finds the lease held');
    // Far below the 20 s interval: only an attempt aimed at the expiry can explain it.
    await waitFor('b elected', () => b.isHeld(), 10_000);
    assert.ok(Date.now() - startedAt < 10_000);
    assert.ok((b.token()?.epoch ?? 0) > dead.epoch);
  });

  test('a listener that throws does not break the lease', async () => {
    const cluster = 'listener';
    const a = makeLease({ holder: 'a', cluster });
    a.on('elected', () => {
      throw new Error('listener failure');
    });
    await a.start();
    await waitFor('a elected', () => a.isHeld());
    await a.stop();
    assert.equal((await readLease(db.pool, SCHEMA, cluster))?.msToExpiry, 0, 'stop resigned');
  });
});

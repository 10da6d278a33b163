import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { pino, type Logger } from 'pino';
import { migrate } from '../src/db/migrations.js';
import { LeaseThread, readLease, type LeaseThreadOptions } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { StallingProxy } from './helpers/db-proxy.js';
import { waitFor } from './helpers/fixture.js';

const SCHEMA = 'pampa';

interface LogLine {
  level: number;
  msg: string;
  component?: string;
  epoch?: number;
  reason?: string;
  resigned?: boolean;
  expires_in_s?: number;
  delayMs?: number;
}

function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });

  return { log: log.child({ component: 'lease' }), lines };
}

function busyWait(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // synchronous CPU work, like a user hook that computes
  }
}

describe('LeaseThread', () => {
  let db: TestDatabase;
  const cleanups: (() => Promise<unknown>)[] = [];

  function makeLease(o: Partial<LeaseThreadOptions> & { holder: string; cluster: string }) {
    const lease = new LeaseThread({
      url: db.url,
      applicationName: `lease-thread-${o.holder}`,
      schema: SCHEMA,
      ttlMs: 2000,
      renewIntervalMs: 250,
      renewDeadlineMs: 1200,
      log: pino({ level: 'silent' }),
      ...o,
    });
    cleanups.push(() => lease.stop());

    return lease;
  }

  before(async () => {
    db = await createTestDatabase();
    await migrate(db.pool, SCHEMA);
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await db.drop();
  });

  test('a main thread blocked past the renew deadline and the TTL keeps the lease and its epoch', async () => {
    const cluster = 'blocked';
    const { log, lines } = captureLog();
    const a = makeLease({ holder: 'a', cluster, log });
    const events: string[] = [];
    a.on('elected', (epoch) => events.push(`elected ${epoch}`));
    a.on('stepped-down', (epoch, reason) => events.push(`${reason} ${epoch}`));
    await a.start();
    await waitFor('a elected', () => a.token() !== null);
    const epoch = a.token()!.epoch;
    const before = await readLease(db.pool, SCHEMA, cluster);
    assert.ok(before);

    // Longer than the TTL: a lease renewed in this event loop would be lost, then taken over.
    busyWait(2_500);
    assert.equal(a.token()?.epoch, epoch, 'still the holder, same epoch, right after the block');

    const row = await readLease(db.pool, SCHEMA, cluster);
    assert.equal(row?.holder, 'a');
    assert.equal(row?.epoch, epoch);
    assert.ok(
      row.expiresAt.getTime() > before.expiresAt.getTime() + 1_000,
      `the thread renewed during the block: expiry ${before.expiresAt.toISOString()} → ${row.expiresAt.toISOString()}`,
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(events, [`elected ${epoch}`]);
    assert.equal(a.status().epoch, epoch);
    assert.ok((a.status().msToExpiry ?? 0) > 0);

    // Stop resigns at once: the row expires now, and the thread's log lines reach this logger.
    await a.stop();
    assert.equal(a.token(), null);
    assert.equal((await readLease(db.pool, SCHEMA, cluster))?.msToExpiry, 0);
    assert.deepEqual(events, [`elected ${epoch}`, `stop ${epoch}`]);
    const elected = lines.find((l) => l.msg === 'lease elected');
    assert.equal(elected?.epoch, epoch);
    assert.equal(elected?.component, 'lease');
    assert.ok((elected?.expires_in_s ?? 0) > 0);
    const resigned = lines.find((l) => l.msg === 'lease resigned');
    assert.deepEqual([resigned?.epoch, resigned?.resigned], [epoch, true]);
  });

  test('the main thread stops holding at the deadline when the thread cannot reach the database', async () => {
    const cluster = 'stalled';
    const { proxy, url } = await StallingProxy.before(db.url);
    cleanups.push(() => proxy.close());
    const a = makeLease({ holder: 'a', cluster, url });
    const b = makeLease({ holder: 'b', cluster });
    const events: string[] = [];
    a.on('stepped-down', (epoch, reason) => events.push(`${reason} ${epoch}`));
    await a.start();
    await waitFor('a elected', () => a.token() !== null);
    const stale = a.token()!;
    await b.start();

    proxy.stall();
    const stalledAt = performance.now();
    await waitFor('a to stop holding', () => a.token() === null, 5_000);
    const heldFor = performance.now() - stalledAt;
    assert.ok(heldFor < 2_000, `a held for ${Math.round(heldFor)} ms after the stall, TTL 2000`);
    await waitFor('b elected', () => b.token() !== null);
    assert.ok(b.token()!.epoch > stale.epoch);
    assert.equal(a.isHeld(), false);
    await waitFor('a stepped-down event', () => events.length > 0);
    assert.deepEqual(events, [`deadline ${stale.epoch}`]);
  });

  test('a lease thread that dies is restarted, waiting longer each time it dies young', async () => {
    const cluster = 'thread-dies';
    const { log, lines } = captureLog();
    const a = makeLease({ holder: 'a', cluster, log, renewIntervalMs: 100 });
    await a.start();
    await waitFor('a elected', () => a.token() !== null);
    const threadOf = (l: LeaseThread) => (l as unknown as { worker: Worker | null }).worker;
    const restarts = (): LogLine[] => lines.filter((l) => l.msg.startsWith('lease thread exited'));

    for (let n = 1; n <= 2; n++) {
      const thread = threadOf(a);
      assert.ok(thread, `thread ${n} running`);
      await thread.terminate();
      await waitFor(`thread ${n} restarted`, () => threadOf(a) && threadOf(a) !== thread);
      assert.equal(a.status().threadRestarts, n);
    }
    // The second thread lived well under 10 s: its successor waited twice as long.
    assert.deepEqual(
      restarts().map((l) => l.delayMs),
      [100, 200],
    );
    await waitFor('a holds the lease again', () => a.token() !== null);
    assert.equal((await readLease(db.pool, SCHEMA, cluster))?.holder, 'a');
  });
});

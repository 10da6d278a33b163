import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { migrate } from '../src/db/migrations.js';
import { readLease } from '../src/lease/index.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { ROOT } from './helpers/fixture.js';

/**
 * Five contender processes (test/helpers/lease-contender.ts), each running the agent's lease
 * thread against one row over many rounds, while this test pauses them at random (SIGSTOP,
 * sometimes past the TTL, then SIGCONT). Whatever each process believed (its elections) and
 * whatever it wrote under the fence, no epoch ever has two holders.
 */
const CONTENDERS = 5;
const RUN_MS = 10_000;
const SCRIPT = join(ROOT, 'dist', 'test', 'helpers', 'lease-contender.js');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

let db: TestDatabase;
const children: ChildProcess[] = [];

before(async () => {
  db = await createTestDatabase();
  await migrate(db.pool, 'pampa');
  await db.pool.query(`
    CREATE TABLE lease_claims (id bigserial PRIMARY KEY, epoch bigint NOT NULL,
      holder text NOT NULL, acquired_at timestamptz);
    CREATE TABLE lease_audit (id bigserial PRIMARY KEY, epoch bigint NOT NULL,
      holder text NOT NULL)`);
});
after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await db.drop();
});

function checkOneHolderPerEpoch(what: string, seen: { epoch: number; holder: string }[]): void {
  const holders = new Map<number, string>();
  for (const { epoch, holder } of seen) {
    const first = holders.get(epoch) ?? holder;
    assert.equal(holder, first, `${what}: epoch ${epoch} has two holders, ${first} and ${holder}`);
    holders.set(epoch, holder);
  }
}

test('five contender processes over many rounds, paused at random, never share an epoch', async (t) => {
  const exits = Array.from({ length: CONTENDERS }, (_, i) => {
    const child = spawn(
      process.execPath,
      ['--import', join(ROOT, 'dist', 'src', 'polyfills.js'), SCRIPT, db.url, `p${i}`, `${RUN_MS}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise<{ code: number | null; stderr: string }>((resolve) =>
      child.on('exit', (code) => resolve({ code, stderr })),
    );
  });

  // The row itself, polled on a connection of its own.
  const polled: { epoch: number; holder: string }[] = [];
  let running = true;
  const poller = (async () => {
    while (running) {
      const row = await readLease(db.pool, 'pampa', 'race');
      if (row?.holder) polled.push({ epoch: row.epoch, holder: row.holder });
      await sleep(10);
    }
  })();

  // Chaos: pause a random contender for 100–900 ms (the TTL is 600 ms), now and then.
  const until = Date.now() + RUN_MS - 1_000;
  let pauses = 0;
  while (Date.now() < until) {
    const child = children[Math.floor(Math.random() * CONTENDERS)];
    if (child.exitCode === null && child.kill('SIGSTOP')) {
      pauses += 1;
      await sleep(100 + Math.random() * 800);
      child.kill('SIGCONT');
    }
    await sleep(100 + Math.random() * 300);
  }
  const results = await Promise.all(exits);
  running = false;
  await poller;
  for (const [i, r] of results.entries()) assert.equal(r.code, 0, `contender p${i}: ${r.stderr}`);

  const claims = (
    await db.pool.query<{ epoch: string; holder: string; acquired_at: Date | null }>(
      'SELECT epoch, holder, acquired_at FROM lease_claims ORDER BY epoch, id',
    )
  ).rows.map((r) => ({ epoch: Number(r.epoch), holder: r.holder, acquiredAt: r.acquired_at }));
  const writes = (
    await db.pool.query<{ epoch: string; holder: string }>(
      'SELECT epoch, holder FROM lease_audit ORDER BY id',
    )
  ).rows.map((r) => ({ epoch: Number(r.epoch), holder: r.holder }));
  t.diagnostic(
    `${claims.length} elections by ${new Set(claims.map((c) => c.holder)).size} processes, ` +
      `${writes.length} fenced writes, ${polled.length} polls, ${pauses} pauses`,
  );

  assert.ok(claims.length >= 5, `elections: ${claims.length}`);
  assert.ok(new Set(claims.map((c) => c.holder)).size >= 2, 'more than one process won');
  checkOneHolderPerEpoch('elections', claims);
  // acquired_at, where the row still named the term when it was read, grows with the epoch.
  const stamped = claims.filter((c) => c.acquiredAt !== null);
  for (let k = 1; k < stamped.length; k++) {
    assert.ok(
      stamped[k].acquiredAt!.getTime() >= stamped[k - 1].acquiredAt!.getTime(),
      `epoch ${stamped[k].epoch} acquired no earlier than epoch ${stamped[k - 1].epoch}`,
    );
  }

  checkOneHolderPerEpoch('polled row', polled);
  for (let k = 1; k < polled.length; k++) {
    assert.ok(polled[k].epoch >= polled[k - 1].epoch, 'the polled epoch never goes back');
  }

  assert.ok(writes.length > 0, 'fenced writes went through');
  checkOneHolderPerEpoch('fenced writes', writes);
  for (let k = 1; k < writes.length; k++) {
    assert.ok(
      writes[k].epoch >= writes[k - 1].epoch,
      'fenced writes of an old epoch never follow a newer one',
    );
  }
});

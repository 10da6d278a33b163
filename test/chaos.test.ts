import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatSummary, runChaos } from '../scripts/chaos/run.js';

/**
 * A short chaos run through the same code as `npm run chaos` (scripts/chaos): 3 agents over
 * 1,500 tasks while agents are SIGKILLed every ~3 s (every third kill the dispatcher's),
 * the dispatcher is SIGSTOPped past its lease once and PostgreSQL is restarted once. It
 * starts its own PostgreSQL, since it restarts it. Every check must pass.
 */
test(
  'chaos: kills, a paused dispatcher and a PostgreSQL restart break no invariant',
  { timeout: 240_000 },
  async () => {
    const summary = await runChaos({
      agents: 3,
      tasks: 1500,
      workers: 4,
      killEveryMs: 3000,
      seed: 7,
      timeoutMs: 180_000,
      progress: false,
    });
    const text = formatSummary(summary);
    for (const c of summary.checks) assert.ok(c.pass, `${c.name} failed:\n${text}`);
    assert.ok(summary.pass, text);
    assert.equal(summary.outcome.notClosed, 0, text);
    assert.ok(summary.kills.total >= 3, text);
    assert.ok(summary.kills.dispatcher >= 1, text);
    assert.ok(summary.sigstop?.takeover, text);
    assert.ok(summary.pgRestart, text);
  },
);

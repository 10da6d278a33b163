import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import { countTasks, type JobCounters } from '../dispatch/statements.js';
import { componentLogger } from '../log.js';
import { HookResults, HookRunner, hookContext } from './run.js';

let runner: HookRunner | undefined;

/**
 * A job's figures for /status: Pampa's own count (countTasks), each replaced by the job's
 * counter hook (counters.total / completed / pending / failed) when it defines one. A counter
 * that throws or returns anything but a non-negative integer is reported, and Pampa's figure
 * is used instead.
 */
export async function jobCounters(db: pg.Pool, t: JobTable): Promise<JobCounters> {
  const c = await countTasks(db, t);
  const hooks = t.job.counters;
  if (!hooks) return c;
  const log = componentLogger('hooks');
  runner ??= new HookRunner(log);
  const ctx = { ...hookContext(t, db, log), db };
  for (const key of ['total', 'completed', 'pending', 'failed'] as const) {
    const hook = hooks[key];
    if (!hook) continue;
    const got = await runner.call(
      t.job.name,
      `counters.${key}`,
      () => hook(ctx),
      HookResults.count,
    );
    if (got.ok) c[key] = got.value;
  }

  return c;
}

import type pg from 'pg';
import { quoteIdent } from '../db/quote.js';

/**
 * Elastic assignment of workers to jobs: which job each worker serves. The dispatcher decides
 * (stretch) and writes the result to `<schema>.assignments`, fenced by the lease, so a new
 * dispatcher starts from what the last one decided; agents read their workers' rows from it.
 */
export interface StretchJob {
  name: string;
  /** Tasks due or queued, counted up to what the decision needs. */
  backlog: number;
  maxPendingTasks?: number;
  maxAssignedWorkers?: number;
  /** Workers it rejects may not serve the job (compileFilter). */
  filter: WorkerFilter | null;
  /** Keep exactly the workers it has (its selecting hook failed this round). */
  hold?: boolean;
}

/** Workers a job should have: none when idle, one per maxPendingTasks, at most the cap. */
export function targetWorkers(j: StretchJob, live: number): number {
  if (j.backlog === 0) return 0;
  const want = j.maxPendingTasks ? Math.ceil(j.backlog / j.maxPendingTasks) : live;

  return Math.max(1, Math.min(want, j.maxAssignedWorkers ?? live, live));
}

/** Which worker ids may serve a job; a RegExp is one. */
export interface WorkerFilter {
  test(worker: string): boolean;
}

type IdPattern = RegExp | string;

/**
 * A job's workerFilter as a test on worker ids: a pattern on the id (without the g/y flags,
 * whose lastIndex would make test() stateful), and/or tags the worker's node must all carry,
 * from `nodeTags` (node name → its tags; a worker id is `<node>.<n>`).
 */
export function compileFilter(
  filter: IdPattern | { id?: IdPattern; tags?: string[] } | undefined,
  nodeTags: ReadonlyMap<string, readonly string[]> = new Map(),
): WorkerFilter | null {
  if (filter === undefined) return null;
  if (typeof filter === 'string' || filter instanceof RegExp) return idRegExp(filter);
  const id = filter.id === undefined ? null : idRegExp(filter.id);
  const tags = filter.tags ?? [];

  return {
    test: (worker: string) => {
      if (id && !id.test(worker)) return false;
      const has = nodeTags.get(worker.slice(0, worker.lastIndexOf('.'))) ?? [];

      return tags.every((t) => has.includes(t));
    },
  };
}

function idRegExp(p: IdPattern): RegExp {
  return typeof p === 'string' ? new RegExp(p) : new RegExp(p.source, p.flags.replace(/[gy]/g, ''));
}

/**
 * The next assignment of `workers` (live worker ids) from `current`. Rules, in order:
 * 1. a worker keeps its job unless the job is gone or its filter no longer matches;
 * 2. a job with more workers than its target gives back the highest worker ids;
 * 3. free workers go one at a time to the job with a deficit that has the fewest workers
 *    (ties broken by `rotation`, not by config order);
 * 4. a job with a deficit and no free matching worker takes one from the job with the most
 *    workers, while that job has at least two more than it.
 * So several jobs with work share a farm evenly, a job that comes later in the config is not
 * starved, and an unchanged situation gives an unchanged assignment (no flapping).
 */
export function stretch(
  workers: string[],
  jobs: StretchJob[],
  current: ReadonlyMap<string, string | null>,
  rotation = 0,
): Map<string, string | null> {
  const ids = [...new Set(workers)].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const byName = new Map(jobs.map((j) => [j.name, j]));
  const matches = (j: StretchJob, w: string) => j.filter === null || j.filter.test(w);
  const next = new Map<string, string | null>();
  for (const w of ids) {
    const name = current.get(w) ?? null;
    const j = name === null ? undefined : byName.get(name);
    next.set(w, j && matches(j, w) ? j.name : null);
  }
  const holders = (j: StretchJob) => ids.filter((w) => next.get(w) === j.name);
  const target = new Map(
    jobs.map((j) => [j.name, j.hold ? holders(j).length : targetWorkers(j, ids.length)]),
  );

  for (const j of jobs) {
    const h = holders(j);
    for (const w of h.slice(target.get(j.name)!).reverse()) next.set(w, null);
  }

  const n = jobs.length;
  const rotated = n === 0 ? [] : [...jobs.slice(rotation % n), ...jobs.slice(0, rotation % n)];
  for (let guard = 0; guard < ids.length * (n + 1) + 1; guard++) {
    const count = (j: StretchJob) => holders(j).length;
    const short = rotated
      .filter((j) => !j.hold && count(j) < target.get(j.name)!)
      .sort((a, b) => count(a) - count(b));
    let moved = false;
    for (const j of short) {
      const free = ids.find((w) => next.get(w) === null && matches(j, w));
      if (free) {
        next.set(free, j.name);
        moved = true;
        break;
      }
      const donors = jobs
        .filter((d) => d !== j && !d.hold && count(d) > count(j) + 1)
        .sort((a, b) => count(b) - count(a));
      for (const d of donors) {
        const w = holders(d)
          .reverse()
          .find((x) => matches(j, x));
        if (w) {
          next.set(w, j.name);
          moved = true;
          break;
        }
      }
      if (moved) break;
    }
    if (!moved) break;
  }

  return next;
}

export interface AssignmentRow {
  job: string | null;
  epoch: number;
}

export async function readAssignments(
  db: pg.Pool | pg.PoolClient,
  schema: string,
  cluster: string,
  workers?: string[],
): Promise<Map<string, AssignmentRow>> {
  const res = await db.query<{ worker: string; job: string | null; epoch: string }>({
    text: `SELECT worker, job, epoch::text FROM ${quoteIdent(schema)}.assignments
            WHERE cluster = $1 AND ($2::text[] IS NULL OR worker = ANY($2::text[]))`,
    values: [cluster, workers ?? null],
  });

  return new Map(res.rows.map((r) => [r.worker, { job: r.job, epoch: Number(r.epoch) }]));
}

/** Writes changed assignments in one fenced statement; returns how many rows it wrote. */
export async function writeAssignments(
  db: pg.Pool | pg.PoolClient,
  schema: string,
  cluster: string,
  changes: ReadonlyMap<string, string | null>,
  epoch: number,
  fence: { sql: (first: number) => string; params: unknown[] },
): Promise<number> {
  if (changes.size === 0) return 0;
  const res = await db.query({
    text: `INSERT INTO ${quoteIdent(schema)}.assignments (cluster, worker, job, epoch)
           SELECT $1, w, j, $4 FROM unnest($2::text[], $3::text[]) AS u(w, j)
            WHERE EXISTS (${fence.sql(5)})
           ON CONFLICT (cluster, worker) DO UPDATE
             SET job = excluded.job, epoch = excluded.epoch, assigned_at = now()`,
    values: [cluster, [...changes.keys()], [...changes.values()], epoch, ...fence.params],
  });

  return res.rowCount ?? 0;
}

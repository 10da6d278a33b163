import type pg from 'pg';
import { z } from 'zod';
import { Defaults } from '../config/defaults.js';
import type { JobTable } from '../db/table.js';
import type { Logger } from '../log.js';
import type { HookContext } from './types.js';

/** A hook's name as reported: `selecting`, `counters.total`, … */
export type HookName =
  | 'occupied'
  | 'allowing'
  | 'selecting'
  | 'relaunching'
  | 'relauncher'
  | 'starter'
  | 'finisher'
  | 'counters.total'
  | 'counters.completed'
  | 'counters.pending'
  | 'counters.failed';

export type HookOutcome<T> = { ok: true; value: T } | { ok: false };

/** Checks of each hook's result. */
export const HookResults = {
  count: z.number().int().min(0).finite(),
  allowed: z.boolean(),
  selection: z
    .object({
      where: z.string().min(1).optional(),
      orderBy: z.string().min(1).optional(),
      params: z.array(z.unknown()).optional(),
    })
    .strict()
    .superRefine((s, ctx) => placeholdersBound([s.where, s.orderBy], s.params, ctx))
    .nullish(),
  relaunching: z
    .object({ where: z.string().min(1), params: z.array(z.unknown()).optional() })
    .strict()
    .superRefine((s, ctx) => placeholdersBound([s.where], s.params, ctx))
    .nullish(),
  any: z.unknown(),
} as const;

/** Every `$n` of a hook's fragments must name one of its params. */
function placeholdersBound(
  fragments: (string | undefined)[],
  params: unknown[] | undefined,
  ctx: z.RefinementCtx,
): void {
  for (const sql of fragments) {
    if (sql === undefined) continue;
    try {
      shiftPlaceholders(sql, 0, params?.length ?? 0);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
    }
  }
}

/** A failure is logged at most this often per job and hook, with the count left out (ms). */
const REPORT_EVERY_MS = 10_000;

/**
 * Calls hooks: awaits them with a deadline, checks their result, and turns a throw, a timeout
 * or a wrong shape into `{ ok: false }` after logging it with the job's and the hook's name.
 * A broken hook never throws into its caller.
 */
export class HookRunner {
  private readonly reported = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly log: Logger,
    private readonly timeoutMs: number = Defaults.hookTimeoutMs,
  ) {}

  async call<T>(
    job: string,
    hook: HookName,
    fn: () => unknown,
    check: z.ZodType<T>,
  ): Promise<HookOutcome<T>> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${this.timeoutMs} ms`)),
          this.timeoutMs,
        );
      });
      const value = await Promise.race([Promise.resolve().then(fn), late]);
      const parsed = check.safeParse(value);
      if (!parsed.success) {
        const got = value === undefined ? 'undefined' : JSON.stringify(value)?.slice(0, 200);
        const rule = parsed.error.issues.map(
          (i) => `${i.path.join('.') || 'result'}: ${i.message}`,
        );
        this.report(job, hook, new Error(`wrong result ${got}; ${rule.join('; ')}`));

        return { ok: false };
      }

      return { ok: true, value: parsed.data };
    } catch (err) {
      this.report(job, hook, err);

      return { ok: false };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reports a failure that surfaced later, e.g. a hook's SQL fragment the database refused. */
  report(job: string, hook: HookName, err: unknown): void {
    const key = `${job}\u0000${hook}`;
    const now = Date.now();
    const last = this.reported.get(key);
    if (last && now - last.at < REPORT_EVERY_MS) {
      last.suppressed++;
      return;
    }
    this.reported.set(key, { at: now, suppressed: 0 });
    this.log.error(
      { job, hook, err, suppressed: last?.suppressed ?? 0 },
      'hook failed; its default is used',
    );
  }
}

/** The context a hook receives for a job. */
export function hookContext(t: JobTable, db: pg.Pool | pg.PoolClient, log: Logger): HookContext {
  const { queued, running, closed } = t.state;

  return {
    job: t.job.name,
    table: t.table,
    columns: { ...t.col },
    state: { queued, running, closed },
    db,
    log,
  };
}

/**
 * Renumbers the `$n` placeholders of a hook's SQL fragment so that its params can follow the
 * statement's own: `$1` becomes `$(offset + 1)`. Quoted literals and identifiers are left alone.
 */
export function shiftPlaceholders(sql: string, offset: number, count: number): string {
  let out = '';
  for (let i = 0; i < sql.length;) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      let j = i + 1;
      while (j < sql.length && !(sql[j] === c && sql[j + 1] !== c)) j += sql[j] === c ? 2 : 1;
      out += sql.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const m = c === '$' ? /^\$(\d+)/.exec(sql.slice(i)) : null;
    if (m) {
      const n = Number(m[1]);
      if (n < 1 || n > count) {
        throw new Error(`placeholder $${n} has no param (the hook gave ${count})`);
      }
      out += `$${n + offset}`;
      i += m[0].length;
      continue;
    }
    out += c;
    i++;
  }

  return out;
}

import { CronExpressionParser } from 'cron-parser';
import { z } from 'zod';
import { Defaults } from './defaults.js';
import type {
  CounterHook,
  FinisherHook,
  OccupiedHook,
  AllowingHook,
  RelauncherHook,
  RelaunchingHook,
  SelectingHook,
  StarterHook,
} from '../hooks/types.js';

/** A SQL identifier from configuration: quoted later by db/quote.ts, so any name is allowed. */
const identifier = z.string().min(1).max(63);
/** A table name, optionally schema-qualified: `tasks` or `app.tasks`. */
const tableName = z
  .string()
  .min(1)
  .refine((s) => s.split('.').length <= 2 && s.split('.').every((p) => p.length > 0), {
    message: 'must be "table" or "schema.table"',
  });

const positiveInt = z.number().int().positive();

/**
 * Names of the seven reservation columns of a job's table. Defaults derive from the job name
 * (`<job>_reserved_by`, …). `startedAt`, `endedAt`, `success` and `error` may be null: the job
 * then does not keep them (db/task-state.ts says which column carries the state instead).
 */
export const ColumnsSchema = z
  .object({
    reservedBy: identifier.optional(),
    reservedAt: identifier.optional(),
    tries: identifier.optional(),
    startedAt: identifier.nullable().optional(),
    endedAt: identifier.nullable().optional(),
    success: identifier.nullable().optional(),
    error: identifier.nullable().optional(),
  })
  .strict();

export type TaskRow = Record<string, unknown>;

export interface TaskContext {
  /** The attempt number of this execution, 1 for the first start. */
  attempt: number;
  /** Worker id, `<node>.<n>`. */
  worker: string;
  job: string;
  /** The worker's pg pool, for the function's own queries. */
  db: import('pg').Pool;
  log: import('pino').Logger;
  /** Aborted when the task passes maxJobDurationMinutes or the agent shuts down. */
  signal: AbortSignal;
}

export type ProcessingFunction = (task: TaskRow, ctx: TaskContext) => unknown;

/** A hook option: any function; its result is checked each time it is called (hooks/run.ts). */
function hook<T>(signature: string) {
  return z
    .custom<T>((v) => typeof v === 'function', { message: `must be a function ${signature}` })
    .optional();
}

/** A node's label: letters, digits, "_", "-", "." and ":". */
const tag = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[A-Za-z0-9_.:-]+$/, 'a tag holds letters, digits, "_", "-", "." and ":" only');

/** A worker-id pattern: a RegExp, or a string compiled as one. */
const idPattern = z.union([
  z.instanceof(RegExp),
  z
    .string()
    .min(1)
    .refine(
      (s) => {
        try {
          new RegExp(s);
          return true;
        } catch {
          return false;
        }
      },
      { message: 'must be a valid regular expression' },
    ),
]);

/**
 * Which workers may serve a job: a worker-id pattern, or `{ id?, tags? }` where `tags` are
 * labels its node must all carry (`nodes[].tags`).
 */
const workerFilter = z.union([
  idPattern,
  z
    .object({ id: idPattern.optional(), tags: z.array(tag).min(1).optional() })
    .strict()
    .refine((f) => f.id !== undefined || f.tags !== undefined, {
      message: 'give id (a worker-id pattern), tags (node labels) or both',
    }),
]);

const cronExpression = z.string().refine(
  (s) => {
    try {
      CronExpressionParser.parse(s);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'must be a cron expression, e.g. "*/5 * * * *"' },
);

export const JobSchema = z
  .object({
    /** Job id; also the prefix of default column names. */
    name: identifier,
    /** The user's table: `table` or `schema.table`. */
    table: tableName,
    /** Primary-key column; never assumed to be `id`. */
    primaryKey: identifier,
    columns: ColumnsSchema.default({}),
    /** Max reserved-but-not-started tasks per worker (tasks). */
    queueSize: positiveInt.max(100000).default(Defaults.queueSize),
    /** A started task older than this is stopped by its worker and relaunched (minutes). */
    maxJobDurationMinutes: z.number().positive().default(Defaults.maxJobDurationMinutes),
    /** Starts a task may take; the last failure closes it as failed (tries). */
    maxTryTimes: positiveInt.max(1000).default(Defaults.maxTryTimes),
    /** A reservation not started within this is given back without spending a try (s). */
    maxReservedSeconds: z.number().positive().default(Defaults.maxReservedSeconds),
    /** First retry delay after a failure, doubling per try, capped at 300 s (s). */
    retryBackoffSeconds: z.number().min(0).default(Defaults.retryBackoffSeconds),
    /** The processing function: (task row, context) → anything; throwing means failure. */
    run: z.custom<ProcessingFunction>((v) => typeof v === 'function', {
      message: 'must be a function (task, ctx) => …',
    }),
    /**
     * Elastic assignment. A job with tasks waiting gets one worker per maxPendingTasks of them
     * (tasks), at most maxAssignedWorkers (workers), and none while it has nothing to do.
     * Without maxPendingTasks it takes as many workers as its fair share allows.
     */
    maxPendingTasks: positiveInt.optional(),
    maxAssignedWorkers: positiveInt.optional(),
    /** Only workers whose id matches may serve this job (`/^n1\./`, `'\\.1$'`). */
    workerFilter: workerFilter.optional(),
    /** A timestamp column of the user's: a row is due only when it is NULL or <= now(). */
    notBeforeColumn: identifier.optional(),
    /** Recurrent task: a closed row is due again this long after it ended (s), tries reset. */
    recurEverySeconds: z.number().positive().optional(),
    /** Recurrent task: a closed row is due again at the next tick of this cron expression. */
    cron: cronExpression.optional(),
    /** Hooks of the original (README, "Hooks"); each result is checked where it is used. */
    occupied: hook<OccupiedHook>('(worker, ctx) => number'),
    allowing: hook<AllowingHook>('(worker, ctx) => boolean'),
    selecting: hook<SelectingHook>('(n, ctx) => { where?, orderBy?, params? }'),
    relaunching: hook<RelaunchingHook>('(ctx) => { where, params? }'),
    relauncher: hook<RelauncherHook>('(row, ctx) => void'),
    starter: hook<StarterHook>('(row, ctx) => void'),
    finisher: hook<FinisherHook>('(row, result, ctx) => void'),
    counters: z
      .object({
        total: hook<CounterHook>('(ctx) => number'),
        completed: hook<CounterHook>('(ctx) => number'),
        pending: hook<CounterHook>('(ctx) => number'),
        failed: hook<CounterHook>('(ctx) => number'),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((j, ctx) => {
    if (j.recurEverySeconds !== undefined && j.cron !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['cron'],
        message: 'give recurEverySeconds or cron, not both',
      });
    }
    if (j.columns.endedAt === null) {
      // Without an end time the success column is what marks a task closed.
      if (j.columns.success === null) {
        ctx.addIssue({
          code: 'custom',
          path: ['columns', 'success'],
          message:
            'a job without an endedAt column needs its success column: a task is closed when ' +
            'success is set (name a column, or leave the default)',
        });
      }
      for (const key of ['recurEverySeconds', 'cron'] as const) {
        if (j[key] === undefined) continue;
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message:
            'a recurrent job needs an endedAt column (a closed row is due again after its end ' +
            'time), but columns.endedAt is null',
        });
      }
    }
  });

export const NodeSchema = z
  .object({
    /** Node name: the prefix of its worker ids (`<name>.<n>`). */
    name: identifier.regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, "_" and "-" only'),
    /** SSH address for `pampa install`. */
    host: z.string().min(1).optional(),
    port: z.number().int().min(1).max(65535).default(22),
    user: z.string().min(1).optional(),
    password: z.string().optional(),
    privateKey: z.string().optional(),
    privateKeyFile: z.string().optional(),
    passphrase: z.string().optional(),
    /** Worker processes on this node. */
    maxWorkers: positiveInt.max(256).default(Defaults.maxWorkers),
    /** Status port of the agent on this node. */
    statusPort: z.number().int().min(0).max(65535).optional(),
    /** libp2p listen address of the agent on this node. */
    listen: z.array(z.string()).optional(),
    /**
     * Memory limit of each worker process on this node (MB): V8's heap is capped there, and a
     * worker whose resident set passes it is killed and restarted, its task failed.
     */
    maxMemoryMb: positiveInt.min(64).optional(),
    /**
     * CPU share of each worker process on this node (% of one core): a worker that used more
     * is paused (SIGSTOP) until it is back within its share, at most 1 s at a time.
     */
    maxCpuPercent: z.number().min(1).max(100).optional(),
    /**
     * Labels of this node (the original's `tags`, a string or a list): a job's
     * `workerFilter: { tags: [...] }` takes only workers of nodes that carry them all.
     */
    tags: z
      .union([tag, z.array(tag)])
      .transform((t) => [...new Set(typeof t === 'string' ? [t] : t)])
      .default([]),
  })
  .strict();

export interface StandaloneContext {
  /** The standalone process's name. */
  name: string;
  /** The node running it. */
  node: string;
  /** A pg pool of its own, for its queries. */
  db: import('pg').Pool;
  log: import('pino').Logger;
  /** Aborted when this node must stop running it (lease lost, shutdown). */
  signal: AbortSignal;
}

export type StandaloneFunction = (ctx: StandaloneContext) => unknown;

/**
 * A standalone process (the original's run_stand_alone): a function the cluster runs
 * periodically, one instance at a time, on the lease holder or on a named node.
 */
export const StandaloneSchema = z
  .object({
    name: identifier.regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, ".", "_" and "-" only'),
    /** Start-to-start period (s): a run that overran is followed by the next one at once. */
    everySeconds: z.number().positive(),
    /**
     * Run once in the agent that runs it, then no more (until that agent restarts); a run
     * stopped because the agent lost the lease does not count.
     */
    runOnce: z.boolean().default(false),
    /** Run on this node (every agent started with this name) instead of the lease holder. */
    node: z.string().min(1).optional(),
    run: z.custom<StandaloneFunction>((v) => typeof v === 'function', {
      message: 'must be a function (ctx) => …',
    }),
  })
  .strict();

export const LeaseSchema = z
  .object({
    ttlMs: positiveInt.default(Defaults.leaseTtlMs),
    renewIntervalMs: positiveInt.default(Defaults.leaseRenewIntervalMs),
    renewDeadlineMs: positiveInt.default(Defaults.leaseRenewDeadlineMs),
  })
  .strict()
  .superRefine((l, ctx) => {
    if (l.renewIntervalMs >= l.renewDeadlineMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['renewIntervalMs'],
        message: `must be below renewDeadlineMs (${l.renewDeadlineMs})`,
      });
    }
    if (l.renewDeadlineMs >= l.ttlMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['renewDeadlineMs'],
        message: `must be below ttlMs (${l.ttlMs})`,
      });
    }
  });

export const MeshSchema = z
  .object({
    /** libp2p listen multiaddrs. */
    listen: z.array(z.string()).default(['/ip4/127.0.0.1/tcp/0']),
    /** Multiaddrs (with /p2p/<id>) dialed at start, besides the node registry. */
    bootstrap: z.array(z.string()).default([]),
    /** Pre-shared cluster key, 64 hex characters; or env PAMPA_CLUSTER_KEY. */
    clusterKey: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hexadecimal characters')
      .optional(),
    advertIntervalMs: positiveInt.default(Defaults.advertIntervalMs),
    advertTtlMs: positiveInt.default(Defaults.advertTtlMs),
    nodeDeadAfterMs: positiveInt.default(Defaults.nodeDeadAfterMs),
    heartbeatIntervalMs: positiveInt.default(Defaults.heartbeatIntervalMs),
    /** Registry peers each agent dials at most; the others connect to it or reach it by gossip. */
    dialPeers: z.number().int().min(2).default(Defaults.dialPeers),
  })
  .strict();

export const StatusSchema = z
  .object({
    host: z.string().default(Defaults.statusHost),
    port: z.number().int().min(0).max(65535).default(Defaults.statusPort),
    /** Bearer token; required when host is not a loopback address. */
    token: z.string().min(16).optional(),
  })
  .strict();

export const ClusterSchema = z
  .object({
    /** Cluster name: lease row key and gossip topic namespace. */
    name: identifier.regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, ".", "_" and "-" only'),
    /** postgres:// URL; env DATABASE_URL overrides it. */
    databaseUrl: z.string().optional(),
    /** Pampa's own schema. */
    schema: identifier.default(Defaults.schema),
    nodes: z.array(NodeSchema).default([]),
    jobs: z.array(JobSchema).min(1, 'declare at least one job'),
    standalone: z.array(StandaloneSchema).default([]),
    lease: LeaseSchema.default(LeaseSchema.parse({})),
    mesh: MeshSchema.default(MeshSchema.parse({})),
    status: StatusSchema.default(StatusSchema.parse({})),
    dispatchIntervalMs: positiveInt.default(Defaults.dispatchIntervalMs),
    relaunchScanMs: positiveInt.default(Defaults.relaunchScanMs),
    workerPollMs: positiveInt.default(Defaults.workerPollMs),
    shutdownGraceMs: z.number().int().min(0).default(Defaults.shutdownGraceMs),
  })
  .strict()
  .superRefine((c, ctx) => {
    uniqueNames(c.jobs, 'jobs', 'job', ctx);
    uniqueNames(c.standalone, 'standalone', 'standalone', ctx);
    uniqueNames(c.nodes, 'nodes', 'node', ctx);
    knownTags(c, ctx);
  });

/** A job's workerFilter.tags must name tags some node carries, or no worker could serve it. */
function knownTags(
  c: { nodes: { tags: string[] }[]; jobs: { name: string; workerFilter?: unknown }[] },
  ctx: z.RefinementCtx,
): void {
  const carried = new Set(c.nodes.flatMap((n) => n.tags));
  c.jobs.forEach((j, i) => {
    const f = j.workerFilter;
    const tags = typeof f === 'object' && f !== null && 'tags' in f ? (f.tags as string[]) : [];
    for (const t of tags ?? []) {
      if (carried.has(t)) continue;
      ctx.addIssue({
        code: 'custom',
        path: ['jobs', i, 'workerFilter', 'tags'],
        message: `job "${j.name}": no node has the tag "${t}"; add tags: ['${t}'] to a node in nodes[]`,
      });
    }
  });
}

/** Adds an issue at each item whose name an earlier item of the list already has. */
function uniqueNames(
  items: { name: string }[],
  key: string,
  what: string,
  ctx: z.RefinementCtx,
): void {
  const seen = new Set<string>();
  items.forEach((item, i) => {
    if (seen.has(item.name)) {
      ctx.addIssue({
        code: 'custom',
        path: [key, i, 'name'],
        message: `duplicate ${what} name "${item.name}"`,
      });
    }
    seen.add(item.name);
  });
}

export type ColumnsInput = z.input<typeof ColumnsSchema>;
export type JobInput = z.input<typeof JobSchema>;
export type NodeInput = z.input<typeof NodeSchema>;
export type ClusterInput = z.input<typeof ClusterSchema>;
export type JobConfig = z.output<typeof JobSchema>;
export type NodeConfig = z.output<typeof NodeSchema>;
export type ClusterConfig = z.output<typeof ClusterSchema>;
export type StandaloneConfig = z.output<typeof StandaloneSchema>;

/** The seven reservation column names of a job, defaults filled in; null: not kept. */
export interface ReservationColumns {
  reservedBy: string;
  reservedAt: string;
  tries: string;
  startedAt: string | null;
  endedAt: string | null;
  success: string | null;
  error: string | null;
}

export function reservationColumns(job: JobConfig): ReservationColumns {
  const c = job.columns;
  const p = job.name;

  return {
    reservedBy: c.reservedBy ?? `${p}_reserved_by`,
    reservedAt: c.reservedAt ?? `${p}_reserved_at`,
    tries: c.tries ?? `${p}_tries`,
    startedAt: c.startedAt === null ? null : (c.startedAt ?? `${p}_started_at`),
    endedAt: c.endedAt === null ? null : (c.endedAt ?? `${p}_ended_at`),
    success: c.success === null ? null : (c.success ?? `${p}_success`),
    error: c.error === null ? null : (c.error ?? `${p}_error`),
  };
}

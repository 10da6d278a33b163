import { z } from 'zod';
import { Defaults } from './defaults.js';

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
 * (`<job>_reserved_by`, …). `success` and `error` may be null: the job then does not keep them.
 */
export const ColumnsSchema = z
  .object({
    reservedBy: identifier.optional(),
    reservedAt: identifier.optional(),
    tries: identifier.optional(),
    startedAt: identifier.optional(),
    endedAt: identifier.optional(),
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
  })
  .strict();

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
        message: `must be below renewDeadlineMs (${l.renewDeadlineMs}), got ${l.renewIntervalMs}`,
      });
    }
    if (l.renewDeadlineMs >= l.ttlMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['renewDeadlineMs'],
        message: `must be below ttlMs (${l.ttlMs}), got ${l.renewDeadlineMs}`,
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
    const seen = new Set<string>();
    c.jobs.forEach((j, i) => {
      if (seen.has(j.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['jobs', i, 'name'],
          message: `duplicate job name "${j.name}"`,
        });
      }
      seen.add(j.name);
    });
    const nodes = new Set<string>();
    c.nodes.forEach((n, i) => {
      if (nodes.has(n.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i, 'name'],
          message: `duplicate node name "${n.name}"`,
        });
      }
      nodes.add(n.name);
    });
  });

export type ColumnsInput = z.input<typeof ColumnsSchema>;
export type JobInput = z.input<typeof JobSchema>;
export type NodeInput = z.input<typeof NodeSchema>;
export type ClusterInput = z.input<typeof ClusterSchema>;
export type JobConfig = z.output<typeof JobSchema>;
export type NodeConfig = z.output<typeof NodeSchema>;
export type ClusterConfig = z.output<typeof ClusterSchema>;

/** The seven reservation column names of a job, defaults filled in. */
export interface ReservationColumns {
  reservedBy: string;
  reservedAt: string;
  tries: string;
  startedAt: string;
  endedAt: string;
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
    startedAt: c.startedAt ?? `${p}_started_at`,
    endedAt: c.endedAt ?? `${p}_ended_at`,
    success: c.success === null ? null : (c.success ?? `${p}_success`),
    error: c.error === null ? null : (c.error ?? `${p}_error`),
  };
}

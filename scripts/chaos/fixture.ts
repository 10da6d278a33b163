import { QA_COLUMNS, QA_TASK_SQL, writeConfigModule } from '../../test/helpers/fixture.js';

export { QA_COLUMNS };

export const CLUSTER = 'chaos';

/**
 * Fixture F's user table, plus:
 * - chaos_exec: one row per execution, written by the task function itself on its worker's
 *   pool (application_name = `<agent id>/<worker id>`), with its start and its end (set when the
 *   function returns or throws). Times come from the worker process's clock: the harness, the
 *   agents and PostgreSQL run on one machine, so there is one clock.
 * - chaos_write: an audit trigger row per UPDATE of qa_task: application_name, statement and
 *   transaction timestamps, old/new of every reservation column and of the user columns, and the
 *   dispatcher lease as seen inside the writing transaction.
 */
export function schemaSql(schema: string): string {
  return `
    ${QA_TASK_SQL}
    CREATE TABLE chaos_exec (id text PRIMARY KEY, task_id bigint NOT NULL, worker text, app text,
      attempt int, pid int, t_start timestamptz NOT NULL, t_end timestamptz, outcome text);
    CREATE INDEX ON chaos_exec (task_id);
    CREATE TABLE chaos_write (seq bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp(),
      stmt_at timestamptz DEFAULT statement_timestamp(), xact_at timestamptz DEFAULT now(),
      task_id bigint, app text, old_by text, new_by text, old_at timestamp, new_at timestamp,
      old_tries int, new_tries int, old_start timestamp, new_start timestamp,
      old_end timestamp, new_end timestamp, old_ok boolean, new_ok boolean,
      err_changed boolean, result_changed boolean, note_changed boolean,
      lease_holder text, lease_epoch bigint, lease_live boolean);
    CREATE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE h text; e bigint; live boolean;
    BEGIN
      IF to_regclass('${schema}.leases') IS NOT NULL THEN
        EXECUTE 'SELECT holder, epoch, expires_at > now() FROM ${schema}.leases WHERE cluster = $1'
          INTO h, e, live USING '${CLUSTER}';
      END IF;
      INSERT INTO chaos_write (task_id, app, old_by, new_by, old_at, new_at, old_tries, new_tries,
        old_start, new_start, old_end, new_end, old_ok, new_ok, err_changed, result_changed,
        note_changed, lease_holder, lease_epoch, lease_live)
      VALUES (NEW.id, current_setting('application_name'), OLD.rsv_by, NEW.rsv_by, OLD.rsv_at,
        NEW.rsv_at, OLD.rsv_tries, NEW.rsv_tries, OLD.started_at, NEW.started_at, OLD.ended_at,
        NEW.ended_at, OLD.ok, NEW.ok, OLD.err IS DISTINCT FROM NEW.err,
        OLD.result IS DISTINCT FROM NEW.result, OLD.note IS DISTINCT FROM NEW.note, h, e, live);
      RETURN NULL;
    END $$;
    CREATE TRIGGER chaos_audit AFTER UPDATE ON qa_task FOR EACH ROW EXECUTE FUNCTION chaos_audit();
  `;
}

export interface Timings {
  maxJobDurationMinutes: number;
  maxTryTimes: number;
  queueSize: number;
  leaseTtlMs: number;
  relaunchScanMs: number;
  nodeDeadAfterMs: number;
}

/** The distinctive error text a throwing task raises. */
export function failText(id: number): string {
  return `chaos-boom #${id}: deliberate failure`;
}

/**
 * Writes the config module. The task function is driven by the payload: `sleep:<ms>` sleeps
 * then writes the user column `result`; `fail:<text>` throws that text. Every call first
 * records an execution row (retrying through a database restart; the id is made here, so a
 * retried insert cannot record one execution twice) and records its end when it returns or
 * throws.
 */
export function writeConfig(dir: string, t: Timings): string {
  const job = {
    name: 'qa',
    table: 'qa_task',
    primaryKey: 'id',
    columns: QA_COLUMNS,
    queueSize: t.queueSize,
    maxTryTimes: t.maxTryTimes,
    maxReservedSeconds: 5,
    maxJobDurationMinutes: t.maxJobDurationMinutes,
    retryBackoffSeconds: 0,
  };

  return writeConfigModule({
    dir,
    cluster: CLUSTER,
    file: 'chaos.config.mjs',
    settings: {
      lease: {
        ttlMs: t.leaseTtlMs,
        renewIntervalMs: Math.round(t.leaseTtlMs / 5),
        renewDeadlineMs: Math.round((t.leaseTtlMs * 2) / 3),
      },
      mesh: { nodeDeadAfterMs: t.nodeDeadAfterMs },
      relaunchScanMs: t.relaunchScanMs,
      shutdownGraceMs: 2000,
    },
    prelude: RUN,
    body: `jobs: [defineJob({ ...${JSON.stringify(job)}, run })],`,
  });
}

/** The task function (see writeConfig), as source text. */
const RUN = `
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CODES = new Set(['57P01', '57P02', '57P03', '08000', '08001', '08003', '08004', '08006',
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT']);
const transient = (err) => CODES.has(err && err.code) || /Connection terminated|terminating connection|timeout exceeded when trying to connect|connection error|Connection refused|the database system is (starting up|shutting down|in recovery mode)/i.test(String(err && err.message));

/** A harness write that survives a database restart (every one of them is idempotent). */
async function q(db, text, values) {
  for (let i = 0; ; i++) {
    try {
      return await db.query(text, values);
    } catch (err) {
      if (!transient(err) || i >= 200) throw err;
      await sleep(25);
    }
  }
}

let seq = 0;

async function run(task, ctx) {
  const id = process.pid + '-' + Date.now().toString(36) + '-' + seq++;
  await q(ctx.db,
    "INSERT INTO chaos_exec (id, task_id, worker, app, attempt, pid, t_start) VALUES ($1, $2, $3, current_setting('application_name'), $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    [id, task.id, ctx.worker, ctx.attempt, process.pid, new Date()]);
  let outcome = 'returned';
  try {
    const p = String(task.payload);
    if (p.startsWith('sleep:')) {
      await sleep(Number(p.slice(6)));
      await q(ctx.db, "UPDATE qa_task SET result = 'done' WHERE id = $1", [task.id]);
    } else if (p.startsWith('fail:')) {
      throw new Error(p.slice(5));
    } else {
      throw new Error('unknown payload ' + p);
    }
  } catch (err) {
    outcome = 'threw';
    throw err;
  } finally {
    const end = new Date();
    await q(ctx.db, 'UPDATE chaos_exec SET t_end = $2, outcome = $3 WHERE id = $1', [id, end, outcome]);
  }
}
`;

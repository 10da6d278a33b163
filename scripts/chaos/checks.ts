import type pg from 'pg';
import { failText } from './fixture.js';

/** What the harness knows about an agent run, for the checks. */
export interface RunFacts {
  node: string;
  agentId: string | null;
  spawnAt: number;
  diedAt: number | null;
  cause: 'killed' | 'exited' | 'stopped' | null;
  upAt: number | null;
  code: number | null;
  signal: string | null;
  /** Worker processes of the run that died, by the agent's log (its time: when it noticed). */
  workerDeaths: { at: number; worker: string }[];
}

export interface PauseFacts {
  agentId: string;
  stopAt: number;
  contAt: number;
  epochBefore: number | null;
  takeover: { holder: string; epoch: number; at: number } | null;
}

export interface CheckResult {
  name: string;
  pass: boolean;
  /** Counts that describe what was checked and what was found. */
  counts: Record<string, number>;
  /** Up to 10 examples of each violation, as evidence. */
  evidence: string[];
}

interface TaskRow {
  id: string;
  payload: string;
  result: string | null;
  note: string | null;
  rsv_by: string | null;
  rsv_at_null: boolean;
  rsv_tries: number | null;
  ended: boolean;
  ended_at: Date | null;
  ok: boolean | null;
  err: string | null;
}

interface ExecRow {
  id: string;
  task_id: string;
  worker: string;
  app: string;
  attempt: number;
  t_start: Date;
  t_end: Date | null;
  outcome: string | null;
}

interface WriteRow {
  seq: string;
  at: Date;
  stmt_at: Date;
  task_id: string;
  app: string;
  old_by: string | null;
  new_by: string | null;
  new_at_null: boolean;
  old_tries: number | null;
  new_tries: number | null;
  start_changed: boolean;
  end_changed: boolean;
  old_end_set: boolean;
  old_ok: boolean | null;
  ok_changed: boolean;
  err_changed: boolean;
  at_changed: boolean;
  result_changed: boolean;
  note_changed: boolean;
  lease_holder: string | null;
  lease_epoch: string | null;
  lease_live: boolean | null;
}

const MAX_EVIDENCE = 10;

class Collector {
  readonly counts: Record<string, number> = {};
  readonly evidence: string[] = [];
  private failed = false;

  count(key: string, n = 1): void {
    this.counts[key] = (this.counts[key] ?? 0) + n;
  }

  /** A violation: counted under `key`, fails the check, and keeps `text` as evidence. */
  violation(key: string, text: string): void {
    this.failed = true;
    this.count(key);
    if (this.evidence.filter((e) => e.startsWith(`${key}:`)).length < MAX_EVIDENCE)
      this.evidence.push(`${key}: ${text}`);
  }

  /** Evidence of something allowed but worth reading. */
  note(key: string, text: string): void {
    this.count(key);
    if (this.evidence.filter((e) => e.startsWith(`${key}:`)).length < 3)
      this.evidence.push(`${key}: ${text}`);
  }

  result(name: string): CheckResult {
    return { name, pass: !this.failed, counts: this.counts, evidence: this.evidence };
  }
}

const iso = (ms: number | Date | null | undefined): string =>
  ms === null || ms === undefined ? 'null' : new Date(ms).toISOString();

const LOSS = /worker lost|was killed|died|exited with code|tries used up/;

/**
 * Reads qa_task, chaos_exec and chaos_write and checks the invariants of the chaos run. All
 * times are this machine's clock (agents, workers, PostgreSQL and the harness share it).
 */
export async function runChecks(
  db: pg.Pool,
  facts: {
    runs: RunFacts[];
    pause: PauseFacts | null;
    maxTries: number;
    tasks: number;
    kills: number;
    dispatcherKills: number;
    pgRestart: { downAt: number; upAt: number } | null;
  },
): Promise<CheckResult[]> {
  const tasks = (
    await db.query<TaskRow>(
      `SELECT id::text, payload, result, note, rsv_by, rsv_at IS NULL AS rsv_at_null, rsv_tries,
              ended_at IS NOT NULL AS ended, ended_at AT TIME ZONE 'UTC' AS ended_at, ok, err
         FROM qa_task ORDER BY id`,
    )
  ).rows;
  const execs = (
    await db.query<ExecRow>(
      `SELECT id, task_id::text, worker, app, attempt, t_start, t_end, outcome
         FROM chaos_exec ORDER BY task_id, t_start, id`,
    )
  ).rows;
  const writes = (
    await db.query<WriteRow>(
      `SELECT seq::text, at, stmt_at, task_id::text, app, old_by, new_by, new_at IS NULL AS new_at_null,
              old_tries, new_tries,
              old_start IS DISTINCT FROM new_start AS start_changed,
              old_end IS DISTINCT FROM new_end AS end_changed, old_end IS NOT NULL AS old_end_set,
              old_ok, old_ok IS DISTINCT FROM new_ok AS ok_changed, err_changed,
              old_at IS DISTINCT FROM new_at AS at_changed,
              result_changed, note_changed, lease_holder, lease_epoch::text, lease_live
         FROM chaos_write ORDER BY seq`,
    )
  ).rows;

  const runsById = new Map<string, RunFacts>();
  for (const r of facts.runs) if (r.agentId) runsById.set(r.agentId, r);
  const agentOf = (app: string) => app.split('/')[0];
  const nodeOfWorker = (w: string | null) => (w ?? '').split('.')[0];
  /**
   * When an open execution ended at the latest: its worker process's first death after its
   * start (a worker that stops by itself, e.g. its agent silent, leaves the record open), or its
   * agent run's death when it died without a clean stop.
   */
  const lostAt = (e: ExecRow): number | null => {
    const r = runsById.get(agentOf(e.app));
    if (!r) return null;
    const worker = e.app.split('/')[1];
    const workerDeath = r.workerDeaths.find(
      (d) => d.worker === worker && d.at >= e.t_start.getTime(),
    );
    if (workerDeath && !e.t_end) return workerDeath.at;
    if (r.diedAt === null || r.cause === 'stopped') return null;

    return r.diedAt;
  };
  const execsOf = new Map<string, ExecRow[]>();
  for (const e of execs) {
    const list = execsOf.get(e.task_id) ?? [];
    list.push(e);
    execsOf.set(e.task_id, list);
  }
  const out: CheckResult[] = [];

  // 1. No task lost: every row closed.
  {
    const c = new Collector();
    c.count('tasks', tasks.length);
    if (tasks.length !== facts.tasks)
      c.violation('row count', `${tasks.length} rows, expected ${facts.tasks}`);
    for (const t of tasks) {
      if (t.ended) c.count('closed');
      else
        c.violation(
          'not closed',
          `task ${t.id} (${t.payload}) rsv_by=${t.rsv_by} tries=${t.rsv_tries} ok=${t.ok}`,
        );
    }
    out.push(c.result('no task lost (every row closed: ended_at set)'));
  }

  // 2. Every execution record closed, unless its agent was killed while it ran.
  {
    const c = new Collector();
    c.count('executions', execs.length);
    for (const e of execs) {
      const run = runsById.get(agentOf(e.app));
      if (!run) {
        c.violation('unattributed', `exec ${e.id} of task ${e.task_id}: unknown agent ${e.app}`);
        continue;
      }
      const lost = lostAt(e);
      if (lost !== null && e.t_start.getTime() > lost + 5)
        c.violation(
          'started after its agent died',
          `exec ${e.id} task ${e.task_id} app ${e.app} start ${iso(e.t_start)} > death ${iso(lost)}`,
        );
      if (e.t_end) {
        c.count('closed');
        continue;
      }
      if (lost !== null) {
        const label =
          lost !== run.diedAt
            ? 'open, worker process died'
            : run.cause === 'killed'
              ? 'open, agent killed'
              : 'open, agent exited by itself';
        c.count(label);
        continue;
      }
      c.violation(
        'open, agent alive',
        `exec ${e.id} task ${e.task_id} attempt ${e.attempt} app ${e.app} start ${iso(e.t_start)} (agent ${run.cause ?? 'running'})`,
      );
    }
    out.push(
      c.result('every execution ended (t_end set) or was cut by its worker’s or agent’s death'),
    );
  }

  // 3. No two executions of one task overlap, unless the first one's agent had been killed
  //    (its end is then the kill time), and none starts after the task closed successfully.
  {
    const c = new Collector();
    let pairs = 0;
    for (const [taskId, list] of execsOf) {
      for (let i = 0; i < list.length; i++) {
        const a = list[i];
        const aEnd = a.t_end?.getTime() ?? lostAt(a) ?? Infinity;
        for (let j = i + 1; j < list.length; j++) {
          const b = list[j];
          pairs++;
          if (b.t_start.getTime() < aEnd)
            c.violation(
              'overlap',
              `task ${taskId}: exec ${a.id} (${a.app}, attempt ${a.attempt}, ${iso(a.t_start)}–${a.t_end ? iso(a.t_end) : `open, death ${iso(lostAt(a))}`}) and exec ${b.id} (${b.app}, attempt ${b.attempt}, start ${iso(b.t_start)})`,
            );
        }
      }
    }
    c.count('pairs compared', pairs);
    for (const t of tasks) {
      if (!(t.ok && t.ended_at)) continue;
      for (const e of execsOf.get(t.id) ?? [])
        if (e.t_start.getTime() > t.ended_at.getTime())
          c.violation(
            'started after done (I3)',
            `task ${t.id} closed ok at ${iso(t.ended_at)}, exec ${e.id} started ${iso(e.t_start)}`,
          );
    }
    out.push(c.result('no overlapping executions of one task (killed agents end at the kill)'));
  }

  // 4. Tries: never above maxTryTimes, never fewer than executions, attempts distinct.
  {
    const c = new Collector();
    for (const t of tasks) {
      const tries = t.rsv_tries ?? 0;
      const list = execsOf.get(t.id) ?? [];
      if (tries > facts.maxTries)
        c.violation('tries > max', `task ${t.id} rsv_tries=${tries} > ${facts.maxTries}`);
      if (list.length > tries)
        c.violation(
          'executions > tries',
          `task ${t.id}: ${list.length} executions, rsv_tries=${tries}: ${list.map((e) => `${e.app}#${e.attempt}`).join(', ')}`,
        );
      if (list.length > facts.maxTries)
        c.violation('executions > max', `task ${t.id}: ${list.length} executions`);
      const attempts = list.map((e) => e.attempt);
      if (new Set(attempts).size !== attempts.length)
        c.violation('attempt repeated', `task ${t.id}: attempts ${attempts.join(',')}`);
      if (attempts.some((a) => a > tries || a < 1))
        c.violation(
          'attempt out of range',
          `task ${t.id}: attempts ${attempts.join(',')}, tries ${tries}`,
        );
      if (tries > list.length)
        c.note(
          'tries charged without an execution record',
          `task ${t.id}: tries ${tries}, executions ${list.length}`,
        );
      c.count(`tasks with ${list.length} execution(s)`);
    }
    out.push(c.result(`tries ≤ maxTryTimes (${facts.maxTries}) and executions ≤ tries`));
  }

  // 5. Outcomes: sleeping tasks succeed, throwing tasks fail with their own error text. A task
  //    whose tries were all lost to kills may close as failed with the loss as its error, and a
  //    throwing task whose last try was lost may carry the loss instead of its text.
  {
    const c = new Collector();
    for (const t of tasks) {
      if (!t.ended) continue;
      const list = execsOf.get(t.id) ?? [];
      const throwing = t.payload.startsWith('fail:');
      const returned = list.filter((e) => e.outcome === 'returned').length;
      const last = list[list.length - 1];
      // An attempt is lost when its execution never ended, or ended but its agent died before
      // the result was written (the task was then closed by a release naming the loss).
      const died = (e: ExecRow) => e.t_end === null || lostAt(e) !== null;
      const lastLost = !last || died(last) || (t.rsv_tries ?? 0) > list.length;
      if (t.ok === true) {
        if (throwing) c.violation('throwing task succeeded', `task ${t.id} (${t.payload})`);
        else if (t.result !== 'done' || t.err !== null)
          c.violation(
            'succeeded without its result',
            `task ${t.id} result=${t.result} err=${t.err}`,
          );
        else if (returned === 0)
          c.violation('succeeded without an execution that returned', `task ${t.id}`);
        else c.count('succeeded');
        continue;
      }
      if (t.ok !== false || t.err === null || (t.rsv_tries ?? 0) !== facts.maxTries) {
        c.violation(
          'badly closed (I7)',
          `task ${t.id} ok=${t.ok} tries=${t.rsv_tries} err=${JSON.stringify(t.err?.slice(0, 200))}`,
        );
        continue;
      }
      if (throwing) {
        if (t.err.includes(failText(Number(t.id)))) c.count('failed with its error text');
        else if (lastLost && LOSS.test(t.err))
          c.note('failed, last try lost to a kill', `task ${t.id}: ${t.err.slice(0, 160)}`);
        else
          c.violation(
            'failed with another text',
            `task ${t.id}: ${JSON.stringify(t.err.slice(0, 300))}`,
          );
        if (t.result !== null) c.violation('throwing task has a result', `task ${t.id}`);
        continue;
      }
      if (LOSS.test(t.err) && list.every(died))
        c.note(
          'every try lost to kills',
          `task ${t.id}: ${list.length} executions, err ${JSON.stringify(t.err.slice(0, 160))}`,
        );
      else
        c.violation(
          'non-throwing task failed',
          `task ${t.id} (${t.payload}) tries=${t.rsv_tries} execs=${list.map((e) => `${e.app}#${e.attempt}:${e.outcome ?? 'open'}`).join(', ')} err=${JSON.stringify(t.err.slice(0, 300))}`,
        );
    }
    out.push(c.result('every task succeeded, or failed with its error text (failed = throwing)'));
  }

  // 6. No stale write changed anything.
  {
    const c = new Collector();
    c.count('audited writes', writes.length);
    const reserveApps = new Map<string, Set<string>>();
    for (const w of writes) {
      const agent = agentOf(w.app);
      const run = runsById.get(agent);
      const reservation =
        w.old_by !== w.new_by ||
        w.at_changed ||
        w.old_tries !== w.new_tries ||
        w.start_changed ||
        w.end_changed ||
        w.ok_changed ||
        w.err_changed;
      if (!reservation) continue;
      if (!run) {
        if (w.app.startsWith('chaos-harness')) continue;
        c.violation('unattributed write', `write ${w.seq} task ${w.task_id} app ${w.app}`);
        continue;
      }
      // (a) Nothing from an agent after its death (received by the server after it).
      if (run.diedAt !== null && run.cause !== 'stopped') {
        if (w.stmt_at.getTime() > run.diedAt)
          c.violation(
            'write after its agent died',
            `write ${w.seq} task ${w.task_id} app ${w.app} statement ${iso(w.stmt_at)} > death ${iso(run.diedAt)} (${run.cause})`,
          );
        else if (w.at.getTime() > run.diedAt)
          c.note(
            'statement sent before the kill, applied after it',
            `write ${w.seq} task ${w.task_id} app ${w.app} sent ${iso(w.stmt_at)} applied ${iso(w.at)} death ${iso(run.diedAt)}`,
          );
      }
      // (b) A reservation always has its time.
      if (w.new_by !== null && w.new_at_null)
        c.violation('rsv_by set with rsv_at NULL', `write ${w.seq} task ${w.task_id} app ${w.app}`);
      // (c) Reservations, and relaunches of other nodes' tasks, come from the live lease holder.
      const isReserve = w.old_by === null && w.new_by !== null;
      const isMainPool = !w.app.includes('/');
      const relaunchOther =
        isMainPool &&
        w.old_by !== null &&
        w.old_by !== w.new_by &&
        nodeOfWorker(w.old_by) !== run.node;
      if (isReserve || relaunchOther) {
        c.count(isReserve ? 'reservation writes' : 'relaunches of other nodes’ tasks');
        if (w.lease_holder !== w.app || w.lease_live !== true)
          c.violation(
            'unfenced dispatcher write (I5)',
            `write ${w.seq} task ${w.task_id} app ${w.app} ${w.old_by}→${w.new_by}: lease holder ${w.lease_holder} epoch ${w.lease_epoch} live ${w.lease_live}`,
          );
        if (isReserve && w.lease_epoch !== null) {
          const s = reserveApps.get(w.lease_epoch) ?? new Set<string>();
          s.add(w.app);
          reserveApps.set(w.lease_epoch, s);
        }
      }
      // (d) Done is final (I3).
      if (w.old_end_set && w.old_ok === true)
        c.violation(
          'write to a task closed as done (I3)',
          `write ${w.seq} task ${w.task_id} app ${w.app}`,
        );
    }
    for (const [epoch, apps] of reserveApps)
      if (apps.size > 1)
        c.violation('two dispatchers in one epoch (I5)', `epoch ${epoch}: ${[...apps].join(', ')}`);
    c.count('lease epochs with reservations', reserveApps.size);
    const stale = await db.query<{ id: string }>(
      `SELECT id::text FROM qa_task WHERE rsv_by IS NOT NULL AND rsv_at IS NULL`,
    );
    for (const r of stale.rows)
      c.violation('rsv_by set with rsv_at NULL', `task ${r.id} (final state)`);
    // The paused dispatcher: what it wrote after it resumed.
    if (facts.pause) {
      const p = facts.pause;
      const after = writes.filter(
        (w) =>
          w.app === p.agentId &&
          w.old_by === null &&
          w.new_by !== null &&
          w.stmt_at.getTime() >= p.contAt,
      );
      c.count('reservations by the paused dispatcher after SIGCONT', after.length);
      const epochs = new Set(after.map((w) => w.lease_epoch));
      if (after.length > 0)
        c.note(
          'paused dispatcher reserved again after SIGCONT',
          `in epoch(s) ${[...epochs].join(', ')} (before the pause: ${p.epochBefore}); first at ${iso(after[0].stmt_at)}`,
        );
    }
    out.push(
      c.result('no stale write (dead agents, lease fence, rsv_by without rsv_at, done is final)'),
    );
  }

  // 7. User columns untouched by the system.
  {
    const c = new Collector();
    for (const t of tasks) {
      if (t.note !== 'keep-me')
        c.violation('note changed', `task ${t.id}: note=${JSON.stringify(t.note)}`);
      if (t.result !== null && t.payload.startsWith('fail:'))
        c.violation('result on a throwing task', `task ${t.id}: ${t.result}`);
    }
    for (const w of writes) {
      if (w.note_changed)
        c.violation('write changed note', `write ${w.seq} task ${w.task_id} app ${w.app}`);
      if (w.result_changed) {
        c.count('result writes');
        const reservation =
          w.old_by !== w.new_by || w.old_tries !== w.new_tries || w.start_changed || w.end_changed;
        if (reservation || !w.app.includes('/'))
          c.violation(
            'system statement wrote result',
            `write ${w.seq} task ${w.task_id} app ${w.app}`,
          );
      }
    }
    out.push(c.result('user columns untouched (note keeps its value; result only by the task)'));
  }

  // 8. Agents stay up: no agent exits unless killed or stopped; a clean stop exits 0.
  {
    const c = new Collector();
    for (const r of facts.runs) {
      c.count(`runs ${r.cause ?? 'running'}`);
      if (r.cause === 'exited') {
        if (r.upAt === null)
          c.note(
            'exited during start-up',
            `${r.agentId ?? r.node} code ${r.code} signal ${r.signal}`,
          );
        else
          c.violation(
            'exited on its own',
            `${r.agentId} code ${r.code} signal ${r.signal} at ${iso(r.diedAt)} (up since ${iso(r.upAt)})`,
          );
      }
      if (r.cause === 'stopped' && (r.code !== 0 || r.signal !== null))
        c.violation('SIGTERM did not exit 0', `${r.agentId} code ${r.code} signal ${r.signal}`);
    }
    out.push(c.result('agents stay up through kills and the PostgreSQL restart; SIGTERM exits 0'));
  }

  // 9. The chaos happened.
  {
    const c = new Collector();
    c.count('kills', facts.kills);
    c.count('dispatcher kills', facts.dispatcherKills);
    if (facts.kills === 0) c.violation('no kill', 'the run ended before the first kill');
    if (facts.dispatcherKills === 0)
      c.violation('no dispatcher kill', 'the lease holder was never killed');
    if (!facts.pgRestart) c.violation('no PostgreSQL restart', 'the run ended before it');
    else c.count('PostgreSQL down (ms)', facts.pgRestart.upAt - facts.pgRestart.downAt);
    if (!facts.pause) c.violation('no SIGSTOP', 'the run ended before it');
    else {
      c.count('SIGSTOP (ms)', facts.pause.contAt - facts.pause.stopAt);
      if (!facts.pause.takeover)
        c.violation(
          'no take-over during the SIGSTOP (S07)',
          `dispatcher ${facts.pause.agentId} stopped ${iso(facts.pause.stopAt)}–${iso(facts.pause.contAt)}, no other holder`,
        );
      else c.count('take-over after SIGSTOP (ms)', facts.pause.takeover.at - facts.pause.stopAt);
    }
    out.push(
      c.result(
        'chaos exercised: kills, dispatcher kill, SIGSTOP past the lease, PostgreSQL restart',
      ),
    );
  }

  return out;
}

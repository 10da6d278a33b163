import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { spawnAgent } from '../../test/helpers/fixture.js';

/** One run of one node's agent process (a restart is a new run, with a new agent id). */
export interface AgentRun {
  node: string;
  /** The agent id (`<node>-<hex>`), the application_name of its connections; from its log. */
  agentId: string | null;
  pid: number;
  spawnAt: number;
  /** When it logged "agent started". */
  upAt: number | null;
  /** When it and every process of its group were gone (ms since epoch, this machine's clock). */
  diedAt: number | null;
  /** killed: SIGKILL of its process group by the harness; exited: on its own; stopped: SIGTERM at the end. */
  cause: 'killed' | 'exited' | 'stopped' | null;
  code: number | null;
  signal: string | null;
  logFile: string;
  /** Worker processes that died on their own while this run was up (from its log). */
  workerDeaths: { at: number; worker: string; code: number | null; signal: string | null }[];
  child: ChildProcess;
  exit: Promise<void>;
}

/**
 * The agents of the chaos run, one process group each (so a SIGKILL takes the workers too),
 * supervised like systemd's Restart=always: a run that exits on its own is started again.
 */
export class Fleet {
  readonly runs: AgentRun[] = [];
  private readonly live = new Map<string, AgentRun>();
  private stopping = false;

  constructor(
    private readonly o: {
      config: string;
      url: string;
      workers: number;
      dir: string;
      restartDelayMs: number;
    },
  ) {}

  nodes(): string[] {
    return [...this.live.keys()];
  }

  current(node: string): AgentRun | undefined {
    return this.live.get(node);
  }

  byAgentId(id: string): AgentRun | undefined {
    return this.runs.find((r) => r.agentId === id);
  }

  start(node: string): AgentRun {
    const agent = spawnAgent({
      dir: this.o.dir,
      config: this.o.config,
      url: this.o.url,
      name: node,
      workers: this.o.workers,
      logName: `${node}-${this.runs.length + 1}.log`,
      // Lines arrive in later events, once `run` below exists.
      onLine: (rec) => this.observe(run, rec),
    });
    const child = agent.child;
    const run: AgentRun = {
      node,
      agentId: null,
      pid: agent.pid,
      spawnAt: Date.now(),
      upAt: null,
      diedAt: null,
      cause: null,
      code: null,
      signal: null,
      logFile: agent.logFile,
      workerDeaths: [],
      child,
      exit: Promise.resolve(),
    };
    run.exit = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        run.code = code;
        run.signal = signal;
        void this.groupGone(run.pid).then(() => {
          run.diedAt ??= Date.now();
          run.cause ??= 'exited';
          resolve();
          if (this.live.get(node) === run) this.live.delete(node);
          if (run.cause === 'exited' && !this.stopping) {
            setTimeout(() => {
              if (!this.stopping && !this.live.has(node)) this.start(node);
            }, this.o.restartDelayMs).unref();
          }
        });
      });
    });
    this.runs.push(run);
    this.live.set(node, run);

    return run;
  }

  /** What the harness learns from a log line of the run. */
  private observe(run: AgentRun, rec: Record<string, unknown>): void {
    if (!run.agentId && typeof rec.agent === 'string') run.agentId = rec.agent;
    if (rec.msg === 'agent started' && run.upAt === null) run.upAt = Date.now();
    if (rec.msg === 'worker process died') {
      run.workerDeaths.push({
        at: typeof rec.time === 'number' ? rec.time : Date.now(),
        worker: String(rec.worker),
        code: (rec.code as number | null) ?? null,
        signal: (rec.signal as string | null) ?? null,
      });
    }
  }

  /** Waits until no live (non-zombie) process of the group is left; bounded to 5 s. */
  private async groupGone(pgid: number): Promise<void> {
    const deadline = Date.now() + 5000;
    while (groupAlive(pgid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  }

  /** SIGKILL to the run's whole process group; resolves once it is gone; restarts it later. */
  async kill(node: string): Promise<AgentRun | undefined> {
    const run = this.live.get(node);
    if (!run) return undefined;
    run.cause = 'killed';
    try {
      process.kill(-run.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await run.exit;
    setTimeout(() => {
      if (!this.stopping && !this.live.has(node)) this.start(node);
    }, this.o.restartDelayMs).unref();

    return run;
  }

  /** SIGTERM to every agent (a clean leave); SIGKILL of the group after `graceMs`. */
  async stopAll(graceMs: number): Promise<void> {
    this.stopping = true;
    const runs = [...this.live.values()];
    for (const r of runs) {
      r.cause = 'stopped';
      r.child.kill('SIGTERM');
    }
    await Promise.all(
      runs.map(async (r) => {
        const t = setTimeout(() => {
          try {
            process.kill(-r.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }, graceMs);
        await r.exit;
        clearTimeout(t);
      }),
    );
  }

  /** Last resort: SIGKILL every group still running (the harness itself failed). */
  killEverything(): void {
    this.stopping = true;
    for (const r of this.live.values()) {
      try {
        process.kill(-r.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

/** Whether a process of group `pgid` is still running: /proc, ignoring zombies (a zombie runs no code). */
export function groupAlive(pgid: number): boolean {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  }
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(rest[2]) === pgid && rest[0] !== 'Z' && rest[0] !== 'X') return true;
  }

  return false;
}

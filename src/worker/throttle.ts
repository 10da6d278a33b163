import { readFile } from 'node:fs/promises';
import type { Logger } from '../log.js';

/** Sampling period of the throttle (ms). */
const PERIOD_MS = 100;
/** Longest single pause (ms): a process is never stopped for longer at a time. */
const MAX_PAUSE_MS = 1000;
/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ; 100 on Linux). */
const CLK_TCK = 100;

interface Track {
  cpuMs: number;
  at: number;
  /** CPU time the process may still use before it is paused (ms). */
  budgetMs: number;
  pausedUntil: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Holds each worker process to `percent` of one core, the way cpulimit does: every 100 ms it
 * reads the process's CPU time from /proc/<pid>/stat; a process that used more than its share
 * is stopped (SIGSTOP) for as long as it takes to earn the excess back, at most 1 s, then
 * continued (SIGCONT). An idle process is never paused. Without /proc (outside Linux) it does
 * nothing.
 */
export class CpuThrottle {
  private readonly tracks = new Map<number, Track>();
  private timer: NodeJS.Timeout | undefined;
  private readonly share: number;

  constructor(
    percent: number,
    private readonly pids: () => number[],
    private readonly log: Logger,
  ) {
    this.share = percent / 100;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.sample(), PERIOD_MS);
    this.timer.unref();
  }

  /** Continues every paused process (before a drain or a stop) and stops throttling. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const pid of this.tracks.keys()) this.resume(pid);
    this.tracks.clear();
  }

  private resume(pid: number): void {
    const t = this.tracks.get(pid);
    if (!t) return;
    clearTimeout(t.timer);
    t.timer = undefined;
    t.pausedUntil = 0;
    signal(pid, 'SIGCONT');
  }

  private async sample(): Promise<void> {
    const live = new Set(this.pids());
    for (const pid of this.tracks.keys()) if (!live.has(pid)) this.drop(pid);
    const now = Date.now();
    for (const pid of live) {
      const t = this.tracks.get(pid);
      if (t && t.pausedUntil > now) continue;
      const cpuMs = await cpuTimeMs(pid);
      if (cpuMs === null || !this.timer) continue;
      if (!t) {
        this.tracks.set(pid, { cpuMs, at: now, budgetMs: 0, pausedUntil: 0, timer: undefined });
        continue;
      }
      const cap = PERIOD_MS * this.share;
      t.budgetMs = Math.min(cap, t.budgetMs + (now - t.at) * this.share) - (cpuMs - t.cpuMs);
      t.cpuMs = cpuMs;
      t.at = now;
      if (t.budgetMs >= 0) continue;
      const pauseMs = Math.min(MAX_PAUSE_MS, Math.ceil(-t.budgetMs / this.share));
      t.pausedUntil = now + pauseMs;
      if (!signal(pid, 'SIGSTOP')) continue;
      t.timer = setTimeout(() => this.resume(pid), pauseMs);
      t.timer.unref();
      this.log.trace({ pid, pauseMs }, 'worker over its CPU share; paused');
    }
  }

  private drop(pid: number): void {
    clearTimeout(this.tracks.get(pid)?.timer);
    this.tracks.delete(pid);
  }
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** utime + stime of a process (ms), or null. */
async function cpuTimeMs(pid: number): Promise<number | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');

    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return null;
  }
}

/**
 * Names of the shared fixture (fixture.ts) as the mesh and status tests first used them: a
 * config module in a fresh directory, the Fixture F tables as one SQL text, and an agent whose
 * exit and log lines are properties.
 */
import { dirname } from 'node:path';
import {
  QA_TABLES_SQL,
  killProcessGroup,
  spawnAgent,
  tempDir,
  waitFor,
  writeQaConfig as writeConfigIn,
  type AgentProcess,
  type Exit,
} from './fixture.js';

export interface AgentProc {
  name: string;
  child: AgentProcess['child'];
  exit: Promise<Exit>;
  /** JSON log lines seen so far. */
  readonly logs: Record<string, unknown>[];
}

/** A config module for the qa job in a fresh directory; `extra` is more defineCluster source. */
export function writeQaConfig(cluster: string, extra = ''): string {
  return writeConfigIn(tempDir('pampa-cfg-'), { cluster, extra });
}

export const QA_SCHEMA = QA_TABLES_SQL;

/** `pampa agent` with more arguments (e.g. `--workers 2`) and environment; logs beside `config`. */
export function startAgentProc(
  config: string,
  name: string,
  url: string,
  args: string[] = [],
  env: Record<string, string> = {},
): AgentProc {
  const a = spawnAgent({ dir: dirname(config), config, url, name, args, env });

  return {
    name,
    child: a.child,
    exit: a.exited,
    get logs() {
      return a.lines();
    },
  };
}

/** Signals the agent and every process it started. */
export function killGroup(a: AgentProc, signal: NodeJS.Signals = 'SIGKILL'): void {
  killProcessGroup(a.child.pid!, signal);
}

export async function stopAll(agents: AgentProc[]): Promise<void> {
  for (const a of agents) killGroup(a);
  await Promise.all(agents.map((a) => a.exit));
}

export function waitUntil<T>(
  what: string,
  fn: () => Promise<T | false | null | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  return waitFor(what, fn, timeoutMs) as Promise<T>;
}

import pMap from 'p-map';
import type { Logger } from 'pino';
import type { KnownHosts } from './hostkeys.js';
import { connectNode, fetchStatus, type NodeOutcome, type NodePlan } from './remote.js';

export interface MeshCheckOptions {
  knownHosts: KnownHosts;
  /** Shared deadline for every node (ms from now). */
  waitMs: number;
  concurrency: number;
  log: Logger;
  /** Pause between two /status reads of one node (ms, default 1 s). */
  pollMs?: number;
}

/** Default bound of the mesh check (ms). */
export const defaultMeshWaitMs = 30_000;

/**
 * After the nodes of a run are installed and answering: waits, up to `waitMs` for all of them,
 * until each agent's /status shows every node of this run that did not fail alive. Sets
 * `mesh` ("seen/expected", self included) on those outcomes, and a one-line reason on a node
 * that never saw the others (its agent stays installed and running).
 */
export async function checkMesh(
  plans: NodePlan[],
  outcomes: NodeOutcome[],
  options: MeshCheckOptions,
): Promise<void> {
  const members = outcomes.filter((o) => o.result !== 'failed');
  const names = members.map((o) => o.node);
  const deadline = Date.now() + options.waitMs;
  const pollMs = options.pollMs ?? 1_000;

  const checkOne = async (outcome: NodeOutcome): Promise<void> => {
    const plan = plans.find((p) => p.name === outcome.node) as NodePlan;
    let seen: string[] = [];
    let error: string | null = null;
    const session = await connectNode(plan, {
      knownHosts: options.knownHosts,
      policy: 'strict',
    }).catch((err: Error) => {
      error = err.message.split('\n')[0];

      return null;
    });
    try {
      while (session) {
        const status = await fetchStatus(session, plan.statusPort);
        const alive = new Set(
          (status?.nodes ?? []).filter((n) => n.state === 'alive').map((n) => n.name),
        );
        if (status?.self?.node === plan.name) alive.add(plan.name);
        seen = names.filter((n) => alive.has(n));
        if (seen.length === names.length || Date.now() >= deadline) break;
        await new Promise((r) => setTimeout(r, pollMs));
      }
    } finally {
      session?.close();
    }

    outcome.mesh = `${seen.length}/${names.length}`;
    if (seen.length === names.length) return;
    const missing = names.filter((n) => !seen.includes(n));
    outcome.reason = error
      ? `mesh not checked: ${error}`
      : `the agent runs but sees ${outcome.mesh} nodes of this run alive after ` +
        `${options.waitMs / 1000} s (missing ${missing.join(', ')}): check that the nodes ` +
        `reach each other on their libp2p listen ports`;
    options.log.warn({ node: plan.name, mesh: outcome.mesh, missing }, 'mesh incomplete');
  };

  await pMap(members, checkOne, { concurrency: Math.max(1, options.concurrency) });
}

/** Whether every node that did not fail saw the whole mesh. */
export function meshComplete(outcomes: NodeOutcome[]): boolean {
  return outcomes.every((o) => o.mesh === undefined || !o.reason);
}

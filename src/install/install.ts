import pMap from 'p-map';
import { readFile } from 'node:fs/promises';
import { homedir, userInfo } from 'node:os';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import type { ClusterConfig } from '../config/schema.js';
import { componentLogger, type Logger } from '../log.js';
import { buildBundle, disposeBundle, type Bundle } from './bundle.js';
import { KnownHosts, defaultKnownHostsFile } from './hostkeys.js';
import { checkMesh, defaultMeshWaitMs, meshComplete } from './mesh-check.js';
import { assertNoShippedSecrets } from './secrets.js';
import { installNode, uninstallNode, type NodeOutcome, type NodePlan } from './remote.js';

export interface InstallOptions {
  /** The config module: its nodes are the targets, and it is shipped to them. */
  configFile: string;
  /** Record unknown host keys instead of failing (a changed key still fails). */
  acceptNew?: boolean;
  /** Pinned host keys; default ~/.config/pampa/known_hosts. */
  knownHostsFile?: string;
  /** Nodes installed at the same time (default 4). */
  concurrency?: number;
  /** Ship this machine's Node runtime even to nodes that have a suitable one. */
  shipNode?: boolean;
  /** How long a started agent has to answer on its status port (ms, default 60 s). */
  agentWaitMs?: number;
  /** How long the installed agents have, together, to see each other alive (ms, default 30 s). */
  meshWaitMs?: number;
  log?: Logger;
  /**
   * A bundle built beforehand with `buildBundle` (e.g. to install one release on several
   * clusters); the caller disposes of it. Default: built from this package and configFile.
   */
  bundle?: Bundle;
}

/** Default number of nodes handled at once. */
export const defaultConcurrency = 4;

/** The default libp2p listen address of an installed agent when neither the node nor mesh.listen gives a routable one. */
export const defaultAgentListen = '/ip4/0.0.0.0/tcp/4001';

/** Turns the config's nodes into SSH targets; reads key files; fails on a node without host. */
export async function planNodes(config: ClusterConfig): Promise<NodePlan[]> {
  const meshListen = config.mesh.listen.find((a) => !/\/ip4\/127\.|\/ip6\/::1\//.test(a));

  return Promise.all(
    config.nodes.map(async (n) => {
      if (!n.host)
        throw new Error(`node "${n.name}" has no host: pampa install needs an SSH address`);
      const keyFile = n.privateKeyFile?.replace(/^~(?=\/|$)/, homedir());
      const privateKey = n.privateKey ?? (keyFile ? await readFile(keyFile, 'utf8') : undefined);

      return {
        name: n.name,
        target: {
          host: n.host,
          port: n.port,
          user: n.user ?? userInfo().username,
          password: n.password,
          privateKey,
          passphrase: n.passphrase,
        },
        statusPort: n.statusPort ?? config.status.port,
        listen: n.listen?.[0] ?? meshListen ?? defaultAgentListen,
      };
    }),
  );
}

/** Installs or upgrades the agent on every node of the config; one outcome per node. */
export async function install(options: InstallOptions): Promise<NodeOutcome[]> {
  const log = options.log ?? componentLogger('install');
  const config = await loadConfig(options.configFile);
  // Before anything is built or sent: the config module goes to every node.
  await assertNoShippedSecrets(config, [options.configFile]);
  const plans = await planNodes(config);
  const knownHosts = await KnownHosts.load(options.knownHostsFile ?? defaultKnownHostsFile());

  const t0 = Date.now();
  const bundle = options.bundle ?? (await buildBundle({ configFile: options.configFile, config }));
  if (!options.bundle) {
    log.info({ version: bundle.version, bytes: bundle.bytes, ms: Date.now() - t0 }, 'bundle built');
  }

  try {
    const concurrency = options.concurrency ?? defaultConcurrency;
    const outcomes = await pMap(
      plans,
      (plan) =>
        installNode(plan, {
          bundle,
          knownHosts,
          policy: options.acceptNew ? 'accept-new' : 'strict',
          shipNode: options.shipNode ?? false,
          agentWaitMs: options.agentWaitMs ?? 60_000,
          log,
        }),
      { concurrency },
    );
    await checkMesh(plans, outcomes, {
      knownHosts,
      waitMs: options.meshWaitMs ?? defaultMeshWaitMs,
      concurrency,
      log,
    });

    return outcomes;
  } finally {
    if (!options.bundle) await disposeBundle(bundle);
  }
}

/** Stops and removes the agent on every node of the config. */
export async function uninstall(options: InstallOptions): Promise<NodeOutcome[]> {
  const log = options.log ?? componentLogger('install');
  const config = await loadConfig(options.configFile);
  const plans = await planNodes(config);
  const knownHosts = await KnownHosts.load(options.knownHostsFile ?? defaultKnownHostsFile());

  return pMap(
    plans,
    (plan) =>
      uninstallNode(plan, { knownHosts, policy: options.acceptNew ? 'accept-new' : 'strict', log }),
    { concurrency: options.concurrency ?? defaultConcurrency },
  );
}

/**
 * node | result | version | peer id | mesh | seconds, then one reason line per node that failed
 * or did not see the whole mesh. `mesh` is "seen/expected" nodes of the run alive.
 */
export function formatTable(outcomes: NodeOutcome[]): string {
  const rows = [
    ['node', 'result', 'version', 'peer id', 'mesh', 'seconds'],
    ...outcomes.map((o) => [
      o.node,
      o.result,
      o.version ?? '-',
      o.peerId ?? '-',
      o.mesh ?? '-',
      o.seconds.toFixed(1),
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const lines = rows.map((r) =>
    r
      .map((cell, c) => cell.padEnd(widths[c]))
      .join('  ')
      .trimEnd(),
  );
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  for (const o of outcomes) {
    if (o.reason) lines.push(`${o.node}: ${o.reason}`);
  }

  return lines.join('\n') + '\n';
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`must be a positive integer, got "${value}"`);

  return n;
}

export function registerInstallCommands(program: Command): void {
  program
    .command('install')
    .description(
      'install or upgrade the agent on every node of the config over SSH (host keys pinned in ' +
        '~/.config/pampa/known_hosts; unknown keys fail unless --accept-new, changed keys always fail)',
    )
    .requiredOption('--config <file>', 'cluster config module')
    .option('--accept-new', 'pin host keys seen for the first time instead of failing')
    .option('--known-hosts <file>', 'pinned host keys', defaultKnownHostsFile())
    .option(
      '--concurrency <n>',
      'nodes installed at the same time',
      positiveInt,
      defaultConcurrency,
    )
    .option('--ship-node', "upload this machine's Node runtime even to nodes that have Node 20+")
    .option(
      '--agent-wait <seconds>',
      'how long a started agent has to answer on its status port',
      positiveInt,
      60,
    )
    .option(
      '--mesh-wait <seconds>',
      'how long the installed agents have, together, to see each other alive',
      positiveInt,
      defaultMeshWaitMs / 1000,
    )
    .action(
      async (opts: {
        config: string;
        acceptNew?: boolean;
        knownHosts: string;
        concurrency: number;
        shipNode?: boolean;
        agentWait: number;
        meshWait: number;
      }) => {
        const outcomes = await install({
          configFile: opts.config,
          acceptNew: opts.acceptNew,
          knownHostsFile: opts.knownHosts,
          concurrency: opts.concurrency,
          shipNode: opts.shipNode,
          agentWaitMs: opts.agentWait * 1000,
          meshWaitMs: opts.meshWait * 1000,
        });
        process.stdout.write(formatTable(outcomes));
        if (outcomes.some((o) => o.result === 'failed') || !meshComplete(outcomes))
          process.exitCode = 1;
      },
    );

  program
    .command('uninstall')
    .description(
      'stop the agent and remove everything pampa install put on every node of the config',
    )
    .requiredOption('--config <file>', 'cluster config module')
    .option('--known-hosts <file>', 'pinned host keys', defaultKnownHostsFile())
    .option('--concurrency <n>', 'nodes handled at the same time', positiveInt, defaultConcurrency)
    .action(async (opts: { config: string; knownHosts: string; concurrency: number }) => {
      const outcomes = await uninstall({
        configFile: opts.config,
        knownHostsFile: opts.knownHosts,
        concurrency: opts.concurrency,
      });
      process.stdout.write(formatTable(outcomes));
      if (outcomes.some((o) => o.result === 'failed')) process.exitCode = 1;
    });
}

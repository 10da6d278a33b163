import '../polyfills.js';
import { loadConfig } from '../config/load.js';
import { createPool } from '../db/pool.js';
import { componentLogger } from '../log.js';

/**
 * One run of a standalone process, in a process of its own so that its code never blocks the
 * agent: loads the config, runs the function once, exits 0, or 1 when it threw. SIGTERM
 * aborts ctx.signal; the runner kills the process if it does not end soon after.
 */
interface StandaloneInit {
  configPath: string;
  name: string;
  node: string;
  agentId: string;
  databaseUrl: string;
}

const init = JSON.parse(process.argv[2] ?? '{}') as StandaloneInit;
const log = componentLogger('standalone', { standalone: init.name });
const controller = new AbortController();
process.on('SIGTERM', () => controller.abort(new Error('standalone process stopped')));
process.on('disconnect', () => process.exit(1));

async function main(): Promise<void> {
  const config = await loadConfig(init.configPath);
  const p = config.standalone.find((s) => s.name === init.name);
  if (!p) throw new Error(`standalone "${init.name}" is not in ${init.configPath}`);
  const db = createPool({
    url: init.databaseUrl,
    applicationName: `${init.agentId}/standalone/${init.name}`,
    max: 3,
    log,
  });
  try {
    await p.run({ name: p.name, node: init.node, db, log, signal: controller.signal });
  } finally {
    await db.end().catch(() => undefined);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    log.error({ err }, 'standalone run failed');
    setTimeout(() => process.exit(1), 50);
  },
);

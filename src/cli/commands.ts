import { Agent } from '../../agent/agent.js';
import { loadConfig } from '../config/load.js';
import { migrate } from '../db/migrations.js';
import { createPool, isTransientDbError, unreachableHint } from '../db/pool.js';
import { migrateJobTable } from '../db/user-table.js';
import { rootLogger } from '../log.js';

export interface AgentCommandOptions {
  config: string;
  name?: string;
  listen?: string[];
  httpPort?: number;
  httpHost?: string;
  workers?: number;
}

/** `pampa agent`: runs until SIGTERM/SIGINT, then drains and exits 0; a second signal forces. */
export async function runAgentCommand(o: AgentCommandOptions): Promise<void> {
  const log = rootLogger();
  const config = await loadConfig(o.config);
  const make = () =>
    new Agent({
      configPath: o.config,
      config,
      node: o.name,
      listen: o.listen,
      httpPort: o.httpPort,
      httpHost: o.httpHost,
      workers: o.workers,
      log,
    });
  let agent = make();
  let signals = 0;
  const onSignal = (signal: string) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    agent.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  // The database may be restarting or dropping connections: keep trying, as a supervisor would.
  for (let attempt = 1; ; attempt++) {
    try {
      await agent.start();
      return;
    } catch (err) {
      if (!isTransientDbError(err) || signals > 0) throw err;
      const delay = Math.min(5000, 200 * 2 ** Math.min(attempt, 5));
      log.warn(
        { err: { message: (err as Error).message }, hint: unreachableHint(err), attempt, delay },
        'agent start failed; retrying',
      );
      await new Promise((r) => setTimeout(r, delay));
      agent = make();
    }
  }
}

/** `pampa migrate`: Pampa's schema, then each job's table. */
export async function runMigrateCommand(o: { config: string }): Promise<void> {
  const log = rootLogger().child({ component: 'migrate' });
  const config = await loadConfig(o.config);
  const db = createPool({
    url: config.databaseUrl!,
    applicationName: 'pampa-migrate',
    max: 2,
    log,
  });
  try {
    const applied = await migrate(db, config.schema);
    log.info({ schema: config.schema, applied }, 'schema migrated');
    for (const job of config.jobs) await migrateJobTable(db, job, config.schema, log);
  } finally {
    await db.end();
  }
}

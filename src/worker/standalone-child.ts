import '../polyfills.js';
import pg from 'pg';
import { loadConfig } from '../config/load.js';
import type { StandaloneConfig } from '../config/schema.js';
import { createPool } from '../db/pool.js';
import { componentLogger } from '../log.js';
import { AgentSilence } from './agent-silence.js';
import { childDatabaseUrl } from './protocol.js';
import {
  EXIT_STANDALONE_BUSY,
  EXIT_STANDALONE_DONE,
  EXIT_STANDALONE_STOPPED,
  type StandaloneInit,
} from './standalone-protocol.js';
import {
  commitRun,
  completedAt,
  lockHolder,
  recordCompletion,
  tryLock,
} from './standalone-statements.js';

/**
 * One run of a standalone process, in a process of its own so that its code never blocks the
 * agent. It takes the process's advisory lock, in a transaction kept open on a connection of
 * its own, before calling the function: while another instance holds it, this run is skipped.
 * The run is aborted (ctx.signal), and the process exits `graceMs` later, when that connection
 * is lost (the lock with it), when its agent stops it (SIGTERM) and when its agent goes silent.
 */

/** How often the lock connection is checked while the run goes (ms). */
const PROBE_MS = 1000;

const init = JSON.parse(process.argv[2] ?? '{}') as StandaloneInit;
const log = componentLogger('standalone', { standalone: init.name });
const controller = new AbortController();
/** Set once the run is over and the lock connection is being closed on purpose. */
let closing = false;

function abortRun(reason: string, fields: Record<string, unknown> = {}): void {
  if (closing || controller.signal.aborted) return;
  const level = reason === 'stopped by its agent' ? 'info' : 'warn';
  log[level]({ ...fields, reason, graceMs: init.graceMs }, 'standalone run aborted');
  controller.abort(new Error(`standalone run aborted: ${reason}`));
  setTimeout(() => process.exit(EXIT_STANDALONE_STOPPED), init.graceMs);
}

const silence = new AgentSilence(init.agentSilentMs, (silentMs) =>
  abortRun('agent silent', { silentMs, limitMs: init.agentSilentMs }),
);
process.on('message', () => silence.heard());
process.on('SIGTERM', () => abortRun('stopped by its agent'));
process.on('SIGINT', () => undefined);
// The agent is gone (killed): nobody supervises this run any more.
process.on('disconnect', () => process.exit(1));

async function main(): Promise<number> {
  const config = await loadConfig(init.configPath);
  const p = config.standalone.find((s) => s.name === init.name);
  if (!p) throw new Error(`standalone "${init.name}" is not in ${init.configPath}`);
  const lock = new pg.Client({
    connectionString: childDatabaseUrl(),
    application_name: `${init.agentId}/standalone-lock/${init.name}`.slice(0, 63),
    connectionTimeoutMillis: 5000,
    keepAlive: true,
  });
  lock.on('error', (err) => abortRun('lock connection lost', { err: { message: err.message } }));
  lock.on('end', () => abortRun('lock connection ended'));
  await lock.connect();
  try {
    return await runLocked(lock, p);
  } finally {
    closing = true;
    await lock.end().catch(() => undefined);
  }
}

async function runLocked(lock: pg.Client, p: StandaloneConfig): Promise<number> {
  const { cluster, name } = init;
  if (!(await tryLock(lock, cluster, name))) {
    const holder = await lockHolder(lock, cluster, name);
    log.info(
      { holder: holder?.application ?? null, holderPid: holder?.pid, since: holder?.since },
      'standalone run skipped: another instance holds its lock',
    );

    return EXIT_STANDALONE_BUSY;
  }
  if (p.runOnce) {
    const at = await completedAt(lock, init.schema, cluster, name);
    if (at) {
      log.info({ completedAt: at }, 'standalone run skipped: runOnce already completed');

      return EXIT_STANDALONE_DONE;
    }
  }
  const startedAt = new Date();
  const probe = probeLoop(lock);
  const db = createPool({
    url: childDatabaseUrl(),
    applicationName: `${init.agentId}/standalone/${name}`,
    max: 3,
    log,
  });
  try {
    await p.run({ name, node: init.node, db, log, signal: controller.signal });
  } finally {
    clearInterval(probe);
    await db.end().catch(() => undefined);
  }
  if (controller.signal.aborted) return EXIT_STANDALONE_STOPPED;
  if (p.runOnce) {
    await recordCompletion(lock, init.schema, {
      cluster,
      name,
      node: init.node,
      agentId: init.agentId,
      startedAt,
    });
  }
  await commitRun(lock);

  return 0;
}

/**
 * A lock connection that no longer answers may have lost its session (and the lock) without
 * this process hearing of it (a network cut): a probe still unanswered when the next is due,
 * or failing, aborts the run. A tick that comes late means this process was busy (a synchronous
 * function): the answer may be unread in the socket, so that tick judges nothing.
 */
function probeLoop(lock: pg.Client): NodeJS.Timeout {
  let pending = false;
  let lastTick = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    const late = now - lastTick > 2 * PROBE_MS;
    lastTick = now;
    if (late) return;
    if (pending) {
      abortRun('lock connection not answering', { probeMs: PROBE_MS });
      return;
    }
    pending = true;
    lock.query('SELECT 1').then(
      () => (pending = false),
      (err: Error) => abortRun('lock connection lost', { err: { message: err.message } }),
    );
  }, PROBE_MS);
  timer.unref();

  return timer;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    log.error({ err }, 'standalone run failed');
    setTimeout(() => process.exit(controller.signal.aborted ? EXIT_STANDALONE_STOPPED : 1), 50);
  },
);

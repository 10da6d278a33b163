#!/usr/bin/env node
import '../polyfills.js';
import { Command, InvalidArgumentError } from 'commander';
import { registerInstallCommands } from '../install/install.js';
import { registerStatusCommands } from '../status/commands.js';
import { VERSION } from '../version.js';
import { runAgentCommand, runMigrateCommand } from './commands.js';
import { runDemo } from '../demo/run.js';
import { rootLogger } from '../log.js';
import { unreachableHint } from '../db/pool.js';

function positive(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);

    return n;
  };
}

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError(`must be a port 0..65535, got "${v}"`);

  return n;
}

const program = new Command('pampa')
  .version(VERSION)
  .description('Spread a function over the rows of a PostgreSQL table across a farm of machines.')
  .addHelpText(
    'after',
    `
Environment:
  DATABASE_URL        PostgreSQL URL; overrides the config's databaseUrl
  PAMPA_CLUSTER_KEY   64 hex characters; overrides the config's mesh.clusterKey
  PAMPA_LOG_LEVEL     trace, debug, info (default), warn, error
  PAMPA_LOG_FORMAT    json forces JSON logs on a terminal

Precedence: command-line options, then environment variables, then the config module.`,
  );

program
  .command('demo')
  .description('run the getting-started example (the numbers table) on a local or given PostgreSQL')
  .option('--tasks <n>', 'rows in the numbers table', positive('--tasks'), 100_000)
  .option('--workers <n>', 'worker processes per agent', positive('--workers'), 4)
  .option('--agents <n>', 'agent processes on this machine', positive('--agents'), 1)
  .option('--hold', 'keep the agents running after the job, until Ctrl-C', false)
  .action(async (opts: { tasks: number; workers: number; agents: number; hold: boolean }) => {
    process.exitCode = await runDemo({ ...opts, log: rootLogger().child({ component: 'demo' }) });
  });

program
  .command('agent')
  .description("run this node's agent: workers, mesh, dispatcher election, status port")
  .requiredOption(
    '--config <file>',
    'config module (.js, .mjs or .ts) exporting defineCluster(...)',
  )
  .option('--name <node>', 'node name (default: the host name)')
  .option('--listen <multiaddr...>', 'libp2p listen address(es), e.g. /ip4/0.0.0.0/tcp/4001')
  .option('--http-port <n>', 'status port (0 picks a free one)', port)
  .option('--http-host <addr>', 'status bind address (non-loopback needs status.token)')
  .option(
    '--workers <n>',
    "worker processes (default: the node's maxWorkers)",
    positive('--workers'),
  )
  .action(runAgentCommand);

program
  .command('migrate')
  .description(
    "create Pampa's schema, and add the reservation columns, indexes and insert trigger to each job's table",
  )
  .requiredOption('--config <file>', 'config module')
  .action(runMigrateCommand);

registerStatusCommands(program);
registerInstallCommands(program);

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`pampa: ${err instanceof Error ? err.message : String(err)}\n`);
  const hint = unreachableHint(err);
  if (hint) process.stderr.write(`pampa: ${hint}\n`);
  process.exit(1);
});

/**
 * The lease thread (a worker_threads Worker started by LeaseThread): runs the Lease with a
 * database connection of its own, in an event loop of its own, so neither the user's hooks
 * (synchronous CPU work in the agent's event loop) nor the agent's busy pool delay a renewal.
 * It publishes its term through a SharedTerm and sends events, status and log lines to the
 * main thread; messages: see ToThread and FromThread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { pino } from 'pino';
import { createPool } from '../db/pool.js';
import { Lease, type LeaseStatus, type StepDownReason } from './lease.js';
import { SharedTerm } from './shared-term.js';

export interface ThreadData {
  url: string;
  applicationName: string;
  schema: string;
  cluster: string;
  holder: string;
  ttlMs: number;
  renewIntervalMs: number;
  renewDeadlineMs: number;
  logLevel: string;
  term: SharedArrayBuffer;
}

export type ToThread = { type: 'start' } | { type: 'stop' };

export type FromThread =
  | { type: 'log'; line: string }
  | { type: 'started' }
  | { type: 'stopped' }
  | { type: 'elected'; epoch: number }
  | { type: 'stepped-down'; epoch: number; reason: StepDownReason }
  | { type: 'status'; status: LeaseStatus };

const port = parentPort;
if (!port) throw new Error('src/lease/thread.js runs as a worker thread; use LeaseThread');

const data = workerData as ThreadData;
const send = (message: FromThread): void => port.postMessage(message);
const log = pino(
  { level: data.logLevel },
  { write: (line: string) => send({ type: 'log', line }) },
);
// One connection: the lease never has more than one call in flight.
const pool = createPool({ url: data.url, applicationName: data.applicationName, max: 1, log });
const term = new SharedTerm(data.term);
const lease = new Lease({
  pool,
  schema: data.schema,
  cluster: data.cluster,
  holder: data.holder,
  ttlMs: data.ttlMs,
  renewIntervalMs: data.renewIntervalMs,
  renewDeadlineMs: data.renewDeadlineMs,
  log,
  onTerm: (held) => term.write(held),
});
lease.on('elected', (epoch) => send({ type: 'elected', epoch }));
lease.on('stepped-down', (epoch, reason) => send({ type: 'stepped-down', epoch, reason }));

const statusTimer = setInterval(
  () => send({ type: 'status', status: lease.status() }),
  Math.min(250, data.renewIntervalMs),
);

port.on('message', (message: ToThread) => {
  if (message.type === 'start') {
    void lease.start().then(() => {
      send({ type: 'status', status: lease.status() });
      send({ type: 'started' });
    });
  } else if (message.type === 'stop') {
    void lease.stop().then(async () => {
      clearInterval(statusTimer);
      send({ type: 'status', status: lease.status() });
      await pool.end().catch(() => undefined);
      send({ type: 'stopped' });
    });
  }
});

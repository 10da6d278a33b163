/**
 * Every default of Pampa, with its unit, in one place. Options are documented where they are
 * validated (schema.ts); this file holds only the numbers.
 */
export const Defaults = {
  /** Max reserved-but-not-started tasks per worker (tasks). From the original. */
  queueSize: 5,
  /** A started task older than this is relaunched (minutes). From the original. */
  maxJobDurationMinutes: 15,
  /** Starts a task may take before it is closed as failed (tries). From the original. */
  maxTryTimes: 3,
  /** A reserved task not started within this is given back, without spending a try (seconds). */
  maxReservedSeconds: 120,
  /** First retry delay after a failed attempt; doubles per try, capped at 300 s (seconds). */
  retryBackoffSeconds: 1,
  /** Pampa's own schema in the database. */
  schema: 'pampa',
  /** Lease time to live (ms): another agent may take over this long after the last renewal. */
  leaseTtlMs: 2500,
  /** How often the holder renews (ms). */
  leaseRenewIntervalMs: 600,
  /** The holder stops dispatching when it has not renewed for this long (ms); < ttl. */
  leaseRenewDeadlineMs: 1800,
  /** Dispatcher round when nothing wakes it earlier (ms). */
  dispatchIntervalMs: 1000,
  /** How often the dispatcher looks for tasks to relaunch (ms). */
  relaunchScanMs: 2000,
  /** How often a worker polls its own reservations when no assignment message arrives (ms). */
  workerPollMs: 1000,
  /**
   * A worker whose event loop is stuck this long past a task's maxJobDurationMinutes is killed
   * by its agent; the dispatcher relaunches an overrun task only after this plus two relaunch
   * scans, so the worker's own stop always comes first (ms).
   */
  overrunKillGraceMs: 2000,
  /** Grace given to running tasks on SIGTERM before they are stopped and released (ms). */
  shutdownGraceMs: 10000,
  /** Capacity advert period (ms). */
  advertIntervalMs: 1000,
  /** Adverts older than this are ignored for dispatch (ms). */
  advertTtlMs: 5000,
  /** A node whose registry heartbeat is older than this (and gossip silent) is dead (ms). */
  nodeDeadAfterMs: 4000,
  /** Registry heartbeat period (ms). */
  heartbeatIntervalMs: 1000,
  /**
   * Registry peers each agent dials at most (mesh.dialPeers). Two of them are its neighbours on
   * a ring of peer ids, which keeps the whole mesh connected; with a few more per node, each has
   * about twice this many connections, whatever the cluster's size.
   */
  dialPeers: 5,
  /** Status port (TCP) and bind address. */
  statusPort: 8787,
  statusHost: '127.0.0.1',
  /** A hook that has not answered within this is given up, and its default used (ms). */
  hookTimeoutMs: 10000,
  /** Reopened closed rows (relaunching hook, recurrent jobs) per job per scan (rows). */
  reopenBatch: 10000,
  /** Worker processes per node when the node is not declared in the config. */
  maxWorkers: 2,
} as const;

/** Backoff before retry number `tries` + 1, in seconds: base × 2^(tries−1), at most 300. */
export function retryBackoffSeconds(baseSeconds: number, tries: number): number {
  return Math.min(300, baseSeconds * 2 ** Math.max(0, tries - 1));
}

/**
 * Contract between the agent and the mesh. The mesh module validates incoming messages with
 * zod (schemas in mesh/messages.ts) and hands the agent only valid ones.
 */

/** One worker as its agent advertises it. */
export interface WorkerAdvert {
  /** `<node>.<n>` */
  id: string;
  /** Job this worker serves, or null when idle/unassigned. */
  job: string | null;
  /** Reserved-but-unstarted tasks it can still take (queueSize − queued). */
  freeSlots: number;
  /** Tasks reserved to it and not yet started. */
  queued: number;
  /** Running a task right now. */
  busy: boolean;
  /** Epoch ms of its last start or finish, or null. */
  lastActivityAt: number | null;
  /** Tasks finished since the worker process started. */
  done: number;
  failed: number;
}

/** Capacity advert: every advertIntervalMs and on every change. */
export interface CapacityAdvert {
  v: 1;
  cluster: string;
  node: string;
  /** Agent instance id (changes on each restart). */
  agentId: string;
  peerId: string;
  /** Strictly increasing per agentId; older or equal sequence numbers are stale. */
  seq: number;
  /** Epoch ms on the sender's clock (informational only). */
  sentAt: number;
  version: string;
  statusUrl: string | null;
  /** True once the agent got SIGTERM: it takes no new tasks. */
  draining: boolean;
  /** Dispatcher lease as this agent sees it. */
  lease: { holder: string | null; epoch: number; isHolder: boolean };
  workers: WorkerAdvert[];
}

/** Sent by the dispatcher right after it reserved tasks, so the workers start at once. */
export interface AssignmentMessage {
  v: 1;
  cluster: string;
  /** Lease epoch of the dispatcher that reserved. */
  epoch: number;
  /** Worker ids that just received tasks, with how many each. */
  workers: { id: string; tasks: number }[];
}

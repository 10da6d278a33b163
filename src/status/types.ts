/** What `GET /status` returns: the whole cluster as this agent knows it. */
export interface ClusterStatus {
  cluster: string;
  /** The agent that answered. */
  self: { node: string; agentId: string; peerId: string | null; version: string };
  generatedAt: string;
  /** 'ok' or 'down': whether this agent can reach the database now. */
  db: 'ok' | 'down';
  role: 'dispatcher' | 'worker';
  peers: number;
  meshSize: number;
  nodes: NodeStatus[];
  workers: WorkerStatus[];
  dispatcher: {
    holder: string | null;
    holderNode: string | null;
    epoch: number;
    secondsToExpiry: number | null;
  };
  jobs: JobStatus[];
  /** Gossip messages dropped by this agent, by reason. */
  dropped: Record<string, number>;
  /** Valid gossip messages this agent received, and messages it published, since it started. */
  gossip: { received: number; published: number };
}

export interface NodeStatus {
  name: string;
  agentId: string;
  peerId: string | null;
  addresses: string[];
  statusUrl: string | null;
  version: string | null;
  lastHeartbeat: string | null;
  state: 'alive' | 'suspect' | 'dead' | 'stopped';
}

export interface WorkerStatus {
  id: string;
  node: string;
  job: string | null;
  busy: boolean;
  queued: number;
  freeSlots: number;
  lastActivity: string | null;
  done: number;
  failed: number;
}

export interface JobStatus {
  name: string;
  table: string;
  total: number;
  completed: number;
  pending: number;
  failed: number;
  running: number;
  tasksPerSecond: number;
}

import type pg from 'pg';
import { quoteIdent } from '../db/quote.js';

/**
 * The node registry: one row per (cluster, node name) in `<schema>.nodes`, written by the agent
 * that runs under that name. Peers find each other's listen addresses here, and membership uses
 * the heartbeat age (measured by the database clock) to tell a dead node from a silent one.
 */

/** Anything that runs a query: a pool, or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'>;

export interface NodeRegistration {
  cluster: string;
  name: string;
  agentId: string;
  peerId: string | null;
  /** libp2p multiaddrs, each with its `/p2p/<peer id>` suffix. */
  addresses: string[];
  statusUrl: string | null;
  version: string | null;
  /** Worker ids of the node, `<name>.<n>`. */
  workers: string[];
}

export interface NodeRecord extends NodeRegistration {
  startedAt: Date;
  heartbeatAt: Date;
  stoppedAt: Date | null;
  /** now() − heartbeat_at on the database clock, at the time of the query (ms). */
  heartbeatAgeMs: number;
}

interface NodeRow {
  cluster: string;
  name: string;
  agent_id: string;
  peer_id: string | null;
  addresses: string[];
  status_url: string | null;
  version: string | null;
  workers: string[];
  started_at: Date;
  heartbeat_at: Date;
  stopped_at: Date | null;
  heartbeat_age_ms: number;
}

const COLUMNS = `cluster, name, agent_id, peer_id, addresses, status_url, version, workers,
  started_at, heartbeat_at, stopped_at,
  (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS heartbeat_age_ms`;

export class NodeRegistry {
  private readonly table: string;

  constructor(
    private readonly db: Queryable,
    schema: string,
  ) {
    this.table = `${quoteIdent(schema)}.${quoteIdent('nodes')}`;
  }

  /**
   * Claims the node name for this agent: inserts the row, or replaces whatever agent held it.
   * Resets started_at and heartbeat_at to now() and clears stopped_at.
   */
  async upsertNode(node: NodeRegistration): Promise<NodeRecord> {
    const result = await this.db.query<NodeRow>(
      `INSERT INTO ${this.table} AS n
         (cluster, name, agent_id, peer_id, addresses, status_url, version, workers,
          started_at, heartbeat_at, stopped_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now(), NULL)
       ON CONFLICT (cluster, name) DO UPDATE SET
         agent_id = excluded.agent_id,
         peer_id = excluded.peer_id,
         addresses = excluded.addresses,
         status_url = excluded.status_url,
         version = excluded.version,
         workers = excluded.workers,
         started_at = now(),
         heartbeat_at = now(),
         stopped_at = NULL
       RETURNING ${COLUMNS}`,
      [
        node.cluster,
        node.name,
        node.agentId,
        node.peerId,
        node.addresses,
        node.statusUrl,
        node.version,
        node.workers,
      ],
    );

    return toRecord(result.rows[0]);
  }

  /**
   * Renews the heartbeat of a row this agent still owns. Returns false when the row is gone or
   * another agent has taken the name since (the caller should then stop advertising it).
   */
  async heartbeat(
    cluster: string,
    name: string,
    agentId: string,
    workers: string[],
  ): Promise<boolean> {
    const result = await this.db.query(
      `UPDATE ${this.table}
          SET heartbeat_at = now(), workers = $4
        WHERE cluster = $1 AND name = $2 AND agent_id = $3`,
      [cluster, name, agentId, workers],
    );

    return result.rowCount === 1;
  }

  /** Records a clean shutdown, so peers treat the node as dead at once. No-op if not the owner. */
  async markStopped(cluster: string, name: string, agentId: string): Promise<boolean> {
    const result = await this.db.query(
      `UPDATE ${this.table}
          SET stopped_at = now()
        WHERE cluster = $1 AND name = $2 AND agent_id = $3 AND stopped_at IS NULL`,
      [cluster, name, agentId],
    );

    return result.rowCount === 1;
  }

  /** All nodes of the cluster, stopped ones included, ordered by name. */
  async listNodes(cluster: string): Promise<NodeRecord[]> {
    const result = await this.db.query<NodeRow>(
      `SELECT ${COLUMNS} FROM ${this.table} WHERE cluster = $1 ORDER BY name`,
      [cluster],
    );

    return result.rows.map(toRecord);
  }
}

function toRecord(row: NodeRow): NodeRecord {
  return {
    cluster: row.cluster,
    name: row.name,
    agentId: row.agent_id,
    peerId: row.peer_id,
    addresses: row.addresses,
    statusUrl: row.status_url,
    version: row.version,
    workers: row.workers,
    startedAt: row.started_at,
    heartbeatAt: row.heartbeat_at,
    stoppedAt: row.stopped_at,
    heartbeatAgeMs: Math.max(0, Number(row.heartbeat_age_ms)),
  };
}

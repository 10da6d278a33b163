import type { ClusterStatus, JobStatus } from './types.js';

/** Seconds from `iso` to `now` (ms), never negative; null when `iso` is null or unparsable. */
export function ageSeconds(iso: string | null, now: number): number | null {
  if (iso === null) return null;
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return null;

  return Math.max(0, Math.round((now - t) / 1000));
}

/** `"3s ago"`, or `"never"`: the wording of the original's watching script. */
export function formatAge(iso: string | null, now: number): string {
  const s = ageSeconds(iso, now);

  return s === null ? 'never' : `${s}s ago`;
}

/** A peer id cut to its first and last six characters. */
export function shortPeerId(id: string | null): string {
  if (id === null) return '-';

  return id.length > 14 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id;
}

/** Left-aligned columns separated by two spaces, indented by two. */
export function formatTable(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    `  ${cells.map((c, i) => c.padEnd(widths[i])).join('  ')}`.trimEnd();

  return [line(head), ...rows.map(line)];
}

/** The status's own clock, so ages do not depend on the skew between agent and terminal. */
function statusNow(s: ClusterStatus): number {
  const t = Date.parse(s.generatedAt);

  return Number.isNaN(t) ? Date.now() : t;
}

export function formatJobCounts(j: JobStatus): string {
  const done = j.completed + j.failed;
  const pct = j.total > 0 ? ((100 * done) / j.total).toFixed(1) : '0.0';

  return (
    `${done}/${j.total} (${pct}%)  done ${j.completed}  failed ${j.failed}  ` +
    `running ${j.running}  pending ${j.pending}  ${j.tasksPerSecond.toFixed(1)} tasks/s`
  );
}

/** Cluster, agent, database and lease: the lines above the tables. */
export function formatSummary(s: ClusterStatus): string[] {
  const d = s.dispatcher;
  const holder =
    d.holder === null ? 'none' : `${d.holder}${d.holderNode ? ` on ${d.holderNode}` : ''}`;
  const expiry = d.secondsToExpiry === null ? '-' : `${d.secondsToExpiry.toFixed(1)} s`;

  return [
    `cluster ${s.cluster}  agent ${s.self.node} (${s.role}, v${s.self.version})  db ${s.db}  ` +
      `mesh ${s.meshSize}  peers ${s.peers}`,
    `lease   holder ${holder}  epoch ${d.epoch}  expires in ${expiry}`,
  ];
}

export function formatNodes(s: ClusterStatus): string[] {
  const now = statusNow(s);
  const rows = s.nodes.map((n) => [
    n.name === s.self.node ? `${n.name} *` : n.name,
    n.state,
    shortPeerId(n.peerId),
    n.version ?? '-',
    formatAge(n.lastHeartbeat, now),
  ]);

  return formatTable(['node', 'state', 'peer id', 'version', 'last heartbeat'], rows);
}

export function formatWorkers(s: ClusterStatus): string[] {
  const now = statusNow(s);
  const rows = s.workers.map((w) => [
    w.id,
    w.job ?? '-',
    w.busy ? 'busy' : 'free',
    String(w.queued),
    String(w.done),
    String(w.failed),
    formatAge(w.lastActivity, now),
  ]);
  const head = ['worker', 'job', 'state', 'queued', 'done', 'failed', 'last active'];

  return formatTable(head, rows);
}

/** The one-shot `pampa status` view: summary, nodes, workers, jobs. */
export function formatStatus(s: ClusterStatus): string {
  const jobs = s.jobs.map((j) => `  ${j.name.padEnd(16)} ${formatJobCounts(j)}`);

  return [
    ...formatSummary(s),
    '',
    ...formatNodes(s),
    '',
    ...formatWorkers(s),
    '',
    '  jobs',
    ...(jobs.length > 0 ? jobs : ['  (none)']),
    '',
  ].join('\n');
}

/** The `pampa workers` view: per worker its job, queued tasks and last activity. */
export function formatWorkerList(s: ClusterStatus): string {
  const now = statusNow(s);
  const rows = s.workers.map((w) => [
    w.id,
    w.job ?? '-',
    String(w.queued),
    formatAge(w.lastActivity, now),
  ]);

  return `${formatTable(['worker', 'job', 'queued', 'last active'], rows).join('\n')}\n`;
}

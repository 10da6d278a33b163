import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { packageRoot } from './bundle.js';
import { shellQuote as q } from './sudo.js';

/**
 * What `pampa install` writes on a node, all under one root (`/opt/pampa` for root,
 * `~/.pampa` otherwise):
 *
 *   releases/<version>/     unpacked bundles (the current one and the one before)
 *   current → releases/<version>
 *   runtime/node-<v>-<arch>/node   this machine's Node, only when the node has no Node 20+
 *   agent.sh                runs the agent in the foreground (no secrets in it)
 *   supervise.sh, run/*.pid, log/agent.log   the supervisor, when systemd is not running
 *   service                 "systemd" or "supervisor": what uninstall has to stop
 *
 * plus /etc/systemd/system/pampa-agent.service when systemd runs there.
 */
export const unitName = 'pampa-agent.service';
export const unitPath = `/etc/systemd/system/${unitName}`;

export interface AgentLaunch {
  root: string;
  node: string;
  /** Absolute path of the Node binary on the node. */
  nodeBin: string;
  /** Config module path inside a release, e.g. `config/pampa.config.ts`. */
  configPath: string;
  statusPort: number;
  listen: string;
}

export function agentScript(a: AgentLaunch): string {
  const args = [
    `${a.root}/current/package/dist/src/cli/main.js`,
    'agent',
    '--config',
    `${a.root}/current/${a.configPath}`,
    '--name',
    a.node,
    '--http-port',
    String(a.statusPort),
    '--listen',
    a.listen,
  ];

  return [
    '#!/bin/sh',
    `# Written by pampa install: the agent of node ${a.node}, in the foreground.`,
    'export PAMPA_LOG_FORMAT=json',
    `cd ${q(a.root)} || exit 1`,
    `exec ${q(a.nodeBin)} ${args.map(q).join(' ')}`,
    '',
  ].join('\n');
}

/**
 * The supervisor used where systemd is not running: restarts the agent 1 s after it exits;
 * on TERM it stops the agent (which drains) and exits. Started detached with setsid + nohup.
 */
export function supervisorScript(): string {
  return `#!/bin/sh
# Written by pampa install: keeps the agent running where systemd is not available.
root="$1"
child=
stop() {
  trap - TERM INT HUP
  [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
  rm -f "$root/run/agent.pid" "$root/run/supervisor.pid"
  exit 0
}
trap stop TERM INT HUP
echo $$ > "$root/run/supervisor.pid"
while :; do
  echo "$(date -u +%FT%TZ) supervisor: starting agent" >> "$root/log/agent.log"
  /bin/sh "$root/agent.sh" >> "$root/log/agent.log" 2>&1 &
  child=$!
  echo "$child" > "$root/run/agent.pid"
  wait "$child"
  echo "$(date -u +%FT%TZ) supervisor: agent exited with $?" >> "$root/log/agent.log"
  sleep 1
done
`;
}

/** Starts the supervisor detached from the SSH session, so closing the session keeps it. */
export function startSupervisorCommand(root: string): string {
  const r = q(root);

  return (
    `mkdir -p ${r}/run ${r}/log && cd ${r} && ` +
    `if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi; ` +
    `nohup $s /bin/sh ${r}/supervise.sh ${r} </dev/null >/dev/null 2>&1 & ` +
    `i=0; while [ ! -s ${r}/run/agent.pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; ` +
    `[ -s ${r}/run/agent.pid ]`
  );
}

/**
 * Stops the supervisor and its agent: TERM, up to 20 s for the agent to drain, then KILL.
 * A pid is only signalled while its command line still names our script or release, so a
 * reused pid is never hit.
 */
export function stopSupervisorCommand(root: string): string {
  const r = q(root);

  return (
    `for f in supervisor agent; do ` +
    `p=$(cat ${r}/run/$f.pid 2>/dev/null); [ -n "$p" ] || continue; ` +
    `grep -q -e supervise.sh -e agent.sh -e main.js /proc/$p/cmdline 2>/dev/null || continue; ` +
    `kill $p 2>/dev/null; i=0; while kill -0 $p 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; ` +
    `kill -9 $p 2>/dev/null; done; rm -f ${r}/run/supervisor.pid ${r}/run/agent.pid; true`
  );
}

/** The systemd unit, from the template shipped in agent/pampa-agent.service. */
export async function unitFile(root: string, node: string, user: string): Promise<string> {
  const template = await readFile(join(packageRoot(), 'agent', unitName), 'utf8');

  return template
    .replaceAll('{{ROOT}}', root)
    .replaceAll('{{NODE}}', node)
    .replaceAll('{{USER}}', user);
}

import type { Logger } from 'pino';
import type { Bundle } from './bundle.js';
import { HostKeyError, hostVerifier, type HostKeyPolicy, type KnownHosts } from './hostkeys.js';
import {
  agentScript,
  startSupervisorCommand,
  stopSupervisorCommand,
  supervisorScript,
  unitFile,
  unitName,
  unitPath,
} from './layout.js';
import { assertShippableRuntime } from './runtime.js';
import { SshError, SshSession, type SshTarget } from './ssh.js';
import { SudoError, detectSudo, runSudo, shellQuote as q, type SudoAccess } from './sudo.js';

/** One node as the installer sees it. */
export interface NodePlan {
  name: string;
  target: SshTarget;
  statusPort: number;
  /** libp2p listen multiaddr of the agent. */
  listen: string;
}

export interface RemoteOptions {
  bundle: Bundle;
  knownHosts: KnownHosts;
  policy: HostKeyPolicy;
  /** Upload this machine's Node even when the node has a suitable one. */
  shipNode: boolean;
  /** How long to wait for a started agent to answer on its status port (ms). */
  agentWaitMs: number;
  log: Logger;
}

export type NodeResultKind =
  'installed' | 'upgraded' | 'restarted' | 'unchanged' | 'removed' | 'absent' | 'failed';

export interface NodeOutcome {
  node: string;
  result: NodeResultKind;
  version: string | null;
  peerId: string | null;
  seconds: number;
  /** Nodes of the run this agent saw alive, "seen/expected", once the run checked the mesh. */
  mesh?: string;
  /** One line: why it failed, or what was noticed. */
  reason?: string;
}

/** What the node is: gathered in one round trip. */
export interface NodeFacts {
  uid: number;
  user: string;
  home: string;
  /** Node.js arch name of the machine (x64, arm64, …). */
  arch: string;
  /** `v20.20.2`, or null when no node is on the PATH. */
  nodeVersion: string | null;
  nodeBin: string | null;
  systemd: boolean;
}

const ARCH: Record<string, string> = {
  x86_64: 'x64',
  aarch64: 'arm64',
  armv7l: 'arm',
  ppc64le: 'ppc64',
  s390x: 's390x',
};

export async function probeNode(session: SshSession): Promise<NodeFacts> {
  const r = await session.exec(
    `printf 'uid=%s\\nuser=%s\\nhome=%s\\narch=%s\\npid1=%s\\n' "$(id -u)" "$(id -un)" "$HOME" "$(uname -m)" "$(cat /proc/1/comm 2>/dev/null)"; ` +
      `printf 'systemd=%s\\n' "$(systemctl is-system-running 2>/dev/null)"; ` +
      `printf 'node=%s\\n' "$(node -p 'process.version+" "+process.arch+" "+process.execPath' 2>/dev/null)"`,
    { timeoutMs: 15_000 },
  );
  const kv = new Map(
    r.stdout
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const),
  );
  const [nodeVersion, nodeArch, nodeBin] = (kv.get('node') ?? '').split(' ');
  const uname = kv.get('arch') ?? '';
  const systemdState = kv.get('systemd') ?? '';

  return {
    uid: Number(kv.get('uid')),
    user: kv.get('user') ?? '',
    home: kv.get('home') ?? '',
    arch: nodeArch || ARCH[uname] || uname,
    nodeVersion: nodeVersion || null,
    nodeBin: nodeBin || null,
    systemd: kv.get('pid1') === 'systemd' && systemdState !== '' && systemdState !== 'offline',
  };
}

/** Node 20 or later, of this machine's architecture: otherwise our runtime is shipped. */
export function nodeIsSuitable(facts: NodeFacts): boolean {
  const major = Number(/^v(\d+)\./.exec(facts.nodeVersion ?? '')?.[1] ?? 0);

  return major >= 20 && facts.arch === process.arch && facts.nodeBin !== null;
}

export function installRoot(facts: NodeFacts): string {
  return facts.uid === 0 ? '/opt/pampa' : `${facts.home}/.pampa`;
}

/** Connects with the host-key check; the reason of a refusal is a HostKeyError. */
export async function connectNode(
  plan: NodePlan,
  options: Pick<RemoteOptions, 'knownHosts' | 'policy'>,
) {
  const check = hostVerifier(
    options.knownHosts,
    plan.target.host,
    plan.target.port,
    options.policy,
  );

  return SshSession.connect(plan.target, { hostCheck: check });
}

interface NodeState {
  current: string | null;
  service: 'systemd' | 'supervisor' | null;
  agentScript: string | null;
  exists: boolean;
}

async function readState(session: SshSession, root: string): Promise<NodeState> {
  const r = q(root);
  const out = await session.exec(
    `[ -d ${r} ] && echo exists=1; l=$(readlink ${r}/current 2>/dev/null) && echo "current=\${l##*/}"; ` +
      `echo "service=$(cat ${r}/service 2>/dev/null)"; [ -f ${r}/agent.sh ] && { echo '--agent.sh--'; cat ${r}/agent.sh; }`,
    { timeoutMs: 15_000 },
  );
  const [head, script] = out.stdout.split('--agent.sh--\n');
  const kv = new Map(
    head.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const),
  );
  const service = kv.get('service');

  return {
    exists: kv.get('exists') === '1',
    current: kv.get('current') || null,
    service: service === 'systemd' || service === 'supervisor' ? service : null,
    agentScript: script ?? null,
  };
}

/** Fails with the command's last output line when it exits non-zero. */
async function must(
  session: SshSession,
  command: string,
  what: string,
  timeoutMs = 120_000,
  input?: string,
) {
  const r = await session.exec(command, { timeoutMs, input });
  if (r.code !== 0) throw new Error(`${what} failed: ${lastLine(r.stderr || r.stdout)}`);

  return r;
}

async function mustSudo(
  session: SshSession,
  sudo: SudoAccess,
  password: string | undefined,
  command: string,
  what: string,
) {
  const r = await runSudo(session, sudo, password, command);
  if (r.code !== 0) throw new Error(`${what} failed: ${lastLine(r.stderr || r.stdout)}`);
}

interface AgentStatus {
  self?: { node?: string; peerId?: string | null; version?: string };
  nodes?: { name: string; state: string }[];
}

/** GET /status through the session; null while the agent does not answer. */
export async function fetchStatus(session: SshSession, port: number): Promise<AgentStatus | null> {
  try {
    const res = await session.httpGet(port, '/status');
    if (res.status !== 200) return null;

    return JSON.parse(res.body) as AgentStatus;
  } catch {
    return null;
  }
}

/**
 * Installs (or upgrades, or leaves alone) the agent on one node. Never throws: a failure is
 * an outcome with a one-line reason, after what this run changed on the node is undone.
 */
export async function installNode(plan: NodePlan, options: RemoteOptions): Promise<NodeOutcome> {
  const started = Date.now();
  const log = options.log.child({ node: plan.name });
  const outcome = (result: NodeResultKind, extra: Partial<NodeOutcome> = {}): NodeOutcome => ({
    node: plan.name,
    result,
    version: options.bundle.version,
    peerId: null,
    seconds: (Date.now() - started) / 1000,
    ...extra,
  });

  let session: SshSession | undefined;
  const undo: { what: string; run: () => Promise<unknown> }[] = [];
  try {
    session = await connectNode(plan, options);
    const s = session;
    const facts = await probeNode(s);
    const root = installRoot(facts);
    const r = q(root);
    const version = options.bundle.version;
    log.info(
      {
        user: facts.user,
        arch: facts.arch,
        nodeVersion: facts.nodeVersion,
        systemd: facts.systemd,
        root,
      },
      'node probed',
    );

    let sudo: SudoAccess | null = null;
    try {
      sudo = await detectSudo(s, plan.target.password);
      log.info({ sudo: sudo.mode, pty: sudo.pty }, 'sudo probed');
    } catch (err) {
      // Only systemd needs root; without systemd the supervisor runs as the user.
      if (facts.systemd) throw err;
      log.info({ reason: (err as Error).message }, 'sudo not usable; not needed without systemd');
    }
    const serviceKind = facts.systemd ? 'systemd' : 'supervisor';

    const shipNode = options.shipNode || !nodeIsSuitable(facts);
    if (shipNode && facts.arch !== process.arch) {
      throw new Error(
        `the node has no Node >= 20 and its arch ${facts.arch} differs from this machine's ${process.arch}`,
      );
    }
    // Before anything is written: a runtime that needs libraries the node may lack is refused.
    if (shipNode) await assertShippableRuntime();
    const runtimeDir = `${root}/runtime/node-${process.version}-${process.arch}`;
    const nodeBin = shipNode ? `${runtimeDir}/node` : (facts.nodeBin as string);
    const script = agentScript({
      root,
      node: plan.name,
      nodeBin,
      configPath: options.bundle.configPath,
      statusPort: plan.statusPort,
      listen: plan.listen,
    });

    const state = await readState(s, root);
    const sameLaunch =
      state.current === version && state.agentScript === script && state.service === serviceKind;
    if (sameLaunch) {
      const status = await fetchStatus(s, plan.statusPort);
      if (status?.self?.node === plan.name) {
        log.info({ version }, 'agent already running this version');

        return outcome('unchanged', { peerId: status.self.peerId ?? null });
      }
    }

    // 1. The release, unless a previous run already unpacked it.
    if (!state.exists) undo.push({ what: 'remove install root', run: () => s.exec(`rm -rf ${r}`) });
    const release = `${root}/releases/${version}`;
    const haveRelease = (await s.exec(`[ -f ${q(release)}/VERSION ]`)).code === 0;
    if (!haveRelease) {
      await must(s, `mkdir -p ${r}/releases ${r}/run ${r}/log && chmod 700 ${r}`, 'mkdir');
      const tarball = `${root}/releases/${version}.tar.gz.part`;
      const t0 = Date.now();
      await s.upload(options.bundle.file, tarball, 0o600);
      log.info({ bytes: options.bundle.bytes, ms: Date.now() - t0 }, 'bundle uploaded');
      undo.push({
        what: 'remove release',
        run: () => s.exec(`rm -rf ${q(release)} ${q(release)}.tmp ${q(tarball)}`),
      });
      await must(
        s,
        `rm -rf ${q(release)}.tmp && mkdir -p ${q(release)}.tmp && tar -xzf ${q(tarball)} -C ${q(release)}.tmp && ` +
          `chmod 600 ${q(release)}.tmp/${q(options.bundle.configPath)} && mv ${q(release)}.tmp ${q(release)} && rm -f ${q(tarball)}`,
        'unpacking the bundle',
      );
    }

    // 2. The runtime, when the node has no suitable Node.
    if (shipNode && (await s.exec(`[ -x ${q(runtimeDir)}/node ]`)).code !== 0) {
      await must(s, `mkdir -p ${q(runtimeDir)}`, 'mkdir runtime');
      undo.push({ what: 'remove runtime', run: () => s.exec(`rm -rf ${q(runtimeDir)}`) });
      await s.upload(process.execPath, `${runtimeDir}/node.part`, 0o755);
      await must(
        s,
        `mv ${q(runtimeDir)}/node.part ${q(runtimeDir)}/node && ${q(runtimeDir)}/node -v`,
        'the shipped Node runtime',
      );
      log.info({ runtime: runtimeDir }, 'node runtime shipped');
    }

    // 3. Stop what runs now (it is restarted by the undo list on failure).
    const previous = state.current;
    // Undo steps run in reverse, so this restart comes after the old files are back.
    if (state.service === 'supervisor') {
      await must(s, stopSupervisorCommand(root), 'stopping the running agent', 40_000);
      undo.push({
        what: 'restart previous agent',
        run: () => s.exec(startSupervisorCommand(root)),
      });
    } else if (state.service === 'systemd' && sudo) {
      const su = sudo;
      undo.push({
        what: 'restart previous agent',
        run: () => runSudo(s, su, plan.target.password, `systemctl restart ${unitName}`),
      });
    }

    // 4. Launch script, current link, service marker: saved first, restored on failure.
    await must(
      s,
      `cd ${r} && for f in agent.sh supervise.sh service; do [ -f $f ] && cp -p $f $f.prev; done; ` +
        `l=$(readlink current 2>/dev/null) && echo "$l" > current.prev; true`,
      'saving the previous launch files',
    );
    undo.push({
      what: 'restore launch files',
      run: () =>
        s.exec(
          `cd ${r} && for f in agent.sh supervise.sh service; do if [ -f $f.prev ]; then mv $f.prev $f; else rm -f $f; fi; done; ` +
            `if [ -f current.prev ]; then ln -sfn "$(cat current.prev)" current; rm -f current.prev; else rm -f current; fi`,
        ),
    });
    await must(
      s,
      `cat > ${r}/agent.sh.new && chmod 755 ${r}/agent.sh.new && mv ${r}/agent.sh.new ${r}/agent.sh`,
      'writing agent.sh',
      15_000,
      script,
    );
    await must(
      s,
      `echo ${serviceKind} > ${r}/service && ln -sfn releases/${q(version)} ${r}/current.new && mv -T ${r}/current.new ${r}/current`,
      'switching current',
    );

    // 5. Start through systemd or the supervisor.
    let logOffset = 0;
    if (serviceKind === 'systemd') {
      const unit = await unitFile(root, plan.name, facts.user);
      await must(s, `cat > ${r}/${unitName}`, 'writing the unit', 15_000, unit);
      const hadUnit = (await s.exec(`[ -f ${unitPath} ]`)).code === 0;
      const su = sudo as SudoAccess;
      const pw = plan.target.password;
      if (hadUnit)
        await mustSudo(
          s,
          su,
          pw,
          `cp -p ${unitPath} ${r}/${unitName}.prev`,
          'saving the previous unit',
        );
      undo.push({
        what: 'restore the unit',
        run: () =>
          runSudo(
            s,
            su,
            pw,
            hadUnit
              ? `install -m 0644 ${r}/${unitName}.prev ${unitPath} && systemctl daemon-reload`
              : `systemctl disable --now ${unitName}; rm -f ${unitPath}; systemctl daemon-reload`,
          ),
      });
      await mustSudo(
        s,
        su,
        pw,
        `install -m 0644 ${r}/${unitName} ${unitPath} && systemctl daemon-reload && systemctl enable ${unitName} && systemctl restart ${unitName}`,
        'systemd start',
      );
    } else {
      await must(
        s,
        `cat > ${r}/supervise.sh && chmod 755 ${r}/supervise.sh`,
        'writing supervise.sh',
        15_000,
        supervisorScript(),
      );
      undo.push({
        what: 'stop the new agent',
        run: () => s.exec(stopSupervisorCommand(root), { timeoutMs: 40_000 }),
      });
      const size = await s.exec(`wc -c < ${r}/log/agent.log 2>/dev/null || echo 0`);
      logOffset = Number(size.stdout.trim()) || 0;
      await must(s, startSupervisorCommand(root), 'starting the supervisor', 15_000);
    }

    // 6. Wait for the agent to answer on its status port; give up early when it keeps exiting.
    const logCommand =
      serviceKind === 'systemd'
        ? `journalctl -u ${unitName} -n 30 --no-pager -o cat --since=-${Math.ceil(options.agentWaitMs / 1000) + 30}s 2>/dev/null`
        : `tail -c +$((${logOffset}+1)) ${r}/log/agent.log`;
    const status = await waitForAgent(s, plan, options.agentWaitMs, async () => {
      const out = (await s.exec(logCommand, { timeoutMs: 10_000 })).stdout;
      const exits = out
        .split('\n')
        .filter((l) => / agent exited with |Main process exited/.test(l)).length;

      return exits >= 2 ? agentError(out) : null;
    });
    if ('error' in status) throw new Error(`the agent did not start: ${status.error}`);
    if ('timedOut' in status) {
      const out = (await s.exec(logCommand, { timeoutMs: 10_000 })).stdout;
      throw new Error(
        `the agent did not answer on status port ${plan.statusPort} within ${options.agentWaitMs / 1000} s: ${agentError(out)}`,
      );
    }

    // Success: keep this release and the one before, drop the saved files and older releases.
    await s.exec(
      `cd ${r} && rm -f agent.sh.prev supervise.sh.prev service.prev current.prev ${unitName}.prev; ` +
        `for d in releases/*; do case "\${d##*/}" in ${q(version)}|${q(previous ?? version)}) ;; *) rm -rf "$d";; esac; done`,
    );
    const result: NodeResultKind =
      previous === null ? 'installed' : previous === version ? 'restarted' : 'upgraded';
    log.info({ version, previous, result, peerId: status.self?.peerId }, 'agent running');

    return outcome(result, { peerId: status.self?.peerId ?? null });
  } catch (err) {
    const reason = oneLine(err);
    log.error({ reason }, 'install failed; rolling back');
    for (const step of undo.reverse()) {
      try {
        await step.run();
      } catch (e) {
        log.warn({ step: step.what, reason: oneLine(e) }, 'rollback step failed');
      }
    }

    return outcome('failed', { reason, version: null });
  } finally {
    session?.close();
  }
}

/**
 * Polls the status port every 0.5 s until the agent of this node answers, `crashed` reports
 * an error (checked every 2 s), or `waitMs` passes.
 */
async function waitForAgent(
  session: SshSession,
  plan: NodePlan,
  waitMs: number,
  crashed: () => Promise<string | null>,
): Promise<AgentStatus | { error: string } | { timedOut: true }> {
  const deadline = Date.now() + waitMs;
  let nextCrashCheck = Date.now() + 2_000;
  while (Date.now() < deadline) {
    const status = await fetchStatus(session, plan.statusPort);
    if (status?.self?.node === plan.name) return status;
    if (Date.now() >= nextCrashCheck) {
      const error = await crashed();
      if (error) return { error };
      nextCrashCheck = Date.now() + 2_000;
    }
    await new Promise((r) => setTimeout(r, 500));
  }

  return { timedOut: true };
}

/** The agent's own last complaint in its log: its last line that is not the supervisor's. */
function agentError(log: string): string {
  const lines = log
    .split('\n')
    .filter((l) => l.trim() && !/supervisor: |pampa-agent.service/.test(l));
  const last = lines[lines.length - 1] ?? '(no output)';
  try {
    const entry = JSON.parse(last) as { msg?: string; err?: { message?: string } };

    return [entry.msg, entry.err?.message].filter(Boolean).join(': ') || last;
  } catch {
    return last.trim();
  }
}

/** Stops the agent and removes everything `installNode` put on the node. */
export async function uninstallNode(
  plan: NodePlan,
  options: Omit<RemoteOptions, 'bundle' | 'shipNode' | 'agentWaitMs'>,
): Promise<NodeOutcome> {
  const started = Date.now();
  const log = options.log.child({ node: plan.name });
  const outcome = (result: NodeResultKind, reason?: string): NodeOutcome => ({
    node: plan.name,
    result,
    version: null,
    peerId: null,
    seconds: (Date.now() - started) / 1000,
    reason,
  });

  let session: SshSession | undefined;
  try {
    session = await connectNode(plan, options);
    const facts = await probeNode(session);
    const root = installRoot(facts);
    const state = await readState(session, root);
    const hasUnit = (await session.exec(`grep -qs ${q(root)} ${unitPath}`)).code === 0;
    if (!state.exists && !hasUnit) return outcome('absent');

    if (hasUnit) {
      const sudo = await detectSudo(session, plan.target.password);
      await mustSudo(
        session,
        sudo,
        plan.target.password,
        `systemctl disable --now ${unitName}; rm -f ${unitPath}; systemctl daemon-reload`,
        'removing the systemd unit',
      );
    }
    await must(session, stopSupervisorCommand(root), 'stopping the agent', 40_000);
    await must(session, `rm -rf ${q(root)}`, 'removing the install directory');
    log.info({ root }, 'agent removed');

    return outcome('removed');
  } catch (err) {
    return outcome('failed', oneLine(err));
  } finally {
    session?.close();
  }
}

function oneLine(err: unknown): string {
  if (err instanceof HostKeyError || err instanceof SudoError || err instanceof SshError)
    return err.message;

  return ((err as Error)?.message ?? String(err)).split('\n')[0];
}

function lastLine(s: string): string {
  const lines = s
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);

  return lines[lines.length - 1] ?? '(no output)';
}

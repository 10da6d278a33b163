/**
 * A real Debian sshd on 127.0.0.1 (free high port, own host key, UsePAM no, LogLevel DEBUG1 so
 * every authentication request is logged) with throw-away users, for the installer's tests.
 * Needs root and openssh-server.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SshdUser {
  name: string;
  /** Password login with this password; none: key login only. */
  password?: string;
}

export interface TestSshd {
  port: number;
  dir: string;
  /** SHA256 fingerprint of the host key, as `ssh-keygen -lf` prints it. */
  hostKeyFp: string;
  /** Unencrypted ed25519 key authorized for every user without a password. */
  keyFile: string;
  /** Everything sshd logged so far. */
  log(): string;
  /** Stops sshd, ends the users' processes (by pid), deletes the users and the dir. */
  stop(): void;
}

export const canRunSshd =
  process.getuid?.() === 0 && existsSync('/usr/sbin/sshd') && existsSync('/usr/bin/sudo');

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { input, encoding: 'utf8' });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
    srv.on('error', reject);
  });
}

/** Kills a user's processes (by pid) and deletes the user with its home. */
export function removeUser(name: string): void {
  let pids: string[] = [];
  try {
    pids = execFileSync('pgrep', ['-u', name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .split('\n')
      .filter(Boolean);
  } catch {
    // no process
  }
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
  try {
    execFileSync('userdel', ['-r', name], { stdio: 'ignore' });
  } catch {
    // not there
  }
}

export async function startTestSshd(users: SshdUser[]): Promise<TestSshd> {
  const dir = mkdtempSync(join(tmpdir(), 'pampa-sshd-'));
  const port = await freePort();
  const keyFile = join(dir, 'id');
  sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
  sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile]);
  const hostKeyFp = sh('ssh-keygen', ['-lf', join(dir, 'host_key.pub')]).split(' ')[1];

  for (const u of users) {
    removeUser(u.name);
    sh('useradd', ['-m', '-s', '/bin/bash', u.name]);
    if (u.password) {
      sh('chpasswd', [], `${u.name}:${u.password}\n`);
      continue;
    }
    sh('usermod', ['-p', '*', u.name]); // no password, not locked (sshd refuses locked users)
    const ssh = `/home/${u.name}/.ssh`;
    sh('install', ['-d', '-m', '700', '-o', u.name, '-g', u.name, ssh]);
    writeFileSync(`${ssh}/authorized_keys`, readFileSync(`${keyFile}.pub`, 'utf8'));
    sh('chown', [`${u.name}:${u.name}`, `${ssh}/authorized_keys`]);
  }

  writeFileSync(
    join(dir, 'sshd_config'),
    [
      `ListenAddress 127.0.0.1:${port}`,
      `HostKey ${join(dir, 'host_key')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'UsePAM no',
      'PasswordAuthentication yes',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin no',
      `AllowUsers ${users.map((u) => u.name).join(' ')}`,
      'AllowTcpForwarding local',
      'LogLevel DEBUG1',
      'Subsystem sftp internal-sftp',
      '',
    ].join('\n'),
  );
  sh('mkdir', ['-p', '/run/sshd']);
  const logFile = join(dir, 'sshd.log');
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  const sshd: ChildProcess = spawn(
    '/usr/sbin/sshd',
    ['-D', '-f', join(dir, 'sshd_config'), '-E', logFile],
    { stdio: 'ignore' },
  );
  const stop = () => {
    sshd.kill('SIGTERM');
    for (const u of users) removeUser(u.name);
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 50 && !/Server listening/.test(log()); i++) {
    await new Promise((r) => setTimeout(r, 200));
  }
  if (!/Server listening/.test(log())) {
    stop();
    throw new Error(`test sshd did not start:\n${log()}`);
  }

  return { port, dir, hostKeyFp, keyFile, log, stop };
}

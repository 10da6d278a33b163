import { request } from 'node:http';
import type { Duplex } from 'node:stream';
import { Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import type { HostCheck } from './hostkeys.js';

/** Where and as whom to connect. Secrets stay in this object; nothing here is ever logged. */
export interface SshTarget {
  host: string;
  port: number;
  user: string;
  password?: string;
  /** Private key text (OpenSSH or PEM). */
  privateKey?: string | Buffer;
  passphrase?: string;
}

export interface SshOptions {
  /** Host-key check from hostkeys.ts; required, ssh2 checks nothing by itself. */
  hostCheck: HostCheck;
  /** Give up on TCP + handshake + authentication after this long (ms). ssh2's default is 20 s. */
  readyTimeoutMs?: number;
  /**
   * Keepalive period (ms) and how many unanswered keepalives end the session. Without them
   * a cut link hangs forever (stack.md §5); 2 s × 3 notices it in about 6 s.
   */
  keepaliveIntervalMs?: number;
  keepaliveCountMax?: number;
}

export interface ExecOptions {
  /** Written to the command's stdin, which is then closed. */
  input?: string | Buffer;
  /** Ask for a pseudo-terminal (stdout and stderr then arrive merged on stdout). */
  pty?: boolean;
  /** Kill the command and fail after this long (ms). Default 120 s. */
  timeoutMs?: number;
  /**
   * Called with all output so far (stdout + stderr) after each chunk; may write to stdin.
   * Used to answer a sudo prompt. When set, stdin is left open until `end()` or the exit.
   */
  interact?: (output: string, stdin: InteractiveInput) => void;
}

export interface InteractiveInput {
  write: (s: string) => void;
  /** EOF on stdin (a program on a pty does not see it: use `abort`). */
  end: () => void;
  /** Closes the channel: the command is given up; the result has code null. */
  abort: () => void;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** Exit code; null when the command died from a signal. */
  code: number | null;
  signal: string | null;
}

/** An SSH failure with a one-line reason: connect, authenticate, run, or time out. */
export class SshError extends Error {
  override name = 'SshError';

  constructor(
    message: string,
    readonly level: string = 'ssh',
  ) {
    super(message);
  }
}

export class SshSession {
  private constructor(
    private readonly client: Client,
    readonly target: Pick<SshTarget, 'host' | 'port' | 'user'>,
  ) {}

  /** Opens a session. Rejects with the host-key refusal (HostKeyError) or an SshError. */
  static connect(target: SshTarget, options: SshOptions): Promise<SshSession> {
    const client = new Client();
    const config: ConnectConfig = {
      host: target.host,
      port: target.port,
      username: target.user,
      password: target.password,
      privateKey: target.privateKey,
      passphrase: target.passphrase,
      hostVerifier: options.hostCheck.verify,
      readyTimeout: options.readyTimeoutMs ?? 10_000,
      keepaliveInterval: options.keepaliveIntervalMs ?? 2_000,
      keepaliveCountMax: options.keepaliveCountMax ?? 3,
      // Never fall back to keyboard-interactive prompts nobody can answer.
      tryKeyboard: false,
    };
    const where = `${target.user}@${target.host}:${target.port}`;

    return new Promise((resolve, reject) => {
      client.once('ready', () => resolve(new SshSession(client, target)));
      client.once('error', (err: Error & { level?: string }) => {
        client.end();
        const refusal = options.hostCheck.refusal();
        if (refusal) return reject(refusal);
        reject(new SshError(`${where}: ${describe(err)}`, err.level));
      });

      try {
        client.connect(config);
      } catch (err) {
        // ssh2 throws synchronously for a key it cannot parse, e.g. encrypted without passphrase.
        const message = (err as Error).message;
        const hint = /passphrase/i.test(message) ? ' (set the node\'s "passphrase")' : '';
        reject(new SshError(`${where}: ${message}${hint}`, 'client-key'));
      }
    });
  }

  /** Runs a command through the user's login shell; never rejects for a non-zero exit. */
  exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = options.timeoutMs ?? 120_000;

    return new Promise((resolve, reject) => {
      const opts = options.pty ? { pty: { term: 'dumb', cols: 200, rows: 24 } } : {};
      this.client.exec(command, opts, (err, channel: ClientChannel) => {
        if (err) return reject(new SshError(`cannot run a command: ${err.message}`, 'exec'));

        let stdout = '';
        let stderr = '';
        let code: number | null = null;
        let signal: string | null = null;
        let done = false;
        const stdin = {
          write: (s: string) => {
            if (!done) channel.write(s);
          },
          end: () => {
            if (!done) channel.end();
          },
          abort: () => {
            if (!done) channel.close();
          },
        };
        const timer = setTimeout(() => {
          done = true;
          channel.signal('KILL');
          channel.close();
          reject(
            new SshError(`command timed out after ${Math.round(timeoutMs / 1000)} s`, 'timeout'),
          );
        }, timeoutMs);

        channel.on('data', (chunk: Buffer) => {
          stdout += chunk.toString('utf8');
          options.interact?.(stdout + stderr, stdin);
        });
        channel.stderr.on('data', (chunk: Buffer) => {
          stderr += chunk.toString('utf8');
          options.interact?.(stdout + stderr, stdin);
        });
        channel.on('exit', (c: number | null, s?: string) => {
          code = c;
          signal = s ?? null;
        });
        channel.on('close', () => {
          clearTimeout(timer);
          if (done) return;
          done = true;
          resolve({ stdout, stderr, code, signal });
        });

        if (options.input !== undefined) channel.write(options.input);
        if (!options.interact) channel.end();
      });
    });
  }

  /** Uploads a local file through SFTP (atomic for the caller: write then rename). */
  async upload(localPath: string, remotePath: string, mode = 0o644): Promise<void> {
    const sftp = await new Promise<import('ssh2').SFTPWrapper>((resolve, reject) =>
      this.client.sftp((err, s) =>
        err ? reject(new SshError(`sftp: ${err.message}`, 'sftp')) : resolve(s),
      ),
    );
    try {
      await new Promise<void>((resolve, reject) =>
        sftp.fastPut(localPath, remotePath, { mode }, (err) =>
          err ? reject(new SshError(`upload to ${remotePath}: ${err.message}`, 'sftp')) : resolve(),
        ),
      );
    } finally {
      sftp.end();
    }
  }

  /**
   * GET http://127.0.0.1:<port><path> as seen from the node, through an SSH tunnel: the status
   * port binds loopback by default, so it is not reachable from here directly.
   */
  httpGet(
    port: number,
    path: string,
    timeoutMs = 3_000,
  ): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      // An own timer: the tunnel's channel has no socket timeout, so http's `timeout` option
      // never fires on a port whose listener accepts and stays silent.
      let stream: Duplex | undefined;
      const timer = setTimeout(() => {
        stream?.destroy();
        reject(new SshError(`status port ${port} timed out`, 'tunnel'));
      }, timeoutMs);
      const done =
        <T>(fn: (v: T) => void) =>
        (v: T) => {
          clearTimeout(timer);
          fn(v);
        };
      this.client.forwardOut('127.0.0.1', 0, '127.0.0.1', port, (err, channel) => {
        if (err) {
          done(reject)(new SshError(`tunnel to port ${port}: ${err.message}`, 'tunnel'));
          return;
        }
        stream = channel as unknown as Duplex;

        const req = request(
          { host: '127.0.0.1', port, path, createConnection: () => stream as never },
          (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (body += c));
            res.on('end', () => done(resolve)({ status: res.statusCode ?? 0, body }));
            res.on('error', done(reject));
          },
        );
        req.on('error', done(reject));
        req.end();
      });
    });
  }

  close(): void {
    this.client.end();
  }
}

function describe(err: Error & { level?: string }): string {
  return err.level === 'client-authentication'
    ? 'authentication failed (wrong password or key)'
    : err.message;
}

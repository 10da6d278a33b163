import { SshError, type ExecResult, type SshSession } from './ssh.js';

/**
 * How this session gets root, found by `detectSudo`:
 * - `root`: the user is root;
 * - `nopasswd`: `sudo -n` works;
 * - `password`: sudo asks for the node's password; it is written to sudo's stdin (`-S`) when
 *   sudo's own prompt marker shows up (after any first-use lecture), never put in argv;
 * - with `pty` set, the host demands a tty (`Defaults requiretty`) and sudo runs in one.
 */
export interface SudoAccess {
  mode: 'root' | 'nopasswd' | 'password';
  pty: boolean;
}

/** sudo could not be used; the message starts with "sudo needs a password/tty" when relevant. */
export class SudoError extends Error {
  override name = 'SudoError';
}

/** All sudo probing of one node ends within this (ms), as S22 requires. */
export const sudoDeadlineMs = 30_000;

/**
 * A prompt nobody would print by chance; sudo shows it only when it wants the password. It is
 * passed as `%%` and printed by sudo as `%`, so the marker in sudo's argv (as `ps` shows it)
 * never matches the prompt itself.
 */
const PROMPT = '[pampa-sudo%prompt]';
const PROMPT_ARG = PROMPT.replace('%', '%%');

const TTY_NEEDED = /must have a tty|terminal is required|no tty present/i;
const PASSWORD_NEEDED = /password is required|a password is required/i;
const BAD_PASSWORD = /incorrect password|Sorry, try again|authentication failure/i;

export async function detectSudo(
  session: SshSession,
  password: string | undefined,
): Promise<SudoAccess> {
  try {
    return await probeSudo(session, password);
  } catch (err) {
    if (err instanceof SshError && err.level === 'timeout') {
      throw new SudoError(`sudo needs a password/tty: no answer within ${sudoDeadlineMs / 1000} s`);
    }
    throw err;
  }
}

async function probeSudo(session: SshSession, password: string | undefined): Promise<SudoAccess> {
  const deadline = Date.now() + sudoDeadlineMs;
  const left = () => Math.max(1_000, deadline - Date.now());

  const id = await session.exec('id -u', { timeoutMs: left() });
  if (id.stdout.trim() === '0') return { mode: 'root', pty: false };

  const which = await session.exec('command -v sudo', { timeoutMs: left() });
  if (which.code !== 0) throw new SudoError('sudo needs a password/tty: sudo is not installed');

  let pty = false;
  let probe = await session.exec('sudo -n true', { timeoutMs: left() });
  if (probe.code !== 0 && TTY_NEEDED.test(probe.stderr + probe.stdout)) {
    pty = true;
    probe = await session.exec('sudo -n true', { pty, timeoutMs: left() });
  }
  if (probe.code === 0) return { mode: 'nopasswd', pty };

  const output = probe.stderr + probe.stdout;
  if (!PASSWORD_NEEDED.test(output) && !TTY_NEEDED.test(output)) {
    throw new SudoError(`sudo refused: ${lastLine(output)}`);
  }
  if (password === undefined) {
    throw new SudoError(
      'sudo needs a password/tty: it asks for a password and the node has none configured',
    );
  }

  const access: SudoAccess = { mode: 'password', pty };
  let check = await runSudo(session, access, password, 'true', left());
  if (!pty && check.code !== 0 && TTY_NEEDED.test(check.stderr + check.stdout)) {
    access.pty = true;
    check = await runSudo(session, access, password, 'true', left());
  }
  if (check.code === 0) return access;

  const reason = BAD_PASSWORD.test(check.stderr + check.stdout)
    ? 'sudo rejected the password'
    : `sudo needs a password/tty: ${lastLine(check.stderr + check.stdout)}`;
  throw new SudoError(reason);
}

/**
 * Runs `sh -c <command>` as root. The password goes to stdin only after sudo printed its
 * prompt, and only once: a second prompt means it was wrong, and the command is ended.
 * The password is scrubbed from the returned output (a tty may echo it).
 */
export async function runSudo(
  session: SshSession,
  access: SudoAccess,
  password: string | undefined,
  command: string,
  timeoutMs = 60_000,
): Promise<ExecResult> {
  if (access.mode === 'root') return session.exec(command, { timeoutMs });

  const quoted = shellQuote(command);
  if (access.mode === 'nopasswd') {
    return session.exec(`sudo -n sh -c ${quoted}`, { pty: access.pty, timeoutMs });
  }

  let answered = 0;
  const result = await session.exec(`sudo -S -p ${shellQuote(PROMPT_ARG)} sh -c ${quoted}`, {
    pty: access.pty,
    timeoutMs,
    interact: (output, stdin) => {
      // sudo waits right after its prompt; the marker elsewhere is no prompt. With no prompt
      // (cached credentials) stdin stays open, which `sh -c` ignores.
      if (!output.trimEnd().endsWith(PROMPT)) return;
      const prompts = output.split(PROMPT).length - 1;
      if (prompts <= answered) return;
      if (answered === 0) {
        answered = prompts;
        if (password !== undefined) stdin.write(password + '\n');
        else stdin.abort();
        return;
      }
      // sudo asks again only after saying the password was wrong; a marker the command itself
      // printed is its output.
      answered = prompts;
      if (BAD_PASSWORD.test(output)) stdin.abort();
    },
  });
  const scrub = (s: string) =>
    (password ? s.split(password).join('***') : s).split(PROMPT).join('').replace(/\r\n/g, '\n');

  return { ...result, stdout: scrub(result.stdout), stderr: scrub(result.stderr) };
}

/** `'…'` quoting for a POSIX shell. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function lastLine(s: string): string {
  const lines = s
    .replace(/\r/g, '')
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);

  return lines[lines.length - 1] ?? '(no output)';
}

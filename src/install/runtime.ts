import { execFile } from 'node:child_process';
import { basename } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Shared libraries every glibc Linux has: a Node binary that needs only these runs on a node
 * without anything installed (the nodejs.org builds are such). Distribution builds often link
 * libnode, libuv, OpenSSL, ICU… dynamically; those are not shipped, the runtime is refused.
 */
const BASE_LIBRARIES = [
  /^linux-(vdso|gate)\.so/,
  /^ld-linux[-\w.]*\.so/,
  /^ld64\.so/,
  /^lib(c|m|dl|pthread|rt|resolv|util|gcc_s|stdc\+\+|atomic)\.so(\.\d+)*$/,
];

/** The libraries named in `ldd` output that a base system may lack, or that are missing here. */
export function foreignLibraries(lddOutput: string): string[] {
  const foreign: string[] = [];
  for (const raw of lddOutput.split('\n')) {
    const line = raw.trim();
    if (!line || /statically linked|not a dynamic executable/.test(line)) continue;
    const name = basename(line.split(/\s+/)[0]);
    if (/not found/.test(line) || !BASE_LIBRARIES.some((re) => re.test(name))) foreign.push(name);
  }

  return foreign;
}

let checked: Promise<void> | undefined;

/**
 * Fails, saying what to do, when this machine's Node binary cannot run on a bare node because
 * it needs shared libraries beyond the base system. Checked once per process.
 */
export function assertShippableRuntime(execPath = process.execPath): Promise<void> {
  if (execPath !== process.execPath) return checkRuntime(execPath);
  checked ??= checkRuntime(execPath);

  return checked;
}

async function checkRuntime(execPath: string): Promise<void> {
  let out: string;
  try {
    out = (await run('ldd', [execPath])).stdout;
  } catch (err) {
    const e = err as { stdout?: string; code?: unknown };
    // ldd exits 1 on a static binary ("not a dynamic executable"): nothing to ship with it.
    if (typeof e.stdout === 'string' && /not a dynamic executable/.test(e.stdout + String(err)))
      return;
    if (e.code === 'ENOENT') return; // no ldd (e.g. musl without it): the node's own check decides
    out = e.stdout ?? '';
  }
  const foreign = foreignLibraries(out);
  if (foreign.length === 0) return;

  throw new Error(
    `cannot ship this machine's Node runtime (${execPath}): it needs shared libraries a node ` +
      `may not have (${foreign.join(', ')}); install Node 20+ on the node, or run pampa ` +
      `install with a self-contained Node build (e.g. from nodejs.org)`,
  );
}

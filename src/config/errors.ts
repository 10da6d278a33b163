import type { z } from 'zod';

/** Raised for a configuration that breaks a rule; the message names field, rule and value. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const key of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[key];
  }

  return v;
}

function show(v: unknown): string {
  if (typeof v === 'function') return '[function]';
  if (v === undefined) return 'undefined';
  const s = JSON.stringify(v);

  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** One line per issue: `jobs[0].queueSize: must be > 0 (got -1)`. */
export function formatZodError(err: z.ZodError, input: unknown, source: string): ConfigError {
  const lines = err.issues.map((issue) => {
    const field = issue.path
      .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
      .join('');
    const rule = issue.message.replace(/^Invalid input: /, '');

    return `  ${field || '(root)'}: ${rule} (got ${show(valueAt(input, issue.path))})`;
  });

  return new ConfigError(`invalid configuration in ${source}:\n${lines.join('\n')}`);
}

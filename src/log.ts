import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The root logger: JSON lines on stdout (for log shippers and tests), pretty when stdout is a
 * terminal. Level from PAMPA_LOG_LEVEL (default info). Components take a child logger with
 * `component` set, e.g. `rootLogger().child({ component: 'lease' })`.
 */
let root: Logger | undefined;

export function rootLogger(): Logger {
  if (root) return root;

  const level = process.env.PAMPA_LOG_LEVEL ?? 'info';
  const pretty = process.stdout.isTTY === true && process.env.PAMPA_LOG_FORMAT !== 'json';
  root = pretty
    ? pino({ level, transport: { target: 'pino-pretty', options: { colorize: true } } })
    : pino({ level });

  return root;
}

export function componentLogger(component: string, fields: Record<string, unknown> = {}): Logger {
  return rootLogger().child({ component, ...fields });
}

import type { ClusterStatus } from './types.js';

/** The status URL `pampa status` and `pampa workers` use when neither flag nor env is set. */
export const DEFAULT_STATUS_URL = 'http://127.0.0.1:8787';
/** How long a status request may take before the agent counts as unreachable (ms). */
const REQUEST_TIMEOUT_MS = 5000;

/** A status request that failed; the message says what happened and how to fix it. */
export class StatusClientError extends Error {
  override name = 'StatusClientError';
}

/** `http://host:port` or `http://host:port/status` → the `/status` endpoint. */
export function statusEndpoint(url: string): URL {
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    throw new StatusClientError(
      `"${url}" is not a URL: pass --url http://HOST:PORT or set PAMPA_STATUS_URL`,
    );
  }
  if (base.pathname.endsWith('/status')) return base;
  if (!base.pathname.endsWith('/')) base.pathname += '/';

  return new URL('status', base);
}

function causeCode(err: unknown): string | undefined {
  const cause = err instanceof Error ? (err.cause as { code?: unknown } | undefined) : undefined;

  return typeof cause?.code === 'string' ? cause.code : undefined;
}

function unreachable(endpoint: URL, err: unknown): StatusClientError {
  const why =
    err instanceof Error && err.name === 'TimeoutError'
      ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`
      : (causeCode(err) ?? (err instanceof Error ? err.message : String(err)));

  return new StatusClientError(
    `cannot reach the status port at ${endpoint.origin} (${why}): is the agent running there? ` +
      "Pass --url or set PAMPA_STATUS_URL to the agent's status address (status.host:status.port)",
  );
}

/** GET `<url>/status` with an optional bearer token; every failure is a StatusClientError. */
export async function fetchStatus(url: string, token?: string): Promise<ClusterStatus> {
  const endpoint = statusEndpoint(url);
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;

  let res: Response;
  try {
    res = await fetch(endpoint, { headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (err) {
    throw unreachable(endpoint, err);
  }

  if (res.status === 401) {
    throw new StatusClientError(
      `the status port at ${endpoint.origin} ${token ? 'rejected the token' : 'needs a token'}: ` +
        "pass --token or set PAMPA_STATUS_TOKEN to the cluster's status.token",
    );
  }
  const body = await res.text();
  if (!res.ok) {
    throw new StatusClientError(
      `the status port at ${endpoint.origin} answered ${res.status}: ${body.trim().slice(0, 200)}`,
    );
  }

  try {
    return JSON.parse(body) as ClusterStatus;
  } catch {
    throw new StatusClientError(`the status port at ${endpoint.origin} did not answer JSON`);
  }
}

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { ConfigError } from '../config/errors.js';
import type { Logger } from '../log.js';
import { bearerToken, hostHeaderName, isLoopbackHost, secretMatches } from './auth.js';
import { DASHBOARD_CSP, DASHBOARD_HTML } from './dashboard.js';
import type { AgentMetrics } from './metrics.js';
import type { ClusterStatus } from './types.js';

export interface StatusServerOptions {
  /** Bind address; anything but loopback requires `token`. */
  host: string;
  /** TCP port; 0 picks a free one (the real one is in the url `start()` returns). */
  port: number;
  /** Bearer token (at least 16 characters) every request must present when set. */
  token?: string;
  log: Logger;
  status: () => Promise<ClusterStatus>;
  metrics: AgentMetrics;
  healthy: () => { ok: boolean; reason?: string };
  /** A client must send its whole request head within this (ms). Default 5000. */
  headersTimeoutMs?: number;
  /** `status()` or the metrics registry must answer within this, else 503 (ms). Default 5000. */
  providerTimeoutMs?: number;
}

/** Longest request head accepted (bytes); longer ones get 431. The Node default, made explicit. */
const MAX_HEADER_BYTES = 16 * 1024;
/** A status port serves a few dashboards and scrapers; more connections are refused. */
const MAX_CONNECTIONS = 256;
const TOKEN_MIN_LENGTH = 16;

type Reply = { code: number; type: string; body: string; headers?: Record<string, string> };

function json(code: number, value: unknown): Reply {
  return { code, type: 'application/json; charset=utf-8', body: `${JSON.stringify(value)}\n` };
}

function errorReply(code: number, error: string, headers?: Record<string, string>): Reply {
  return { ...json(code, { error }), headers };
}

/** `work`, or a rejection naming `what` once `ms` have passed. */
async function withTimeout<T>(what: string, ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `GET /status`, `/healthz`, `/metrics` and the dashboard on `/`, read-only, on one port. */
export class StatusServer {
  private readonly log: Logger;
  private readonly providerTimeoutMs: number;
  private server: Server | undefined;
  private starting: Promise<{ url: string }> | undefined;

  constructor(private readonly opts: StatusServerOptions) {
    this.log = opts.log.child({ component: 'status' });
    this.providerTimeoutMs = opts.providerTimeoutMs ?? 5000;
  }

  /** Starts listening; calling it again returns the same url. Rejects on an unsafe config. */
  start(): Promise<{ url: string }> {
    this.starting ??= this.listen().catch((err: unknown) => {
      this.starting = undefined;
      throw err;
    });

    return this.starting;
  }

  /** Stops listening and closes open connections; safe to call at any time, any number of times. */
  async stop(): Promise<void> {
    const starting = this.starting;
    this.starting = undefined;
    if (starting) await starting.catch(() => undefined);
    const server = this.server;
    this.server = undefined;
    if (!server) return;

    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    this.log.info('status server stopped');
  }

  private checkOptions(): void {
    const { host, token } = this.opts;
    if (token !== undefined && token.length < TOKEN_MIN_LENGTH) {
      throw new ConfigError(
        `status.token must be at least ${TOKEN_MIN_LENGTH} characters (got ${token.length})`,
      );
    }
    if (token === undefined && !isLoopbackHost(host)) {
      throw new ConfigError(
        `status.host is "${host}", which other machines can reach, but status.token is not ` +
          `set: set status.token (at least ${TOKEN_MIN_LENGTH} characters) or bind ` +
          'status.host to 127.0.0.1',
      );
    }
  }

  private async listen(): Promise<{ url: string }> {
    this.checkOptions();
    const server = createServer(
      {
        maxHeaderSize: MAX_HEADER_BYTES,
        headersTimeout: this.opts.headersTimeoutMs ?? 5000,
        requestTimeout: 10_000,
        keepAliveTimeout: 5000,
        connectionsCheckingInterval: 500,
      },
      (req, res) => void this.handle(req, res),
    );
    server.maxConnections = MAX_CONNECTIONS;
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) =>
      this.onClientError(err, socket),
    );

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'status server error'));
    this.server = server;

    const { port } = server.address() as AddressInfo;
    const host = this.opts.host.includes(':') ? `[${this.opts.host}]` : this.opts.host;
    const url = `http://${host}:${port}`;
    this.log.info({ url, auth: this.opts.token !== undefined }, 'status server listening');

    return { url };
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    this.log.debug({ code: err.code, remote: socket.remoteAddress }, 'status client error');
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }

    const status =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? '408 Request Timeout'
          : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let reply: Reply;
    try {
      reply = await this.route(req);
    } catch (err) {
      this.log.warn({ err, path: req.url }, 'status request failed');
      reply = errorReply(503, message(err));
    }

    if (res.headersSent || res.destroyed) return;
    res.writeHead(reply.code, {
      'Content-Type': reply.type,
      'Content-Length': Buffer.byteLength(reply.body),
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      ...reply.headers,
    });
    res.end(reply.body);
  }

  private async route(req: IncomingMessage): Promise<Reply> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://status.invalid');
      // A bad escape in the path or the query (the token is read from it) is refused.
      decodeURIComponent(url.pathname);
      decodeURIComponent(url.search.replace(/\+/g, ' '));
    } catch {
      return errorReply(400, 'malformed request URL');
    }

    const denied = this.authorize(req, url);
    if (denied) return denied;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return errorReply(405, 'the status port is read-only: use GET', { Allow: 'GET, HEAD' });
    }

    switch (url.pathname) {
      case '/status':
        return json(
          200,
          await withTimeout('the status provider', this.providerTimeoutMs, this.opts.status()),
        );
      case '/healthz':
        return this.health();
      case '/metrics':
        return {
          code: 200,
          type: this.opts.metrics.contentType,
          body: await withTimeout(
            'the metrics registry',
            this.providerTimeoutMs,
            this.opts.metrics.render(),
          ),
        };
      case '/':
        return {
          code: 200,
          type: 'text/html; charset=utf-8',
          body: DASHBOARD_HTML,
          headers: { 'Content-Security-Policy': DASHBOARD_CSP },
        };
      default:
        return errorReply(404, `no such path: ${url.pathname}`);
    }
  }

  private health(): Reply {
    const h = this.opts.healthy();

    return h.ok ? json(200, { ok: true }) : json(503, { ok: false, reason: h.reason ?? null });
  }

  /**
   * With a token, every request needs `Authorization: Bearer <token>`; the dashboard page alone
   * may carry it as `?token=` since a browser cannot add a header to the page it navigates to.
   * Without a token (loopback only), the Host header must name a loopback host too, so a web
   * page that rebinds its DNS name to 127.0.0.1 cannot read the status port.
   */
  private authorize(req: IncomingMessage, url: URL): Reply | null {
    const { token } = this.opts;
    if (token === undefined) {
      const host = req.headers.host;
      if (host === undefined || isLoopbackHost(hostHeaderName(host))) return null;

      return errorReply(403, 'Host header must name a loopback address (set status.token)');
    }

    const presented =
      bearerToken(req.headers.authorization) ??
      (url.pathname === '/' ? url.searchParams.get('token') : null);
    if (secretMatches(token, presented)) return null;

    return errorReply(401, 'missing or wrong bearer token', {
      'WWW-Authenticate': 'Bearer realm="pampa"',
    });
  }
}

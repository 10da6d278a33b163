import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy in front of PostgreSQL that can be told to stall: from then on it forwards
 * nothing in either direction and accepts new connections without ever answering, like a
 * server behind a partition that drops packets. resume() heals the partition: what was sent
 * meanwhile is delivered, and the connections accepted meanwhile reach the server.
 */
export class StallingProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly pairs = new Set<{ client: Socket; upstream: Socket }>();
  private readonly held: Socket[] = [];
  private stalled = false;

  constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((client) => this.accept(client));
  }

  /** A proxy listening on 127.0.0.1 in front of the server of `url`, and `url` through it. */
  static async before(url: string): Promise<{ proxy: StallingProxy; url: string }> {
    const u = new URL(url);
    const proxy = new StallingProxy({ host: u.hostname, port: Number(u.port) });
    u.hostname = '127.0.0.1';
    u.port = String(await proxy.listen());

    return { proxy, url: u.toString() };
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    if (!address || typeof address !== 'object') throw new Error('proxy has no TCP address');

    return address.port;
  }

  stall(): void {
    this.stalled = true;
    for (const { client, upstream } of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
  }

  resume(): void {
    this.stalled = false;
    for (const { client, upstream } of this.pairs) {
      client.pipe(upstream);
      upstream.pipe(client);
    }
    for (const client of this.held.splice(0)) {
      if (!client.destroyed) this.forward(client);
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private accept(client: Socket): void {
    this.track(client);
    if (this.stalled) this.held.push(client);
    else this.forward(client);
  }

  private forward(client: Socket): void {
    const upstream = connect(this.target.port, this.target.host);
    this.track(upstream);
    const pair = { client, upstream };
    upstream.on('close', () => {
      client.destroy();
      this.pairs.delete(pair);
    });
    client.on('close', () => upstream.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
    this.pairs.add(pair);
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.sockets.delete(socket));
  }
}

import pg from 'pg';
import type { Logger } from '../src/log.js';
import { NEW_TASKS_CHANNEL } from '../src/db/user-table.js';

/**
 * LISTENs for the insert trigger's NOTIFY on its own connection, reconnecting after a loss.
 * Only a speed-up: the dispatcher also runs on a timer, so behind a transaction pooler
 * (where LISTEN does not work) tasks are still dispatched, one interval later.
 */
export class NewTaskListener {
  private client: pg.Client | null = null;
  private stopped = true;
  private retry: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: string,
    private readonly applicationName: string,
    private readonly onNotify: (job: string) => void,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({
      connectionString: this.url,
      application_name: this.applicationName,
    });
    client.on('error', (err) => {
      this.log.warn({ err }, 'notification connection lost');
      this.reconnectLater(client);
    });
    client.on('end', () => this.reconnectLater(client));
    client.on('notification', (n) => this.onNotify(n.payload ?? ''));
    try {
      await client.connect();
      await client.query(`LISTEN ${NEW_TASKS_CHANNEL}`);
      this.client = client;
      if (this.stopped) await client.end();
    } catch (err) {
      this.log.debug({ err }, 'notification connection failed');
      this.reconnectLater(client);
    }
  }

  private reconnectLater(client: pg.Client): void {
    if (this.client === client) this.client = null;
    client.removeAllListeners('end');
    void client.end().catch(() => undefined);
    if (this.stopped || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.connect();
    }, 1000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = null;
    if (client) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
    }
  }
}

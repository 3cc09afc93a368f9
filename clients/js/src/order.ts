import type { Message } from "./types.js";

/** One page of `sync` for one conversation from `afterSeq`, or `null` when refused. */
export type SyncPage = (conversationId: string, afterSeq: number) => Promise<{ messages: Message[]; hasMore: boolean } | null>;

/**
 * Hands messages on gap-free: every message of a conversation once, in seq order, whether it
 * came live or from `sync`. A live message that skips ahead of what was handed on waits while
 * `sync` fetches the ones in between (missed while disconnected, or still on their way). No
 * I/O of its own: `sync` and `retryLater` are given, so the logic is tested without a server.
 */
export class InOrder {
  private readonly lastSeq = new Map<string, number>();
  private readonly pending = new Map<string, Message[]>();
  private readonly syncing = new Set<string>();

  constructor(
    private readonly emit: (m: Message) => void,
    /** `null` while there is no connection to sync on. */
    private readonly sync: () => SyncPage | null,
    /** Schedules a retry of a sync that got no answer. */
    private readonly retryLater: (again: () => void) => void,
  ) {}

  /** The last seq handed on for a conversation. */
  last(conversationId: string): number | undefined {
    return this.lastSeq.get(conversationId);
  }

  /** A message that came live. */
  deliver(m: Message): void {
    const last = this.lastSeq.get(m.conversationId);
    if (last === undefined || m.seq === last + 1) {
      this.emitInOrder(m);
      this.drain(m.conversationId);
    } else if (m.seq > last + 1) {
      this.pending.set(m.conversationId, [...(this.pending.get(m.conversationId) ?? []), m]);
      void this.catchUpOne(m.conversationId);
    }
  }

  /** After a reconnect (or `server:resync`): every conversation seen so far is synced. */
  async catchUp(): Promise<void> {
    await Promise.all([...this.lastSeq.keys()].map((c) => this.catchUpOne(c)));
  }

  private emitInOrder(m: Message): void {
    const last = this.lastSeq.get(m.conversationId);
    if (last !== undefined && m.seq <= last) return; // already handed on
    this.lastSeq.set(m.conversationId, m.seq);
    this.emit(m);
  }

  private drain(conversationId: string): void {
    const waiting = (this.pending.get(conversationId) ?? []).sort((a, b) => a.seq - b.seq);
    this.pending.delete(conversationId);
    const still: Message[] = [];
    for (const m of waiting) {
      const last = this.lastSeq.get(conversationId) ?? 0;
      if (m.seq <= last) continue;
      if (m.seq !== last + 1) {
        still.push(m); // still a gap: keep waiting for a sync
        continue;
      }
      this.emitInOrder(m);
    }
    if (still.length > 0) this.pending.set(conversationId, still);
  }

  private async catchUpOne(conversationId: string): Promise<void> {
    const page = this.sync();
    if (!page || this.syncing.has(conversationId)) return;
    this.syncing.add(conversationId);
    let failed = false;
    try {
      for (;;) {
        const reply = await page(conversationId, this.lastSeq.get(conversationId) ?? 0);
        if (!reply) return;
        reply.messages.forEach((m) => this.emitInOrder(m));
        if (!reply.hasMore) break;
      }
    } catch {
      failed = true; // no answer in time: try again shortly
    } finally {
      this.syncing.delete(conversationId);
      this.drain(conversationId);
      if (failed) this.retryLater(() => void this.catchUpOne(conversationId));
    }
  }
}

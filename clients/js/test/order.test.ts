import { describe, expect, it } from "vitest";
import { InOrder, type SyncPage } from "../src/order.js";
import type { Message } from "../src/types.js";

const msg = (seq: number, conversationId = "c1"): Message => ({
  id: `${conversationId}-${seq}`,
  conversationId,
  seq,
  senderId: "alice",
  clientMsgId: `m${seq}`,
  content: `n${seq}`,
  readAt: null,
  createdAt: "2026-12-01T00:00:00Z",
  editedAt: null,
  deletedAt: null,
}) as Message;

/** A server holding `stored` (per conversation), answering sync in pages of `page`. */
function server(stored: Message[], page = 100) {
  const calls: Array<[string, number]> = [];
  const sync: SyncPage = async (conversationId, afterSeq) => {
    calls.push([conversationId, afterSeq]);
    const after = stored.filter((m) => m.conversationId === conversationId && m.seq > afterSeq);
    return { messages: after.slice(0, page), hasMore: after.length > page };
  };
  return { sync, calls };
}

function setup(sync: SyncPage | null, retries: Array<() => void> = []) {
  const got: string[] = [];
  const order = new InOrder((m) => got.push(`${m.conversationId}:${m.seq}`), () => sync, (again) => retries.push(again));
  return { order, got };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

describe("InOrder", () => {
  it("hands live messages on in order, each once", () => {
    const { order, got } = setup(null);
    [1, 2, 2, 3, 1].forEach((s) => order.deliver(msg(s)));
    expect(got).toEqual(["c1:1", "c1:2", "c1:3"]);
  });

  it("holds a message that skips ahead until sync has fetched the ones between", async () => {
    const stored = [1, 2, 3, 4, 5].map((s) => msg(s));
    const { sync, calls } = server(stored);
    const { order, got } = setup(sync);
    order.deliver(msg(1));
    order.deliver(msg(5)); // 2-4 missed
    expect(got).toEqual(["c1:1"]);
    await settle();
    expect(calls).toEqual([["c1", 1]]);
    expect(got).toEqual(["c1:1", "c1:2", "c1:3", "c1:4", "c1:5"]);
    // What sync already gave is not handed on again when it also comes live.
    order.deliver(msg(4));
    order.deliver(msg(6));
    expect(got.slice(-1)).toEqual(["c1:6"]);
    expect(got.length).toBe(6);
  });

  it("follows hasMore page by page after a reconnect, for every conversation seen", async () => {
    const stored = [...[1, 2, 3, 4, 5, 6, 7].map((s) => msg(s)), ...[1, 2, 3].map((s) => msg(s, "c2"))];
    const { sync, calls } = server(stored, 2);
    const { order, got } = setup(sync);
    order.deliver(msg(1));
    order.deliver(msg(1, "c2"));
    await order.catchUp();
    expect(got.filter((g) => g.startsWith("c1"))).toEqual([1, 2, 3, 4, 5, 6, 7].map((s) => `c1:${s}`));
    expect(got.filter((g) => g.startsWith("c2"))).toEqual(["c2:1", "c2:2", "c2:3"]);
    expect(calls.filter(([c]) => c === "c1").map(([, after]) => after)).toEqual([1, 3, 5]);
  });

  it("tries a sync that got no answer again later, and still hands on in order", async () => {
    const stored = [1, 2, 3].map((s) => msg(s));
    let fail = true;
    const good = server(stored).sync;
    const flaky: SyncPage = async (c, after) => {
      if (fail) throw new Error("no answer in time");
      return good(c, after);
    };
    const retries: Array<() => void> = [];
    const { order, got } = setup(flaky, retries);
    order.deliver(msg(1));
    order.deliver(msg(3));
    await settle();
    expect(got).toEqual(["c1:1"]);
    expect(retries.length).toBe(1);
    fail = false;
    retries[0]();
    await settle();
    expect(got).toEqual(["c1:1", "c1:2", "c1:3"]);
  });

  it("waits, without losing the message, while there is no connection to sync on", async () => {
    let sync: SyncPage | null = null;
    const got: number[] = [];
    const order = new InOrder((m) => got.push(m.seq), () => sync, () => {});
    order.deliver(msg(1));
    order.deliver(msg(3));
    await settle();
    expect(got).toEqual([1]);
    sync = server([1, 2, 3].map((s) => msg(s))).sync;
    await order.catchUp();
    expect(got).toEqual([1, 2, 3]);
  });
});

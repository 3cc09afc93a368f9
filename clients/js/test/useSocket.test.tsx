import { act, renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

// A fake socket in place of socket.io-client's: the hook's own logic (tokens, reconnects,
// sync after a reconnect) against events the test fires.
class FakeSocket {
  auth: { token: string };
  connected = false;
  connects = 0;
  closed = false;
  emitted: Array<[string, unknown]> = [];
  handlers = new Map<string, Array<(...args: unknown[]) => void>>();
  replies: Record<string, (data: unknown) => unknown> = {};
  constructor(token: string) {
    this.auth = { token };
  }
  on(event: string, f: (...args: unknown[]) => void) {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), f]);
    return this;
  }
  fire(event: string, ...args: unknown[]) {
    if (event === "connect") this.connected = true;
    if (event === "disconnect") this.connected = false;
    for (const f of this.handlers.get(event) ?? []) f(...args);
  }
  connect() {
    this.connects += 1;
  }
  close() {
    this.closed = true;
  }
  timeout() {
    return {
      emitWithAck: async (event: string, data: unknown) => {
        this.emitted.push([event, data]);
        return (this.replies[event] ?? (() => ({ ok: true })))(data);
      },
    };
  }
}

const sockets: FakeSocket[] = [];
vi.mock("../src/socket.js", async (original) => ({
  ...(await original<typeof import("../src/socket.js")>()),
  getSocket: (token: string) => {
    const s = new FakeSocket(token);
    sockets.push(s);
    return s;
  },
}));

const { useSocket } = await import("../src/useSocket.js");

afterEach(() => {
  sockets.length = 0;
});

function tokens() {
  let n = 0;
  return vi.fn(async () => `token-${++n}`);
}

describe("useSocket", () => {
  it("connects with a fetched token and tracks the connection", async () => {
    const getToken = tokens();
    const { result, unmount } = renderHook(() => useSocket({ getToken }));
    await waitFor(() => expect(sockets.length).toBe(1));
    const s = sockets[0];
    expect(s.auth).toEqual({ token: "token-1" });
    expect(s.connects).toBe(1);
    act(() => s.fire("connect"));
    expect(result.current.isConnected).toBe(true);
    act(() => s.fire("disconnect", "transport close"));
    expect(result.current.isConnected).toBe(false);
    unmount();
    expect(s.closed).toBe(true);
  });

  it("answers token:expiring with a fresh token over auth:refresh, kept for reconnects", async () => {
    const getToken = tokens();
    renderHook(() => useSocket({ getToken }));
    await waitFor(() => expect(sockets.length).toBe(1));
    const s = sockets[0];
    act(() => s.fire("connect"));
    await act(async () => s.fire("token:expiring", { exp: 1 }));
    await waitFor(() => expect(s.emitted).toContainEqual(["auth:refresh", { token: "token-2" }]));
    expect(s.auth).toEqual({ token: "token-2" });
  });

  it("comes back with a fresh token after the server ends the session or refuses the token", async () => {
    const getToken = tokens();
    renderHook(() => useSocket({ getToken }));
    await waitFor(() => expect(sockets.length).toBe(1));
    const s = sockets[0];
    act(() => s.fire("connect"));
    await act(async () => s.fire("disconnect", "io server disconnect"));
    await waitFor(() => expect(s.connects).toBe(2));
    expect(s.auth).toEqual({ token: "token-2" });
    await act(async () => s.fire("connect_error", new Error("Authentication error")));
    await waitFor(() => expect(s.connects).toBe(3));
    expect(s.auth).toEqual({ token: "token-3" });
    // A transport hiccup is socket.io-client's own to retry: no new token.
    await act(async () => s.fire("disconnect", "transport close"));
    expect(getToken).toHaveBeenCalledTimes(3);
  });

  it("says so when no token can be had", async () => {
    const getToken = vi.fn(async () => {
      throw new Error("unauthenticated");
    });
    const { result } = renderHook(() => useSocket({ getToken }));
    await waitFor(() => expect(result.current.error).toBe("unauthenticated"));
    expect(sockets.length).toBe(0);
  });

  it("after a reconnect, syncs every conversation from its last seq and hands on what was missed, in order", async () => {
    const seen: number[] = [];
    const getToken = tokens();
    renderHook(() => useSocket({ getToken, onMessage: (m) => seen.push(m.seq) }));
    await waitFor(() => expect(sockets.length).toBe(1));
    const s = sockets[0];
    const m = (seq: number) => ({ id: `m${seq}`, conversationId: "c1", seq, senderId: "bob", clientMsgId: `c${seq}`, content: "x", readAt: null, createdAt: "", editedAt: null, deletedAt: null });
    act(() => s.fire("connect"));
    act(() => s.fire("message:new", m(1)));
    act(() => s.fire("disconnect", "transport close"));
    s.replies.sync = () => ({ ok: true, messages: [m(2), m(3)], hasMore: false });
    await act(async () => s.fire("connect"));
    await waitFor(() => expect(seen).toEqual([1, 2, 3]));
    expect(s.emitted).toContainEqual(["sync", { conversations: [{ conversationId: "c1", afterSeq: 1 }] }]);
    // server:resync does the same without a reconnect.
    s.replies.sync = () => ({ ok: true, messages: [m(4)], hasMore: false });
    await act(async () => s.fire("server:resync", {}));
    await waitFor(() => expect(seen).toEqual([1, 2, 3, 4]));
  });
});

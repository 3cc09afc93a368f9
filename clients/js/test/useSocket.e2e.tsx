import { renderHook, waitFor } from "@testing-library/react";
import { io } from "socket.io-client";
import { expect, it } from "vitest";
import { request, useSocket, type Message, type ParleySocket } from "../src/index.js";

const GW = process.env.PARLEY_GW!;
const TOKEN_ALICE = process.env.TOKEN_ALICE!;
const TOKEN_BOB = process.env.TOKEN_BOB!;

it("connects after the token fetch, reports isConnected, recovers what it missed, closes on unmount", async () => {
  expect(GW, "PARLEY_GW is set by the Rust test that runs this file").toBeTruthy();
  const got: Message[] = [];
  let tokenFetches = 0;
  const { result, unmount } = renderHook(() =>
    useSocket({
      url: GW,
      getToken: async () => {
        tokenFetches += 1;
        return TOKEN_ALICE;
      },
      onMessage: (m) => got.push(m),
    }),
  );
  expect(result.current.isConnected).toBe(false);
  await waitFor(() => expect(result.current.isConnected).toBe(true), { timeout: 10_000 });
  expect(tokenFetches).toBe(1);

  // Bob, from another client, opens the DM and sends.
  const bob = io(GW, { auth: { token: TOKEN_BOB }, transports: ["websocket"], forceNew: true }) as ParleySocket;
  const opened = await request(bob, "conversation:open", { participantIds: ["alice"] });
  if (!opened.ok) throw new Error(JSON.stringify(opened));
  const conv = opened.conversation.id;
  await request(bob, "message:send", { conversationId: conv, clientMsgId: "b1", content: "live" });
  await waitFor(() => expect(got.map((m) => m.content)).toEqual(["live"]), { timeout: 10_000 });

  // Alice's connection drops; Bob keeps writing.
  const alice = result.current.socket!;
  alice.disconnect();
  await waitFor(() => expect(result.current.isConnected).toBe(false));
  for (const n of [2, 3, 4]) {
    const ack = await request(bob, "message:send", { conversationId: conv, clientMsgId: `b${n}`, content: `missed ${n}` });
    expect(ack.ok).toBe(true);
  }

  // It comes back: sync fills the gap, in order, once each.
  alice.connect();
  await waitFor(() => expect(result.current.isConnected).toBe(true), { timeout: 10_000 });
  await waitFor(() => expect(got.map((m) => m.content)).toEqual(["live", "missed 2", "missed 3", "missed 4"]), {
    timeout: 10_000,
  });
  expect(got.map((m) => m.seq)).toEqual([1, 2, 3, 4]);

  unmount();
  expect(alice.connected).toBe(false);
  bob.close();
});

it("after an auth failure it fetches a fresh token and connects", async () => {
  const tokens = ["not-a-valid-token", TOKEN_ALICE];
  let fetches = 0;
  const { result, unmount } = renderHook(() =>
    useSocket({
      url: GW,
      getToken: async () => tokens[Math.min(fetches++, tokens.length - 1)],
    }),
  );
  await waitFor(() => expect(result.current.isConnected).toBe(true), { timeout: 10_000 });
  expect(fetches).toBe(2);
  expect(result.current.error).toBeNull();
  unmount();
});

it("reports an error when no token can be had", async () => {
  const { result, unmount } = renderHook(() =>
    useSocket({
      url: GW,
      getToken: async () => {
        throw new Error("unauthenticated");
      },
    }),
  );
  await waitFor(() => expect(result.current.error).toBe("unauthenticated"));
  expect(result.current.isConnected).toBe(false);
  unmount();
});

"use client";
import { useEffect, useRef, useState } from "react";
import { getSocket, request, type ParleySocket } from "./socket.js";
import { InOrder } from "./order.js";
import type { Message } from "./types.js";

export interface UseSocketOptions {
  /** The gateway's URL; the page's own origin when absent. */
  url?: string;
  /** Where a fresh access token comes from: by default `GET /api/auth/token` with the cookie. */
  getToken?: () => Promise<string>;
  /** Every message, live or recovered by `sync` after a reconnect, once each, in seq order. */
  onMessage?: (message: Message) => void;
}

export interface UseSocket {
  socket: ParleySocket | null;
  isConnected: boolean;
  /** Set when no token could be had (signed out). */
  error: string | null;
}

async function fetchToken(): Promise<string> {
  const r = await fetch("/api/auth/token", { credentials: "include" });
  if (!r.ok) throw new Error(r.status === 401 ? "unauthenticated" : `token route answered ${r.status}`);
  const body = (await r.json()) as { token: string };
  return body.token;
}

/**
 * Connects to Parley once a token is fetched, tracks `isConnected`, fetches a fresh token and
 * reconnects after an auth failure or when the token is about to expire, remembers the last
 * `seq` of every conversation and calls `sync` after each reconnect, so nothing sent while the
 * connection was down is missed. Closes the socket on unmount.
 */
export function useSocket(options: UseSocketOptions = {}): UseSocket {
  const [socket, setSocket] = useState<ParleySocket | null>(null);
  const [isConnected, setConnected] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    let closed = false;
    let current: ParleySocket | null = null;
    const getToken = () => (optionsRef.current.getToken ?? fetchToken)();
    // Every message once, in seq order, live or recovered by sync (src/order.ts).
    let socketForSync: ParleySocket | null = null;
    const order = new InOrder(
      (m) => optionsRef.current.onMessage?.(m),
      () => {
        const s = socketForSync;
        if (!s) return null;
        return async (conversationId, afterSeq) => {
          const reply = await request(s, "sync", { conversations: [{ conversationId, afterSeq }] });
          return reply.ok ? reply : null;
        };
      },
      (again) => {
        if (!closed && socketForSync?.connected) setTimeout(again, 1_000);
      },
    );
    const deliver = (m: Message) => order.deliver(m);
    const catchUp = () => order.catchUp();

    const start = async () => {
      let token: string;
      try {
        token = await getToken();
      } catch (e) {
        if (!closed) setError(e instanceof Error ? e.message : String(e));
        return;
      }
      if (closed) return;
      const s = getSocket(token, optionsRef.current.url);
      current = s;
      socketForSync = s;
      let connectedBefore = false;
      s.on("connect", () => {
        setConnected(true);
        setError(null);
        if (connectedBefore) void catchUp();
        connectedBefore = true;
      });
      s.on("disconnect", (reason) => {
        setConnected(false);
        // The server ended the session (expiry, sign-out, drain): come back with a fresh token.
        if (reason === "io server disconnect" && !closed) void reconnectWithFreshToken(s);
      });
      s.on("connect_error", (err) => {
        if (err.message === "Authentication error" && !closed) void reconnectWithFreshToken(s);
      });
      s.on("message:new", deliver);
      // The gateway lost the broker for a while, this socket stayed open: what was announced
      // meanwhile may not have reached it.
      s.on("server:resync", () => void catchUp());
      s.on("token:expiring", async () => {
        try {
          const fresh = await getToken();
          s.auth = { token: fresh };
          await request(s, "auth:refresh", { token: fresh });
        } catch {
          // The server closes at exp; the disconnect handler reconnects if a token can be had.
        }
      });
      setSocket(s);
      s.connect();
    };

    let retrying = false;
    const reconnectWithFreshToken = async (s: ParleySocket) => {
      if (retrying) return;
      retrying = true;
      try {
        const fresh = await getToken();
        if (closed) return;
        s.auth = { token: fresh };
        s.connect();
      } catch (e) {
        if (!closed) setError(e instanceof Error ? e.message : String(e));
      } finally {
        retrying = false;
      }
    };

    void start();
    return () => {
      closed = true;
      current?.close();
      setConnected(false);
    };
  }, []);

  return { socket, isConnected, error };
}

"use client";
import { io, type Socket } from "socket.io-client";
import type { ClientEvents, ServerEvents } from "./types.js";

type Emit = {
  [E in keyof ClientEvents]: (data: ClientEvents[E]["data"], ack: (reply: ClientEvents[E]["reply"]) => void) => void;
};

export type ParleySocket = Socket<ServerEvents, Emit>;

/**
 * A Socket.IO client for Parley, authenticated with `token` (`io({ auth: { token } })`, as the
 * seed's `getSocket` did). It does not connect on creation: call `connect()` (the hook does).
 */
export function getSocket(token: string, url?: string): ParleySocket {
  const options = { auth: { token }, autoConnect: false, transports: ["websocket", "polling"] };
  return (url ? io(url, options) : io(options)) as ParleySocket;
}

/** Sends a request and waits for its acknowledgement. */
export function request<E extends keyof ClientEvents>(
  socket: ParleySocket,
  event: E,
  data: ClientEvents[E]["data"],
  timeoutMs = 10_000,
): Promise<ClientEvents[E]["reply"]> {
  // socket.io-client types emitWithAck loosely; the reply shape is the protocol's.
  return (socket.timeout(timeoutMs) as unknown as {
    emitWithAck: (e: string, d: unknown) => Promise<ClientEvents[E]["reply"]>;
  }).emitWithAck(event, data);
}

import { describe, expect, it } from "vitest";
import { getSocket } from "../src/index.js";

describe("getSocket", () => {
  it("carries the token in auth and does not connect on creation", () => {
    const socket = getSocket("a-token", "http://127.0.0.1:9");
    expect(socket.auth).toEqual({ token: "a-token" });
    expect(socket.connected).toBe(false);
    expect(socket.active).toBe(false);
    socket.close();
  });
});

export { getSocket, request, type ParleySocket } from "./socket.js";
export { useSocket, type UseSocket, type UseSocketOptions } from "./useSocket.js";
export type * from "./types.js";

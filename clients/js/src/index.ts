// @ces/client: the CES (Customer Event Stream) client for browsers and Node.

export {
  CesClient,
  type CesClientEvents,
  type CesClientOptions,
  type CesEvent,
  type ConnectionState,
  type StateChange,
  type WebSocketClass,
  type WebSocketLike,
} from "./client.js";
export type { PersistOption, StorageLike } from "./persist.js";
export { CesHttpError, register, type RegisterOptions, type Session } from "./register.js";
export type { TokenResult } from "./token.js";
export type { Gap, Position } from "./tracker.js";

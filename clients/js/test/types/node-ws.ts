// Compiles only if the `ws` package's WebSocket class fits the client's WebSocket option (checked by `npm test`).
import WebSocket from "ws";
import { CesClient } from "../../dist/index.js";

export const client = new CesClient({ url: "http://127.0.0.1:8080", getToken: async () => "t", WebSocket });

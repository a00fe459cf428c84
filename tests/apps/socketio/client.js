// Socket.IO clients against drover: node client.js URL CLIENTS MESSAGES MODE
// MODE `polling`: long-polling only; `websocket`: the default transports, each client
// waits for its upgrade to WebSocket before sending. Every client keeps drover's
// session cookie in engine.io-client's cookie jar (`withCredentials: true`), as a
// browser would, and sends MESSAGES acknowledged messages one after another.
// Prints one JSON line: per client, the workers that answered, the transports the
// server saw, the acknowledgements received, and any error.
"use strict";
const { io } = require("socket.io-client");

const [url, clientsArg, messagesArg, mode] = process.argv.slice(2);
const clients = Number(clientsArg);
const messages = Number(messagesArg);
const TIMEOUT_MS = 20000;

function runClient(i) {
  return new Promise((resolve) => {
    const result = { client: i, workers: [], transports: [], acks: 0, error: null };
    const socket = io(url, {
      transports: mode === "polling" ? ["polling"] : ["polling", "websocket"],
      upgrade: mode !== "polling",
      withCredentials: true,
      reconnection: false,
      forceNew: true,
      timeout: TIMEOUT_MS,
    });
    const timer = setTimeout(() => finish(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    let done = false;
    function finish(error) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      result.error = error;
      socket.close();
      resolve(result);
    }
    async function send() {
      try {
        for (let n = 0; n < messages; n++) {
          const reply = await socket.timeout(TIMEOUT_MS).emitWithAck("msg", n);
          if (reply.n !== n) throw new Error(`ack ${reply.n} for message ${n}`);
          result.acks += 1;
          if (!result.workers.includes(reply.worker)) result.workers.push(reply.worker);
          if (!result.transports.includes(reply.transport)) result.transports.push(reply.transport);
        }
        finish(null);
      } catch (e) {
        finish(String(e && e.message ? e.message : e));
      }
    }
    socket.on("connect_error", (e) => finish(`connect_error: ${e.message}`));
    socket.on("disconnect", (reason) => finish(`disconnected: ${reason}`));
    socket.on("connect", () => {
      const engine = socket.io.engine;
      if (mode === "polling" || engine.transport.name === "websocket") {
        send();
      } else {
        engine.once("upgrade", () => send());
        engine.once("upgradeError", (e) => finish(`upgrade failed: ${e.message}`));
      }
    });
  });
}

Promise.all(Array.from({ length: clients }, (_, i) => runClient(i))).then((results) => {
  console.log(JSON.stringify(results));
  process.exit(0);
});

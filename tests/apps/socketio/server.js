// A Socket.IO application as drover forks it: one process per worker, listening on
// $BIND:$PORT, with /health for drover's health check. Every acknowledged message
// answers with the worker that handled it and the transport it arrived on, so the
// test can check that each client stayed on one worker (tests/socketio.rs).
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT);
const host = process.env.BIND || "127.0.0.1";
const worker = process.env.WORKER_ID;

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

// Default options: long-polling first, then an upgrade to WebSocket. Without sticky
// sessions a client's requests reach workers that do not know its engine.io session
// and fail with "Session ID unknown".
const io = new Server(server);
io.on("connection", (socket) => {
  socket.on("msg", (n, ack) => {
    if (typeof ack === "function") {
      ack({ worker, n, transport: socket.conn.transport.name });
    }
  });
});

server.listen(port, host, () => {
  console.log(`socket.io worker ${worker} on ${host}:${port}`);
});

function stop() {
  io.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

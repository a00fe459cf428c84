// A WebSocket echo worker for tests/edge_protocols.rs: drover forks it with PORT and
// WORKER_ID. GET /health answers 200; GET / answers the worker id; an upgrade on /ws
// echoes every message as "<worker id>:<message>". Uses `ws`, which socket.io brings
// (installed by `npm ci` in this folder).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const id = process.env.WORKER_ID || '0';
const server = http.createServer((req, res) => {
  res.setHeader('X-Worker-Id', id);
  if (req.url === '/health') {
    res.end('ok\n');
    return;
  }
  res.end(`worker ${id}\n`);
});
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => {
  ws.on('message', (m) => ws.send(`${id}:${m}`));
});
server.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

// Socket.IO 4 peer of the werkmann push benchmark (bench/, `pushbench`).
//
// It mirrors the seed's push API so the same load generator drives it:
//   - each client is greeted with `Worker-ID:{W} Verbindungs-ID:{C} verbunden\n` (as a
//     `message` event), where W is this node's worker id and C the socket's id;
//   - `GET /?content=X` broadcasts X to every client of every node (`io.emit`);
//   - `GET /?to_worker_id=W&to_connection_id=C&content=X` delivers X to that one client
//     (`io.to(C).emit`: every socket is in the room named by its id);
//   - answers `ok`, or 400 with a reason;
//   - `POST /api/<method>` with a JSON body, the part of werkmann's GatewayWorker API
//     (docs/addressing.md) the benchmark's gateway rows call, done as Socket.IO users do it:
//     a uid is a room `uid:{uid}` and a group a room `group:{group}`, which the sockets join
//     (`io.in(socketId).socketsJoin(room)`: through the redis adapter, the node holding the
//     socket joins it) and pushes go to (`io.to(room).emit`):
//       bind_uid {client_id, uid}, join_group {client_id, group} → {"ok":true}
//       send_to_uid {uid, message}, send_to_group {group, message} → {"ok":true}
//     A client id is `{W}-{socket id}` as the greeting shows them. Unlike werkmann's, these
//     answers cannot say how many connections a push reached (Socket.IO's emit does not
//     know), and binding a socket to a uid does not leave its earlier uid's room.
//
// Usage:
//   node server.js [--ws 127.0.0.1:PORT] [--http 127.0.0.1:PORT] [--worker-id W]
//                  [--redis redis://127.0.0.1:PORT]
// --ws serves Socket.IO clients (WebSocket transport only), --http the push API; one process
// may do both (the all-in-one row) or one of them (the cluster row). --redis makes the nodes
// share broadcasts and room deliveries through @socket.io/redis-adapter.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const o = { ws: null, http: null, workerId: "0", redis: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === "--ws") o.ws = v;
    else if (a === "--http") o.http = v;
    else if (a === "--worker-id") o.workerId = v;
    else if (a === "--redis") o.redis = v;
    else throw new Error(`unknown option ${a}`);
    i++;
  }
  if (!o.ws && !o.http) throw new Error("give --ws, --http or both");
  return o;
}

function hostPort(s) {
  const i = s.lastIndexOf(":");
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const options = {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    httpCompression: false,
  };
  let wsServer = null;
  let io;
  if (o.ws) {
    wsServer = http.createServer();
    io = new Server(wsServer, options);
  } else {
    io = new Server(options);
  }
  if (o.redis) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: o.redis });
    const sub = pub.duplicate();
    pub.on("error", (e) => console.error("redis pub:", e.message));
    sub.on("error", (e) => console.error("redis sub:", e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }

  io.on("connection", (socket) => {
    socket.send(`Worker-ID:${o.workerId} Verbindungs-ID:${socket.id} verbunden\n`);
  });

  // The gateway methods: a room per uid and per group.
  const gateway = {
    bind_uid: (p) => join(p.client_id, `uid:${p.uid}`),
    join_group: (p) => join(p.client_id, `group:${p.group}`),
    send_to_uid: (p) => io.to(`uid:${p.uid}`).emit("message", p.message),
    send_to_group: (p) => io.to(`group:${p.group}`).emit("message", p.message),
  };
  const need = {
    bind_uid: ["client_id", "uid"],
    join_group: ["client_id", "group"],
    send_to_uid: ["uid", "message"],
    send_to_group: ["group", "message"],
  };
  function join(clientId, room) {
    const dash = String(clientId).indexOf("-");
    if (dash < 0) throw new Error(`client_id ${clientId} is not WORKER-SOCKETID`);
    io.in(String(clientId).slice(dash + 1)).socketsJoin(room);
  }
  function api_call(req, res, method) {
    const answer = (code, obj) => {
      const text = JSON.stringify(obj);
      res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
      res.end(text);
    };
    if (!gateway[method]) return answer(404, { error: `no method ${method}` });
    if (req.method !== "POST") return answer(405, { error: "POST only" });
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let p;
      try {
        p = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (e) {
        return answer(400, { error: `malformed JSON body: ${e.message}` });
      }
      for (const k of need[method]) {
        if (p[k] === undefined) return answer(400, { error: `missing parameter ${k}` });
      }
      try {
        gateway[method](p);
      } catch (e) {
        return answer(400, { error: e.message });
      }
      answer(200, { ok: true });
    });
  }

  if (o.http) {
    const api = http.createServer((req, res) => {
      if (req.url.startsWith("/api/")) return api_call(req, res, req.url.slice(5).split("?")[0]);
      const url = new URL(req.url, "http://x");
      const q = url.searchParams;
      const content = q.get("content");
      const w = q.get("to_worker_id");
      const c = q.get("to_connection_id");
      const answer = (code, text) => {
        res.writeHead(code, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(text) });
        res.end(text);
      };
      if (!content) return answer(400, "missing content: nothing published\n");
      if (w === null && c === null) {
        io.emit("message", content);
      } else if (w !== null && c !== null) {
        io.to(c).emit("message", content);
      } else {
        return answer(400, "a targeted push needs both to_worker_id and to_connection_id\n");
      }
      answer(200, "ok");
    });
    api.keepAliveTimeout = 60000;
    const { host, port } = hostPort(o.http);
    await new Promise((resolve) => api.listen(port, host, resolve));
  }
  if (wsServer) {
    const { host, port } = hostPort(o.ws);
    await new Promise((resolve) => wsServer.listen({ port, host, backlog: 4096 }, resolve));
  }
  const stop = () => process.exit(0);
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  console.error(`socket.io peer up: ws ${o.ws} http ${o.http} worker ${o.workerId} redis ${o.redis}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

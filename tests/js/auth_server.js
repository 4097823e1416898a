// An app's auth endpoint, as a Pusher app serves one: POST /pusher/auth with the form fields
// socket_id and channel_name (what pusher-js and Laravel Echo send) → the `pusher` SDK's
// signature, as JSON, with CORS for a page of another origin. On a presence channel the user is
// `u{socket_id}`, named `n{socket_id}`.
// Usage: node auth_server.js PORT APP_ID KEY SECRET   (prints "listening" when ready)
const http = require('http');
const PusherServer = require('pusher');
const [port, appId, key, secret] = process.argv.slice(2);
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', useTLS: false });

http
  .createServer((req, res) => {
    const cors = {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Headers': 'Content-Type, X-CSRF-TOKEN, X-Socket-ID',
    };
    if (req.method === 'OPTIONS') {
      res.writeHead(204, cors);
      return res.end();
    }
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      if (req.url !== '/pusher/auth' || !socketId || !channel || channel.includes('forbidden')) {
        res.writeHead(403, cors);
        return res.end('forbidden');
      }
      res.writeHead(200, Object.assign({ 'Content-Type': 'application/json' }, cors));
      const presence = channel.startsWith('presence-')
        ? { user_id: 'u' + socketId, user_info: { name: 'n' + socketId } }
        : undefined;
      res.end(JSON.stringify(server.authorizeChannel(socketId, channel, presence)));
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log('listening'));

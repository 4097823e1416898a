// A webhook endpoint, as an app serves one: each request checked with the `pusher` SDK's
// `webhook()` (X-Pusher-Key, X-Pusher-Signature over the body), its events printed one per
// line: "event NAME CHANNEL [USER_ID or EVENT]", or "invalid". The first request is answered
// 500 (nothing printed) when FAIL_FIRST is 1, so the sender must retry.
// Usage: node webhook_receiver.js PORT APP_ID KEY SECRET FAIL_FIRST
const http = require('http');
const PusherServer = require('pusher');

const [port, appId, key, secret, failFirst] = process.argv.slice(2);
const pusher = new PusherServer({ appId, key, secret });
let failed = failFirst !== '1';

http
  .createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (!failed) {
        failed = true;
        res.writeHead(500);
        res.end('not now');
        return;
      }
      const hook = pusher.webhook({ headers: req.headers, rawBody: body });
      if (!hook.isValid()) {
        console.log('invalid ' + body);
      } else {
        for (const e of hook.getEvents()) {
          const extra = e.name === 'client_event' ? e.event + ' ' + e.data + ' ' + (e.user_id || '-') : e.user_id || '';
          console.log(('event ' + e.name + ' ' + e.channel + ' ' + extra).trim());
        }
      }
      res.writeHead(200);
      res.end('{}');
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log('listening'));

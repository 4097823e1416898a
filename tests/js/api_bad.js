// Bad requests to the Pusher HTTP API, each signed as the spec says except for what it gets
// wrong; prints "CASE STATUS BODY" per case. Usage: node api_bad.js HTTP_PORT APP_ID KEY SECRET
const crypto = require('crypto');
const http = require('http');
const [port, appId, key, secret] = process.argv.slice(2);

function request(path, body, { ts = Math.floor(Date.now() / 1000), md5, signWith = secret, app = appId } = {}) {
  const full = `/apps/${app}${path}`;
  const params = {
    auth_key: key,
    auth_timestamp: String(ts),
    auth_version: '1.0',
    body_md5: md5 || crypto.createHash('md5').update(body).digest('hex'),
  };
  const query = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
  const sig = crypto.createHmac('sha256', signWith).update(`POST\n${full}\n${query}`).digest('hex');
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: 'POST', path: `${full}?${query}&auth_signature=${sig}`,
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
      (res) => {
        let b = '';
        res.on('data', (c) => (b += c));
        res.on('end', () => resolve(`${res.statusCode} ${b}`));
      });
    req.on('error', (e) => resolve(`error ${e}`));
    req.end(body);
  });
}

const ev = (o) => JSON.stringify(Object.assign({ name: 'e', channel: 'news', data: '{}' }, o));
(async () => {
  const now = Math.floor(Date.now() / 1000);
  const cases = [
    ['stale', request('/events', ev({}), { ts: now - 601 })],
    ['md5', request('/events', ev({}), { md5: '0'.repeat(32) })],
    ['signature', request('/events', ev({}), { signWith: 'not-the-secret' })],
    ['unknown-app', request('/events', ev({}), { app: 'nope' })],
    ['oversize', request('/events', ev({ data: 'x'.repeat(11 * 1024) }))],
    ['malformed', request('/events', '{"name":')],
    ['bad-channel', request('/events', ev({ channel: 'a b' }))],
    ['too-many', request('/events', JSON.stringify({ name: 'e', data: '{}', channels: Array.from({ length: 101 }, (_, i) => 'c' + i) }))],
    ['empty-batch', request('/batch_events', '{"batch":[]}')],
    ['unknown-info', request('/events', ev({ info: 'werkmann_reprot' }))],
    ['bad-user', request('/users/a%20b/terminate_connections', '{}')],
    ['unknown-user-api', request('/users/alice/nonsense', '{}')],
    ['terminate', request('/users/alice/terminate_connections', '{}')],
    ['good', request('/events', ev({}))],
  ];
  for (const [name, p] of cases) console.log(name + ' ' + (await p));
})();

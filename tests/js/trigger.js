// Publish one event with the `pusher` server SDK.
// Usage: node trigger.js HTTP_PORT APP_ID KEY SECRET CHANNEL EVENT DATA_JSON
const PusherServer = require('pusher');
const [port, appId, key, secret, channel, event, data] = process.argv.slice(2);
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port, useTLS: false });
server
  .trigger(channel, event, JSON.parse(data))
  .then((r) => {
    console.log('status ' + r.status);
    process.exit(r.status === 200 ? 0 : 1);
  })
  .catch((e) => {
    console.log('error ' + (e.status || '') + ' ' + (e.body || e));
    process.exit(1);
  });

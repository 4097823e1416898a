// The subscriptions that make webhook events, on two nodes: a public channel (on both nodes,
// then left), a presence channel (one user with a socket on each node), a client event on a
// private channel, and last a channel "marker" subscribed and left. Prints "done" when all is
// sent; the test reads what the webhook receiver got.
// Usage: node webhook_clients.js WS_A,WS_B HTTP_PORT APP_ID KEY SECRET
const { client: testClient } = require('./clients');
const PusherServer = require('pusher');

const [wsPorts, httpPort, appId, key, secret] = process.argv.slice(2);
const [portA, portB] = wsPorts.split(',');
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port: httpPort, useTLS: false });
setTimeout(() => {
  console.log('FAIL timed out');
  process.exit(1);
}, 20000).unref();

function client(port) {
  const authorize = (socketId, channelName) => {
    const presence = channelName.startsWith('presence-') ? { user_id: 'u1' } : undefined;
    return server.authorizeChannel(socketId, channelName, presence);
  };
  return testClient(key, port, authorize);
}
const subscribed = (c, name) =>
  new Promise((res) => c.subscribe(name).bind('pusher:subscription_succeeded', res));
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

(async () => {
  const a = client(portA);
  const b = client(portB);
  await subscribed(a, 'news');
  await subscribed(b, 'news');
  a.unsubscribe('news');
  b.unsubscribe('news');
  await subscribed(a, 'presence-room');
  await subscribed(b, 'presence-room');
  await subscribed(a, 'private-chat');
  await subscribed(b, 'private-chat');
  a.channel('private-chat').trigger('client-typing', { who: 'a' });
  // The client event must reach the other side before the channel is left.
  await new Promise((res) => b.channel('private-chat').bind('client-typing', res));
  a.unsubscribe('presence-room');
  b.unsubscribe('presence-room');
  a.unsubscribe('private-chat');
  b.unsubscribe('private-chat');
  await sleep(0);
  await subscribed(a, 'marker');
  a.unsubscribe('marker');
  console.log('done');
  // Stay until the test is done reading (the nodes see unsubscribes, not closes).
  await sleep(60000);
})();

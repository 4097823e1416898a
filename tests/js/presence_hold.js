// Presence members through a channel server's restart and a killed node, driven by the test
// over stdin and stdout. Usage: node presence_hold.js WS_A,WS_B HTTP_PORT APP_ID KEY SECRET
// Prints "ready" once u1 (on the first node) and u2 (on the second) are members of
// presence-room; then, told "restarted", waits until the API lists both again ("ok rejoined");
// told "killed" (the second node), waits for u2's member_removed at u1 and the API listing u1
// alone ("ok removed"). Exits non-zero with the reason on a failure or after 60 s.
const readline = require('readline');
const { client: testClient } = require('./clients');
const PusherServer = require('pusher');

const [wsPorts, httpPort, appId, key, secret] = process.argv.slice(2);
const [portA, portB] = wsPorts.split(',');
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port: httpPort, useTLS: false });

function fail(why) {
  console.log('FAIL ' + why);
  process.exit(1);
}
setTimeout(() => fail('timed out'), 60000).unref();

function client(port, user) {
  const authorize = (socketId, channelName) =>
    server.authorizeChannel(socketId, channelName, { user_id: user, user_info: {} });
  return testClient(key, port, authorize);
}

const once = (emitter, event) => new Promise((res) => emitter.bind(event, res));
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// The API's list of presence-room's users, polled until it is `want`.
async function usersUntil(want) {
  let got = '';
  for (let i = 0; i < 400; i++) {
    try {
      const r = await server.get({ path: '/channels/presence-room/users' });
      got = (await r.json()).users.map((u) => u.id).sort().join(',');
      if (got === want) return;
    } catch (e) {
      got = 'error ' + (e.status || e);
    }
    await sleep(50);
  }
  fail('users: ' + got + ', not ' + want);
}

(async () => {
  const p1 = client(portA, 'u1');
  const p2 = client(portB, 'u2');
  const room1 = p1.subscribe('presence-room');
  await once(room1, 'pusher:subscription_succeeded');
  // Who left, as u1 hears it (from the start: the news may come before the test says why).
  const removed = [];
  room1.bind('pusher:member_removed', (m) => removed.push(m.id));
  const room2 = p2.subscribe('presence-room');
  await once(room2, 'pusher:subscription_succeeded');
  await usersUntil('u1,u2');
  console.log('ready');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === 'restarted') {
      await usersUntil('u1,u2');
      console.log('ok rejoined');
    } else if (line === 'killed') {
      await usersUntil('u1');
      for (let i = 0; i < 400 && removed.length === 0; i++) await sleep(50);
      if (removed.join(',') !== 'u2') fail('member_removed: ' + JSON.stringify(removed));
      if (room1.members.count !== 1) fail('members at u1: ' + room1.members.count);
      console.log('ok removed');
      process.exit(0);
    }
  }
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));

// The Pusher protocol against a running werkmann, with the real libraries: pusher-js (the
// browser library's Node build) as clients and the `pusher` server SDK as the publisher.
// Usage: node pusher_roundtrip.js WS_PORT_A[,WS_PORT_B] HTTP_PORT APP_ID KEY SECRET
// (client a on the first node, b on the second: every check crosses nodes)
// Prints one line per check ("ok NAME"); exits non-zero with the reason on the first failure.
const { client: testClient } = require('./clients');
const PusherServer = require('pusher');

const [wsPorts, httpPort, appId, key, secret] = process.argv.slice(2);
const [portA, portB = portA] = wsPorts.split(',');
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port: httpPort, useTLS: false });

function fail(why) {
  console.log('FAIL ' + why);
  process.exit(1);
}
setTimeout(() => fail('timed out'), 20000).unref();

function client(k = key, wsPort = portA, user = null) {
  const authorize = (socketId, channelName) => {
    if (channelName.includes('forged')) return { auth: key + ':' + '0'.repeat(64) };
    const presence = channelName.startsWith('presence-') ? { user_id: user, user_info: { name: user } } : undefined;
    return server.authorizeChannel(socketId, channelName, presence);
  };
  return testClient(k, wsPort, authorize, {
    userAuthentication: {
      customHandler: ({ socketId }, cb) => {
        const signed = server.authenticateUser(socketId, { id: user || 'nobody', user_info: { n: 1 } });
        if (user === 'forged') signed.auth = key + ':' + '0'.repeat(64);
        cb(null, signed);
      },
    },
  });
}

// The code of a `pusher:error` as pusher-js reports it (on an open connection, or while
// connecting).
const codeOf = (e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code);
const once = (emitter, event) => new Promise((res) => emitter.bind(event, res));
const connected = (c) =>
  new Promise((res, rej) => {
    c.connection.bind('connected', () => res(c.connection.socket_id));
    c.connection.bind('failed', () => rej(new Error('failed')));
  });

(async () => {
  const a = client(key, portA);
  const b = client(key, portB);
  const [idA, idB] = await Promise.all([connected(a), connected(b)]);
  if (!/^\d+\.\d+$/.test(idA) || idA === idB) fail('socket ids ' + idA + ' ' + idB);
  console.log('ok connected ' + idA + ' ' + idB);

  const newsA = a.subscribe('news');
  const newsB = b.subscribe('news');
  const roomA = a.subscribe('private-room');
  const roomB = b.subscribe('private-room');
  await Promise.all([newsA, newsB, roomA, roomB].map((ch) => once(ch, 'pusher:subscription_succeeded')));
  console.log('ok subscribed');

  // Channel queries, counted cluster-wide: news has a subscriber on each node.
  const newsInfo = await (await server.get({ path: '/channels/news', params: { info: 'subscription_count' } })).json();
  if (newsInfo.occupied !== true || newsInfo.subscription_count !== 2) fail('channel info: ' + JSON.stringify(newsInfo));
  const listed = await (await server.get({ path: '/channels' })).json();
  if (Object.keys(listed.channels).sort().join(',') !== 'news,private-room') fail('channels: ' + JSON.stringify(listed));
  const privates = await (await server.get({ path: '/channels', params: { filter_by_prefix: 'private-' } })).json();
  if (Object.keys(privates.channels).join(',') !== 'private-room') fail('private channels: ' + JSON.stringify(privates));
  const none = await (await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  if (JSON.stringify(none.channels) !== '{}') fail('no presence channels yet: ' + JSON.stringify(none));
  const empty = await (await server.get({ path: '/channels/nobody-here', params: { info: 'subscription_count' } })).json();
  if (empty.occupied !== false || empty.subscription_count !== 0) fail('empty channel: ' + JSON.stringify(empty));
  try {
    await server.get({ path: '/channels', params: { info: 'user_count' } });
    fail('user_count without the presence- prefix was answered');
  } catch (e) {
    if (e.status !== 400) fail('user_count without prefix: ' + e.status);
  }
  // `info` on events: the counts once published.
  const infoNews = Promise.all([once(newsA, 'counted'), once(newsB, 'counted')]);
  const counted = await (await server.trigger('news', 'counted', {}, { info: 'subscription_count,user_count' })).json();
  await infoNews;
  if (JSON.stringify(counted) !== '{"channels":{"news":{"subscription_count":2}}}') fail('events info: ' + JSON.stringify(counted));
  const infoBatch = Promise.all([once(newsA, 'counted2'), once(roomB, 'counted3')]);
  const batchCounted = await (
    await server.triggerBatch([
      { channel: 'news', name: 'counted2', data: '{}', info: 'subscription_count' },
      { channel: 'private-room', name: 'counted3', data: '{}' },
    ])
  ).json();
  await infoBatch;
  if (JSON.stringify(batchCounted) !== '{"batch":[{"subscription_count":2},{}]}') fail('batch info: ' + JSON.stringify(batchCounted));
  console.log('ok channel queries');

  // werkmann's delivery reports (`info: 'werkmann_report'`): the sockets each channel's event
  // was written to, across nodes, once every instance it reached reported.
  const reportOf = (r, channel) => {
    const rep = channel === undefined ? r : r.channels && r.channels[channel] && r.channels[channel].werkmann_report;
    if (!rep || rep.instances !== rep.reported) fail('report incomplete: ' + JSON.stringify(r));
    return rep.reached;
  };
  const gotReported = Promise.all([once(newsA, 'reported'), once(newsB, 'reported')]);
  const reported = await (await server.trigger('news', 'reported', {}, { info: 'werkmann_report' })).json();
  await gotReported;
  if (reportOf(reported, 'news') !== 2) fail('report: ' + JSON.stringify(reported));
  const onlyB = once(newsB, 'reported-b');
  const skipped = await (
    await server.trigger(['news', 'nobody-here'], 'reported-b', {}, { socket_id: idA, info: 'subscription_count,werkmann_report' })
  ).json();
  await onlyB;
  if (reportOf(skipped, 'news') !== 1 || reportOf(skipped, 'nobody-here') !== 0 || skipped.channels.news.subscription_count !== 2)
    fail('report without the excluded socket: ' + JSON.stringify(skipped));
  const batchReported = await (
    await server.triggerBatch([
      { channel: 'private-room', name: 'reported3', data: '{}', info: 'werkmann_report' },
      { channel: 'news', name: 'reported4', data: '{}' },
    ])
  ).json();
  if (reportOf(batchReported.batch[0].werkmann_report) !== 2 || JSON.stringify(batchReported.batch[1]) !== '{}')
    fail('batch report: ' + JSON.stringify(batchReported));
  console.log('ok delivery reports');

  // A publish through the server SDK reaches both; `data` arrives as it was sent.
  const got = Promise.all([once(newsA, 'hello'), once(newsB, 'hello')]);
  await server.trigger('news', 'hello', { text: 'hi "all"', n: 1 });
  const [ga, gb] = await got;
  if (ga.text !== 'hi "all"' || gb.n !== 1) fail('hello: ' + JSON.stringify([ga, gb]));
  console.log('ok trigger');

  // Excluding a socket id: only b gets it.
  let aGot = false;
  newsA.bind('only-b', () => (aGot = true));
  const bGot = once(newsB, 'only-b');
  await server.trigger('news', 'only-b', 'x', { socket_id: idA });
  await bGot;
  // A later event to both proves a's would have come first.
  const marker = Promise.all([once(newsA, 'marker'), once(newsB, 'marker')]);
  await server.trigger('news', 'marker', {});
  await marker;
  if (aGot) fail('the excluded socket got the event');
  console.log('ok socket_id excluded');

  // Several channels, and a batch.
  const both = Promise.all([once(newsA, 'multi'), once(roomB, 'multi')]);
  await server.trigger(['news', 'private-room'], 'multi', { m: true });
  await both;
  const batch = Promise.all([once(newsB, 'b1'), once(roomA, 'b2')]);
  await server.triggerBatch([
    { channel: 'news', name: 'b1', data: { i: 1 } },
    { channel: 'private-room', name: 'b2', data: { i: 2 } },
  ]);
  await batch;
  console.log('ok channels and batch');

  // A client event on the private channel reaches the others, not its sender.
  let selfGot = false;
  roomA.bind('client-typing', () => (selfGot = true));
  const typing = once(roomB, 'client-typing');
  roomA.trigger('client-typing', { who: 'a' });
  const t = await typing;
  if (t.who !== 'a') fail('client event: ' + JSON.stringify(t));
  const m2 = Promise.all([once(roomA, 'marker2'), once(roomB, 'marker2')]);
  await server.trigger('private-room', 'marker2', {});
  await m2;
  if (selfGot) fail('the sender got its own client event');
  console.log('ok client event');

  // A forged signature is refused on the channel.
  const forged = a.subscribe('private-forged');
  const err = await once(forged, 'pusher:subscription_error');
  if (err.status !== 401) fail('forged: ' + JSON.stringify(err));
  console.log('ok forged signature refused');

  // After unsubscribing, nothing more arrives.
  b.unsubscribe('news');
  let late = false;
  newsB.bind('after', () => (late = true));
  const m3 = once(newsA, 'after');
  await server.trigger('news', 'after', {});
  await m3;
  const m4 = once(roomB, 'marker3');
  await server.trigger('private-room', 'marker3', {});
  await m4;
  if (late) fail('an unsubscribed client got an event');
  console.log('ok unsubscribed');

  // A bad secret is refused by the API with 401.
  const wrong = new PusherServer({ appId, key, secret: 'wrong', host: '127.0.0.1', port: httpPort, useTLS: false });
  try {
    await wrong.trigger('news', 'x', {});
    fail('a wrongly signed trigger was accepted');
  } catch (e) {
    if (e.status !== 401) fail('wrong secret: ' + e.status + ' ' + e.body);
  }
  console.log('ok bad signature 401');

  // An unknown key: error 4001, no reconnection.
  const stranger = client('nokey');
  const e4001 = await new Promise((res) => stranger.connection.bind('error', res));
  const code = e4001 && e4001.error && e4001.error.data && e4001.error.data.code;
  if (code !== 4001) fail('unknown key: ' + JSON.stringify(e4001));
  stranger.disconnect();
  console.log('ok unknown key 4001');

  // Presence across nodes: u1 on the first node, u2 on the second, then u1 again (a second
  // socket) on the second; the members and member_added/removed are exact.
  const p1 = client(key, portA, 'u1');
  const p2 = client(key, portB, 'u2');
  const p3 = client(key, portB, 'u1');
  await Promise.all([p1, p2, p3].map(connected));
  const seen = { added: [], removed: [] };
  const room1 = p1.subscribe('presence-room');
  const first = await once(room1, 'pusher:subscription_succeeded');
  if (first.count !== 1 || first.me.id !== 'u1' || first.me.info.name !== 'u1') fail('presence first: ' + JSON.stringify(first));
  room1.bind('pusher:member_added', (m) => seen.added.push(m.id));
  room1.bind('pusher:member_removed', (m) => seen.removed.push(m.id));
  const u2Added = once(room1, 'pusher:member_added');
  const room2 = p2.subscribe('presence-room');
  const second = await once(room2, 'pusher:subscription_succeeded');
  const ids = Object.keys(second.members).sort().join(',');
  if (second.count !== 2 || ids !== 'u1,u2' || second.members.u1.name !== 'u1') fail('presence second: ' + JSON.stringify(second));
  const added = await u2Added;
  if (added.id !== 'u2' || added.info.name !== 'u2') fail('member_added: ' + JSON.stringify(added));
  const room2Added = [];
  room2.bind('pusher:member_added', (m) => room2Added.push(m.id));
  room2.bind('pusher:member_removed', (m) => seen.removed.push('at2:' + m.id));
  const room3 = p3.subscribe('presence-room');
  const third = await once(room3, 'pusher:subscription_succeeded');
  if (third.count !== 2) fail('presence third: ' + JSON.stringify(third));
  // A client event on a presence channel names its sender's user id.
  const hi = new Promise((res) => room2.bind('client-hi', (d, meta) => res([d, meta])));
  room1.trigger('client-hi', { x: 1 });
  const [hiData, hiMeta] = await hi;
  if (hiData.x !== 1 || !hiMeta || hiMeta.user_id !== 'u1') fail('presence client event: ' + JSON.stringify([hiData, hiMeta]));
  const pm = Promise.all([once(room1, 'pm'), once(room2, 'pm'), once(room3, 'pm')]);
  await server.trigger('presence-room', 'pm', {});
  await pm;
  if (seen.added.length !== 1 || room2Added.length !== 0) fail('a second socket of u1 was announced: ' + JSON.stringify([seen, room2Added]));
  console.log('ok presence members across nodes');
  // u1's first socket goes: u1 is still there (its second socket); then the second goes too.
  p1.disconnect();
  const pm2 = once(room2, 'pm2');
  await server.trigger('presence-room', 'pm2', {});
  await pm2;
  const usersNow = async () => (await (await server.get({ path: '/channels/presence-room/users' })).json()).users.map((u) => u.id).sort().join(',');
  if (seen.removed.length !== 0 || room2.members.count !== 2) fail('u1 removed while a socket of it stays: ' + JSON.stringify(seen));
  const u1Removed = new Promise((res) => room2.bind('pusher:member_removed', res));
  p3.disconnect();
  const removed = await u1Removed;
  if (removed.id !== 'u1' || room2.members.count !== 1) fail('member_removed: ' + JSON.stringify(removed));
  const pm3 = once(room2, 'pm3');
  await server.trigger('presence-room', 'pm3', {});
  await pm3;
  if (seen.removed.join(',') !== 'at2:u1') fail('member_removed more than once: ' + JSON.stringify(seen));
  const members = await usersNow();
  if (members !== 'u2') fail('users of presence-room: ' + members);
  const presences = await (await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  if (JSON.stringify(presences.channels) !== '{"presence-room":{"user_count":1}}') fail('presence channels: ' + JSON.stringify(presences));
  const info = await (await server.get({ path: '/channels/presence-room', params: { info: 'user_count' } })).json();
  if (info.occupied !== true || info.user_count !== 1) fail('channel info: ' + JSON.stringify(info));
  console.log('ok presence member_removed and users');
  p2.disconnect();

  // User sign-in: alice on both nodes, bob on the second; send-to-user reaches alice's sockets
  // wherever they are, and only hers.
  const alice1 = client(key, portA, 'alice');
  const alice2 = client(key, portB, 'alice');
  const bob = client(key, portB, 'bob');
  const users = [alice1, alice2, bob];
  await Promise.all(users.map(connected));
  users.forEach((u) => u.signin());
  const userChannelUp = (u) =>
    new Promise((res) => {
      const poll = () => {
        const ch = u.user.serverToUserChannel;
        if (ch && ch.subscribed) res();
        else setTimeout(poll, 20);
      };
      poll();
    });
  await Promise.all(users.map(userChannelUp));
  if (alice1.user.user_data.id !== 'alice' || bob.user.user_data.id !== 'bob') fail('user data');
  console.log('ok signed in');
  let bobGot = false;
  bob.user.bind('greet', () => (bobGot = true));
  const greeted = Promise.all([once(alice1.user, 'greet'), once(alice2.user, 'greet')]);
  await server.sendToUser('alice', 'greet', { to: 'alice' });
  const [g1, g2] = await greeted;
  if (g1.to !== 'alice' || g2.to !== 'alice') fail('send to user: ' + JSON.stringify([g1, g2]));
  const bobMarker = once(bob.user, 'marker');
  await server.sendToUser('bob', 'marker', {});
  await bobMarker;
  if (bobGot) fail("bob got alice's event");
  console.log('ok send to user');

  // A forged sign-in: error 4009, the socket closed.
  const forger = client(key, portA, 'forged');
  await connected(forger);
  const e4009 = new Promise((res) => forger.connection.bind('error', res));
  forger.signin();
  const fe = await e4009;
  if (codeOf(fe) !== 4009) fail('forged sign-in: ' + JSON.stringify(fe));
  console.log('ok forged sign-in 4009');

  // terminate_connections: alice's sockets on both nodes go (4009), bob's stays.
  const gone = (c) =>
    new Promise((res) => c.connection.bind('error', (e) => codeOf(e) === 4009 && res()));
  const bothGone = Promise.all([gone(alice1), gone(alice2)]);
  await server.terminateUserConnections('alice');
  await bothGone;
  const stillBob = once(bob.user, 'after-terminate');
  await server.sendToUser('bob', 'after-terminate', {});
  await stillBob;
  if (bob.connection.state !== 'connected') fail('bob was disconnected: ' + bob.connection.state);
  console.log('ok terminate connections');
  users.concat([forger]).forEach((u) => u.disconnect());

  a.disconnect();
  b.disconnect();
  console.log('done');
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));

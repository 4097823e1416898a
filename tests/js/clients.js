// What the test scripts share: a pusher-js client of one node as every test makes it (plain
// ws://, no stats), its channels authorized by `authorize(socketId, channelName)` (an auth
// object, as the `pusher` SDK's `authorizeChannel` gives), with `extra` options on top.
const Pusher = require('pusher-js');

exports.client = (key, port, authorize, extra = {}) =>
  new Pusher(key, {
    cluster: 'local',
    wsHost: '127.0.0.1',
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => cb(null, authorize(socketId, channelName)),
    },
    ...extra,
  });

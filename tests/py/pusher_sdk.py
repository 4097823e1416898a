"""The PyPI `pusher` server SDK (3.3) against running werkmann nodes, with raw Pusher protocol
clients (Python `websockets`) on two nodes: triggering, batching, `socket_id` exclusion,
presence auth made by the SDK, reading a presence channel's info and users, terminating a
user's connections, and a wrongly signed request refused.

Usage: pusher_sdk.py WS_A,WS_B HTTP_PORT APP_ID KEY SECRET
Prints "ok NAME" per check; exits 1 with "FAIL reason" on the first failure.
"""

import asyncio
import hashlib
import hmac
import json
import sys

import pusher
import websockets

WAIT = 10


def fail(why):
    print("FAIL " + why, flush=True)
    sys.exit(1)


class Socket:
    """A raw Pusher protocol client."""

    @classmethod
    async def open(cls, port, key):
        s = cls()
        s.ws = await websockets.connect(f"ws://127.0.0.1:{port}/app/{key}?protocol=7")
        hello = await s.next()
        if hello["event"] != "pusher:connection_established":
            fail("no connection_established: %r" % hello)
        s.socket_id = json.loads(hello["data"])["socket_id"]
        return s

    async def send(self, event, data, channel=None):
        frame = {"event": event, "data": data}
        if channel:
            frame["channel"] = channel
        await self.ws.send(json.dumps(frame))

    async def next(self):
        try:
            return json.loads(await asyncio.wait_for(self.ws.recv(), WAIT))
        except Exception as e:  # a timeout or a closed connection
            fail("no frame: %r" % e)

    async def expect(self, event, channel=None):
        f = await self.next()
        if f.get("event") != event or (channel and f.get("channel") != channel):
            fail("expected %s on %s, got %r" % (event, channel, f))
        return f


async def main(ws_ports, http_port, app_id, key, secret):
    port_a, port_b = ws_ports.split(",")
    sdk = pusher.Pusher(app_id=app_id, key=key, secret=secret, host="127.0.0.1",
                        port=int(http_port), ssl=False)
    call = lambda f, *args, **kw: asyncio.to_thread(f, *args, **kw)
    a = await Socket.open(port_a, key)
    b = await Socket.open(port_b, key)
    for s in (a, b):
        await s.send("pusher:subscribe", {"channel": "news"})
        await s.expect("pusher_internal:subscription_succeeded", "news")
    # Presence, the auth made by the SDK: alice, then bob.
    async def join(s, user):
        auth = sdk.authenticate("presence-room", s.socket_id, {"user_id": user, "user_info": {"n": user}})
        await s.send("pusher:subscribe", dict(auth, channel="presence-room"))
        f = await s.expect("pusher_internal:subscription_succeeded", "presence-room")
        return json.loads(f["data"])

    got = await join(a, "alice")
    if got["presence"]["count"] != 1:
        fail("alice's members: %r" % got)
    got = await join(b, "bob")
    if got["presence"]["count"] != 2 or got["presence"]["hash"]["alice"] != {"n": "alice"}:
        fail("bob's members: %r" % got)
    added = json.loads((await a.expect("pusher_internal:member_added", "presence-room"))["data"])
    if added != {"user_id": "bob", "user_info": {"n": "bob"}}:
        fail("member_added: %r" % added)
    print("ok presence auth", flush=True)

    # trigger and trigger_batch: each event arrives at both nodes' sockets as sent.
    await call(sdk.trigger, ["news"], "hello", {"text": "hi", "n": 1})
    for s in (a, b):
        f = await s.expect("hello", "news")
        if json.loads(f["data"]) != {"text": "hi", "n": 1}:
            fail("trigger data: %r" % f)
    await call(sdk.trigger_batch, [
        {"channel": "news", "name": "b1", "data": json.dumps({"i": 1})},
        {"channel": "presence-room", "name": "b2", "data": json.dumps({"i": 2})},
    ])
    for s in (a, b):
        await s.expect("b1", "news")
        await s.expect("b2", "presence-room")
    print("ok trigger and batch", flush=True)

    # socket_id exclusion: a's next event is the marker, b gets both.
    await call(sdk.trigger, ["news"], "only-b", {}, socket_id=a.socket_id)
    await call(sdk.trigger, ["news"], "marker", {})
    await b.expect("only-b", "news")
    await b.expect("marker", "news")
    await a.expect("marker", "news")
    print("ok socket_id excluded", flush=True)

    # Reading the presence channel.
    info = await call(sdk.channel_info, "presence-room", ["user_count", "subscription_count"])
    if info != {"occupied": True, "user_count": 2, "subscription_count": 2}:
        fail("channel_info: %r" % info)
    listed = await call(sdk.channels_info, "presence-", ["user_count"])
    if listed != {"channels": {"presence-room": {"user_count": 2}}}:
        fail("channels_info: %r" % listed)
    listed = await call(sdk.channels_info)
    if sorted(listed["channels"]) != ["news", "presence-room"]:
        fail("channels_info: %r" % listed)
    users = await call(sdk.users_info, "presence-room")
    if sorted(u["id"] for u in users["users"]) != ["alice", "bob"]:
        fail("users_info: %r" % users)
    print("ok channel info and users", flush=True)

    # Terminating a user: bob signs in (the SDK 3.3 has no user authentication: signed here
    # as the protocol says), then his connection is closed with 4009 and alice sees him go.
    user_data = json.dumps({"id": "bob"})
    sig = hmac.new(secret.encode(), f"{b.socket_id}::user::{user_data}".encode(), hashlib.sha256)
    await b.send("pusher:signin", {"auth": f"{key}:{sig.hexdigest()}", "user_data": user_data})
    await b.expect("pusher:signin_success")
    await call(sdk.terminate_user_connections, "bob")
    err = await b.expect("pusher:error")
    if err["data"]["code"] != 4009:
        fail("terminate: %r" % err)
    try:
        await asyncio.wait_for(b.ws.recv(), WAIT)
        fail("bob's connection stayed open")
    except websockets.ConnectionClosed as e:
        if e.rcvd is None or e.rcvd.code != 4009:
            fail("bob's close: %r" % e)
    removed = json.loads((await a.expect("pusher_internal:member_removed", "presence-room"))["data"])
    if removed != {"user_id": "bob"}:
        fail("member_removed: %r" % removed)
    print("ok terminate user connections", flush=True)

    # A wrong secret is refused (401) and nothing is delivered.
    wrong = pusher.Pusher(app_id=app_id, key=key, secret="wrong", host="127.0.0.1",
                          port=int(http_port), ssl=False)
    try:
        await call(wrong.trigger, ["news"], "forged", {})
        fail("a wrongly signed trigger was accepted")
    except pusher.errors.PusherBadAuth:
        pass
    await call(sdk.trigger, ["news"], "after-forged", {})
    await a.expect("after-forged", "news")
    print("ok bad signature refused", flush=True)
    await a.ws.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

//! The directory's conformance cases (`channel::dir`: GatewayWorker's client ids, uids,
//! groups and sessions), asserted on what `channel_console` clients see on any backend that
//! keeps a directory: two consoles act as gateway nodes (workers 1 and 2: `dirsend` their
//! registrations, `on werkmann.gw.W` and `on werkmann.gw` for what is forwarded to them), a
//! third as the API (`dir OP` → `dir ANSWER`). `tests/conformance.rs` runs each case on each
//! backend.

use std::time::Duration;

use serde_json::{json, Value};

use crate::conformance::Backend;
use crate::{open_console as open, wait_until_async, App, Console, WAIT};

/// The event every node subscribes to (`dir::ALL_NODES`).
const ALL_NODES: &str = "werkmann.gw";

/// A gateway node's console: worker `worker`, subscribed to its node event and to all nodes'.
async fn node(addr: &str, worker: u32) -> Console {
    let mut c = open(addr).await;
    assert_eq!(c.ask(&format!("on werkmann.gw.{worker}")).await, "ok");
    assert_eq!(c.ask(&format!("on {ALL_NODES}")).await, "ok");
    c.sync().await;
    c
}

/// `node` registers `clients` (registration objects) without waiting for the answer.
async fn register(node: &mut Console, clients: Value) {
    let op = json!({"op": "register", "clients": clients});
    let got = node.ask(&format!("dirsend {op}")).await;
    assert_eq!(got, "ok Sent", "{op}");
}

/// The directory's answer to `op`.
async fn dir(api: &mut Console, op: &Value) -> Value {
    let line = api.ask(&format!("dir {op}")).await;
    let answer = line
        .strip_prefix("dir ")
        .unwrap_or_else(|| panic!("{op}: {line:?}"));
    serde_json::from_str(answer).unwrap_or_else(|e| panic!("{op}: {answer:?}: {e}"))
}

/// Ask `op` until the answer is `want` (what other consoles sent is on its way).
async fn dir_until(api: &mut Console, op: Value, want: Value) {
    let mut last = Value::Null;
    let what = format!("{op} answered {want}");
    wait_until_async(WAIT, what, async || {
        last = dir(api, &op).await;
        last == want
    })
    .await;
}

/// The next line of `node` is `op`, forwarded on `event` as the API sent it.
pub async fn forwarded(node: &mut Console, event: &str, op: &Value) {
    let line = node.line().await;
    let data = line
        .strip_prefix(&format!("event {event} "))
        .unwrap_or_else(|| panic!("{op} forwarded on {event}; got {line:?}"));
    // The node's callback gets the operation as it travels (JSON, or the compact form of a
    // send to one uid: `~u{uid's length}:{uid}{data}`) as a string.
    let wire: String = serde_json::from_str(data).unwrap_or_else(|e| panic!("{data}: {e}"));
    let got = match compact_uid_send(&wire) {
        Some((uid, data)) => {
            json!({"op": "send", "target": {"to": "uids", "uids": [uid]}, "data": data})
        }
        None => serde_json::from_str(&wire).unwrap(),
    };
    assert_eq!(&got, op, "forwarded on {event}");
    let one_uid = op["target"]["uids"]
        .as_array()
        .is_some_and(|u| u.len() == 1);
    assert_eq!(wire.starts_with("~u"), one_uid, "{wire}");
}

/// The uid and data of a send to one uid in the compact form.
fn compact_uid_send(wire: &str) -> Option<(&str, &str)> {
    let (len, rest) = wire.strip_prefix("~u")?.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Neither node gets anything more.
async fn quiet(a: &mut Console, b: &mut Console) {
    a.nothing_for(150).await;
    b.nothing_for(150).await;
}

/// Two nodes on two console processes (the embedded hub's two threads), and the API.
async fn setup(b: &Backend) -> (Vec<Option<App>>, Console, Console, Console) {
    let (pa, a_addr) = b.console();
    let (pb, b_addr) = b.console();
    let (pc, c_addr) = b.console();
    let n1 = node(&a_addr, 1).await;
    let n2 = node(&b_addr, 2).await;
    let api = open(&c_addr).await;
    (vec![pa, pb, pc], n1, n2, api)
}

/// Registrations (with what they hold) are not forwarded; every query answers from them.
pub async fn registrations_answer_queries(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    register(
        &mut n1,
        json!([{"client_id": "1-1"}, {"client_id": "1-2", "groups": ["room"]}]),
    )
    .await;
    register(
        &mut n2,
        json!([{"client_id": "2-1", "uid": "carol", "groups": ["room", "x"], "session": {"k": 1}}]),
    )
    .await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(3)).await;
    let queries = [
        (json!({"op": "is_online", "client_id": "1-1"}), json!(true)),
        (json!({"op": "is_online", "client_id": "9-9"}), json!(false)),
        (json!({"op": "get_all_uid_count"}), json!(1)),
        (json!({"op": "is_uid_online", "uid": "carol"}), json!(true)),
        (json!({"op": "is_uid_online", "uid": "dave"}), json!(false)),
        (
            json!({"op": "get_client_id_by_uid", "uid": "carol"}),
            json!(["2-1"]),
        ),
        (
            json!({"op": "get_client_id_by_uid", "uid": "dave"}),
            json!([]),
        ),
        (
            json!({"op": "get_uid_by_client_id", "client_id": "2-1"}),
            json!("carol"),
        ),
        (
            json!({"op": "get_uid_by_client_id", "client_id": "1-1"}),
            json!(null),
        ),
        (
            json!({"op": "get_client_id_count_by_group", "group": "room"}),
            json!(2),
        ),
        (
            json!({"op": "get_client_id_list_by_group", "group": "room"}),
            json!(["1-2", "2-1"]),
        ),
        (
            json!({"op": "get_uid_list_by_group", "group": "room"}),
            json!(["carol"]),
        ),
        (
            json!({"op": "get_uid_count_by_group", "group": "room"}),
            json!(1),
        ),
        (json!({"op": "get_all_group_id_list"}), json!(["room", "x"])),
        (
            json!({"op": "get_session", "client_id": "2-1"}),
            json!({"k": 1}),
        ),
        (json!({"op": "get_session", "client_id": "1-1"}), json!({})),
        (
            json!({"op": "get_session", "client_id": "9-9"}),
            json!(null),
        ),
    ];
    for (op, want) in queries {
        assert_eq!(dir(&mut api, &op).await, want, "{op}");
    }
    quiet(&mut n1, &mut n2).await;
}

/// A client registered twice in one call (a node's registration and its reconnect hook's,
/// batched together) is held once, and its worker with it: counted, online, reached.
pub async fn a_client_registered_twice_at_once_is_held(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    register(
        &mut n1,
        json!([{"client_id": "1-7"}, {"client_id": "1-7", "uid": "erin", "groups": ["r"]}]),
    )
    .await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(1)).await;
    let queries = [
        (json!({"op": "is_online", "client_id": "1-7"}), json!(true)),
        (
            json!({"op": "get_client_id_by_uid", "uid": "erin"}),
            json!(["1-7"]),
        ),
        (
            json!({"op": "get_client_id_count_by_group", "group": "r"}),
            json!(1),
        ),
    ];
    for (op, want) in queries {
        assert_eq!(dir(&mut api, &op).await, want, "{op}");
    }
    let all = json!({"op": "send", "target": {"to": "all"}, "data": "x"});
    assert_eq!(dir(&mut api, &all).await, json!(1), "{all}");
    forwarded(&mut n1, ALL_NODES, &all).await;
    forwarded(&mut n2, ALL_NODES, &all).await;
    quiet(&mut n1, &mut n2).await;
}

/// A change to one connection (bind, join, session, close) is answered 1 and forwarded to the
/// node holding it only; one naming an unknown connection is answered 0 and goes nowhere.
pub async fn changes_reach_only_the_holding_node(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    register(&mut n1, json!([{"client_id": "1-1"}])).await;
    register(&mut n2, json!([{"client_id": "2-1"}])).await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(2)).await;

    let bind = json!({"op": "bind_uid", "client_id": "1-1", "uid": "alice"});
    assert_eq!(dir(&mut api, &bind).await, json!(1));
    forwarded(&mut n1, "werkmann.gw.1", &bind).await;
    let join = json!({"op": "join_group", "client_id": "2-1", "group": "room"});
    assert_eq!(dir(&mut api, &join).await, json!(1));
    forwarded(&mut n2, "werkmann.gw.2", &join).await;
    let session = json!({"op": "set_session", "client_id": "2-1", "session": {"a": 1}});
    assert_eq!(dir(&mut api, &session).await, json!(1));
    forwarded(&mut n2, "werkmann.gw.2", &session).await;
    let update = json!({"op": "update_session", "client_id": "2-1", "session": {"b": [2]}});
    assert_eq!(dir(&mut api, &update).await, json!(1));
    forwarded(&mut n2, "werkmann.gw.2", &update).await;
    let get = json!({"op": "get_session", "client_id": "2-1"});
    assert_eq!(dir(&mut api, &get).await, json!({"a": 1, "b": [2]}));
    // Binding again replaces the uid.
    let rebind = json!({"op": "bind_uid", "client_id": "1-1", "uid": "bob"});
    assert_eq!(dir(&mut api, &rebind).await, json!(1));
    forwarded(&mut n1, "werkmann.gw.1", &rebind).await;
    let uids = json!({"op": "get_all_uid_count"});
    assert_eq!(dir(&mut api, &uids).await, json!(1));
    let close = json!({"op": "close_client", "client_id": "1-1", "data": "bye"});
    assert_eq!(dir(&mut api, &close).await, json!(1));
    forwarded(&mut n1, "werkmann.gw.1", &close).await;
    quiet(&mut n1, &mut n2).await;

    // Unknown connections, a uid not bound, a group not joined: 0, nothing forwarded.
    for op in [
        json!({"op": "bind_uid", "client_id": "3-1", "uid": "alice"}),
        json!({"op": "join_group", "client_id": "1-9", "group": "room"}),
        json!({"op": "unbind_uid", "client_id": "1-1", "uid": "alice"}),
        json!({"op": "leave_group", "client_id": "1-1", "group": "room"}),
        json!({"op": "close_client", "client_id": "2-9"}),
        json!({"op": "ungroup", "group": "nobody"}),
    ] {
        assert_eq!(dir(&mut api, &op).await, json!(0), "{op}");
    }
    quiet(&mut n1, &mut n2).await;

    // Ungroup: answered with the members removed, forwarded to the nodes holding them.
    let ungroup = json!({"op": "ungroup", "group": "room"});
    assert_eq!(dir(&mut api, &ungroup).await, json!(1));
    forwarded(&mut n2, "werkmann.gw.2", &ungroup).await;
    let groups = json!({"op": "get_all_group_id_list"});
    assert_eq!(dir(&mut api, &groups).await, json!([]));
    quiet(&mut n1, &mut n2).await;
}

/// Sends reach exactly the nodes holding their targets, once each, and are answered with the
/// connections reached: a uid on two nodes, groups (a member of two counted once, exclusions
/// left out), client ids, everyone.
pub async fn sends_reach_exactly_their_targets(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    register(
        &mut n1,
        json!([
            {"client_id": "1-1", "uid": "alice", "groups": ["room"]},
            {"client_id": "1-2", "uid": "bob", "groups": ["room"]},
        ]),
    )
    .await;
    register(
        &mut n2,
        json!([
            {"client_id": "2-1", "uid": "alice", "groups": ["room", "lobby"]},
            {"client_id": "2-2", "groups": ["lobby"]},
        ]),
    )
    .await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(4)).await;
    let send = |target: Value| json!({"op": "send", "target": target, "data": "hello"});
    let (w1, w2) = ("werkmann.gw.1", "werkmann.gw.2");
    // (target, answer, forwarded to node 1, to node 2)
    let cases = [
        (json!({"to": "uids", "uids": ["alice"]}), 2, true, true),
        (json!({"to": "uids", "uids": ["bob"]}), 1, true, false),
        (json!({"to": "uids", "uids": ["nobody"]}), 0, false, false),
        (json!({"to": "groups", "groups": ["room"]}), 3, true, true),
        (
            json!({"to": "groups", "groups": ["room", "lobby"]}),
            4,
            true,
            true,
        ),
        (
            json!({"to": "groups", "groups": ["room"], "exclude": ["1-1", "1-2"]}),
            1,
            false,
            true,
        ),
        (json!({"to": "groups", "groups": ["lobby"]}), 2, false, true),
        (
            json!({"to": "clients", "client_ids": ["1-2", "9-9"]}),
            1,
            true,
            false,
        ),
        (
            json!({"to": "clients", "client_ids": ["2-2", "1-1", "2-2"]}),
            2,
            true,
            true,
        ),
    ];
    for (target, reached, to1, to2) in cases {
        let op = send(target);
        assert_eq!(dir(&mut api, &op).await, json!(reached), "{op}");
        if to1 {
            forwarded(&mut n1, w1, &op).await;
        }
        if to2 {
            forwarded(&mut n2, w2, &op).await;
        }
        quiet(&mut n1, &mut n2).await;
    }
    // Everyone: once to each node, on the event all nodes share.
    let all = send(json!({"to": "all", "exclude": ["2-2"]}));
    assert_eq!(dir(&mut api, &all).await, json!(3));
    forwarded(&mut n1, ALL_NODES, &all).await;
    forwarded(&mut n2, ALL_NODES, &all).await;
    quiet(&mut n1, &mut n2).await;
}

/// A presence group announces on its first join's event, and enqueues on its first join's
/// queue (none here), for as long as it has members: a later key's join naming others does
/// not move the group.
pub async fn a_presence_group_keeps_its_first_event_and_queue(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    let (first, other, queue) = (
        "werkmann.gw.presence:first",
        "werkmann.gw.presence:other",
        "werkmann.gw.presence:q",
    );
    assert_eq!(n1.ask(&format!("on {first}")).await, "ok");
    assert_eq!(n1.ask(&format!("on {other}")).await, "ok");
    assert_eq!(n1.ask(&format!("watch {queue}")).await, "ok");
    n1.sync().await;
    register(&mut n1, json!([{"client_id": "1-1"}, {"client_id": "1-2"}])).await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(2)).await;
    let join = |id: &str, key: &str, event: &str| {
        json!({"op": "presence_join", "client_id": id, "group": "kept", "key": key,
               "info": null, "event": event, "added": php(&format!("+{key}")),
               "removed": php(&format!("-{key}")), "max": 10, "quiet": true})
    };
    assert_eq!(dir(&mut api, &join("1-1", "k1", first)).await, json!(true));
    assert_eq!(n1.line().await, format!("event {first} \"+k1\""));
    let mut second = join("1-2", "k2", other);
    second["hooks"] = json!({"queue": queue, "added": php("in"), "removed": php("out")});
    assert_eq!(dir(&mut api, &second).await, json!(true));
    assert_eq!(n1.line().await, format!("event {first} \"+k2\""));
    let leave = json!({"op": "presence_leave", "client_id": "1-2", "group": "kept"});
    assert_eq!(dir(&mut api, &leave).await, json!(1));
    assert_eq!(n1.line().await, format!("event {first} \"-k2\""));
    quiet(&mut n1, &mut n2).await;
}

/// A PHP string, as a channel event carries one.
fn php(s: &str) -> String {
    format!("s:{}:\"{s}\";", s.len())
}

/// Presence groups keep their members by key across nodes and announce a key's first
/// connection in and last out, once each, on the group's event; a full group refuses a new
/// key; a connection that goes (unregistered, or its node gone) leaves its groups.
pub async fn presence_groups_announce_their_members(b: &Backend) {
    let (_apps, mut n1, mut n2, mut api) = setup(b).await;
    let ev = "werkmann.gw.presence:room";
    for n in [&mut n1, &mut n2] {
        assert_eq!(n.ask(&format!("on {ev}")).await, "ok");
        n.sync().await;
    }
    register(&mut n1, json!([{"client_id": "1-1"}, {"client_id": "1-2"}])).await;
    register(&mut n2, json!([{"client_id": "2-1"}, {"client_id": "2-2"}])).await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(4)).await;
    let join = |id: &str, key: &str| {
        json!({"op": "presence_join", "client_id": id, "group": "room", "key": key,
               "info": {"name": key}, "event": ev, "added": php(&format!("+{key}")),
               "removed": php(&format!("-{key}")), "max": 2})
    };
    let heard = async |n1: &mut Console, n2: &mut Console, what: &str| {
        let line = format!("event {ev} \"{what}\"");
        assert_eq!(n1.line().await, line);
        assert_eq!(n2.line().await, line);
    };
    let alice = json!({"alice": {"name": "alice"}});
    let both = json!({"alice": {"name": "alice"}, "bob": {"name": "bob"}});
    assert_eq!(dir(&mut api, &join("1-1", "alice")).await, alice);
    heard(&mut n1, &mut n2, "+alice").await;
    // A second connection of alice's (on the other node): no news.
    assert_eq!(dir(&mut api, &join("2-1", "alice")).await, alice);
    assert_eq!(dir(&mut api, &join("1-2", "bob")).await, both);
    heard(&mut n1, &mut n2, "+bob").await;
    // Full (two keys at most): a third key is refused; joining again changes nothing.
    assert_eq!(dir(&mut api, &join("2-2", "carol")).await, json!(false));
    assert_eq!(dir(&mut api, &join("1-1", "alice")).await, both);
    assert_eq!(dir(&mut api, &join("9-9", "dave")).await, json!(null));
    let members = json!({"op": "get_presence", "group": "room"});
    assert_eq!(dir(&mut api, &members).await, both);
    let counts = json!({"op": "get_presence_counts", "group": "room"});
    assert_eq!(
        dir(&mut api, &counts).await,
        json!({"keys": 2, "connections": 3})
    );
    let list = |prefix: &str| json!({"op": "list_presence_groups", "prefix": prefix});
    assert_eq!(dir(&mut api, &list("ro")).await, json!(["room"]));
    assert_eq!(dir(&mut api, &list("x")).await, json!([]));
    quiet(&mut n1, &mut n2).await;
    // Alice's first connection leaves: she stays (her second); her last one goes: she leaves.
    let leave = json!({"op": "presence_leave", "client_id": "1-1", "group": "room"});
    assert_eq!(dir(&mut api, &leave).await, json!(1));
    assert_eq!(dir(&mut api, &leave).await, json!(0));
    quiet(&mut n1, &mut n2).await;
    dirsend(&mut n2, json!({"op": "unregister", "client_ids": ["2-1"]})).await;
    heard(&mut n1, &mut n2, "-alice").await;
    assert_eq!(
        dir(&mut api, &members).await,
        json!({"bob": {"name": "bob"}})
    );
    // Bob's node goes: he leaves with it, announced to the node that stays.
    drop(n1);
    let line = format!("event {ev} \"-bob\"");
    assert_eq!(n2.line().await, line);
    assert_eq!(dir(&mut api, &members).await, json!({}));
    assert_eq!(
        dir(&mut api, &counts).await,
        json!({"keys": 0, "connections": 0})
    );
    assert_eq!(dir(&mut api, &list("")).await, json!([]));
    n2.nothing_for(150).await;
}

/// `node` sends `op` without waiting for the answer.
async fn dirsend(node: &mut Console, op: Value) {
    assert_eq!(node.ask(&format!("dirsend {op}")).await, "ok Sent", "{op}");
}

/// A node that goes away (its client closed, its process gone) takes its connections out of
/// the directory with it, at once on a clean close.
pub async fn a_node_that_goes_leaves_the_directory(b: &Backend) {
    let (mut apps, n1, n2, mut api) = setup(b).await;
    let (mut n1, mut n2) = (n1, n2);
    register(
        &mut n1,
        json!([{"client_id": "1-1", "uid": "alice", "groups": ["room"]}]),
    )
    .await;
    register(
        &mut n2,
        json!([{"client_id": "2-1", "uid": "alice"}, {"client_id": "2-2"}]),
    )
    .await;
    let count = json!({"op": "get_all_client_id_count"});
    dir_until(&mut api, count.clone(), json!(3)).await;

    // Node 1's console connection closes: its channel client closes.
    drop(n1);
    let soon = Duration::from_secs(3);
    let gone = async || dir(&mut api, &count).await == json!(2);
    assert!(
        crate::poll_until_async(soon, gone).await,
        "node 1's connections left the directory"
    );
    let alice = json!({"op": "get_client_id_by_uid", "uid": "alice"});
    assert_eq!(dir(&mut api, &alice).await, json!(["2-1"]));
    let groups = json!({"op": "get_all_group_id_list"});
    assert_eq!(dir(&mut api, &groups).await, json!([]));

    // Node 2's process exits (killed), where it has one of its own; else its connection closes.
    match apps[1].take() {
        Some(process) => drop(process),
        None => drop(n2),
    }
    let gone = async || dir(&mut api, &count).await == json!(0);
    assert!(
        crate::poll_until_async(soon, gone).await,
        "node 2's connections left the directory"
    );
    let uids = json!({"op": "get_all_uid_count"});
    assert_eq!(dir(&mut api, &uids).await, json!(0));
}

/// Bad operations are answered `err …`, and the console and the directory go on.
pub async fn bad_operations_are_refused(b: &Backend) {
    let (_apps, mut n1, _n2, mut api) = setup(b).await;
    for (op, why) in [
        (r#"{"op":"nope"}"#, "unknown variant"),
        (
            r#"{"op":"bind_uid","client_id":"1-1","uid":""}"#,
            "uid is empty",
        ),
        (
            r#"{"op":"bind_uid","client_id":"one","uid":"a"}"#,
            "client_id",
        ),
        (
            r#"{"op":"send","target":{"to":"uids","uids":["a"]},"data":"x","more":1}"#,
            "unknown field",
        ),
        (r#"not json"#, "bad directory operation"),
        (
            r#"{"op":"presence_join","client_id":"1-1","group":"g","key":"k","info":null,"event":"elsewhere","added":"","removed":"","max":2}"#,
            "must begin with",
        ),
    ] {
        for cmd in ["dir", "dirsend"] {
            let got = api.ask(&format!("{cmd} {op}")).await;
            assert!(
                got.starts_with("err ") && got.contains(why),
                "{cmd} {op}: {got:?}"
            );
        }
    }
    register(&mut n1, json!([{"client_id": "1-1"}])).await;
    dir_until(&mut api, json!({"op": "get_all_client_id_count"}), json!(1)).await;
}

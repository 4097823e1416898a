//! The chat example (`start_chat`, workerman-chat on the cluster directory) in real processes
//! on loopback: a channel server and two chat nodes, two headless Chromium browsers (each its
//! own chromedriver and profile: two independent browser contexts) on the two nodes' pages,
//! and WebSocket clients of the tests' own for a third user and for bad input. Screenshots of
//! the pages go to `output_dir("chat")`: `$WERKMANN_TEST_OUTPUT/chat/`, by default
//! `target/test-output/chat/` (under `$CARGO_TARGET_DIR` when set).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use werkmann_tests::browser::Browser;
use werkmann_tests::{free_port, output_dir, wait_until, App, WAIT};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A chat node: the process, its WebSocket port and its page's port.
struct Node {
    app: App,
    ws: u16,
    web: u16,
}

/// `start_chat` on free loopback ports, with `channel` (`embedded`, or a channel server).
fn chat_node(channel: &str) -> Node {
    let (ws, web) = (free_port(), free_port());
    let app = App::start(
        "start_chat",
        &[
            "--listen",
            &format!("127.0.0.1:{ws}"),
            "--web",
            &format!("127.0.0.1:{web}"),
            "--count",
            "2",
            "--channel",
            channel,
        ],
        &[ws, web],
    );
    Node { app, ws, web }
}

/// A channel server and two chat nodes sharing it.
fn two_nodes() -> (App, Node, Node) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let channel = App::start("start_channel", &["--listen", &addr], &[port]);
    let a = chat_node(&addr);
    let b = chat_node(&addr);
    (channel, a, b)
}

async fn connect(port: u16) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, msg: Value) {
    ws.send(WsMessage::text(msg.to_string())).await.unwrap();
}

/// The next chat message (pings are answered and skipped; panics after [`WAIT`]).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .unwrap();
        let WsMessage::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        if v["type"] == "ping" {
            send(ws, json!({"type": "pong"})).await;
            continue;
        }
        return v;
    }
}

/// Send `msg` and expect an error whose reason contains `why`.
async fn refused(ws: &mut Ws, msg: WsMessage, why: &str) {
    ws.send(msg).await.unwrap();
    let v = next(ws).await;
    assert_eq!(v["type"], "error", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
}

/// Log in: the client id, and whom the client knows to be in the room — its login's online
/// list `{id: name}`, and the others' logins that arrived before it (someone who entered just
/// after the list was made, whose login overtook the list's look-ups), as the page counts them.
async fn login(ws: &mut Ws, name: &str, room: &str) -> (String, BTreeMap<String, String>) {
    send(
        ws,
        json!({"type": "login", "client_name": name, "room_id": room}),
    )
    .await;
    let mut before = BTreeMap::new();
    loop {
        let v = next(ws).await;
        assert_eq!(v["type"], "login", "login as {name}: {v}");
        let (id, who) = (v["client_id"].as_str().unwrap(), v["client_name"].as_str());
        if v.get("client_list").is_none() {
            before.insert(id.to_string(), who.unwrap().to_string());
            continue;
        }
        assert_eq!(who, Some(name));
        let mut list: BTreeMap<String, String> =
            serde_json::from_value(v["client_list"].clone()).unwrap();
        list.append(&mut before);
        return (id.to_string(), list);
    }
}

fn text(s: &str) -> WsMessage {
    WsMessage::text(s.to_string())
}

/// The page's online list, names sorted, comma-separated.
const ONLINE: &str = "return Array.from(document.querySelectorAll('#online li'))\
                      .map(li => li.textContent).sort().join(',')";

/// Open a node's page, log in, and return the page's client id.
async fn page_login(b: &Browser, node: &Node, name: &str, room: &str) -> String {
    b.goto(&format!("http://127.0.0.1:{}/", node.web)).await;
    b.wait_for(
        "return document.getElementById('status').textContent === 'connected'",
        "the page connects",
    )
    .await;
    b.type_into("#name", name).await;
    b.type_into("#room", room).await;
    b.click("#login").await;
    let id = b
        .wait_for(
            "return document.getElementById('me').dataset.clientId || ''",
            &format!("{name} logged in"),
        )
        .await;
    id.as_str().unwrap().to_string()
}

async fn wait_online(b: &Browser, names: &str, who: &str) {
    b.wait_for(
        &format!("{ONLINE} === '{names}'"),
        &format!("{who}'s online list reads {names}"),
    )
    .await;
}

/// How many `say` messages on the page have `content` (and match `extra`, a CSS class).
fn says(content: &str, extra: &str) -> String {
    format!(
        "return Array.from(document.querySelectorAll('#messages .say{extra}'))\
         .filter(d => d.querySelector('.content').textContent === {content:?}).length"
    )
}

async fn say(b: &Browser, to: &str, content: &str) {
    b.select("#to", to).await;
    b.type_into("#content", content).await;
    b.click("#send").await;
}

/// alice on node A and bob on node B, in two browsers, in one room with carol (a WebSocket
/// client of the test's own on node A): they see each other online, alice's message reaches
/// bob's page once, bob's private message reaches alice and not carol, and when bob's browser
/// closes alice sees him leave and the list shrink.
#[tokio::test]
async fn two_browsers_on_two_nodes_chat_whisper_and_see_each_other_leave() {
    let (_channel, a, b) = two_nodes();
    let alice = Browser::start().await;
    let alice_id = page_login(&alice, &a, "alice", "lobby").await;
    let bob = Browser::start().await;
    let bob_id = page_login(&bob, &b, "bob", "lobby").await;
    let worker = |id: &str| id.split_once('-').unwrap().0.to_string();
    assert_ne!(
        worker(&alice_id),
        worker(&bob_id),
        "two nodes, two worker ids"
    );
    wait_online(&alice, "alice,bob", "alice").await;
    wait_online(&bob, "alice,bob", "bob").await;
    let bob_seen_by_alice = alice
        .js("return document.querySelector('#online li:not(.me)').dataset.clientId")
        .await;
    assert_eq!(bob_seen_by_alice, bob_id.as_str());

    let mut carol = connect(a.ws).await;
    let (carol_id, list) = login(&mut carol, "carol", "lobby").await;
    let expected: BTreeMap<String, String> = [
        (alice_id.clone(), "alice".to_string()),
        (bob_id.clone(), "bob".to_string()),
        (carol_id.clone(), "carol".to_string()),
    ]
    .into();
    assert_eq!(list, expected, "carol's online list");
    wait_online(&alice, "alice,bob,carol", "alice").await;
    wait_online(&bob, "alice,bob,carol", "bob").await;

    // alice to the room: bob's page shows it, carol receives it.
    say(&alice, "all", "hello from alice").await;
    bob.wait_for(
        &format!("{} === 1", says("hello from alice", "")),
        "alice's message on bob's page",
    )
    .await;
    let v = next(&mut carol).await;
    assert_eq!(
        (&v["type"], &v["from_client_id"], &v["to_client_id"]),
        (&json!("say"), &json!(alice_id), &json!("all")),
        "{v}"
    );
    assert_eq!(v["content"], "hello from alice");

    // bob to alice, privately: alice's page shows it, bob's shows his copy.
    say(&bob, &alice_id, "psst, alice").await;
    alice
        .wait_for(
            &format!("{} === 1", says("psst, alice", ".private")),
            "bob's private message on alice's page",
        )
        .await;
    bob.wait_for(
        &format!("{} === 1", says("psst, alice", ".private")),
        "bob's copy of his private message",
    )
    .await;
    // Then bob to the room: carol's next message is that one (what one node sends reaches
    // another in order), so the private one never came to her.
    say(&bob, "all", "bob to everyone").await;
    let v = next(&mut carol).await;
    assert_eq!(v["content"], "bob to everyone", "carol got only this: {v}");
    for (page, who) in [(&alice, "alice"), (&bob, "bob")] {
        page.wait_for(
            &format!("{} === 1", says("bob to everyone", "")),
            &format!("bob's message on {who}'s page"),
        )
        .await;
        let n = page.js(&says("hello from alice", "")).await;
        assert_eq!(n, 1, "alice's message once on {who}'s page");
    }
    let dir = output_dir("chat");
    alice.screenshot(&dir.join("alice.png")).await;
    bob.screenshot(&dir.join("bob.png")).await;

    // bob closes his browser: alice and carol see him leave.
    bob.quit().await;
    alice
        .wait_for(
            &format!(
                "return Array.from(document.querySelectorAll('#messages .logout'))\
                 .some(d => d.dataset.from === '{bob_id}')"
            ),
            "bob's logout on alice's page",
        )
        .await;
    wait_online(&alice, "alice,carol", "alice").await;
    let v = next(&mut carol).await;
    assert_eq!(
        (&v["type"], &v["from_client_id"], &v["from_client_name"]),
        (&json!("logout"), &json!(bob_id), &json!("bob")),
        "{v}"
    );
    alice
        .screenshot(&dir.join("alice-after-bob-left.png"))
        .await;
    alice.quit().await;
}

/// Bad input is answered with an error and logged, and the connection carries on: not JSON,
/// no type, an unknown type, missing fields, a name or room past the directory's limits,
/// binary, saying before logging in, logging in twice, a bad or departed recipient. One node
/// with its embedded channel (start_chat's default).
#[tokio::test]
async fn bad_input_is_answered_with_errors() {
    let node = chat_node("embedded");
    let mut ws = connect(node.ws).await;
    refused(&mut ws, text("hello"), "not a JSON message").await;
    refused(&mut ws, text("[1,2]"), "not a JSON object").await;
    refused(
        &mut ws,
        text(r#"{"client_name":"x"}"#),
        "missing field type",
    )
    .await;
    refused(&mut ws, text(r#"{"type":"dance"}"#), "unknown message type").await;
    refused(
        &mut ws,
        text(r#"{"type":"login","room_id":"1"}"#),
        "missing field client_name",
    )
    .await;
    refused(
        &mut ws,
        text(r#"{"type":"login","client_name":"dave"}"#),
        "missing field room_id",
    )
    .await;
    let long = "n".repeat(129);
    let msg = json!({"type": "login", "client_name": long, "room_id": "1"});
    refused(&mut ws, text(&msg.to_string()), "more than 128").await;
    let msg = json!({"type": "login", "client_name": "dave", "room_id": long});
    refused(&mut ws, text(&msg.to_string()), "room_id is 129 bytes").await;
    refused(
        &mut ws,
        text(r#"{"type":"login","client_name":"a\u0007b","room_id":"1"}"#),
        "control character",
    )
    .await;
    refused(&mut ws, WsMessage::binary(vec![1, 2, 3]), "binary").await;
    refused(
        &mut ws,
        text(r#"{"type":"say","to_client_id":"all","content":"hi"}"#),
        "not logged in",
    )
    .await;

    let (me, list) = login(&mut ws, "dave", "1").await;
    assert_eq!(list, [(me.clone(), "dave".to_string())].into());
    refused(
        &mut ws,
        text(r#"{"type":"login","client_name":"dave","room_id":"2"}"#),
        "already logged in",
    )
    .await;
    refused(
        &mut ws,
        text(r#"{"type":"say","to_client_id":"all"}"#),
        "missing field content",
    )
    .await;
    refused(
        &mut ws,
        text(r#"{"type":"say","to_client_id":"erin","content":"hi"}"#),
        "not WORKER-CONNECTION",
    )
    .await;

    // A recipient who left: the send reaches no one, and the sender is told.
    let mut erin = connect(node.ws).await;
    let (erin_id, _) = login(&mut erin, "erin", "1").await;
    let v = next(&mut ws).await;
    assert_eq!(
        (&v["type"], &v["client_id"]),
        (&json!("login"), &json!(erin_id))
    );
    drop(erin);
    let v = next(&mut ws).await;
    assert_eq!(
        (&v["type"], &v["from_client_id"]),
        (&json!("logout"), &json!(erin_id))
    );
    let msg = json!({"type": "say", "to_client_id": erin_id, "content": "still there?"});
    refused(&mut ws, text(&msg.to_string()), "is not online").await;

    // After all that the connection works.
    send(
        &mut ws,
        json!({"type": "say", "to_client_id": "all", "content": "fine"}),
    )
    .await;
    let v = next(&mut ws).await;
    assert_eq!((&v["type"], &v["content"]), (&json!("say"), &json!("fine")));
    wait_until(
        Duration::from_secs(5),
        "the node logs refused input",
        || {
            let log = node.app.log();
            log.contains("refused: unknown message type") && log.contains("refused: binary")
        },
    );
}

/// Several users enter one room at once across two nodes: each ends up knowing all the
/// others, from its login's online list or from their logins after it.
#[tokio::test]
async fn simultaneous_logins_on_two_nodes_all_see_each_other() {
    let (_channel, a, b) = two_nodes();
    const N: usize = 8;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(connect(if i % 2 == 0 { a.ws } else { b.ws }).await);
    }
    let logins = clients.iter_mut().enumerate().map(|(i, ws)| async move {
        let name = format!("user{i}");
        let (id, mut known) = login(ws, &name, "busy").await;
        (id, std::mem::take(&mut known), ws)
    });
    let results = futures_util::future::join_all(logins).await;
    let everyone: BTreeMap<String, String> = results
        .iter()
        .enumerate()
        .map(|(i, (id, _, _))| (id.clone(), format!("user{i}")))
        .collect();
    for (_, mut known, ws) in results {
        while known.len() < N {
            let v = next(ws).await;
            assert_eq!(v["type"], "login", "{v}");
            known.insert(
                v["client_id"].as_str().unwrap().to_string(),
                v["client_name"].as_str().unwrap().to_string(),
            );
        }
        assert_eq!(known, everyone);
    }
}

/// The page knows both nodes (`?ws=A,B`): when the node it is on dies (SIGKILL), it connects
/// to the other one with back-off, logs in again with the same name and room, and the room
/// sees it enter anew; the directory forgot the dead node's connections, so the new online
/// list has no ghost of the old one.
#[tokio::test]
async fn the_page_reconnects_to_the_other_node_and_logs_in_again() {
    let (_channel, a, b) = two_nodes();
    let mut nodes = [a, b].map(Some);
    let urls = nodes
        .each_ref()
        .map(|n| format!("ws://127.0.0.1:{}", n.as_ref().unwrap().ws));
    let web = nodes[0].as_ref().unwrap().web;
    let alice = Browser::start().await;
    let page = format!(
        "http://127.0.0.1:{web}/?ws=127.0.0.1:{},{}",
        nodes[0].as_ref().unwrap().ws,
        urls[1]
    );
    alice.goto(&page).await;
    alice
        .wait_for(
            "return document.getElementById('status').textContent === 'connected'",
            "the page connects",
        )
        .await;
    alice.type_into("#name", "alice").await;
    alice.click("#login").await;
    let first = alice
        .wait_for(
            "return document.getElementById('me').dataset.clientId || ''",
            "alice logged in",
        )
        .await;
    let first = first.as_str().unwrap().to_string();
    let node_text = alice
        .js("return document.getElementById('node').textContent")
        .await;
    let on = urls.iter().position(|u| node_text == u.as_str()).unwrap();
    let other = 1 - on;
    let mut carol = connect(nodes[other].as_ref().unwrap().ws).await;
    let (_, known) = login(&mut carol, "carol", "1").await;
    assert!(known.contains_key(&first), "carol sees alice: {known:?}");
    wait_online(&alice, "alice,carol", "alice").await;

    drop(nodes[on].take()); // SIGKILL
    let second = alice
        .wait_for(
            &format!(
                "var id = document.getElementById('me').dataset.clientId || ''; \
                 return document.getElementById('node').textContent === '{}' \
                 && id !== '{first}' ? id : ''",
                urls[other]
            ),
            "alice logged in again on the other node",
        )
        .await;
    let second = second.as_str().unwrap().to_string();
    let v = next(&mut carol).await;
    assert_eq!(
        (&v["type"], &v["client_id"], &v["client_name"]),
        (&json!("login"), &json!(second), &json!("alice")),
        "{v}"
    );
    wait_online(&alice, "alice,carol", "alice").await;
    alice
        .screenshot(&output_dir("chat").join("alice-reconnected.png"))
        .await;
    alice.quit().await;
}

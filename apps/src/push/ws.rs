//! The WebSocket node, Workerman's `start_ws.php`: each instance subscribes to its worker id
//! and to `Broadcast`, and hands what arrives to its connections.

use std::rc::Rc;
use std::sync::Arc;

use werkmann::channel::report::NodeReports;
use werkmann::channel::worker_ids::WorkerIds;
use werkmann::channel::{php_serde, Feeds, Name};
use werkmann::gateway::{Claims, Gateway, Tokens};
use werkmann::pusher::{Apps, PusherNode};
use werkmann::{cli, Response, Worker};

use super::delivery;
use super::{greeting, BROADCAST};

/// The WebSocket worker (`pusher`): `count` instances, instance `i` known as `ids[i]`, each a
/// gateway node (client ids `{worker id}-{connection id}`, uids, groups: `werkmann::gateway`).
/// With `tokens`, a client connecting with `?token=JWT` is bound to the uid and groups the
/// token names; a bad token is refused with 401. With `apps`, `/app/{key}` speaks the Pusher
/// protocol (`werkmann::pusher::PusherNode`); every other path is the seed's.
pub fn ws_worker(
    listen: &str,
    count: usize,
    channel: cli::Channel,
    worker_ids: Arc<WorkerIds>,
    tokens: Option<Tokens>,
    apps: Arc<Apps>,
    presence: super::PresenceEvents,
) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("websocket://{listen}"))?;
    worker.name = "pusher".into();
    worker.count = count;
    // A client is addressed by (worker id, connection id), and a replacement node may claim a
    // dead node's worker ids: its connection ids must not repeat the dead node's.
    worker.time_based_connection_ids = true;
    let ids = worker_ids.clone();
    let pusher_apps = apps.clone();
    worker.on_worker_start(move |w| {
        let Some((client, my_id)) = super::start_node(w, &channel, &ids, "pusher") else {
            return;
        };
        if presence != super::PresenceEvents::Off {
            if let Some(gw) = Gateway::of(w) {
                gw.announce_presence(presence == super::PresenceEvents::Hooks);
            }
        }
        if !pusher_apps.is_empty() {
            PusherNode::start(w, &client, pusher_apps.clone(), my_id);
        }
        // $channel->on($worker->id, …): {to_connection_id, content} for one connection.
        let me = w.clone();
        let node_reports = Rc::new(NodeReports::default());
        w.set_data(node_reports.clone());
        let (reports, reporter) = (node_reports.clone(), client.clone());
        client.on_raw(my_id, move |data| {
            let (Some(content), Some(to)) =
                (field(data, "content"), field(data, "to_connection_id"))
            else {
                return;
            };
            let written = match to.to_u64().and_then(|id| me.connection(id)) {
                Some(conn) => conn.send(content.text().unwrap_or_default()).is_ok(),
                None => {
                    log::info!(
                        "worker {my_id}: Verbindung existiert nicht ({})",
                        to.value()
                    );
                    false
                }
            };
            if let Some(asked) = delivery::asked(data) {
                reports.begin(&reporter, &asked);
                reports.wrote(&reporter, &asked, u64::from(written));
            }
        });
        // Resuming readers (`/werkmann`, `stream.rs`) get `Broadcast` from the callback below.
        let feeds = Feeds::new(&client);
        feeds.fed_by_owner(BROADCAST);
        // $channel->on('Broadcast', …): {content} for every connection.
        let me = w.clone();
        let readers = feeds.clone();
        let name = Name::from(BROADCAST);
        let (reports, reporter) = (node_reports, client.clone());
        client.on_kept(BROADCAST, move |pos, data| {
            let asked = delivery::asked(data);
            if me.connection_count() == 0 && asked.is_none() {
                return;
            }
            if let Some(asked) = &asked {
                reports.begin(&reporter, asked);
            }
            // Resuming readers asked to acknowledge are registered with `reports` as they go.
            let mut written = readers.deliver(&name, pos, data) as u64;
            if let Some(content) = field(data, "content").and_then(|f| f.text()) {
                written += me.broadcast(content).delivered as u64;
            }
            if let Some(asked) = asked {
                reports.wrote(&reporter, &asked, written);
            }
        });
        // Without connections, the instance takes no copies of broadcasts (still counted as
        // reached); its next connection waits until they flow again.
        client.park_while_idle(w, BROADCAST);
        w.set_data(feeds);
        w.set_data(client);
        log::info!("pusher instance {} is worker id {my_id}", w.id());
    });
    let greet_ids = worker_ids.clone();
    let stream_ids = worker_ids.clone();
    worker.on_websocket_connect(move |conn, req| {
        if req.path() == super::stream::PATH {
            let claims = super::verify_token(conn, req, tokens.as_ref())?;
            super::stream::accept(conn, req, stream_ids.ids()[conn.worker_id()])?;
            bind(conn, claims);
            return Ok(());
        }
        if PusherNode::app_key(req.path()).is_some() {
            return match conn.worker().and_then(|w| PusherNode::of(&w)) {
                Some(node) => {
                    node.accept(conn, req);
                    Ok(())
                }
                None => Err(Response::text(404, "no Pusher app is served here\n")),
            };
        }
        // The seed's greeting, written once the handshake is.
        conn.send(greeting(greet_ids.ids()[conn.worker_id()], conn.id()));
        let claims = super::verify_token(conn, req, tokens.as_ref())?;
        bind(conn, claims);
        Ok(())
    });
    // A client that does not keep up is dropped (it reconnects and is greeted anew), so it
    // neither holds memory nor delays the others.
    worker.on_buffer_full(|conn| {
        log::warn!(
            "client {} ({}) does not read its pushes ({} bytes waiting): dropped",
            conn.id(),
            conn.remote_ip(),
            conn.send_buffer_len()
        );
        conn.destroy();
    });
    // The seed's clients say nothing the node reads; Pusher sockets go to the Pusher side.
    let pusher_node = |conn: &werkmann::Connection| conn.worker().and_then(|w| PusherNode::of(&w));
    worker.on_message(move |conn, msg| {
        if super::stream::on_message(conn, &msg) {
            return;
        }
        if let Some(node) = pusher_node(conn) {
            node.on_message(conn, msg);
        }
    });
    worker.on_close(move |conn| {
        if let Some(node) = pusher_node(conn) {
            node.on_close(conn);
        }
        super::stream::closed(conn);
    });
    Ok(worker)
}

/// Bind a client to what its token names (its uid, its groups).
fn bind(conn: &werkmann::Connection, claims: Option<Claims>) {
    if let (Some(claims), Some(gw)) = (claims, Gateway::of_connection(conn)) {
        gw.bind_claims(conn, claims);
    }
}

/// A field of a push event, read without decoding the rest; `None` (logged) when the event
/// cannot be decoded.
fn field<'a>(data: &'a [u8], name: &str) -> Option<php_serde::Field<'a>> {
    php_serde::field(data, name)
        .inspect_err(|e| log::warn!("push event not decodable: {e}"))
        .ok()
}

//! The chat's WebSocket node, workerman-chat's `Events.php` on a werkmann gateway node: each
//! instance registers its connections in the cluster directory ([`Gateway::node`]), and the
//! chat speaks GatewayWorker's vocabulary — the name is the uid (`bind_uid`), the room a
//! group (`join_group`), both also in the session (`set_session`) so that any node can tell
//! who a client id is; messages go out with `send_to_group` and `send_to_client`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use werkmann::channel::worker_ids::WorkerIds;
use werkmann::connection::Status;
use werkmann::gateway::{ClientId, Gateway, GatewayError};
use werkmann::{cli, Connection, Message, Timer, Worker};

use super::protocol::{self, Request, To};

/// How often a node pings its connections (workerman-chat's `pingInterval`); the page answers.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);

/// How many session look-ups an online list has in flight at once.
const LOOKUPS: usize = 32;

/// Where a connection stands, kept on the connection (its data) so that `on_close`, which runs
/// after the directory forgot the connection, can still announce the logout.
#[derive(Debug, Clone, Default)]
enum Login {
    #[default]
    Out,
    Pending,
    In(Member),
}

/// A logged-in connection.
#[derive(Debug, Clone)]
struct Member {
    client_id: ClientId,
    name: String,
    room: String,
}

/// The chat's WebSocket worker (`chat`): `count` instances, instance `i` a gateway node known
/// in the cluster as worker `ids[i]`.
pub fn ws_worker(
    listen: &str,
    count: usize,
    channel: cli::Channel,
    worker_ids: Arc<WorkerIds>,
) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("websocket://{listen}"))?;
    worker.name = "chat".into();
    worker.count = count;
    // Client ids name (worker id, connection id); a restarted node must not hand out the ids
    // its predecessor's connections had (pages may still address them).
    worker.time_based_connection_ids = true;
    worker.on_worker_start(move |w| {
        let Some((_client, my_id)) =
            crate::push::start_node(w, &channel, &worker_ids, "chat worker")
        else {
            return;
        };
        let me = w.clone();
        Timer::add(
            PING_INTERVAL,
            move || {
                if me.connection_count() > 0 {
                    me.broadcast(protocol::PING);
                }
            },
            true,
        );
        log::info!("chat instance {} is worker id {my_id}", w.id());
    });
    worker.on_message(on_message);
    worker.on_close(on_close);
    Ok(worker)
}

fn on_message(conn: &Connection, msg: Message) {
    let Message::Text(text) = msg else {
        return refuse(conn, "binary messages are not understood: send JSON text");
    };
    match protocol::parse(&text) {
        Err(why) => refuse(conn, &why),
        Ok(Request::Pong) => {}
        Ok(Request::Login {
            client_name,
            room_id,
        }) => login(conn, client_name, room_id),
        Ok(Request::Say { to, content }) => say(conn, to, &content),
    }
}

/// Answer bad input with an error message, and log it.
fn refuse(conn: &Connection, why: &str) {
    log::info!("chat client {}: refused: {why}", who(conn));
    conn.send(protocol::error(why));
}

fn who(conn: &Connection) -> String {
    let id = gateway(conn).map_or_else(|| conn.id().to_string(), |(_, id)| id.to_string());
    format!("{id} ({})", conn.remote_ip())
}

fn gateway(conn: &Connection) -> Option<(Gateway, ClientId)> {
    let gw = Gateway::of_connection(conn)?;
    let id = gw.client_id(conn)?;
    Some((gw, id))
}

fn state(conn: &Connection) -> Login {
    conn.with_data(|l: &mut Login| l.clone())
        .unwrap_or_default()
}

/// Enter a room: uid, session and group in the directory, then the login to the room and the
/// room's online list to the newcomer.
fn login(conn: &Connection, name: String, room: String) {
    match state(conn) {
        Login::Out => {}
        Login::Pending => return refuse(conn, "already logging in"),
        Login::In(m) => {
            let why = format!("already logged in as {:?} in room {:?}", m.name, m.room);
            return refuse(conn, &why);
        }
    }
    let Some((gw, me)) = gateway(conn) else {
        return refuse(conn, "this chat node has no channel: try again later");
    };
    conn.set_data(Login::Pending);
    let conn = conn.clone();
    let member = Member {
        client_id: me,
        name,
        room,
    };
    actix_rt::spawn(async move {
        if let Err(e) = enter(&gw, &member).await {
            log::warn!("chat client {me}: login as {:?} failed: {e}", member.name);
            conn.set_data(Login::Out);
            conn.send(protocol::error(&format!("login failed: {e}")));
            return;
        }
        // Closed meanwhile: `on_close` saw `Pending` and announced nothing; neither do we.
        // Otherwise the login is issued before any logout `on_close` will issue.
        if conn.status() == Status::Closed {
            return;
        }
        conn.set_data(Login::In(member.clone()));
        let (room, name) = (&member.room, &member.name);
        // Joined first, announced and listed after: of two who enter at once, the later one to
        // join finds the other in its list, and the earlier one receives its login.
        let hello = protocol::login(me, name, None);
        if let Err(e) = gw.send_to_group(room, &hello, &[me]).await {
            log::warn!("chat client {me}: login not announced in room {room:?}: {e}");
        }
        let mut list = match online_list(&gw, room).await {
            Ok(list) => list,
            Err(e) => {
                log::warn!("chat client {me}: no online list for room {room:?}: {e}");
                conn.send(protocol::error(&format!("online list unavailable: {e}")));
                BTreeMap::new()
            }
        };
        list.insert(me.to_string(), name.clone());
        conn.send(protocol::login(me, name, Some(&list)));
        log::info!(
            "chat client {me} ({}) entered room {room:?} as {name:?}",
            conn.remote_ip()
        );
    });
}

async fn enter(gw: &Gateway, m: &Member) -> anyhow::Result<()> {
    let session = protocol::session(&m.name, &m.room);
    let online = gw.bind_uid(m.client_id, &m.name).await?
        && gw.set_session(m.client_id, session).await?
        && gw.join_group(m.client_id, &m.room).await?;
    anyhow::ensure!(
        online,
        "the directory does not know this connection (closed, or the channel restarted)"
    );
    Ok(())
}

/// A room's online list `{client id: name}` from the directory: the room's client ids, then
/// each one's session. Not `get_uid_list_by_group`: uids are names, two connections with one
/// name would collapse into one entry, and the page addresses private messages by client id.
/// Sessions live in the directory, so the list is right whichever node holds whom; a
/// connection that left between the two look-ups has no session and is left out.
async fn online_list(gw: &Gateway, room: &str) -> Result<BTreeMap<String, String>, GatewayError> {
    let ids = gw.get_client_id_list_by_group(room).await?;
    let sessions: Vec<_> = stream::iter(ids)
        .map(|id| async move { (id, gw.get_session(id).await) })
        .buffered(LOOKUPS)
        .collect()
        .await;
    let mut list = BTreeMap::new();
    for (id, session) in sessions {
        let name = session?.and_then(|s| Some(s.get("client_name")?.as_str()?.to_string()));
        if let Some(name) = name {
            list.insert(id.to_string(), name);
        }
    }
    Ok(list)
}

/// Say something to the room, or privately to one connection (and a copy to the sender).
fn say(conn: &Connection, to: To, content: &str) {
    let Login::In(m) = state(conn) else {
        return refuse(conn, "not logged in: send a login first");
    };
    let Some((gw, _)) = gateway(conn) else {
        return refuse(conn, "this chat node has no channel: try again later");
    };
    let data = protocol::say(m.client_id, &m.name, to, content);
    let conn = conn.clone();
    actix_rt::spawn(async move {
        let sent = match to {
            To::All => gw.send_to_group(&m.room, &data, &[]).await,
            To::Client(target) => gw.send_to_client(target, &data).await,
        };
        match (sent, to) {
            (Ok(0), To::Client(target)) => {
                log::info!(
                    "chat client {}: private message to {target}, who left",
                    m.client_id
                );
                conn.send(protocol::error(&format!(
                    "{target} is not online: message not delivered"
                )));
            }
            (Ok(_), To::Client(target)) if target != m.client_id => {
                conn.send(data);
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                log::warn!("chat client {}: message not delivered: {e}", m.client_id);
                conn.send(protocol::error(&format!("message not delivered: {e}")));
            }
        }
    });
}

/// Announce the logout to the room (the directory has already removed the connection).
fn on_close(conn: &Connection) {
    let Login::In(m) = state(conn) else { return };
    let Some(gw) = Gateway::of_connection(conn) else {
        return;
    };
    actix_rt::spawn(async move {
        let bye = protocol::logout(m.client_id, &m.name);
        if let Err(e) = gw.send_to_group(&m.room, &bye, &[]).await {
            log::warn!("chat client {}: logout not announced: {e}", m.client_id);
        }
    });
}

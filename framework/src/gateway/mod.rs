//! GatewayWorker's vocabulary, cluster-wide: address connections by client id, uid and group,
//! keep sessions, count who is online — from any worker instance of any process, on every
//! channel backend (embedded, a channel server, Redis). See `docs/addressing.md`.
//!
//! A **node** holds connections: [`Gateway::node`] in `on_worker_start` registers each
//! connection of the instance in the directory as it opens (client id `{worker id}-{connection
//! id}`) and removes it as it closes. Anyone — a node, or an instance that holds no connections
//! (an HTTP publisher) with [`Gateway::api`] — then sends and asks:
//!
//! ```no_run
//! use werkmann::{channel, gateway::Gateway, Worker};
//!
//! let mut ws = Worker::new("websocket://127.0.0.1:4236").unwrap();
//! ws.on_worker_start(|w| {
//!     let client = channel::Client::connect("127.0.0.1:2206").unwrap();
//!     Gateway::node(&client, w, w.id() as u32);
//!     w.set_data(client);
//! });
//! ws.on_message(|conn, msg| {
//!     let Some(gw) = Gateway::of_connection(conn) else { return };
//!     let me = gw.client_id(conn).expect("a node's connection");
//!     let text = msg.to_text_lossy().into_owned();
//!     actix_rt::spawn(async move {
//!         if let Some(uid) = text.strip_prefix("login ") {
//!             gw.bind_uid(me, uid).await.ok();
//!             gw.join_group(me, "lobby").await.ok();
//!         } else {
//!             let reached = gw.send_to_group("lobby", &text, &[me]).await;
//!             log::info!("{text:?} reached {reached:?} connections");
//!         }
//!     });
//! });
//! ```
//!
//! Every send answers how many connections it was written to, counted across nodes (0 for an
//! offline uid or an empty group); `bind_uid`, `join_group` and the session setters answer
//! once the directory holds the change and has forwarded it to the node that holds the
//! connection, ahead of any later send.

mod node;
pub mod presence;
mod token;

use std::rc::Rc;

use serde_json::{Map, Value};

pub use crate::channel::dir::{ClientId, DirOp, Target};
use crate::channel::{ChannelError, Client};
use crate::connection::Connection;
use crate::message::Message;
use crate::WorkerInstance;
use node::Node;
pub use token::{Claims, TokenError, Tokens, LEEWAY_SECS};

/// Why a gateway call has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The channel could not carry it (disconnected, no directory, refused input, …).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The directory's answer was not what the operation answers.
    #[error("unexpected directory answer {0}")]
    Answer(Value),
}

/// One or several uids or groups (GatewayWorker takes a string or an array).
pub trait Names {
    /// The names.
    fn names(self) -> Vec<String>;
}

impl Names for &str {
    fn names(self) -> Vec<String> {
        vec![self.to_string()]
    }
}

impl Names for String {
    fn names(self) -> Vec<String> {
        vec![self]
    }
}

impl Names for &String {
    fn names(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<T: AsRef<str>> Names for &[T] {
    fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

impl<T: AsRef<str>> Names for Vec<T> {
    fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

impl<T: AsRef<str>, const N: usize> Names for [T; N] {
    fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

/// GatewayWorker's `Gateway` for this thread: cheap to clone, lives on the worker thread
/// whose channel client it uses.
#[derive(Clone)]
pub struct Gateway(Rc<Inner>);

struct Inner {
    client: Client,
    node: Option<Rc<Node>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("channel", &self.0.client.addr())
            .field("worker", &self.0.node.as_ref().map(|n| n.worker))
            .finish()
    }
}

impl Gateway {
    /// Hold `instance`'s connections as cluster worker `worker` (unique in the cluster, e.g.
    /// claimed with `channel::worker_ids`): register them in `client`'s directory, apply what
    /// it forwards, write its sends. Stored in the instance ([`Gateway::of`]).
    pub fn node(client: &Client, instance: &WorkerInstance, worker: u32) -> Gateway {
        Gateway::start(client, instance, worker, None)
    }

    /// Hold, as cluster worker `worker`, only the connections of `instance` registered with
    /// [`Gateway::register`] — event streams of an HTTP worker, say — writing what is sent to
    /// one as `encode` makes it (a Server-Sent Event). Otherwise as [`Gateway::node`].
    pub fn node_of_registered(
        client: &Client,
        instance: &WorkerInstance,
        worker: u32,
        encode: impl Fn(String) -> Message + 'static,
    ) -> Gateway {
        let only = node::Only {
            registered: Default::default(),
            encode: Box::new(encode),
        };
        Gateway::start(client, instance, worker, Some(only))
    }

    fn start(
        client: &Client,
        instance: &WorkerInstance,
        worker: u32,
        only: Option<node::Only>,
    ) -> Gateway {
        let node = Node::start(client, instance, worker, only);
        let gw = Gateway(Rc::new(Inner {
            client: client.clone(),
            node: Some(node),
        }));
        instance.set_data(gw.clone());
        gw
    }

    /// Hold `conn` from now on (a [`Gateway::node_of_registered`]; a plain node holds every
    /// connection already): it gets a client id, can be bound, grouped and sent to, until it
    /// closes.
    pub fn register(&self, conn: &Connection) {
        if let Some(node) = &self.0.node {
            node.register(conn);
        }
    }

    /// Announce this node's connections' presence (`gateway::presence`): a uid's `online` and
    /// `offline`, a group's `join` and `leave`, once cluster-wide; with `hooks`, also queued
    /// for a webhook sender. For binds and joins from now on (and all of them again after a
    /// reconnect).
    pub fn announce_presence(&self, hooks: bool) {
        if let Some(node) = &self.0.node {
            node.presence.set(Some(hooks));
        }
    }

    /// Send and ask through `client` without holding connections (an HTTP publisher).
    pub fn api(client: &Client) -> Gateway {
        Gateway(Rc::new(Inner {
            client: client.clone(),
            node: None,
        }))
    }

    /// Bind one of this node's connections to what a verified token names (its uid, its
    /// groups), in the background; failures are logged.
    pub fn bind_claims(&self, conn: &Connection, claims: Claims) {
        let Some(me) = self.client_id(conn) else {
            return;
        };
        let gw = self.clone();
        actix_rt::spawn(async move {
            if let Some(uid) = &claims.uid {
                if let Err(e) = gw.bind_uid(me, uid).await {
                    log::warn!("client {me}: token's uid {uid:?} not bound: {e}");
                }
            }
            for g in &claims.groups {
                if let Err(e) = gw.join_group(me, g).await {
                    log::warn!("client {me}: token's group {g:?} not joined: {e}");
                }
            }
        });
    }

    /// The gateway stored in an instance (by [`Gateway::node`], or `set_data` by the app).
    pub fn of(instance: &WorkerInstance) -> Option<Gateway> {
        instance.data::<Gateway>().map(|g| (*g).clone())
    }

    /// The gateway of the instance that holds `conn`.
    pub fn of_connection(conn: &Connection) -> Option<Gateway> {
        Gateway::of(&conn.worker()?)
    }

    /// The cluster worker id of this node (`None` for [`Gateway::api`]).
    pub fn worker_id(&self) -> Option<u32> {
        self.0.node.as_ref().map(|n| n.worker)
    }

    /// The client id of one of this node's connections.
    pub fn client_id(&self, conn: &Connection) -> Option<ClientId> {
        let node = self.0.node.as_ref()?;
        Some(ClientId::new(node.worker, conn.id()))
    }

    /// The uid of one of this node's connections, as the directory last told the node.
    pub fn uid(&self, conn: &Connection) -> Option<String> {
        self.0.node.as_ref()?.uid(conn.id())
    }

    /// The groups of one of this node's connections.
    pub fn groups(&self, conn: &Connection) -> Vec<String> {
        self.0
            .node
            .as_ref()
            .map(|n| n.groups(conn.id()))
            .unwrap_or_default()
    }

    /// The session of one of this node's connections (GatewayWorker's `$_SESSION`), read
    /// locally.
    pub fn session(&self, conn: &Connection) -> Option<Map<String, Value>> {
        self.0.node.as_ref()?.session(conn.id())
    }

    /// Apply any directory operation and get its answer as JSON (what the HTTP API serves).
    pub async fn request(&self, op: &DirOp) -> Result<Value, GatewayError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request_then(op, move |answer| {
            let _ = tx.send(answer);
        });
        rx.await.map_err(|_| ChannelError::Closed)?
    }

    /// Apply any directory operation; `done` is called with its answer as JSON, on this
    /// thread (no task spawned: what a server answering each request from a callback uses).
    pub fn request_then(
        &self,
        op: &DirOp,
        done: impl FnOnce(Result<Value, GatewayError>) + 'static,
    ) {
        self.0
            .client
            .dir_request(op, move |answer| done(answer.map_err(GatewayError::from)));
    }

    async fn count(&self, op: DirOp) -> Result<usize, GatewayError> {
        let v = self.request(&op).await?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or(GatewayError::Answer(v))
    }

    async fn flag(&self, op: DirOp) -> Result<bool, GatewayError> {
        let v = self.request(&op).await?;
        match &v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) => Ok(n.as_u64() != Some(0)),
            _ => Err(GatewayError::Answer(v)),
        }
    }

    async fn strings(&self, op: DirOp) -> Result<Vec<String>, GatewayError> {
        let v = self.request(&op).await?;
        let list = v.as_array().and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        });
        list.ok_or(GatewayError::Answer(v))
    }

    async fn client_ids(&self, op: DirOp) -> Result<Vec<ClientId>, GatewayError> {
        let list = self.strings(op).await?;
        list.iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| GatewayError::Answer(Value::from(s.as_str())))
            })
            .collect()
    }

    /// Write `data` to every connection of the cluster but `exclude`; the connections reached.
    pub async fn send_to_all(
        &self,
        data: &str,
        exclude: &[ClientId],
    ) -> Result<usize, GatewayError> {
        self.count(DirOp::Send {
            target: Target::All {
                exclude: exclude.to_vec(),
            },
            data: data.to_string(),
        })
        .await
    }

    /// Write `data` to one connection: 1, or 0 if it is not online.
    pub async fn send_to_client(
        &self,
        client_id: ClientId,
        data: &str,
    ) -> Result<usize, GatewayError> {
        self.send_to_clients(&[client_id], data).await
    }

    /// Write `data` to these connections (GatewayWorker's `sendToAll` with a client id list);
    /// how many were online.
    pub async fn send_to_clients(
        &self,
        client_ids: &[ClientId],
        data: &str,
    ) -> Result<usize, GatewayError> {
        self.count(DirOp::Send {
            target: Target::Clients {
                client_ids: client_ids.to_vec(),
            },
            data: data.to_string(),
        })
        .await
    }

    /// Close a connection, after writing `data` if given: whether it was online.
    pub async fn close_client(
        &self,
        client_id: ClientId,
        data: Option<&str>,
    ) -> Result<bool, GatewayError> {
        self.flag(DirOp::CloseClient {
            client_id,
            data: data.map(str::to_string),
        })
        .await
    }

    /// Whether a connection is online.
    pub async fn is_online(&self, client_id: ClientId) -> Result<bool, GatewayError> {
        self.flag(DirOp::IsOnline { client_id }).await
    }

    /// Bind a connection to `uid` (replacing its uid, if any): whether it was online.
    pub async fn bind_uid(&self, client_id: ClientId, uid: &str) -> Result<bool, GatewayError> {
        self.flag(DirOp::BindUid {
            client_id,
            uid: uid.to_string(),
        })
        .await
    }

    /// Unbind a connection from `uid`: whether it was bound to it.
    pub async fn unbind_uid(&self, client_id: ClientId, uid: &str) -> Result<bool, GatewayError> {
        self.flag(DirOp::UnbindUid {
            client_id,
            uid: uid.to_string(),
        })
        .await
    }

    /// Whether any connection is bound to `uid`.
    pub async fn is_uid_online(&self, uid: &str) -> Result<bool, GatewayError> {
        self.flag(DirOp::IsUidOnline {
            uid: uid.to_string(),
        })
        .await
    }

    /// The connections bound to `uid`.
    pub async fn get_client_id_by_uid(&self, uid: &str) -> Result<Vec<ClientId>, GatewayError> {
        self.client_ids(DirOp::GetClientIdByUid {
            uid: uid.to_string(),
        })
        .await
    }

    /// A connection's uid.
    pub async fn get_uid_by_client_id(
        &self,
        client_id: ClientId,
    ) -> Result<Option<String>, GatewayError> {
        let v = self.request(&DirOp::GetUidByClientId { client_id }).await?;
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(GatewayError::Answer(other)),
        }
    }

    /// Write `data` to every connection bound to the uid(s); the connections reached (0: the
    /// user is offline — time for an e-mail or a mobile push).
    pub async fn send_to_uid(&self, uids: impl Names, data: &str) -> Result<usize, GatewayError> {
        self.count(DirOp::Send {
            target: Target::Uids { uids: uids.names() },
            data: data.to_string(),
        })
        .await
    }

    /// Add a connection to `group`: whether it was online.
    pub async fn join_group(&self, client_id: ClientId, group: &str) -> Result<bool, GatewayError> {
        self.flag(DirOp::JoinGroup {
            client_id,
            group: group.to_string(),
        })
        .await
    }

    /// Remove a connection from `group`: whether it was a member.
    pub async fn leave_group(
        &self,
        client_id: ClientId,
        group: &str,
    ) -> Result<bool, GatewayError> {
        self.flag(DirOp::LeaveGroup {
            client_id,
            group: group.to_string(),
        })
        .await
    }

    /// Dissolve `group` (its members stay connected): how many members it had.
    pub async fn ungroup(&self, group: &str) -> Result<usize, GatewayError> {
        self.count(DirOp::Ungroup {
            group: group.to_string(),
        })
        .await
    }

    /// Write `data` to every member of the group(s), once each, but `exclude`; the
    /// connections reached.
    pub async fn send_to_group(
        &self,
        groups: impl Names,
        data: &str,
        exclude: &[ClientId],
    ) -> Result<usize, GatewayError> {
        self.count(DirOp::Send {
            target: Target::Groups {
                groups: groups.names(),
                exclude: exclude.to_vec(),
            },
            data: data.to_string(),
        })
        .await
    }

    /// How many connections `group` has.
    pub async fn get_client_id_count_by_group(&self, group: &str) -> Result<usize, GatewayError> {
        self.count(DirOp::GetClientIdCountByGroup {
            group: group.to_string(),
        })
        .await
    }

    /// The connections in `group`.
    pub async fn get_client_id_list_by_group(
        &self,
        group: &str,
    ) -> Result<Vec<ClientId>, GatewayError> {
        self.client_ids(DirOp::GetClientIdListByGroup {
            group: group.to_string(),
        })
        .await
    }

    /// The uids of `group`'s connections, each once.
    pub async fn get_uid_list_by_group(&self, group: &str) -> Result<Vec<String>, GatewayError> {
        self.strings(DirOp::GetUidListByGroup {
            group: group.to_string(),
        })
        .await
    }

    /// How many distinct uids `group`'s connections are bound to.
    pub async fn get_uid_count_by_group(&self, group: &str) -> Result<usize, GatewayError> {
        self.count(DirOp::GetUidCountByGroup {
            group: group.to_string(),
        })
        .await
    }

    /// How many connections the cluster holds.
    pub async fn get_all_client_id_count(&self) -> Result<usize, GatewayError> {
        self.count(DirOp::GetAllClientIdCount).await
    }

    /// How many distinct uids are bound.
    pub async fn get_all_uid_count(&self) -> Result<usize, GatewayError> {
        self.count(DirOp::GetAllUidCount).await
    }

    /// The groups that have members.
    pub async fn get_all_group_id_list(&self) -> Result<Vec<String>, GatewayError> {
        self.strings(DirOp::GetAllGroupIdList).await
    }

    /// Replace a connection's session: whether it was online.
    pub async fn set_session(
        &self,
        client_id: ClientId,
        session: Map<String, Value>,
    ) -> Result<bool, GatewayError> {
        self.flag(DirOp::SetSession { client_id, session }).await
    }

    /// Set these keys of a connection's session: whether it was online.
    pub async fn update_session(
        &self,
        client_id: ClientId,
        session: Map<String, Value>,
    ) -> Result<bool, GatewayError> {
        self.flag(DirOp::UpdateSession { client_id, session }).await
    }

    /// A connection's session (`None`: not online).
    pub async fn get_session(
        &self,
        client_id: ClientId,
    ) -> Result<Option<Map<String, Value>>, GatewayError> {
        match self.request(&DirOp::GetSession { client_id }).await? {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m)),
            other => Err(GatewayError::Answer(other)),
        }
    }
}

//! A gateway node: the worker instance that holds connections. It registers each connection in
//! the directory when it opens and removes it when it closes, registers them all again after
//! the channel reconnects, keeps its connections' uids, groups and sessions as the directory
//! forwards them, and writes sends to the connections they name.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::presence;
use crate::channel::dir::{self, ClientId, DirOp, Registration, Target};
use crate::channel::wire::Command;
use crate::channel::Client;
use crate::connection::Connection;
use crate::message::Message;
use crate::worker::instance::{ConnectionHooks, ConnectionInfo};
use crate::WorkerInstance;

/// What a node knows of one of its connections.
#[derive(Default)]
struct Meta {
    uid: Option<Rc<str>>,
    groups: Vec<Rc<str>>,
    session: Option<Map<String, Value>>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.uid.is_none() && self.groups.is_empty() && self.session.is_none()
    }
}

/// The node's view of its own connections, as the directory told it. Only connections with a
/// uid, a group or a session have an entry: an instance whose clients bind nothing keeps
/// nothing here.
#[derive(Default)]
pub(crate) struct Local {
    clients: HashMap<u64, Meta>,
    uids: HashMap<Rc<str>, Vec<u64>>,
    groups: HashMap<Rc<str>, HashSet<u64>>,
}

impl Local {
    /// Drop `conn`'s entry once it holds nothing.
    fn tidy(&mut self, conn: u64) {
        if self.clients.get(&conn).is_some_and(Meta::is_empty) {
            self.clients.remove(&conn);
        }
    }

    fn unbind(&mut self, conn: u64) {
        let Some(uid) = self.clients.get_mut(&conn).and_then(|m| m.uid.take()) else {
            return;
        };
        if let Some(list) = self.uids.get_mut(&uid) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.uids.remove(&uid);
            }
        }
        self.tidy(conn);
    }

    fn leave(&mut self, conn: u64, group: &str) {
        if let Some(m) = self.clients.get_mut(&conn) {
            m.groups.retain(|g| &**g != group);
        }
        if let Some(set) = self.groups.get_mut(group) {
            set.remove(&conn);
            if set.is_empty() {
                self.groups.remove(group);
            }
        }
        self.tidy(conn);
    }

    /// Bind `conn` (one of this instance's connections) to `uid`.
    fn bind(&mut self, conn: u64, uid: &str) {
        self.unbind(conn);
        let key: Rc<str> = match self.uids.get_key_value(uid) {
            Some((k, _)) => k.clone(),
            None => Rc::from(uid),
        };
        self.uids.entry(key.clone()).or_default().push(conn);
        self.clients.entry(conn).or_default().uid = Some(key);
    }

    /// Add `conn` (one of this instance's connections) to `group`.
    fn join(&mut self, conn: u64, group: &str) {
        let m = self.clients.entry(conn).or_default();
        if m.groups.iter().any(|g| &**g == group) {
            return;
        }
        let key: Rc<str> = match self.groups.get_key_value(group) {
            Some((k, _)) => k.clone(),
            None => Rc::from(group),
        };
        m.groups.push(key.clone());
        self.groups.entry(key).or_default().insert(conn);
    }

    fn remove(&mut self, conn: u64) {
        self.unbind(conn);
        let groups = self
            .clients
            .get(&conn)
            .map(|m| m.groups.clone())
            .unwrap_or_default();
        for g in groups {
            self.leave(conn, &g);
        }
        self.clients.remove(&conn);
    }

    /// The connections a send names at this node (each once); `all` are the instance's
    /// connections.
    fn targets<C>(&self, worker: u32, target: &Target, all: &HashMap<u64, C>) -> Vec<u64> {
        let excluded = |ex: &[ClientId]| -> HashSet<u64> {
            ex.iter()
                .filter(|c| c.worker == worker)
                .map(|c| c.conn)
                .collect()
        };
        match target {
            Target::All { exclude } => {
                let ex = excluded(exclude);
                all.keys().filter(|c| !ex.contains(c)).copied().collect()
            }
            Target::Clients { client_ids } => {
                let mut seen = HashSet::new();
                client_ids
                    .iter()
                    .filter(|c| c.worker == worker && all.contains_key(&c.conn))
                    .filter(|c| seen.insert(c.conn))
                    .map(|c| c.conn)
                    .collect()
            }
            // One uid (the usual send): its connections here, each listed once already.
            Target::Uids { uids } if uids.len() == 1 => {
                self.uids.get(uids[0].as_str()).cloned().unwrap_or_default()
            }
            Target::Uids { uids } => {
                let mut seen = HashSet::new();
                uids.iter()
                    .filter_map(|u| self.uids.get(u.as_str()))
                    .flatten()
                    .filter(|c| seen.insert(**c))
                    .copied()
                    .collect()
            }
            Target::Groups { groups, exclude } => {
                let ex = excluded(exclude);
                let mut seen = HashSet::new();
                groups
                    .iter()
                    .filter_map(|g| self.groups.get(g.as_str()))
                    .flatten()
                    .filter(|c| !ex.contains(c) && seen.insert(**c))
                    .copied()
                    .collect()
            }
        }
    }
}

/// A node: instance `instance` known in the cluster as worker `worker`.
pub(crate) struct Node {
    pub(crate) worker: u32,
    pub(crate) instance: WorkerInstance,
    pub(crate) client: Client,
    pub(crate) local: RefCell<Local>,
    /// Announce presence (`presence.rs`): `None` off, `Some(hooks)` on (with webhook items).
    pub(crate) presence: Cell<Option<bool>>,
    /// Set when the node holds only the connections registered with it.
    pub(crate) only: Option<Only>,
}

/// What a node that holds only some of its instance's connections (event streams of an HTTP
/// worker) knows of them: which, and how a send is written to one.
pub(crate) struct Only {
    pub(crate) registered: RefCell<HashSet<u64>>,
    pub(crate) encode: Box<dyn Fn(String) -> Message>,
}

impl Node {
    /// Start serving: subscribe to this worker's event and to every node's, register the
    /// connections the instance holds (with `only`: those registered with it), and hear of
    /// the next ones.
    pub(crate) fn start(
        client: &Client,
        instance: &WorkerInstance,
        worker: u32,
        only: Option<Only>,
    ) -> Rc<Node> {
        let node = Rc::new(Node {
            worker,
            instance: instance.clone(),
            client: client.clone(),
            local: RefCell::new(Local::default()),
            presence: Cell::new(None),
            only,
        });
        let weak = Rc::downgrade(&node);
        let on_forward = move |data: &Bytes| {
            if let Some(node) = weak.upgrade() {
                node.forwarded(data);
            }
        };
        let on_forward = Rc::new(on_forward);
        let f = on_forward.clone();
        client.on_raw(dir::node_event(worker), move |d| f(d));
        client.on_raw(dir::ALL_NODES, move |d| on_forward(d));
        let weak = Rc::downgrade(&node);
        client.on_up_internal(move || {
            if let Some(node) = weak.upgrade() {
                node.register_all();
            }
        });
        if client.is_connected() {
            node.register_all();
        }
        instance.set_hooks(node.clone());
        node
    }

    /// Register every connection again, with what it holds (after a reconnect the directory
    /// may have lost it: a restarted channel server, a connection it took for a dead node's).
    fn register_all(&self) {
        let local = self.local.borrow();
        let none = Meta::default();
        let clients: Vec<Registration> = self
            .instance
            .connections()
            .keys()
            .filter(|c| self.holds(**c))
            .map(|conn| {
                let m = local.clients.get(conn).unwrap_or(&none);
                Registration {
                    client_id: ClientId::new(self.worker, *conn),
                    uid: m.uid.as_deref().map(str::to_string),
                    groups: m.groups.iter().map(|g| g.to_string()).collect(),
                    session: m.session.clone(),
                }
            })
            .collect();
        drop(local);
        for chunk in clients.chunks(dir::MAX_TARGETS) {
            self.send(&DirOp::Register {
                clients: chunk.to_vec(),
            });
        }
        // The presence joins again (a new channel server knows none of them).
        if let Some(hooks) = self.presence.get() {
            for r in &clients {
                if let Some(uid) = &r.uid {
                    self.send(&presence::uid_join(r.client_id, uid, hooks));
                }
                let member = r.uid.clone().unwrap_or_else(|| r.client_id.to_string());
                for g in &r.groups {
                    self.send(&presence::group_join(r.client_id, g, &member, hooks));
                }
            }
        }
    }

    /// Whether this node holds connection `conn`.
    fn holds(&self, conn: u64) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.registered.borrow().contains(&conn))
    }

    /// A send's message for this node's connections.
    fn message(&self, text: String) -> Message {
        match &self.only {
            Some(only) => (only.encode)(text),
            None => Message::Text(text),
        }
    }

    /// Hold `conn` too (a node with [`Only`]): registered in the directory now, and again
    /// after a reconnect, until it closes.
    pub(crate) fn register(&self, conn: &Connection) {
        if let Some(only) = &self.only {
            if only.registered.borrow_mut().insert(conn.id()) {
                self.register_new(conn.id());
            }
        }
    }

    /// Tell the directory of a new connection (nothing bound yet).
    fn register_new(&self, conn: u64) {
        self.send(&DirOp::Register {
            clients: vec![Registration {
                client_id: ClientId::new(self.worker, conn),
                uid: None,
                groups: Vec::new(),
                session: None,
            }],
        });
    }

    /// A connection's member name in a group's presence: its uid, or its client id.
    fn member(&self, conn: u64, client_id: ClientId) -> String {
        self.local
            .borrow()
            .clients
            .get(&conn)
            .and_then(|m| m.uid.as_deref().map(str::to_string))
            .unwrap_or_else(|| client_id.to_string())
    }

    fn send(&self, op: &DirOp) {
        if let Err(e) = self.client.dir_send(op) {
            log::warn!(
                "gateway worker {}: directory not told ({e}): {:?}",
                self.worker,
                op
            );
        }
    }

    /// An operation the directory forwarded to this node.
    fn forwarded(&self, data: &Bytes) {
        let op = match Command::dir_json(data)
            .map_err(|e| e.to_string())
            .and_then(|json| DirOp::from_wire(&json).map_err(|e| e.0))
        {
            Ok(op) => op,
            Err(e) => {
                log::warn!(
                    "gateway worker {}: bad forwarded operation: {e}",
                    self.worker
                );
                return;
            }
        };
        // One of this instance's open connections.
        let mine = |c: &ClientId| {
            (c.worker == self.worker
                && self.holds(c.conn)
                && self.instance.connection(c.conn).is_some())
            .then_some(c.conn)
        };
        match op {
            DirOp::BindUid { client_id, uid } => {
                if let Some(c) = mine(&client_id) {
                    self.local.borrow_mut().bind(c, &uid);
                    if let Some(hooks) = self.presence.get() {
                        self.send(&presence::uid_join(client_id, &uid, hooks));
                    }
                }
            }
            DirOp::UnbindUid { client_id, uid } => {
                if let Some(c) = mine(&client_id) {
                    let mut local = self.local.borrow_mut();
                    let bound = local
                        .clients
                        .get(&c)
                        .and_then(|m| m.uid.as_deref())
                        .is_some_and(|u| u == uid);
                    if bound {
                        local.unbind(c);
                        drop(local);
                        if self.presence.get().is_some() {
                            self.send(&presence::uid_leave(client_id));
                        }
                    }
                }
            }
            DirOp::JoinGroup { client_id, group } => {
                if let Some(c) = mine(&client_id) {
                    self.local.borrow_mut().join(c, &group);
                    if let Some(hooks) = self.presence.get() {
                        let member = self.member(c, client_id);
                        self.send(&presence::group_join(client_id, &group, &member, hooks));
                    }
                }
            }
            DirOp::LeaveGroup { client_id, group } => {
                if let Some(c) = mine(&client_id) {
                    self.local.borrow_mut().leave(c, &group);
                    if self.presence.get().is_some() {
                        self.send(&presence::group_leave(client_id, &group));
                    }
                }
            }
            DirOp::Ungroup { group } => {
                let mut local = self.local.borrow_mut();
                let members: Vec<u64> = local
                    .groups
                    .get(group.as_str())
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for c in &members {
                    local.leave(*c, &group);
                }
                drop(local);
                if self.presence.get().is_some() {
                    for c in members {
                        self.send(&presence::group_leave(
                            ClientId::new(self.worker, c),
                            &group,
                        ));
                    }
                }
            }
            DirOp::SetSession { client_id, session } => {
                if let Some(c) = mine(&client_id) {
                    self.local
                        .borrow_mut()
                        .clients
                        .entry(c)
                        .or_default()
                        .session = Some(session);
                }
            }
            DirOp::UpdateSession { client_id, session } => {
                if let Some(c) = mine(&client_id) {
                    let mut local = self.local.borrow_mut();
                    let meta = local.clients.entry(c).or_default();
                    dir::merge_session(meta.session.get_or_insert_with(Map::new), &session);
                }
            }
            DirOp::Send { target, data } => {
                let everyone = matches!(target, Target::All { .. });
                let conns: Vec<Connection> = {
                    let local = self.local.borrow();
                    let all = self.instance.connections();
                    local
                        .targets(self.worker, &target, &all)
                        .into_iter()
                        // A send to everyone skips the sockets of other protocols (Pusher).
                        .filter(|c| !everyone || self.instance.takes_broadcasts(*c))
                        .filter(|c| self.holds(*c))
                        .filter_map(|c| all.get(&c).cloned())
                        .collect()
                };
                if !conns.is_empty() {
                    self.instance.send_to(&conns, self.message(data));
                }
            }
            DirOp::CloseClient { client_id, data } => {
                if let Some(conn) = mine(&client_id).and_then(|c| self.instance.connection(c)) {
                    if let Some(d) = data {
                        conn.send(self.message(d));
                    }
                    conn.close();
                }
            }
            // Not forwarded to nodes.
            _ => {}
        }
    }

    /// A connection's uid, groups and session, as this node knows them.
    pub(crate) fn uid(&self, conn: u64) -> Option<String> {
        let local = self.local.borrow();
        local.clients.get(&conn)?.uid.as_deref().map(str::to_string)
    }

    pub(crate) fn groups(&self, conn: u64) -> Vec<String> {
        let local = self.local.borrow();
        local
            .clients
            .get(&conn)
            .map(|m| m.groups.iter().map(|g| g.to_string()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn session(&self, conn: u64) -> Option<Map<String, Value>> {
        let local = self.local.borrow();
        local.clients.get(&conn)?.session.clone()
    }
}

impl ConnectionHooks for Node {
    fn opened(&self, conn: &Connection) {
        if self.only.is_some() {
            return; // registered by the app, if at all
        }
        self.register_new(conn.id());
    }

    fn closed(&self, id: u64) {
        if let Some(only) = &self.only {
            if !only.registered.borrow_mut().remove(&id) {
                return;
            }
        }
        self.local.borrow_mut().remove(id);
        self.send(&DirOp::Unregister {
            client_ids: vec![ClientId::new(self.worker, id)],
        });
    }

    fn describe(&self, id: u64, info: &mut ConnectionInfo) {
        if self
            .only
            .as_ref()
            .is_some_and(|o| !o.registered.borrow().contains(&id))
        {
            return;
        }
        info.client_id = Some(ClientId::new(self.worker, id).to_string());
        info.uid = self.uid(id);
        info.groups = self.groups(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(ids: &[u64]) -> HashMap<u64, ()> {
        ids.iter().map(|c| (*c, ())).collect()
    }

    #[test]
    fn targets_resolve_locally_once_each() {
        let all = conns(&[1, 2, 3, 4]);
        let mut l = Local::default();
        l.bind(1, "alice");
        l.bind(2, "alice");
        l.bind(3, "bob");
        l.join(1, "room");
        l.join(3, "room");
        l.join(3, "lobby");
        let t = |target: Target| {
            let mut v = l.targets(7, &target, &all);
            v.sort();
            v
        };
        let id = |c| ClientId::new(7, c);
        assert_eq!(
            t(Target::Uids {
                uids: vec!["alice".into(), "bob".into()]
            }),
            [1, 2, 3]
        );
        assert_eq!(
            t(Target::Uids {
                uids: vec!["ghost".into()]
            }),
            Vec::<u64>::new()
        );
        assert_eq!(
            t(Target::Groups {
                groups: vec!["room".into(), "lobby".into()],
                exclude: vec![id(1)]
            }),
            [3]
        );
        assert_eq!(
            t(Target::All {
                exclude: vec![id(4), ClientId::new(8, 1)]
            }),
            [1, 2, 3]
        );
        assert_eq!(
            t(Target::Clients {
                client_ids: vec![id(2), id(2), ClientId::new(8, 3), id(5)]
            }),
            [2]
        );
    }

    #[test]
    fn rebinding_and_closing_leave_nothing_behind() {
        let mut l = Local::default();
        l.bind(2, "carol");
        l.bind(1, "alice");
        l.bind(1, "bob");
        assert!(!l.uids.contains_key("alice"));
        l.join(1, "room");
        l.join(1, "room");
        assert_eq!(l.clients[&1].groups.len(), 1);
        l.remove(1);
        assert!(!l.uids.contains_key("bob") && l.groups.is_empty());
        assert_eq!(l.clients.len(), 1);
        // An entry that holds nothing any more is dropped.
        l.unbind(2);
        assert!(l.clients.is_empty() && l.uids.is_empty());
    }
}

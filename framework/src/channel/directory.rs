//! The directory's state in the hub (embedded and channel server): which connections exist at
//! which worker, their uids, groups and sessions (see `channel::dir`, the spec of every
//! operation and its answer). Pure state: the hub ([`super::hub::HubState`]) decodes each
//! operation, applies it here and forwards it where [`Applied::forward`] says.
//!
//! Layout, for small memory (≤ 256 bytes per connection bound to a uid; see the `memory`
//! test) and work proportional to an operation's targets:
//! - clients by worker, then by connection id ([`Entry`], 32 bytes: its owner's number, its
//!   uid, and one box for groups and session, absent for most); a send to all counts each
//!   worker's table, not its clients;
//! - uid → its connections and group → its members ([`Members`], 16 bytes: one id inline, a
//!   few in a list, many by worker), so a send is routed to the workers holding targets and
//!   counted per worker;
//! - uid and group names as `Rc<str>`, one allocation shared by the index and the entries;
//! - owner → the workers it registered connections on, with how many, so an owner that goes
//!   away is forgotten by looking at those workers' tables only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value};

use super::dir::{merge_session, ClientId, DirOp, Registration, Target};
use super::subscriber::SubscriberId;

/// A uid or group name, shared between the index and the entries.
type Name = Rc<str>;

/// Members kept in a list up to this many; beyond, by worker in hash sets.
const FEW: usize = 16;

/// Where the hub forwards an operation (the command's bytes, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Not forwarded (a query, a registration, or nothing was applied).
    Nowhere,
    /// To each of these workers' node events (`dir::node_event`), ascending, each once.
    Workers(Vec<u32>),
    /// To every gateway node (`dir::ALL_NODES`).
    AllNodes,
}

/// What an operation gave: its answer (JSON, as `channel::dir` says) and where it goes on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    /// The answer.
    pub answer: Value,
    /// Where to forward the operation.
    pub forward: Forward,
}

impl Applied {
    fn query(answer: Value) -> Applied {
        Applied {
            answer,
            forward: Forward::Nowhere,
        }
    }

    /// 0, not forwarded.
    fn zero() -> Applied {
        Applied::query(Value::from(0))
    }

    /// `n`, forwarded to `workers` (nowhere when empty).
    fn to_workers(n: usize, mut workers: Vec<u32>) -> Applied {
        workers.sort_unstable();
        workers.dedup();
        let forward = if workers.is_empty() {
            Forward::Nowhere
        } else {
            Forward::Workers(workers)
        };
        Applied {
            answer: Value::from(n),
            forward,
        }
    }
}

/// One registered connection.
struct Entry {
    /// Who registered it (the node's channel client, by its number in
    /// [`DirectoryState::owners`]): it goes when that owner goes.
    owner: u32,
    uid: Option<Name>,
    /// Its groups and session, for the connections that have either (one allocation, none
    /// for the many that have neither).
    more: Option<Box<More>>,
}

/// A connection's groups and session.
#[derive(Default)]
struct More {
    /// Each once.
    groups: Box<[Name]>,
    /// Empty when not set.
    session: Map<String, Value>,
}

impl Entry {
    fn groups(&self) -> &[Name] {
        self.more.as_deref().map_or(&[], |m| &m.groups)
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups().iter().any(|g| &**g == group)
    }

    /// Its session (empty when not set).
    fn session(&self) -> Map<String, Value> {
        self.more
            .as_deref()
            .map(|m| m.session.clone())
            .unwrap_or_default()
    }

    /// Change groups or session, and keep `more` only while it holds something.
    fn change(&mut self, f: impl FnOnce(&mut More)) {
        let mut more = self.more.take().unwrap_or_default();
        f(&mut more);
        if !more.groups.is_empty() || !more.session.is_empty() {
            self.more = Some(more);
        }
    }

    /// Take `group` out of its groups.
    fn leave(&mut self, group: &str) {
        self.change(|m| {
            let left: Vec<Name> = std::mem::take(&mut m.groups)
                .into_vec()
                .into_iter()
                .filter(|g| &**g != group)
                .collect();
            m.groups = left.into_boxed_slice();
        });
    }
}

/// The connections bound to one uid or in one group: one inline (the usual uid), a few in a
/// list, many by worker.
enum Members {
    One {
        worker: u32,
        conn: u64,
    },
    /// 2 to [`FEW`] ids, in no order. Boxed: a thin pointer keeps `Members` at 16 bytes (a
    /// `Vec` would make every uid's slot 8 bytes larger, for the rare uid with several).
    #[allow(clippy::box_collection)]
    Few(Box<Vec<ClientId>>),
    Many(Box<Large>),
}

/// Many members, by worker.
struct Large {
    len: usize,
    by_worker: HashMap<u32, HashSet<u64>>,
}

impl Members {
    fn one(id: ClientId) -> Members {
        Members::One {
            worker: id.worker,
            conn: id.conn,
        }
    }

    fn len(&self) -> usize {
        match self {
            Members::One { .. } => 1,
            Members::Few(ids) => ids.len(),
            Members::Many(l) => l.len,
        }
    }

    fn contains(&self, id: ClientId) -> bool {
        match self {
            Members::One { worker, conn } => ClientId::new(*worker, *conn) == id,
            Members::Few(ids) => ids.contains(&id),
            Members::Many(l) => l
                .by_worker
                .get(&id.worker)
                .is_some_and(|s| s.contains(&id.conn)),
        }
    }

    /// Add `id` (once).
    fn insert(&mut self, id: ClientId) {
        if self.contains(id) {
            return;
        }
        match self {
            Members::One { worker, conn } => {
                *self = Members::Few(Box::new(vec![ClientId::new(*worker, *conn), id]));
            }
            Members::Few(ids) if ids.len() < FEW => ids.push(id),
            Members::Few(ids) => {
                let mut l = Large {
                    len: 0,
                    by_worker: HashMap::new(),
                };
                for &m in ids.iter().chain([&id]) {
                    l.by_worker.entry(m.worker).or_default().insert(m.conn);
                    l.len += 1;
                }
                *self = Members::Many(Box::new(l));
            }
            Members::Many(l) => {
                l.by_worker.entry(id.worker).or_default().insert(id.conn);
                l.len += 1;
            }
        }
    }

    /// Take `id` out; `false` if it was the last one (the caller drops the whole set) or not
    /// a member.
    fn remove(&mut self, id: ClientId) -> bool {
        match self {
            Members::One { .. } => false,
            Members::Few(ids) => {
                let Some(i) = ids.iter().position(|m| *m == id) else {
                    return false;
                };
                ids.swap_remove(i);
                if let [one] = ids[..] {
                    *self = Members::one(one);
                }
                true
            }
            Members::Many(l) => {
                let Some(set) = l.by_worker.get_mut(&id.worker) else {
                    return false;
                };
                if !set.remove(&id.conn) {
                    return false;
                }
                if set.is_empty() {
                    l.by_worker.remove(&id.worker);
                }
                l.len -= 1;
                if l.len <= FEW / 2 {
                    let mut v = Vec::with_capacity(FEW);
                    self.for_each(|m| v.push(m));
                    *self = Members::Few(Box::new(v));
                }
                true
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(ClientId)) {
        match self {
            Members::One { worker, conn } => f(ClientId::new(*worker, *conn)),
            Members::Few(ids) => ids.iter().copied().for_each(f),
            Members::Many(l) => {
                for (&w, set) in &l.by_worker {
                    for &c in set {
                        f(ClientId::new(w, c));
                    }
                }
            }
        }
    }

    /// How many members each worker holds (each worker once).
    fn per_worker(&self, mut f: impl FnMut(u32, usize)) {
        match self {
            Members::One { worker, .. } => f(*worker, 1),
            Members::Few(ids) => {
                let mut counts: Vec<(u32, usize)> = Vec::new();
                for m in ids.iter() {
                    match counts.iter_mut().find(|(w, _)| *w == m.worker) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((m.worker, 1)),
                    }
                }
                counts.into_iter().for_each(|(w, n)| f(w, n));
            }
            Members::Many(l) => {
                for (&w, set) in &l.by_worker {
                    f(w, set.len());
                }
            }
        }
    }

    /// The ids, ascending.
    fn sorted(&self) -> Vec<ClientId> {
        let mut v = Vec::with_capacity(self.len());
        self.for_each(|m| v.push(m));
        v.sort_unstable();
        v
    }
}

/// Add `id` to the members of `name`; the name as the index shares it.
fn link(index: &mut HashMap<Name, Members>, name: &str, id: ClientId) -> Name {
    if let Some((shared, _)) = index.get_key_value(name) {
        let shared = shared.clone();
        if let Some(m) = index.get_mut(name) {
            m.insert(id);
        }
        return shared;
    }
    let shared: Name = Rc::from(name);
    index.insert(shared.clone(), Members::one(id));
    shared
}

/// Take `id` out of the members of `name`, and the name out of the index with its last member.
fn unlink(index: &mut HashMap<Name, Members>, name: &str, id: ClientId) {
    if let Some(m) = index.get_mut(name) {
        if !m.remove(id) && m.len() == 1 && m.contains(id) {
            index.remove(name);
        }
    }
}

fn ids_json(ids: impl IntoIterator<Item = ClientId>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| Value::String(id.to_string()))
            .collect(),
    )
}

/// A channel client that registered connections.
struct Owner {
    id: SubscriberId,
    /// (worker, connections registered there), each worker once.
    held: Vec<(u32, usize)>,
}

/// The directory: every registered connection, its uid, groups and session, and the indexes
/// that route and count operations by worker. Memory per connection bound to a uid: its entry
/// in its worker's table and its uid's slot in the uid index (the name allocated once).
#[derive(Default)]
pub(crate) struct DirectoryState {
    /// Worker id → connection id → entry.
    workers: HashMap<u32, HashMap<u64, Entry>>,
    uids: HashMap<Name, Members>,
    groups: HashMap<Name, Members>,
    /// Each owner's number, kept in its entries (4 bytes where a `SubscriberId` takes 16).
    owner_numbers: HashMap<SubscriberId, u32>,
    /// Owners by number: who, and the workers it registered connections on, with how many
    /// (for [`DirectoryState::remove_owner`]); `None` where the number is free.
    owners: Vec<Option<Owner>>,
    /// Numbers free for the next new owner.
    free_owners: Vec<u32>,
    /// Registered connections (`get_all_client_id_count`).
    clients: usize,
    /// Presence groups by name.
    presence: HashMap<Name, PresenceGroup>,
    /// The presence groups of each connection in one, with its key in each.
    presence_of: HashMap<ClientId, Vec<(Name, Name)>>,
    /// Announcements to make, in order, until taken.
    announcements: Vec<Announcement>,
}

/// What the directory has to say: a payload to publish on an event, or an item to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// Publish `(event, payload)`.
    Publish(Rc<str>, String),
    /// Enqueue `(queue, item)`.
    Enqueue(Rc<str>, String),
}

impl Announcement {
    /// Publish `payload` on `event`, if it is not empty.
    fn publish(out: &mut Vec<Announcement>, event: &Rc<str>, payload: &str) {
        if !payload.is_empty() {
            out.push(Announcement::Publish(event.clone(), payload.to_string()));
        }
    }

    /// Enqueue `item` on `queue`, if there is one and `item` is not empty.
    fn enqueue(out: &mut Vec<Announcement>, queue: Option<&Rc<str>>, item: &str) {
        if let (Some(q), false) = (queue, item.is_empty()) {
            out.push(Announcement::Enqueue(q.clone(), item.to_string()));
        }
    }
}

/// A presence group: its members by key, and where their comings and goings are announced
/// (and hooked, if its first join said so).
struct PresenceGroup {
    event: Rc<str>,
    queue: Option<Rc<str>>,
    members: BTreeMap<Name, Member>,
}

/// A presence group's member.
struct Member {
    /// Its connections in the group.
    conns: usize,
    info: Value,
    /// Published when it goes.
    removed: String,
    /// Enqueued when it goes.
    hook_removed: String,
}

impl PresenceGroup {
    fn members_json(&self) -> Value {
        Value::Object(
            self.members
                .iter()
                .map(|(k, m)| (k.to_string(), m.info.clone()))
                .collect(),
        )
    }
}

impl DirectoryState {
    /// The owners (nodes and in-process clients) with connections registered: each with the
    /// workers it holds and how many connections (for the admin page).
    pub fn owners(&self) -> Vec<(SubscriberId, Vec<(u32, usize)>)> {
        self.owners
            .iter()
            .flatten()
            .map(|o| (o.id, o.held.clone()))
            .collect()
    }

    /// Its sizes for the metrics: connections, uids, groups, presence groups and members.
    pub fn sizes(&self) -> [usize; 5] {
        [
            self.clients,
            self.uids.len(),
            self.groups.len(),
            self.presence.len(),
            self.presence.values().map(|g| g.members.len()).sum(),
        ]
    }

    fn entry(&self, id: ClientId) -> Option<&Entry> {
        self.workers.get(&id.worker)?.get(&id.conn)
    }

    /// Apply `op` from `owner` (the subscriber that sent it). `subscribed(w)`: whether worker
    /// `w`'s node event has a subscriber now; counts of connections reached include only those.
    pub fn apply(
        &mut self,
        owner: SubscriberId,
        op: &DirOp,
        subscribed: impl Fn(u32) -> bool,
    ) -> Applied {
        match op {
            DirOp::Register { clients } => {
                for r in clients {
                    self.remove_client(r.client_id);
                    self.insert_client(owner, r);
                }
                Applied::query(Value::from(clients.len()))
            }
            DirOp::Unregister { client_ids } => {
                let n = client_ids
                    .iter()
                    .filter(|&&id| self.remove_client(id).is_some())
                    .count();
                Applied::query(Value::from(n))
            }
            DirOp::BindUid { client_id, uid } => {
                let id = *client_id;
                let Some(e) = entry_mut(&mut self.workers, id) else {
                    return Applied::zero();
                };
                if e.uid.as_deref() != Some(uid.as_str()) {
                    if let Some(old) = e.uid.take() {
                        unlink(&mut self.uids, &old, id);
                    }
                    e.uid = Some(link(&mut self.uids, uid, id));
                }
                Applied::to_workers(1, vec![id.worker])
            }
            DirOp::UnbindUid { client_id, uid } => {
                let id = *client_id;
                match entry_mut(&mut self.workers, id) {
                    Some(e) if e.uid.as_deref() == Some(uid.as_str()) => {
                        e.uid = None;
                        unlink(&mut self.uids, uid, id);
                        Applied::to_workers(1, vec![id.worker])
                    }
                    _ => Applied::zero(),
                }
            }
            DirOp::JoinGroup { client_id, group } => {
                let id = *client_id;
                let Some(e) = entry_mut(&mut self.workers, id) else {
                    return Applied::zero();
                };
                if !e.in_group(group) {
                    let name = link(&mut self.groups, group, id);
                    e.change(|m| {
                        let mut gs = std::mem::take(&mut m.groups).into_vec();
                        gs.push(name);
                        m.groups = gs.into_boxed_slice();
                    });
                }
                Applied::to_workers(1, vec![id.worker])
            }
            DirOp::LeaveGroup { client_id, group } => {
                let id = *client_id;
                match entry_mut(&mut self.workers, id) {
                    Some(e) if e.in_group(group) => {
                        e.leave(group);
                        unlink(&mut self.groups, group, id);
                        Applied::to_workers(1, vec![id.worker])
                    }
                    _ => Applied::zero(),
                }
            }
            DirOp::Ungroup { group } => {
                let Some(members) = self.groups.remove(group.as_str()) else {
                    return Applied::zero();
                };
                members.for_each(|id| {
                    if let Some(e) = entry_mut(&mut self.workers, id) {
                        e.leave(group);
                    }
                });
                let (mut n, mut workers) = (0, Vec::new());
                members.per_worker(|w, count| {
                    workers.push(w);
                    if subscribed(w) {
                        n += count;
                    }
                });
                Applied::to_workers(n, workers)
            }
            DirOp::SetSession { client_id, session } => {
                let Some(e) = entry_mut(&mut self.workers, *client_id) else {
                    return Applied::zero();
                };
                e.change(|m| m.session = session.clone());
                Applied::to_workers(1, vec![client_id.worker])
            }
            DirOp::UpdateSession { client_id, session } => {
                let Some(e) = entry_mut(&mut self.workers, *client_id) else {
                    return Applied::zero();
                };
                e.change(|m| merge_session(&mut m.session, session));
                Applied::to_workers(1, vec![client_id.worker])
            }
            DirOp::Send { target, .. } => self.send(target, &subscribed),
            DirOp::CloseClient { client_id, .. } => {
                if self.entry(*client_id).is_none() {
                    return Applied::zero();
                }
                let n = usize::from(subscribed(client_id.worker));
                Applied::to_workers(n, vec![client_id.worker])
            }
            DirOp::IsOnline { client_id } => {
                Applied::query(Value::Bool(self.entry(*client_id).is_some()))
            }
            DirOp::IsUidOnline { uid } => {
                Applied::query(Value::Bool(self.uids.contains_key(uid.as_str())))
            }
            DirOp::GetClientIdByUid { uid } => Applied::query(ids_json(
                self.uids
                    .get(uid.as_str())
                    .map(Members::sorted)
                    .unwrap_or_default(),
            )),
            DirOp::GetUidByClientId { client_id } => Applied::query(
                self.entry(*client_id)
                    .and_then(|e| e.uid.as_deref())
                    .map_or(Value::Null, Value::from),
            ),
            DirOp::GetClientIdCountByGroup { group } => Applied::query(Value::from(
                self.groups.get(group.as_str()).map_or(0, Members::len),
            )),
            DirOp::GetClientIdListByGroup { group } => Applied::query(ids_json(
                self.groups
                    .get(group.as_str())
                    .map(Members::sorted)
                    .unwrap_or_default(),
            )),
            DirOp::GetUidListByGroup { group } => {
                let uids = self.group_uids(group);
                Applied::query(Value::Array(
                    uids.iter().map(|u| Value::from(&**u)).collect(),
                ))
            }
            DirOp::GetUidCountByGroup { group } => {
                Applied::query(Value::from(self.group_uids(group).len()))
            }
            DirOp::GetAllClientIdCount => Applied::query(Value::from(self.clients)),
            DirOp::GetAllUidCount => Applied::query(Value::from(self.uids.len())),
            DirOp::GetAllGroupIdList => {
                let mut names: Vec<&str> = self.groups.keys().map(|g| &**g).collect();
                names.sort_unstable();
                Applied::query(Value::Array(names.into_iter().map(Value::from).collect()))
            }
            DirOp::GetSession { client_id } => Applied::query(match self.entry(*client_id) {
                None => Value::Null,
                Some(e) => Value::Object(e.session()),
            }),
            DirOp::PresenceJoin(j) => {
                let id = j.client_id;
                if self.entry(id).is_none() {
                    return Applied::query(Value::Null);
                }
                let joined = self
                    .presence_of
                    .get(&id)
                    .is_some_and(|l| l.iter().any(|(g, _)| **g == *j.group));
                if !joined {
                    let full = self.presence.get(j.group.as_str()).is_some_and(|g| {
                        g.members.len() >= j.max && !g.members.contains_key(j.key.as_str())
                    });
                    if full {
                        return Applied::query(Value::Bool(false));
                    }
                    let name: Name = match self.presence.get_key_value(j.group.as_str()) {
                        Some((n, _)) => n.clone(),
                        None => Rc::from(j.group.as_str()),
                    };
                    let g = self
                        .presence
                        .entry(name.clone())
                        .or_insert_with(|| PresenceGroup {
                            event: Rc::from(j.event.as_str()),
                            queue: j.hooks.as_ref().map(|h| Rc::from(h.queue.as_str())),
                            members: BTreeMap::new(),
                        });
                    let key_name: Name = match g.members.get_key_value(j.key.as_str()) {
                        Some((k, _)) => k.clone(),
                        None => {
                            let out = &mut self.announcements;
                            Announcement::publish(out, &g.event, &j.added);
                            let hook = j.hooks.as_ref();
                            Announcement::enqueue(
                                out,
                                g.queue.as_ref(),
                                hook.map_or("", |h| &h.added),
                            );
                            let k: Name = Rc::from(j.key.as_str());
                            g.members.insert(
                                k.clone(),
                                Member {
                                    conns: 0,
                                    info: j.info.clone(),
                                    removed: j.removed.clone(),
                                    hook_removed: hook
                                        .map(|h| h.removed.clone())
                                        .unwrap_or_default(),
                                },
                            );
                            k
                        }
                    };
                    if let Some(m) = g.members.get_mut(&key_name) {
                        m.conns += 1;
                    }
                    // Most connections are in a group or two: no room kept for more.
                    let list = self.presence_of.entry(id).or_default();
                    list.reserve_exact(1);
                    list.push((name, key_name));
                }
                if j.quiet {
                    return Applied::query(Value::Bool(true));
                }
                Applied::query(
                    self.presence
                        .get(j.group.as_str())
                        .map_or(Value::Object(Map::new()), PresenceGroup::members_json),
                )
            }
            DirOp::PresenceLeave { client_id, group } => Applied::query(Value::from(u8::from(
                self.presence_leave(*client_id, group),
            ))),
            DirOp::GetPresence { group } => Applied::query(
                self.presence
                    .get(group.as_str())
                    .map_or(Value::Object(Map::new()), PresenceGroup::members_json),
            ),
            DirOp::GetPresenceCounts { group } => {
                let (keys, conns) = self.presence.get(group.as_str()).map_or((0, 0), |g| {
                    (g.members.len(), g.members.values().map(|m| m.conns).sum())
                });
                Applied::query(serde_json::json!({ "keys": keys, "connections": conns }))
            }
            DirOp::ListPresenceGroups { prefix } => {
                let mut names: Vec<&str> = self
                    .presence
                    .keys()
                    .map(|g| &**g)
                    .filter(|g| g.starts_with(prefix.as_str()))
                    .collect();
                names.sort_unstable();
                Applied::query(Value::Array(names.into_iter().map(Value::from).collect()))
            }
        }
    }

    /// Connection `id` leaves presence group `group`: whether it was in it. Its key's last
    /// connection out announces the key's going.
    fn presence_leave(&mut self, id: ClientId, group: &str) -> bool {
        let Some(list) = self.presence_of.get_mut(&id) else {
            return false;
        };
        let Some(i) = list.iter().position(|(g, _)| &**g == group) else {
            return false;
        };
        let (_, key) = list.swap_remove(i);
        if list.is_empty() {
            self.presence_of.remove(&id);
        }
        if let Some(g) = self.presence.get_mut(group) {
            let last = g.members.get_mut(&key).is_some_and(|m| {
                m.conns -= 1;
                m.conns == 0
            });
            if last {
                if let Some(m) = g.members.remove(&key) {
                    let out = &mut self.announcements;
                    Announcement::publish(out, &g.event, &m.removed);
                    Announcement::enqueue(out, g.queue.as_ref(), &m.hook_removed);
                }
                if g.members.is_empty() {
                    self.presence.remove(group);
                }
            }
        }
        true
    }

    /// The announcements made since last taken, to make in order.
    pub fn take_announcements(&mut self) -> Vec<Announcement> {
        std::mem::take(&mut self.announcements)
    }

    /// The distinct uids of a group's members, ascending.
    fn group_uids(&self, group: &str) -> Vec<Name> {
        let mut uids: Vec<Name> = Vec::new();
        if let Some(m) = self.groups.get(group) {
            m.for_each(|id| {
                if let Some(uid) = self.entry(id).and_then(|e| e.uid.clone()) {
                    uids.push(uid);
                }
            });
        }
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// Each worker holding clients bound to `uid`, with how many (the usual send's look-up,
    /// without an operation to build: `hub.rs`).
    pub fn uid_holders(&self, uid: &str, f: impl FnMut(u32, usize)) {
        if let Some(m) = self.uids.get(uid) {
            m.per_worker(f);
        }
    }

    fn send(&self, target: &Target, subscribed: &impl Fn(u32) -> bool) -> Applied {
        match target {
            Target::All { exclude } => {
                let total: usize = self
                    .workers
                    .iter()
                    .filter(|(w, _)| subscribed(**w))
                    .map(|(_, t)| t.len())
                    .sum();
                let excluded: HashSet<ClientId> = exclude
                    .iter()
                    .copied()
                    .filter(|&id| self.entry(id).is_some() && subscribed(id.worker))
                    .collect();
                Applied {
                    answer: Value::from(total - excluded.len()),
                    forward: Forward::AllNodes,
                }
            }
            Target::Clients { client_ids } => {
                let known: HashSet<ClientId> = client_ids
                    .iter()
                    .copied()
                    .filter(|&id| self.entry(id).is_some())
                    .collect();
                let n = known.iter().filter(|id| subscribed(id.worker)).count();
                Applied::to_workers(n, known.iter().map(|id| id.worker).collect())
            }
            Target::Uids { uids } => {
                let (mut n, mut workers) = (0, Vec::new());
                let mut add = |m: &Members| {
                    m.per_worker(|w, count| {
                        workers.push(w);
                        if subscribed(w) {
                            n += count;
                        }
                    })
                };
                match &uids[..] {
                    // One uid (the usual send): no set to make.
                    [one] => self.uids.get(one.as_str()).into_iter().for_each(&mut add),
                    _ => {
                        let names: HashSet<&str> = uids.iter().map(String::as_str).collect();
                        names
                            .into_iter()
                            .filter_map(|u| self.uids.get(u))
                            .for_each(&mut add);
                    }
                }
                Applied::to_workers(n, workers)
            }
            Target::Groups { groups, exclude } => {
                let excluded: HashSet<ClientId> = exclude.iter().copied().collect();
                let names: HashSet<&str> = groups.iter().map(String::as_str).collect();
                let sets: Vec<&Members> = names
                    .into_iter()
                    .filter_map(|g| self.groups.get(g))
                    .collect();
                // Per worker: its targets (members, each once, not excluded).
                let mut per_worker: HashMap<u32, usize> = HashMap::new();
                if let [one] = sets[..] {
                    one.per_worker(|w, count| {
                        per_worker.insert(w, count);
                    });
                    for id in excluded.iter().filter(|&&id| one.contains(id)) {
                        if let Some(n) = per_worker.get_mut(&id.worker) {
                            *n -= 1;
                        }
                    }
                } else {
                    let mut seen: HashSet<ClientId> = HashSet::new();
                    for m in sets {
                        m.for_each(|id| {
                            if !excluded.contains(&id) && seen.insert(id) {
                                *per_worker.entry(id.worker).or_default() += 1;
                            }
                        });
                    }
                }
                per_worker.retain(|_, n| *n > 0);
                let n = per_worker
                    .iter()
                    .filter(|(w, _)| subscribed(**w))
                    .map(|(_, n)| n)
                    .sum();
                Applied::to_workers(n, per_worker.into_keys().collect())
            }
        }
    }

    fn insert_client(&mut self, owner: SubscriberId, r: &Registration) {
        let id = r.client_id;
        let uid = r.uid.as_deref().map(|u| link(&mut self.uids, u, id));
        let mut groups: Vec<Name> = Vec::with_capacity(r.groups.len());
        for g in &r.groups {
            if !groups.iter().any(|have| **have == **g) {
                groups.push(link(&mut self.groups, g, id));
            }
        }
        let mut entry = Entry {
            owner: self.owner_number(owner, id.worker),
            uid,
            more: None,
        };
        entry.change(|m| {
            m.groups = groups.into_boxed_slice();
            m.session = r.session.clone().unwrap_or_default();
        });
        self.workers
            .entry(id.worker)
            .or_default()
            .insert(id.conn, entry);
        self.clients += 1;
    }

    /// The number of `owner`, counting one more connection of it on `worker`.
    fn owner_number(&mut self, owner: SubscriberId, worker: u32) -> u32 {
        let n = match self.owner_numbers.get(&owner) {
            Some(&n) => n,
            None => {
                let n = self.free_owners.pop().unwrap_or_else(|| {
                    self.owners.push(None);
                    (self.owners.len() - 1) as u32
                });
                self.owners[n as usize] = Some(Owner {
                    id: owner,
                    held: Vec::new(),
                });
                self.owner_numbers.insert(owner, n);
                n
            }
        };
        let held = &mut self.owners[n as usize].as_mut().expect("numbered").held;
        match held.iter_mut().find(|(w, _)| *w == worker) {
            Some((_, count)) => *count += 1,
            None => held.push((worker, 1)),
        }
        n
    }

    /// Forget connection `id`: its entry, its places in the indexes, its owner's count.
    fn remove_client(&mut self, id: ClientId) -> Option<()> {
        let table = self.workers.get_mut(&id.worker)?;
        let e = table.remove(&id.conn)?;
        if table.is_empty() {
            self.workers.remove(&id.worker);
        }
        self.clients -= 1;
        if let Some(uid) = &e.uid {
            unlink(&mut self.uids, uid, id);
        }
        for g in e.groups() {
            unlink(&mut self.groups, g, id);
        }
        let groups: Vec<Name> = self
            .presence_of
            .get(&id)
            .map(|l| l.iter().map(|(g, _)| g.clone()).collect())
            .unwrap_or_default();
        for g in groups {
            self.presence_leave(id, &g);
        }
        if let Some(Some(owner)) = self.owners.get_mut(e.owner as usize) {
            let held = &mut owner.held;
            if let Some(i) = held.iter().position(|(w, _)| *w == id.worker) {
                held[i].1 -= 1;
                if held[i].1 == 0 {
                    held.swap_remove(i);
                }
            }
            if held.is_empty() {
                self.owner_numbers.remove(&owner.id);
                self.owners[e.owner as usize] = None;
                self.free_owners.push(e.owner);
            }
        }
        Some(())
    }

    /// Forget every connection `owner` registered (its channel connection closed, or the
    /// in-process client went away); connections registered again since by another owner
    /// stay. Looks at the tables of the workers `owner` holds connections on, nothing else.
    pub fn remove_owner(&mut self, owner: SubscriberId) -> usize {
        let Some(&n) = self.owner_numbers.get(&owner) else {
            return 0;
        };
        let held = &self.owners[n as usize].as_ref().expect("numbered").held;
        let mut gone = Vec::new();
        for &(w, _) in held {
            if let Some(table) = self.workers.get(&w) {
                gone.extend(
                    table
                        .iter()
                        .filter(|(_, e)| e.owner == n)
                        .map(|(&c, _)| ClientId::new(w, c)),
                );
            }
        }
        for &id in &gone {
            self.remove_client(id);
        }
        gone.len()
    }
}

fn entry_mut(workers: &mut HashMap<u32, HashMap<u64, Entry>>, id: ClientId) -> Option<&mut Entry> {
    workers.get_mut(&id.worker)?.get_mut(&id.conn)
}

#[cfg(test)]
impl DirectoryState {
    /// Check every index and counter against the entries (tests call it after each step).
    fn check(&self) {
        let mut clients = 0;
        let mut uids: HashMap<&str, Vec<ClientId>> = HashMap::new();
        let mut groups: HashMap<&str, Vec<ClientId>> = HashMap::new();
        let mut owners: HashMap<SubscriberId, HashMap<u32, usize>> = HashMap::new();
        for (&w, table) in &self.workers {
            assert!(!table.is_empty(), "worker {w}: an empty table is kept");
            for (&c, e) in table {
                let id = ClientId::new(w, c);
                clients += 1;
                if let Some(u) = &e.uid {
                    uids.entry(u).or_default().push(id);
                    let (key, _) = self.uids.get_key_value(&**u).expect("uid indexed");
                    assert!(Rc::ptr_eq(key, u), "uid name shared");
                }
                if let Some(m) = &e.more {
                    assert!(
                        !m.groups.is_empty() || !m.session.is_empty(),
                        "empty `more`"
                    );
                }
                for g in e.groups() {
                    groups.entry(g).or_default().push(id);
                    let (key, _) = self.groups.get_key_value(&**g).expect("group indexed");
                    assert!(Rc::ptr_eq(key, g), "group name shared");
                }
                let owner = self.owners[e.owner as usize].as_ref().expect("owner").id;
                assert_eq!(self.owner_numbers[&owner], e.owner);
                *owners.entry(owner).or_default().entry(w).or_default() += 1;
            }
        }
        assert_eq!(self.clients, clients, "client counter");
        for (index, want) in [(&self.uids, uids), (&self.groups, groups)] {
            assert_eq!(index.len(), want.len(), "index size");
            for (name, m) in index {
                let mut ids = want.get(&**name).cloned().unwrap_or_default();
                ids.sort_unstable();
                assert_eq!(m.sorted(), ids, "members of {name}");
                assert_eq!(m.len(), ids.len());
                if let Members::Many(l) = m {
                    assert!(l.by_worker.values().all(|s| !s.is_empty()));
                }
            }
        }
        let held: HashMap<SubscriberId, HashMap<u32, usize>> = self
            .owners
            .iter()
            .flatten()
            .map(|o| (o.id, o.held.iter().copied().collect()))
            .collect();
        assert_eq!(held, owners, "owners");
        assert_eq!(self.owner_numbers.len(), held.len(), "owner numbers");
        let free = self.owners.iter().filter(|o| o.is_none()).count();
        assert_eq!(self.free_owners.len(), free, "free owner numbers");
        // Presence: each membership is a registered connection's, counted once by its key.
        let mut conns: HashMap<(&str, &str), usize> = HashMap::new();
        for (id, list) in &self.presence_of {
            assert!(
                self.entry(*id).is_some(),
                "{id}: in a presence group, not registered"
            );
            assert!(!list.is_empty(), "{id}: an empty presence list is kept");
            for (g, k) in list {
                *conns.entry((&**g, &**k)).or_default() += 1;
            }
        }
        let mut kept = 0;
        for (g, group) in &self.presence {
            assert!(!group.members.is_empty(), "presence group {g}: kept empty");
            for (k, m) in &group.members {
                assert_eq!(
                    conns.get(&(&**g, &**k)),
                    Some(&m.conns),
                    "{g}/{k}: connections"
                );
                kept += 1;
            }
        }
        assert_eq!(kept, conns.len(), "presence memberships");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE_A: SubscriberId = SubscriberId::Tcp(1);
    const NODE_B: SubscriberId = SubscriberId::Tcp(2);
    const API: SubscriberId = SubscriberId::Local(9);

    fn op(j: Value) -> DirOp {
        DirOp::from_json(j.to_string().as_bytes()).unwrap()
    }

    /// Every worker's node is subscribed.
    fn all(_: u32) -> bool {
        true
    }

    struct Dir(DirectoryState);

    impl Dir {
        fn new() -> Dir {
            Dir(DirectoryState::default())
        }

        /// Apply from `who` with every worker subscribed; the state is checked after.
        fn by(&mut self, who: SubscriberId, j: Value) -> Applied {
            self.with(who, j, all)
        }

        fn with(&mut self, who: SubscriberId, j: Value, sub: impl Fn(u32) -> bool) -> Applied {
            let a = self.0.apply(who, &op(j), sub);
            self.0.check();
            a
        }

        fn ask(&mut self, j: Value) -> Value {
            let a = self.by(API, j);
            assert_eq!(a.forward, Forward::Nowhere, "a query is not forwarded");
            a.answer
        }

        fn counts(&mut self) -> (Value, Value) {
            (
                self.ask(json!({"op": "get_all_client_id_count"})),
                self.ask(json!({"op": "get_all_uid_count"})),
            )
        }

        fn register(&mut self, who: SubscriberId, ids: &[&str]) {
            let clients: Vec<Value> = ids.iter().map(|id| json!({ "client_id": id })).collect();
            let a = self.by(who, json!({"op": "register", "clients": clients}));
            assert_eq!(a, Applied::query(json!(ids.len())));
        }
    }

    fn to(n: usize, workers: &[u32]) -> Applied {
        Applied {
            answer: json!(n),
            forward: if workers.is_empty() {
                Forward::Nowhere
            } else {
                Forward::Workers(workers.to_vec())
            },
        }
    }

    #[test]
    fn presence_counts_connections_per_key_and_announces_once() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2"]);
        d.register(NODE_B, &["2-1"]);
        let join = |c: &str, g: &str, k: &str| {
            json!({"op": "presence_join", "client_id": c, "group": g, "key": k, "info": k,
                   "event": format!("werkmann.gw.presence:{g}"), "added": format!("+{k}"),
                   "removed": format!("-{k}"), "max": 10})
        };
        let news = |d: &mut Dir| -> Vec<String> {
            d.0.take_announcements()
                .into_iter()
                .map(|a| match a {
                    Announcement::Publish(e, p) => format!("{e} {p}"),
                    Announcement::Enqueue(q, i) => format!("queue {q} {i}"),
                })
                .collect()
        };
        assert_eq!(d.ask(join("1-1", "g", "ann")), json!({"ann": "ann"}));
        assert_eq!(d.ask(join("2-1", "g", "ann")), json!({"ann": "ann"}));
        assert_eq!(d.ask(join("1-2", "h", "bo")), json!({"bo": "bo"}));
        let (g, h) = ("werkmann.gw.presence:g", "werkmann.gw.presence:h");
        assert_eq!(news(&mut d), [format!("{g} +ann"), format!("{h} +bo")]);
        // Node A goes: ann stays in g (her connection on B), bo leaves h and h goes.
        assert_eq!(d.0.remove_owner(NODE_A), 2);
        d.0.check();
        assert_eq!(news(&mut d), [format!("{h} -bo")]);
        assert_eq!(
            d.ask(json!({"op": "get_presence", "group": "h"})),
            json!({})
        );
        // Registering a connection again starts it afresh: out of its groups.
        d.register(NODE_B, &["2-1"]);
        assert_eq!(news(&mut d), [format!("{g} -ann")]);
        assert_eq!(
            d.ask(json!({"op": "get_presence", "group": "g"})),
            json!({})
        );
    }

    #[test]
    fn bind_replaces_and_unbind_needs_the_same_uid() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2"]);
        let bind = |c: &str, u: &str| json!({"op": "bind_uid", "client_id": c, "uid": u});
        let unbind = |c: &str, u: &str| json!({"op": "unbind_uid", "client_id": c, "uid": u});
        assert_eq!(d.by(API, bind("1-1", "alice")), to(1, &[1]));
        assert_eq!(d.by(API, bind("1-2", "alice")), to(1, &[1]));
        assert_eq!(d.counts(), (json!(2), json!(1)));
        // Binding again replaces: 1-1 leaves alice.
        assert_eq!(d.by(API, bind("1-1", "bob")), to(1, &[1]));
        assert_eq!(
            d.ask(json!({"op": "get_client_id_by_uid", "uid": "alice"})),
            json!(["1-2"])
        );
        assert_eq!(
            d.ask(json!({"op": "get_uid_by_client_id", "client_id": "1-1"})),
            json!("bob")
        );
        assert_eq!(d.counts(), (json!(2), json!(2)));
        // Binding the same uid again changes nothing (and is answered and forwarded).
        assert_eq!(d.by(API, bind("1-1", "bob")), to(1, &[1]));
        // An unbind of a uid the connection is not bound to: 0, not forwarded.
        assert_eq!(d.by(API, unbind("1-1", "alice")), to(0, &[]));
        assert_eq!(d.by(API, unbind("1-1", "bob")), to(1, &[1]));
        assert_eq!(d.by(API, unbind("1-1", "bob")), to(0, &[]));
        assert_eq!(
            d.ask(json!({"op": "get_uid_by_client_id", "client_id": "1-1"})),
            json!(null)
        );
        assert_eq!(
            d.ask(json!({"op": "is_uid_online", "uid": "bob"})),
            json!(false)
        );
        assert_eq!(
            d.ask(json!({"op": "is_uid_online", "uid": "alice"})),
            json!(true)
        );
        assert_eq!(d.counts(), (json!(2), json!(1)));
        // An unknown connection: 0 / null, nothing forwarded.
        assert_eq!(d.by(API, bind("7-7", "alice")), to(0, &[]));
        assert_eq!(
            d.ask(json!({"op": "get_uid_by_client_id", "client_id": "7-7"})),
            json!(null)
        );
        assert_eq!(
            d.ask(json!({"op": "is_online", "client_id": "7-7"})),
            json!(false)
        );
        assert_eq!(
            d.ask(json!({"op": "is_online", "client_id": "1-2"})),
            json!(true)
        );
    }

    #[test]
    fn groups_dedupe_and_ungroup_counts_members() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2"]);
        d.register(NODE_B, &["2-1"]);
        let join = |c: &str, g: &str| json!({"op": "join_group", "client_id": c, "group": g});
        let leave = |c: &str, g: &str| json!({"op": "leave_group", "client_id": c, "group": g});
        assert_eq!(d.by(API, join("1-1", "room")), to(1, &[1]));
        assert_eq!(d.by(API, join("1-1", "room")), to(1, &[1]));
        assert_eq!(d.by(API, join("1-2", "room")), to(1, &[1]));
        assert_eq!(d.by(API, join("2-1", "room")), to(1, &[2]));
        assert_eq!(d.by(API, join("2-1", "hall")), to(1, &[2]));
        assert_eq!(d.by(API, join("9-9", "hall")), to(0, &[]));
        let count = json!({"op": "get_client_id_count_by_group", "group": "room"});
        assert_eq!(d.ask(count.clone()), json!(3));
        assert_eq!(
            d.ask(json!({"op": "get_client_id_list_by_group", "group": "room"})),
            json!(["1-1", "1-2", "2-1"])
        );
        assert_eq!(
            d.ask(json!({"op": "get_all_group_id_list"})),
            json!(["hall", "room"])
        );
        assert_eq!(d.by(API, leave("1-2", "room")), to(1, &[1]));
        assert_eq!(d.by(API, leave("1-2", "room")), to(0, &[]));
        assert_eq!(d.by(API, leave("1-2", "nowhere")), to(0, &[]));
        assert_eq!(d.ask(count.clone()), json!(2));
        // Ungroup: every member leaves; the count is of members whose node is subscribed.
        let ungroup = json!({"op": "ungroup", "group": "room"});
        assert_eq!(d.with(API, ungroup.clone(), |w| w == 2), to(1, &[1, 2]));
        assert_eq!(d.ask(count), json!(0));
        assert_eq!(d.by(API, ungroup), to(0, &[]));
        assert_eq!(
            d.ask(json!({"op": "get_all_group_id_list"})),
            json!(["hall"])
        );
        // The members are still online, in their other groups.
        assert_eq!(
            d.ask(json!({"op": "is_online", "client_id": "1-1"})),
            json!(true)
        );
        assert_eq!(
            d.ask(json!({"op": "get_client_id_list_by_group", "group": "hall"})),
            json!(["2-1"])
        );
    }

    #[test]
    fn sends_count_targets_once_and_go_only_to_their_workers() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2", "1-3"]);
        d.register(NODE_B, &["2-1", "2-2"]);
        d.register(SubscriberId::Tcp(3), &["3-1"]);
        for (c, u) in [
            ("1-1", "alice"),
            ("2-1", "alice"),
            ("1-2", "bob"),
            ("3-1", "carol"),
        ] {
            d.by(API, json!({"op": "bind_uid", "client_id": c, "uid": u}));
        }
        for (c, g) in [
            ("1-1", "a"),
            ("1-2", "a"),
            ("2-1", "a"),
            ("2-1", "b"),
            ("2-2", "b"),
        ] {
            d.by(API, json!({"op": "join_group", "client_id": c, "group": g}));
        }
        let send = |target: Value| json!({"op": "send", "target": target, "data": "hi"});
        // Uids: the workers holding them, each connection counted (duplicates once).
        let uids = send(json!({"to": "uids", "uids": ["alice", "nobody", "alice"]}));
        assert_eq!(d.by(API, uids.clone()), to(2, &[1, 2]));
        assert_eq!(
            d.by(API, send(json!({"to": "uids", "uids": ["bob"]}))),
            to(1, &[1])
        );
        assert_eq!(
            d.by(API, send(json!({"to": "uids", "uids": ["x"]}))),
            to(0, &[])
        );
        // Counted only where the worker's node is subscribed; still forwarded to both.
        assert_eq!(d.with(API, uids, |w| w != 2), to(1, &[1, 2]));
        // Clients: known ones, each once.
        let clients = send(json!({"to": "clients", "client_ids": ["1-3", "3-1", "1-3", "8-8"]}));
        assert_eq!(d.by(API, clients), to(2, &[1, 3]));
        // Groups: a connection in two groups counts once; exclusions are not counted.
        let groups = |ex: Value| send(json!({"to": "groups", "groups": ["a", "b"], "exclude": ex}));
        assert_eq!(d.by(API, groups(json!([]))), to(4, &[1, 2]));
        assert_eq!(d.by(API, groups(json!(["2-1"]))), to(3, &[1, 2]));
        assert_eq!(d.by(API, groups(json!(["2-1", "2-2"]))), to(2, &[1]));
        let one = |ex: Value| send(json!({"to": "groups", "groups": ["a"], "exclude": ex}));
        assert_eq!(d.by(API, one(json!([]))), to(3, &[1, 2]));
        assert_eq!(d.by(API, one(json!(["2-1", "2-2", "9-9"]))), to(2, &[1]));
        assert_eq!(d.with(API, one(json!(["1-1"])), |w| w == 1), to(1, &[1, 2]));
        // All: every registered connection of a subscribed worker, but the excluded ones.
        let every = |ex: Value| send(json!({"to": "all", "exclude": ex}));
        let all_nodes = |n: usize| Applied {
            answer: json!(n),
            forward: Forward::AllNodes,
        };
        assert_eq!(d.by(API, every(json!([]))), all_nodes(6));
        assert_eq!(d.by(API, every(json!(["1-1", "1-1", "7-7"]))), all_nodes(5));
        assert_eq!(
            d.with(API, every(json!(["1-1", "2-1"])), |w| w == 1),
            all_nodes(2)
        );
        // Close: the connection's worker; 1 when its node is there to close it.
        let close = |c: &str| json!({"op": "close_client", "client_id": c});
        assert_eq!(d.by(API, close("2-2")), to(1, &[2]));
        assert_eq!(d.with(API, close("2-2"), |_| false), to(0, &[2]));
        assert_eq!(d.by(API, close("2-9")), to(0, &[]));
    }

    #[test]
    fn many_members_route_by_worker() {
        let mut d = Dir::new();
        let ids: Vec<String> = (0..100).map(|i| format!("{}-{i}", i % 4)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        d.register(NODE_A, &refs);
        for id in &ids {
            d.by(
                API,
                json!({"op": "join_group", "client_id": id, "group": "big"}),
            );
            d.by(
                API,
                json!({"op": "bind_uid", "client_id": id, "uid": "same"}),
            );
        }
        let send = json!({"op": "send", "target": {"to": "groups", "groups": ["big"], "exclude": ["1-1"]}, "data": "x"});
        assert_eq!(d.by(API, send), to(99, &[0, 1, 2, 3]));
        let uid = json!({"op": "send", "target": {"to": "uids", "uids": ["same"]}, "data": "x"});
        assert_eq!(d.with(API, uid, |w| w < 2), to(50, &[0, 1, 2, 3]));
        assert_eq!(
            d.ask(json!({"op": "get_uid_count_by_group", "group": "big"})),
            json!(1)
        );
        // Members leave down to one, through every form.
        for id in &ids[1..] {
            d.by(
                API,
                json!({"op": "leave_group", "client_id": id, "group": "big"}),
            );
            d.by(API, json!({"op": "unregister", "client_ids": [id]}));
        }
        assert_eq!(d.counts(), (json!(1), json!(1)));
        assert_eq!(
            d.ask(json!({"op": "get_client_id_list_by_group", "group": "big"})),
            json!(["0-0"])
        );
    }

    #[test]
    fn sessions_set_update_get() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1"]);
        let get = json!({"op": "get_session", "client_id": "1-1"});
        assert_eq!(d.ask(get.clone()), json!({}));
        let set = json!({"op": "set_session", "client_id": "1-1", "session": {"a": 1, "b": 2}});
        assert_eq!(d.by(API, set), to(1, &[1]));
        let update =
            json!({"op": "update_session", "client_id": "1-1", "session": {"b": null, "c": [3]}});
        assert_eq!(d.by(API, update), to(1, &[1]));
        assert_eq!(d.ask(get.clone()), json!({"a": 1, "b": null, "c": [3]}));
        let replace = json!({"op": "set_session", "client_id": "1-1", "session": {"z": true}});
        assert_eq!(d.by(API, replace), to(1, &[1]));
        assert_eq!(d.ask(get), json!({"z": true}));
        let unknown = json!({"op": "update_session", "client_id": "1-2", "session": {"a": 1}});
        assert_eq!(d.by(API, unknown), to(0, &[]));
        assert_eq!(
            d.ask(json!({"op": "get_session", "client_id": "1-2"})),
            json!(null)
        );
    }

    #[test]
    fn registration_carries_state_and_replaces_it() {
        let mut d = Dir::new();
        let reg = json!({"op": "register", "clients": [
            {"client_id": "1-1", "uid": "alice", "groups": ["g", "h", "g"], "session": {"k": 1}},
            {"client_id": "1-2", "uid": "alice", "groups": ["g"]},
        ]});
        assert_eq!(d.by(NODE_A, reg), Applied::query(json!(2)));
        assert_eq!(
            d.ask(json!({"op": "get_client_id_by_uid", "uid": "alice"})),
            json!(["1-1", "1-2"])
        );
        assert_eq!(
            d.ask(json!({"op": "get_uid_list_by_group", "group": "g"})),
            json!(["alice"])
        );
        assert_eq!(
            d.ask(json!({"op": "get_session", "client_id": "1-1"})),
            json!({"k": 1})
        );
        // The node registers again after a reconnect, on a new channel connection: 1-1 now
        // holds less, and belongs to the new owner.
        let again = json!({"op": "register", "clients": [{"client_id": "1-1", "uid": "bob"}]});
        d.by(NODE_B, again);
        assert_eq!(
            d.ask(json!({"op": "get_client_id_by_uid", "uid": "alice"})),
            json!(["1-2"])
        );
        assert_eq!(
            d.ask(json!({"op": "get_uid_list_by_group", "group": "g"})),
            json!(["alice"])
        );
        assert_eq!(d.ask(json!({"op": "get_all_group_id_list"})), json!(["g"]));
        assert_eq!(
            d.ask(json!({"op": "get_session", "client_id": "1-1"})),
            json!({})
        );
        assert_eq!(d.counts(), (json!(2), json!(2)));
        // The old connection's close takes only what it still owns.
        assert_eq!(d.0.remove_owner(NODE_A), 1);
        d.0.check();
        assert_eq!(d.counts(), (json!(1), json!(1)));
        assert_eq!(
            d.ask(json!({"op": "get_uid_by_client_id", "client_id": "1-1"})),
            json!("bob")
        );
        let unreg = json!({"op": "unregister", "client_ids": ["1-1", "1-1", "5-5"]});
        assert_eq!(d.by(NODE_B, unreg), Applied::query(json!(1)));
        assert_eq!(d.counts(), (json!(0), json!(0)));
    }

    #[test]
    fn an_owner_that_goes_leaves_nothing_behind() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2", "4-1"]);
        d.register(NODE_B, &["2-1"]);
        for (c, u, g) in [
            ("1-1", "a", "x"),
            ("1-2", "b", "x"),
            ("4-1", "a", "y"),
            ("2-1", "a", "x"),
        ] {
            d.by(API, json!({"op": "bind_uid", "client_id": c, "uid": u}));
            d.by(API, json!({"op": "join_group", "client_id": c, "group": g}));
            d.by(
                API,
                json!({"op": "set_session", "client_id": c, "session": {"s": c}}),
            );
        }
        assert_eq!(d.counts(), (json!(4), json!(2)));
        assert_eq!(d.0.remove_owner(NODE_A), 3);
        d.0.check();
        assert_eq!(d.counts(), (json!(1), json!(1)));
        assert_eq!(d.ask(json!({"op": "get_all_group_id_list"})), json!(["x"]));
        assert_eq!(
            d.ask(json!({"op": "get_client_id_by_uid", "uid": "a"})),
            json!(["2-1"])
        );
        assert_eq!(d.0.remove_owner(NODE_A), 0);
        assert_eq!(d.0.remove_owner(NODE_B), 1);
        d.0.check();
        assert_eq!(d.counts(), (json!(0), json!(0)));
        assert!(d.0.workers.is_empty() && d.0.uids.is_empty() && d.0.groups.is_empty());
        assert!(d.0.owner_numbers.is_empty());
        assert!(d.0.owners.iter().all(Option::is_none));
    }

    #[test]
    fn names_are_stored_once() {
        let mut d = Dir::new();
        d.register(NODE_A, &["1-1", "1-2"]);
        for c in ["1-1", "1-2"] {
            d.by(
                API,
                json!({"op": "bind_uid", "client_id": c, "uid": "shared"}),
            );
            d.by(
                API,
                json!({"op": "join_group", "client_id": c, "group": "room"}),
            );
        }
        // check() asserts each entry's name is the index's allocation.
        let (key, _) = d.0.uids.get_key_value("shared").unwrap();
        assert_eq!(Rc::strong_count(key), 3);
        let (key, _) = d.0.groups.get_key_value("room").unwrap();
        assert_eq!(Rc::strong_count(key), 3);
        assert!(
            std::mem::size_of::<Entry>() <= 32,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert!(
            std::mem::size_of::<Members>() <= 16,
            "{}",
            std::mem::size_of::<Members>()
        );
    }
}

/// What the directory holds per connection bound to a uid: `cargo test -p werkmann --lib
/// memory_per_bound_client -- --ignored --nocapture`. At 459,000 connections (8 workers, a
/// uid each) every table has just doubled, the worst load: 216 bytes live (glibc's
/// `mallinfo2`) and about 244 of RSS when this was written.
#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod memory {
    use super::*;

    #[test]
    #[ignore = "measures memory; run alone"]
    fn memory_per_bound_client() {
        // SAFETY: mallinfo2 reads the allocator's counters and takes no pointer of ours.
        let live = || unsafe {
            let m = libc::mallinfo2();
            (m.uordblks + m.hblkhd) as u64
        };
        let n = 459_000u64;
        let mut d = DirectoryState::default();
        let (rss, before) = (crate::rss_bytes(), live());
        for chunk in 0..n / 1000 {
            let clients = (0..1000)
                .map(|i| {
                    let c = chunk * 1000 + i;
                    Registration {
                        client_id: ClientId::new((c % 8) as u32, 1_701_234_567_000_000 + c),
                        uid: Some(format!("user{c}")),
                        groups: vec![],
                        session: None,
                    }
                })
                .collect();
            let owner = SubscriberId::Tcp(chunk % 8);
            d.apply(owner, &DirOp::Register { clients }, |_| true);
        }
        let per = (live() - before) / n;
        let rss = (crate::rss_bytes() - rss) / n;
        eprintln!("per connection bound to a uid: {per} bytes live, {rss} bytes of RSS");
        assert!(per <= 256, "{per} bytes");
    }
}

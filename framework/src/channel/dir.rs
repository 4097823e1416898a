//! The directory's vocabulary: who is connected where (client ids), which uids and groups they
//! belong to, their sessions — GatewayWorker's addressing — as operations every backend
//! carries the same way. Pure data and its JSON form; the state lives in the hub
//! (`channel::directory`) or in Redis (`channel::redis::directory`), the node side in
//! `crate::gateway`.
//!
//! An operation travels as JSON (`{"op": "bind_uid", "client_id": "3-17", "uid": "alice"}`) —
//! but the usual push, a send to one uid, in a compact form read without a JSON parser
//! (`~u5:alice{data}`, [`DirOp::to_wire`]) — encoded once by whoever makes it: on the channel
//! wire it is the `data` of a werkmann extension command `{type: dir, data: "<op>"}` (answered, when it carries an `id`, by an
//! `ack` whose data is the answer's JSON), and the directory forwards the same bytes to the
//! worker instances that hold its targets, as an event on [`node_event`] (or [`ALL_NODES`]).
//!
//! | operation | from | answer (JSON) | forwarded to |
//! |---|---|---|---|
//! | `register {clients}` | the node holding them | count registered | — |
//! | `unregister {client_ids}` | the node holding them | count removed | — |
//! | `bind_uid`, `unbind_uid`, `join_group`, `leave_group`, `set_session`, `update_session` | anyone | 1 applied, 0 client unknown | the client's worker |
//! | `ungroup {group}` | anyone | members removed | workers holding members |
//! | `send {target, data}` | anyone | connections reached | workers holding targets (`all`: [`ALL_NODES`]) |
//! | `close_client {client_id, data?}` | anyone | 1 closed (its node is there), 0 unknown | the client's worker |
//! | queries (`is_online` … `get_session`) | anyone | see [`DirOp`] | — |
//! | `presence_join {client_id, group, key, info, event, added, removed, max}` | the node holding it | the members `{key: info}`, `false` full, null unknown | — (`added` published on `event` for a new key) |
//! | `presence_leave {client_id, group}`, `get_presence {group}` | the node / anyone | 1 or 0 / the members | — (`removed` on `event` for a key's last connection, also when it goes) |
//! | `get_presence_counts {group}`, `list_presence_groups {prefix}` | anyone | `{"keys", "connections"}` / group names | — |
//!
//! A count of connections reached (`send`, `ungroup`, `close_client`) only includes clients
//! whose worker has a subscriber to its [`node_event`] (so a node that vanished without
//! unregistering is not counted as reached); queries answer from every registered client, and
//! list client ids, uids and groups in ascending order. An operation naming an unknown client,
//! or changing nothing (`unbind_uid` of another uid, `leave_group` of a group not joined),
//! answers 0 (`false`, `null`) and is not forwarded. A refused operation is answered
//! [`error_answer`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Longest uid or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest session (its JSON), in bytes.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;
/// Most client ids, uids or groups one operation may name.
pub const MAX_TARGETS: usize = 10_000;

/// The event every gateway node subscribes to: `send` to everyone.
pub const ALL_NODES: &str = "werkmann.gw";

/// The event worker `worker` (a cluster worker id) subscribes to for what concerns its
/// connections.
pub fn node_event(worker: u32) -> String {
    format!("werkmann.gw.{worker}")
}

/// A connection, cluster-wide: `{worker id}-{connection id}` (`"3-1701234567000001"`), the two
/// numbers the seed's greeting shows. Routes without a look-up: the worker id names the
/// instance that holds the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The cluster worker id of the instance holding the connection.
    pub worker: u32,
    /// The connection's id within that instance.
    pub conn: u64,
}

impl ClientId {
    /// The client id of connection `conn` of worker `worker`.
    pub fn new(worker: u32, conn: u64) -> ClientId {
        ClientId { worker, conn }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.worker, self.conn)
    }
}

/// Why a client id, uid, group or session is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadName(pub String);

impl FromStr for ClientId {
    type Err = BadName;
    /// Strictly `DIGITS-DIGITS` (no sign, no spaces), each part in range.
    fn from_str(s: &str) -> Result<ClientId, BadName> {
        let bad = || {
            BadName(format!(
                "client_id {s:?} is not WORKER-CONNECTION (e.g. 3-17)"
            ))
        };
        let (worker, conn) = worker_and_conn(s, '-').ok_or_else(bad)?;
        Ok(ClientId { worker, conn })
    }
}

/// A connection's two numbers from `DIGITS{sep}DIGITS`, strictly (no sign, no spaces, each in
/// range): a client id (`3-17`), a Pusher socket id (`3.17`).
pub(crate) fn worker_and_conn(s: &str, sep: char) -> Option<(u32, u64)> {
    let (w, c) = s.split_once(sep)?;
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(c) {
        return None;
    }
    Some((w.parse().ok()?, c.parse().ok()?))
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ClientId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A uid or group name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
pub fn check_name(what: &str, name: &str) -> Result<(), BadName> {
    check_text(what, name, MAX_NAME_BYTES)
}

/// Longest presence group, key or announcement event name, in bytes (a Pusher channel's
/// event name with its app id, a user id).
pub const MAX_LONG_NAME_BYTES: usize = 300;

/// A presence group, key or event name: as [`check_name`], up to [`MAX_LONG_NAME_BYTES`].
fn check_long_name(what: &str, name: &str) -> Result<(), BadName> {
    check_text(what, name, MAX_LONG_NAME_BYTES)
}

/// 1 to `max` bytes, no control characters.
fn check_text(what: &str, name: &str, max: usize) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName(format!("{what} is empty")));
    }
    if name.len() > max {
        return Err(BadName(format!(
            "{what} is {} bytes long, more than {max}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(BadName(format!("{what} {name:?} has a control character")));
    }
    Ok(())
}

/// Whom a `send` is for (nested in the operation: `{"op": "send", "target": {"to": "uids",
/// "uids": […]}, "data": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Every connection of every gateway node, but those excluded.
    All {
        /// Client ids left out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<ClientId>,
    },
    /// These connections.
    Clients {
        /// The client ids.
        client_ids: Vec<ClientId>,
    },
    /// Every connection bound to one of these uids.
    Uids {
        /// The uids.
        uids: Vec<String>,
    },
    /// Every member of one of these groups (once, if in several), but those excluded.
    Groups {
        /// The groups.
        groups: Vec<String>,
        /// Client ids left out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<ClientId>,
    },
}

/// A connection as its node registers it (again, with what it holds, after a reconnect).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The connection.
    pub client_id: ClientId,
    /// Its uid, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The groups it joined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Its session, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Map<String, Value>>,
}

/// A directory operation, GatewayWorker's methods in snake_case with its parameter names.
/// The answer of each is JSON: counts are numbers, `is_*` booleans, lists arrays.
/// A field an operation does not have is refused, at every level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum DirOp {
    /// These connections exist at the sender's worker (answer: how many).
    Register {
        /// The connections and what they hold.
        clients: Vec<Registration>,
    },
    /// These connections closed (answer: how many were known).
    Unregister {
        /// The connections.
        client_ids: Vec<ClientId>,
    },
    /// Bind a connection to a uid; a connection has at most one uid, binding replaces it
    /// (answer: 1, or 0 for an unknown client).
    BindUid {
        /// The connection.
        client_id: ClientId,
        /// The uid.
        uid: String,
    },
    /// Unbind a connection from its uid (answer: 1 if it was bound to it, else 0).
    UnbindUid {
        /// The connection.
        client_id: ClientId,
        /// The uid.
        uid: String,
    },
    /// Add a connection to a group (answer: 1, or 0 for an unknown client).
    JoinGroup {
        /// The connection.
        client_id: ClientId,
        /// The group.
        group: String,
    },
    /// Remove a connection from a group (answer: 1 if it was a member, else 0).
    LeaveGroup {
        /// The connection.
        client_id: ClientId,
        /// The group.
        group: String,
    },
    /// Dissolve a group: its members stay connected (answer: members removed).
    Ungroup {
        /// The group.
        group: String,
    },
    /// Replace a connection's session (answer: 1, or 0 for an unknown client).
    SetSession {
        /// The connection.
        client_id: ClientId,
        /// The session: a JSON object.
        session: Map<String, Value>,
    },
    /// Merge keys into a connection's session (answer: 1, or 0 for an unknown client).
    UpdateSession {
        /// The connection.
        client_id: ClientId,
        /// The keys to set.
        session: Map<String, Value>,
    },
    /// Write `data` to the target's connections (answer: connections reached).
    Send {
        /// Whom to.
        target: Target,
        /// The message (a WebSocket text message, a line, …, as the worker's protocol frames it).
        data: String,
    },
    /// Close a connection, after sending `data` if given (answer: 1, or 0 for an unknown client).
    CloseClient {
        /// The connection.
        client_id: ClientId,
        /// A last message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// Answer: whether the connection is online.
    IsOnline {
        /// The connection.
        client_id: ClientId,
    },
    /// Answer: whether any connection is bound to the uid.
    IsUidOnline {
        /// The uid.
        uid: String,
    },
    /// Answer: the client ids bound to the uid.
    GetClientIdByUid {
        /// The uid.
        uid: String,
    },
    /// Answer: the connection's uid, or null.
    GetUidByClientId {
        /// The connection.
        client_id: ClientId,
    },
    /// Answer: how many connections are in the group.
    GetClientIdCountByGroup {
        /// The group.
        group: String,
    },
    /// Answer: the client ids in the group.
    GetClientIdListByGroup {
        /// The group.
        group: String,
    },
    /// Answer: the uids bound to the group's connections (each once).
    GetUidListByGroup {
        /// The group.
        group: String,
    },
    /// Answer: how many distinct uids the group's connections are bound to.
    GetUidCountByGroup {
        /// The group.
        group: String,
    },
    /// Answer: how many connections the cluster holds.
    GetAllClientIdCount,
    /// Answer: how many distinct uids are bound.
    GetAllUidCount,
    /// Answer: the groups with at least one member.
    GetAllGroupIdList,
    /// Answer: the connection's session (an object), or null for an unknown client.
    GetSession {
        /// The connection.
        client_id: ClientId,
    },
    /// Join presence group `group` as member `key` (a user: several connections may share a
    /// key; a connection is in a group once). When `key`'s first connection joins, `added` is
    /// published on `event`; when its last leaves (or goes: a disconnect, a node's stop or
    /// death), the `removed` given by that first join. Answer: the members, `{key: info}`,
    /// once in; `false` when the group already has `max` keys and `key` is not one; null for
    /// an unknown client. Not forwarded: the announcements are the news.
    PresenceJoin(Join),
    /// Leave a presence group (answer: 1 if the connection was in it, else 0).
    PresenceLeave {
        /// The connection.
        client_id: ClientId,
        /// The group.
        group: String,
    },
    /// Answer: a presence group's members, `{key: info}` (empty when it has none).
    GetPresence {
        /// The group.
        group: String,
    },
    /// Answer: how many keys and connections a presence group holds, `{"keys": K,
    /// "connections": C}` (zeros when it has none).
    GetPresenceCounts {
        /// The group.
        group: String,
    },
    /// Answer: the presence groups with members whose names begin with `prefix`, ascending.
    ListPresenceGroups {
        /// The prefix.
        prefix: String,
    },
}

/// A presence join's fields (see [`DirOp::PresenceJoin`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// The connection.
    pub client_id: ClientId,
    /// The group.
    pub group: String,
    /// The member (a user id).
    pub key: String,
    /// What the other members learn of it (any JSON).
    pub info: Value,
    /// Where the announcements go (see [`announced_event`]).
    pub event: String,
    /// Published on `event` when `key` comes in (the payload as it travels).
    pub added: String,
    /// Published on `event` when `key` goes.
    pub removed: String,
    /// Most keys the group may hold.
    pub max: usize,
    /// Items to enqueue as the key comes and goes, besides the announcements (a webhook's
    /// events: each taken by one consumer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Answer `true` rather than the members (a group too large to list to each joiner: every
    /// uid online).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
}

impl Join {
    fn check(&self) -> Result<(), BadName> {
        check_long_name("presence group", &self.group)?;
        check_long_name("presence key", &self.key)?;
        check_long_name("announcement event", &self.event)?;
        check_announced("announcement event", &self.event)?;
        let info_len = serde_json::to_vec(&self.info).map_or(usize::MAX, |v| v.len());
        let (hook_added, hook_removed) = match &self.hooks {
            Some(h) => {
                check_long_name("hook queue", &h.queue)?;
                check_announced("hook queue", &h.queue)?;
                (h.added.len(), h.removed.len())
            }
            None => (0, 0),
        };
        for (what, n) in [
            ("member info", info_len),
            ("added announcement", self.added.len()),
            ("removed announcement", self.removed.len()),
            ("added hook", hook_added),
            ("removed hook", hook_removed),
        ] {
            if n > MAX_PRESENCE_BYTES {
                return Err(BadName(format!(
                    "the {what} is {n} bytes, more than {MAX_PRESENCE_BYTES}"
                )));
            }
        }
        if self.max == 0 {
            return Err(BadName("a presence group of at most 0 members".into()));
        }
        Ok(())
    }
}

/// What a presence join enqueues as its key comes and goes (see [`DirOp::PresenceJoin`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// The queue (see [`announced_event`]: its name lives where the directory does).
    pub queue: String,
    /// Enqueued when the key comes in (the item as it travels; empty: nothing).
    pub added: String,
    /// Enqueued when the key goes (empty: nothing).
    pub removed: String,
}

/// The name of an event (or queue) the directory publishes a presence group's announcements
/// to (or enqueues its hooks on), made from the name `name` its members' nodes use: on Redis
/// it must live where the directory does (one Cluster slot), and every name under
/// [`ALL_NODES`] does. An empty announcement or hook is not made.
pub fn announced_event(name: &str) -> String {
    format!("{ALL_NODES}.presence:{name}")
}

/// A presence group's event or queue must be an [`announced_event`]: on Redis it lives in the
/// directory's slot, where its script can publish and enqueue atomically with the change.
fn check_announced(what: &str, name: &str) -> Result<(), BadName> {
    let prefix = announced_event("");
    if name.starts_with(&prefix) {
        Ok(())
    } else {
        Err(BadName(format!(
            "the {what} must begin with {prefix:?}: {name:?}"
        )))
    }
}

/// Most bytes of a presence member's info (its JSON) and of each announcement.
pub const MAX_PRESENCE_BYTES: usize = 64 * 1024;

impl DirOp {
    /// Check the names, sizes and counts an operation carries (every backend does, on input
    /// from the network).
    pub fn check(&self) -> Result<(), BadName> {
        let many = |what: &str, n: usize| {
            if n > MAX_TARGETS {
                Err(BadName(format!("{n} {what}, more than {MAX_TARGETS}")))
            } else {
                Ok(())
            }
        };
        let session = |s: &Map<String, Value>| {
            let n = serde_json::to_vec(s).map_or(usize::MAX, |v| v.len());
            if n > MAX_SESSION_BYTES {
                Err(BadName(format!(
                    "session is {n} bytes, more than {MAX_SESSION_BYTES}"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            DirOp::Register { clients } => {
                many("clients", clients.len())?;
                for c in clients {
                    if let Some(u) = &c.uid {
                        check_name("uid", u)?;
                    }
                    many("groups", c.groups.len())?;
                    for g in &c.groups {
                        check_name("group", g)?;
                    }
                    if let Some(s) = &c.session {
                        session(s)?;
                    }
                }
                Ok(())
            }
            DirOp::Unregister { client_ids } => many("client ids", client_ids.len()),
            DirOp::BindUid { uid, .. }
            | DirOp::UnbindUid { uid, .. }
            | DirOp::IsUidOnline { uid }
            | DirOp::GetClientIdByUid { uid } => check_name("uid", uid),
            DirOp::JoinGroup { group, .. }
            | DirOp::LeaveGroup { group, .. }
            | DirOp::Ungroup { group }
            | DirOp::GetClientIdCountByGroup { group }
            | DirOp::GetClientIdListByGroup { group }
            | DirOp::GetUidListByGroup { group }
            | DirOp::GetUidCountByGroup { group } => check_name("group", group),
            DirOp::SetSession { session: s, .. } | DirOp::UpdateSession { session: s, .. } => {
                session(s)
            }
            DirOp::Send { target, .. } => match target {
                Target::All { exclude } => many("excluded client ids", exclude.len()),
                Target::Clients { client_ids } => many("client ids", client_ids.len()),
                Target::Uids { uids } => {
                    many("uids", uids.len())?;
                    uids.iter().try_for_each(|u| check_name("uid", u))
                }
                Target::Groups { groups, exclude } => {
                    many("groups", groups.len())?;
                    many("excluded client ids", exclude.len())?;
                    groups.iter().try_for_each(|g| check_name("group", g))
                }
            },
            DirOp::PresenceJoin(j) => j.check(),
            DirOp::PresenceLeave { group, .. }
            | DirOp::GetPresence { group }
            | DirOp::GetPresenceCounts { group } => check_long_name("presence group", group),
            DirOp::ListPresenceGroups { prefix } => match prefix.len() > MAX_LONG_NAME_BYTES {
                true => Err(BadName(format!(
                    "a prefix of {} bytes, more than {MAX_LONG_NAME_BYTES}",
                    prefix.len()
                ))),
                false => Ok(()),
            },
            DirOp::CloseClient { .. }
            | DirOp::IsOnline { .. }
            | DirOp::GetUidByClientId { .. }
            | DirOp::GetAllClientIdCount
            | DirOp::GetAllUidCount
            | DirOp::GetAllGroupIdList
            | DirOp::GetSession { .. } => Ok(()),
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a DirOp always serializes")
    }

    /// The form it travels in: the compact one for a send to one uid (the usual push, read at
    /// the directory and again at each node it reaches), JSON for everything else.
    pub fn to_wire(&self) -> Vec<u8> {
        match self {
            DirOp::Send {
                target: Target::Uids { uids },
                data,
            } if uids.len() == 1 => {
                let uid = &uids[0];
                let mut out = Vec::with_capacity(uid.len() + data.len() + 8);
                out.extend_from_slice(UID_SEND);
                out.extend_from_slice(uid.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(uid.as_bytes());
                out.extend_from_slice(data.as_bytes());
                out
            }
            _ => self.to_json(),
        }
    }

    /// Read an operation in either form [`DirOp::to_wire`] writes, checked.
    pub fn from_wire(wire: &[u8]) -> Result<DirOp, BadName> {
        match UidSend::read(wire) {
            Some(send) => {
                let send = send?;
                Ok(DirOp::Send {
                    target: Target::Uids {
                        uids: vec![send.uid.to_string()],
                    },
                    data: send.data.to_string(),
                })
            }
            None => DirOp::from_json(wire),
        }
    }

    /// Read an operation from its JSON form, checked ([`DirOp::check`]); a field the
    /// operation does not have is refused.
    pub fn from_json(json: &[u8]) -> Result<DirOp, BadName> {
        let op = match parse_send(json) {
            Some(op) => op,
            None => serde_json::from_slice(json)
                .map_err(|e| BadName(format!("bad directory operation: {e}")))?,
        };
        op.check()?;
        Ok(op)
    }

    /// Whether the directory forwards this operation to the nodes holding its targets.
    pub fn is_forwarded(&self) -> bool {
        matches!(
            self,
            DirOp::BindUid { .. }
                | DirOp::UnbindUid { .. }
                | DirOp::JoinGroup { .. }
                | DirOp::LeaveGroup { .. }
                | DirOp::Ungroup { .. }
                | DirOp::SetSession { .. }
                | DirOp::UpdateSession { .. }
                | DirOp::Send { .. }
                | DirOp::CloseClient { .. }
        )
    }
}

/// The compact form's mark (JSON starts with `{`): `~u{uid's length}:{uid}{data}`.
const UID_SEND: &[u8] = b"~u";

/// A send to one uid in the compact form, read without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UidSend<'a> {
    /// The uid (checked as [`check_name`] does).
    pub uid: &'a str,
    /// What is sent.
    pub data: &'a str,
}

impl<'a> UidSend<'a> {
    /// `None` when `wire` is not in the compact form; refused when it is, but malformed: the
    /// length in decimal without leading zeros, at most [`MAX_NAME_BYTES`], the uid and the
    /// data UTF-8.
    pub(crate) fn read(wire: &'a [u8]) -> Option<Result<UidSend<'a>, BadName>> {
        let rest = wire.strip_prefix(UID_SEND)?;
        Some(Self::fields(rest).ok_or_else(|| BadName("malformed compact send".into())))
            .map(|r| r.and_then(|s| check_name("uid", s.uid).map(|()| s)))
    }

    fn fields(rest: &'a [u8]) -> Option<UidSend<'a>> {
        let colon = rest.iter().take(4).position(|&b| b == b':')?;
        let digits = &rest[..colon];
        if digits.is_empty() || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let rest = &rest[colon + 1..];
        if len > MAX_NAME_BYTES || len > rest.len() {
            return None;
        }
        let (uid, data) = rest.split_at(len);
        Some(UidSend {
            uid: std::str::from_utf8(uid).ok()?,
            data: std::str::from_utf8(data).ok()?,
        })
    }
}

// The hot operation, `send`, read in one pass. serde's internally tagged enums (`DirOp`,
// `Target`) buffer their whole input before reading it, and a `send` is read twice per push
// (by the directory, and by each node it is forwarded to); these plain structs read the same
// JSON directly, as strictly: every field known, each variant's fields exactly, `null`
// nowhere. Anything else is left to `DirOp`'s own reading (which words the error).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendFields {
    #[allow(dead_code)]
    op: SendTag,
    target: TargetFields,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SendTag {
    Send,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum To {
    All,
    Clients,
    Uids,
    Groups,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    to: To,
    #[serde(default, deserialize_with = "present")]
    uids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    client_ids: Option<Vec<ClientId>>,
    #[serde(default, deserialize_with = "present")]
    groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    exclude: Option<Vec<ClientId>>,
}

/// A field that is there (absent: `None` by default; `null` is refused, as `Vec` refuses it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `json` read as a `send` (not yet checked: [`DirOp::check`]), or `None` when it is not one
/// in the form this reads — `DirOp`'s reading then decides.
fn parse_send(json: &[u8]) -> Option<DirOp> {
    if !json.starts_with(br#"{"op":"send","#) {
        return None;
    }
    let s: SendFields = serde_json::from_slice(json).ok()?;
    let t = s.target;
    let target = match (t.to, t.uids, t.client_ids, t.groups, t.exclude) {
        (To::All, None, None, None, exclude) => Target::All {
            exclude: exclude.unwrap_or_default(),
        },
        (To::Clients, None, Some(client_ids), None, None) => Target::Clients { client_ids },
        (To::Uids, Some(uids), None, None, None) => Target::Uids { uids },
        (To::Groups, None, None, Some(groups), exclude) => Target::Groups {
            groups,
            exclude: exclude.unwrap_or_default(),
        },
        _ => return None,
    };
    Some(DirOp::Send {
        target,
        data: s.data,
    })
}

/// The answer to a refused operation: `{"error": "why"}`.
pub fn error_answer(why: &str) -> Value {
    serde_json::json!({ "error": why })
}

/// Merge `update` into `session` (`update_session`): each key set, `null` values kept as null
/// (as PHP's array assignment does).
pub fn merge_session(session: &mut Map<String, Value>, update: &Map<String, Value>) {
    for (k, v) in update {
        session.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What `DirOp`'s own reading makes of `j` (None: refused).
    fn slow(j: &str) -> Option<DirOp> {
        serde_json::from_str::<DirOp>(j).ok()
    }

    #[test]
    fn reads_every_send_as_dirop_does_and_refuses_the_same() {
        let ops = [
            json!({"op": "send", "target": {"to": "uids", "uids": ["a", "b"]}, "data": "x\"y"}),
            json!({"op": "send", "target": {"to": "all"}, "data": ""}),
            json!({"op": "send", "target": {"to": "all", "exclude": ["1-2"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "clients", "client_ids": ["1-2", "3-4"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "groups", "groups": ["g"]}, "data": "m"}),
            json!({"op": "send", "target": {"to": "groups", "groups": ["g"], "exclude": ["1-2"]}, "data": "m"}),
        ];
        for j in ops {
            let op: DirOp = serde_json::from_value(j.clone()).unwrap();
            // As the encoder writes it (op first), and as read both ways.
            let text = op.to_json();
            assert_eq!(parse_send(&text), Some(op.clone()), "{j}");
            assert_eq!(slow(std::str::from_utf8(&text).unwrap()), Some(op));
        }
        for bad in [
            r#"{"op":"send","target":{"to":"uids","uids":["a"],"groups":["g"]},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"uids","uids":null},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all","exclude":null},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"uids"},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"clients","client_ids":["12"]},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"everyone"},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all"},"data":"m","extra":1}"#,
            r#"{"op":"send","target":{"to":"all","x":1},"data":"m"}"#,
            r#"{"op":"send","target":{"to":"all"}}"#,
            r#"{"op":"send","target":{"to":"all"},"data":7}"#,
            r#"{"op":"send","target":{"to":"all"},"data":"m"} trailing"#,
        ] {
            assert_eq!(parse_send(bad.as_bytes()), None, "{bad}");
            assert_eq!(slow(bad), None, "{bad}");
        }
        // Another operation, or `op` not first: left to DirOp.
        assert_eq!(
            parse_send(br#"{"op":"bind_uid","client_id":"1-2","uid":"a"}"#),
            None
        );
        assert_eq!(
            parse_send(br#"{"data":"m","op":"send","target":{"to":"all"}}"#),
            None
        );
    }

    #[test]
    fn client_ids_read_strictly() {
        let id: ClientId = "3-1701234567000001".parse().unwrap();
        assert_eq!(id, ClientId::new(3, 1_701_234_567_000_001));
        assert_eq!(id.to_string(), "3-1701234567000001");
        for bad in [
            "",
            "3",
            "3-",
            "-3",
            "a-1",
            "3-1-2",
            "+3-1",
            "3- 1",
            "3-1 ",
            "4294967296-1",
            "1-18446744073709551616",
            "1--1",
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn operations_round_trip_as_json() {
        let ops = [
            DirOp::BindUid {
                client_id: ClientId::new(1, 2),
                uid: "alice".into(),
            },
            DirOp::Send {
                target: Target::Groups {
                    groups: vec!["room".into()],
                    exclude: vec![ClientId::new(1, 2)],
                },
                data: "hi".into(),
            },
            DirOp::Send {
                target: Target::All { exclude: vec![] },
                data: "x".into(),
            },
            DirOp::GetAllClientIdCount,
            DirOp::Register {
                clients: vec![Registration {
                    client_id: ClientId::new(0, 9),
                    uid: Some("u".into()),
                    groups: vec!["g".into()],
                    session: Some(Map::new()),
                }],
            },
        ];
        for op in ops {
            let json = op.to_json();
            assert_eq!(DirOp::from_json(&json).unwrap(), op);
        }
        let v: Value = serde_json::from_slice(
            &DirOp::Send {
                target: Target::Uids {
                    uids: vec!["a".into()],
                },
                data: "m".into(),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"op": "send", "target": {"to": "uids", "uids": ["a"]}, "data": "m"})
        );
    }

    #[test]
    fn a_send_to_one_uid_travels_compact_and_reads_back() {
        let send = |uids: &[&str], data: &str| DirOp::Send {
            target: Target::Uids {
                uids: uids.iter().map(|u| u.to_string()).collect(),
            },
            data: data.into(),
        };
        let op = send(&["alice"], "{\"hi\":1}");
        assert_eq!(op.to_wire(), b"~u5:alice{\"hi\":1}".to_vec());
        assert_eq!(DirOp::from_wire(&op.to_wire()).unwrap(), op);
        // A uid may hold any printable byte, a colon or digits included; the data may be empty.
        for op in [
            send(&["7:x"], ""),
            send(&["ü"], "~u1:a"),
            send(&[&"u".repeat(128)], "d"),
        ] {
            assert_eq!(DirOp::from_wire(&op.to_wire()).unwrap(), op);
        }
        // Two uids, or any other operation: JSON.
        let two = send(&["a", "b"], "m");
        assert_eq!(two.to_wire(), two.to_json());
        assert_eq!(DirOp::from_wire(&two.to_wire()).unwrap(), two);
        // Malformed compact sends are refused, not read as something else.
        let long = format!("~u129:{}", "u".repeat(129));
        for bad in [
            &b"~u"[..],
            b"~u:a",
            b"~u05:alice",
            b"~u6:alice",
            b"~ux:a",
            b"~u0:",
            b"~u1:\xff",
            b"~u1:a\xff",
            b"~u1:\n",
            b"~u12345:a",
            long.as_bytes(),
        ] {
            let why = DirOp::from_wire(bad).unwrap_err().0;
            assert!(
                why.contains("compact") || why.contains("control"),
                "{bad:?}: {why}"
            );
        }
    }

    #[test]
    fn bad_operations_are_refused_with_a_reason() {
        let refuse = |j: Value| DirOp::from_json(j.to_string().as_bytes()).unwrap_err().0;
        assert!(refuse(json!({"op": "nope"})).contains("unknown variant"));
        assert!(refuse(json!({"op": "bind_uid", "client_id": "1-2"})).contains("uid"));
        assert!(
            refuse(json!({"op": "bind_uid", "client_id": "x", "uid": "a"})).contains("client_id")
        );
        assert!(refuse(json!({"op": "bind_uid", "client_id": "1-2", "uid": ""})).contains("empty"));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(
            refuse(json!({"op": "join_group", "client_id": "1-2", "group": long}))
                .contains("bytes")
        );
        assert!(
            refuse(json!({"op": "bind_uid", "client_id": "1-2", "uid": "a", "x": 1}))
                .contains("unknown field")
        );
        let send = |extra: Value| {
            let mut j = json!({"op": "send", "target": {"to": "uids", "uids": ["a"]}, "data": "m"});
            j.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            j
        };
        assert!(refuse(send(json!({"x": 1}))).contains("unknown field `x`"));
        let target = |t: Value| json!({"op": "send", "target": t, "data": "m"});
        assert!(refuse(target(
            json!({"to": "uids", "uids": ["a"], "groups": ["g"]})
        ))
        .contains("unknown field `groups`"));
        assert!(refuse(target(json!({"to": "nobody"}))).contains("unknown variant"));
        assert!(refuse(target(json!({"to": "uids"}))).contains("uids"));
        let reg = json!({"op": "register", "clients": [{"client_id": "1-2", "x": 1}]});
        assert!(refuse(reg).contains("unknown field"));
        // Fields given empty that are written back only when not: accepted.
        let ok = json!({"op": "send", "target": {"to": "all", "exclude": []}, "data": "m"});
        assert!(DirOp::from_json(ok.to_string().as_bytes()).is_ok());
        let ok =
            json!({"op": "register", "clients": [{"client_id": "1-2", "uid": null, "groups": []}]});
        assert!(DirOp::from_json(ok.to_string().as_bytes()).is_ok());
        assert!(
            refuse(json!({"op": "set_session", "client_id": "1-2", "session": [1]}))
                .contains("map")
        );
    }
}

//! The directory on Redis (`channel::dir`: client ids, uids, groups, sessions), shared by
//! every node and kept across their reconnects.
//!
//! - **State**: keys with the hash tag `{werkmann:dir}` (one Redis Cluster slot), laid out in
//!   `directory.lua`: per client its worker, uid, groups and session; per uid and group its
//!   client ids and how many of them each worker holds (a send goes only to the workers holding
//!   targets); per worker its client ids; the sets of workers, uids and groups.
//! - **Operations**: a Lua script (`EVALSHA`, loaded again on `NOSCRIPT`; the sends to
//!   clients, uids and groups have a small one of their own, `send.lua`, without the sweep),
//!   one call per operation — but a batch's consecutive sends to one uid (the usual push),
//!   which share one call (the script's fixed cost paid once), and a single server's sends to
//!   uids whose holders the link has cached (`uid_cache.rs`: plain `PUBLISH`es) — each atomic: it applies the operation, forwards it — the command's bytes, as the hub
//!   does — to the node events of the workers holding its targets (`PUBLISH`, on a Cluster
//!   `SPUBLISH`: the nodes' event channels carry the same hash tag, so the script can), and
//!   counts the connections at workers whose event had a subscriber. Forwarding is thus atomic
//!   with the update and ordered with every later operation's. Operations run in order with the
//!   link's other commands (a batch of directory commands is one pipeline).
//! - **Nodes that go**: a worker's clients are swept when its node event has no subscriber (the
//!   node's Redis connection closed: killed, stopped; not in the 2 s after the worker was
//!   registered or renewed, since a node's subscription may reach Redis after its
//!   registration) or when its alive key
//!   (`{werkmann:dir}:alive:W`, set by the link that registered W, renewed every 10 s, expiring
//!   after 30 s) is gone (the node vanished without closing). The sweep runs inside the
//!   script, at most once a second, first thing in whichever operation but a send comes (a
//!   send counts only workers whose node event has a subscriber) — and every second from each
//!   link that registered clients
//!   or holds worker-id leases. A link that closes, and a node that releases its worker ids,
//!   remove their workers' clients at once.

use std::collections::HashSet;
use std::rc::Weak;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use redis::Value as RValue;
use serde_json::{Map, Value};

use super::bus::Bus;
use super::uid_cache::{self, Filled, Look, UidCache};
use super::{RedisLink, MEMBERSHIP_REFRESH, PREFIX_EVENT};
use crate::channel::dir::{self, error_answer, ClientId, DirOp, Registration, Target};
use crate::channel::wire::Command;
use crate::metrics::{self, UidSendVia};

/// The hash tag of every directory key and of the gateway nodes' event channels.
const TAG: &str = "{werkmann:dir}";
/// The prefix of every directory key.
const PREFIX: &str = "{werkmann:dir}:";
/// The set of workers with clients; the key every call names (it routes to the slot).
const WORKERS: &str = "{werkmann:dir}:workers";
/// How long a worker's alive key lives without being renewed.
pub(super) const ALIVE_TTL_MS: u64 = 30_000;
/// How often a link sweeps (and, every tenth time, renews its workers' alive keys).
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&script_text(include_str!("directory.lua"))));
/// The script of the sends (but to everyone), the hot path: small, without the sweep.
static SEND_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&script_text(include_str!("send.lua"))));

/// A script with its constants filled in.
fn script_text(lua: &str) -> String {
    let node = event_channel(&dir::node_event(0));
    let node = node
        .strip_suffix('0')
        .expect("node_event ends with the worker id");
    lua.replace("@PREFIX@", PREFIX)
        .replace("@NODE@", node)
        .replace("@ALL@", &event_channel(dir::ALL_NODES))
        .replace("@SWEEP_MS@", &SWEEP_EVERY.as_millis().to_string())
        .replace(
            "@FRESH_FROM_MS@",
            &(ALIVE_TTL_MS - FRESH.as_millis() as u64).to_string(),
        )
}

/// A worker registered or renewed this recently is not swept for having no subscriber yet:
/// its node's `SUBSCRIBE` and its registration travel on two connections, in either order.
const FRESH: Duration = Duration::from_secs(2);

/// Whether event `name` is a gateway node's (`werkmann.gw`, `werkmann.gw.W`).
fn is_node_event(name: &str) -> bool {
    name.strip_prefix(dir::ALL_NODES)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The Redis channel of event `name`: `werkmann:e:{name}`, and for the gateway nodes' events
/// `werkmann:e:{werkmann:dir}{name}`, in the directory's cluster slot so that its script can
/// publish to them.
pub(super) fn event_channel(name: &str) -> String {
    if is_node_event(name) {
        format!("{PREFIX_EVENT}{TAG}{name}")
    } else {
        format!("{PREFIX_EVENT}{name}")
    }
}

/// The stream of queue `name`: `werkmann:q:{name}`, and for those under `werkmann.gw` (the
/// directory's hooks) `werkmann:q:{werkmann:dir}{name}`, in the directory's slot.
pub(super) fn queue_stream(name: &str) -> String {
    if is_node_event(name) {
        format!("werkmann:q:{TAG}{name}")
    } else {
        format!("werkmann:q:{name}")
    }
}

/// The event name of a channel's part after `werkmann:e:` ([`event_channel`] undone), or the
/// queue name of a stream's part after `werkmann:q:` ([`queue_stream`] undone).
pub(super) fn event_name(rest: &str) -> &str {
    match rest.strip_prefix(TAG) {
        Some(name) if is_node_event(name) => name,
        _ => rest,
    }
}

/// The script's mode argument: one Redis, or a Cluster (sharded pub/sub).
fn mode(bus: &Bus) -> &'static str {
    match bus.is_single() {
        true => "P",
        false => "S",
    }
}

/// `EVALSHA` of the main script for `op` with its `data` (forwarded, or empty).
fn call(bus: &Bus, op: &str, data: &[u8]) -> redis::Cmd {
    script_call(&SCRIPT, bus, op, data)
}

/// `EVALSHA` of `script` for `op` with its `data`.
fn script_call(script: &redis::Script, bus: &Bus, op: &str, data: &[u8]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash())
        .arg(1)
        .arg(WORKERS)
        .arg(op)
        .arg(mode(bus))
        .arg(data);
    c
}

/// The operation's name, as in its JSON.
fn op_name(op: &DirOp) -> &'static str {
    match op {
        DirOp::Register { .. } => "register",
        DirOp::Unregister { .. } => "unregister",
        DirOp::BindUid { .. } => "bind_uid",
        DirOp::UnbindUid { .. } => "unbind_uid",
        DirOp::JoinGroup { .. } => "join_group",
        DirOp::LeaveGroup { .. } => "leave_group",
        DirOp::Ungroup { .. } => "ungroup",
        DirOp::SetSession { .. } => "set_session",
        DirOp::UpdateSession { .. } => "update_session",
        DirOp::Send { .. } => "send",
        DirOp::PresenceJoin(_) => "presence_join",
        DirOp::PresenceLeave { .. } => "presence_leave",
        DirOp::GetPresence { .. } => "get_presence",
        DirOp::GetPresenceCounts { .. } => "get_presence_counts",
        DirOp::ListPresenceGroups { .. } => "list_presence_groups",
        DirOp::CloseClient { .. } => "close_client",
        DirOp::IsOnline { .. } => "is_online",
        DirOp::IsUidOnline { .. } => "is_uid_online",
        DirOp::GetClientIdByUid { .. } => "get_client_id_by_uid",
        DirOp::GetUidByClientId { .. } => "get_uid_by_client_id",
        DirOp::GetClientIdCountByGroup { .. } => "get_client_id_count_by_group",
        DirOp::GetClientIdListByGroup { .. } => "get_client_id_list_by_group",
        DirOp::GetUidListByGroup { .. } => "get_uid_list_by_group",
        DirOp::GetUidCountByGroup { .. } => "get_uid_count_by_group",
        DirOp::GetAllClientIdCount => "get_all_client_id_count",
        DirOp::GetAllUidCount => "get_all_uid_count",
        DirOp::GetAllGroupIdList => "get_all_group_id_list",
        DirOp::GetSession { .. } => "get_session",
    }
}

/// Each item once, in the order first met.
fn once<T: Eq + std::hash::Hash + Clone>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .iter()
        .filter(|i| seen.insert((*i).clone()))
        .cloned()
        .collect()
}

fn arg_ids(c: &mut redis::Cmd, ids: &[ClientId]) {
    for id in once(ids) {
        c.arg(id.to_string());
    }
}

/// `#keys`, then each key and its value's JSON.
fn arg_session(c: &mut redis::Cmd, session: Option<&Map<String, Value>>) {
    let Some(s) = session else {
        c.arg(0);
        return;
    };
    c.arg(s.len());
    for (k, v) in s {
        c.arg(k.as_str())
            .arg(serde_json::to_vec(v).expect("JSON values serialize"));
    }
}

/// The script's arguments for `op` after the common ones (see `directory.lua`). `link`: who
/// registers (the alive keys name it).
fn op_args(c: &mut redis::Cmd, op: &DirOp, link: &str) {
    match op {
        DirOp::Register { clients } => {
            c.arg(link).arg(ALIVE_TTL_MS).arg(clients.len());
            for r in clients {
                c.arg(r.client_id.to_string())
                    .arg(r.uid.as_deref().unwrap_or(""))
                    .arg(r.groups.len());
                for g in &r.groups {
                    c.arg(g.as_str());
                }
                arg_session(c, r.session.as_ref());
            }
        }
        DirOp::Unregister { client_ids } => arg_ids(c, client_ids),
        DirOp::BindUid { client_id, uid } | DirOp::UnbindUid { client_id, uid } => {
            c.arg(client_id.to_string()).arg(uid.as_str());
        }
        DirOp::JoinGroup { client_id, group } | DirOp::LeaveGroup { client_id, group } => {
            c.arg(client_id.to_string()).arg(group.as_str());
        }
        DirOp::SetSession { client_id, session } | DirOp::UpdateSession { client_id, session } => {
            c.arg(client_id.to_string());
            arg_session(c, Some(session));
        }
        DirOp::Send { target, .. } => match target {
            Target::All { exclude } => {
                c.arg("all");
                arg_ids(c, exclude);
            }
            Target::Clients { client_ids } => {
                c.arg("clients");
                arg_ids(c, client_ids);
            }
            Target::Uids { uids } => {
                c.arg("uids").arg(once(uids));
            }
            Target::Groups { groups, exclude } => {
                let groups = once(groups);
                c.arg("groups").arg(groups.len()).arg(groups);
                arg_ids(c, exclude);
            }
        },
        DirOp::CloseClient { client_id, .. }
        | DirOp::IsOnline { client_id }
        | DirOp::GetUidByClientId { client_id }
        | DirOp::GetSession { client_id } => {
            c.arg(client_id.to_string());
        }
        DirOp::Ungroup { group }
        | DirOp::GetClientIdCountByGroup { group }
        | DirOp::GetClientIdListByGroup { group }
        | DirOp::GetUidListByGroup { group }
        | DirOp::GetUidCountByGroup { group } => {
            c.arg(group.as_str());
        }
        DirOp::IsUidOnline { uid } | DirOp::GetClientIdByUid { uid } => {
            c.arg(uid.as_str());
        }
        DirOp::GetAllClientIdCount | DirOp::GetAllUidCount | DirOp::GetAllGroupIdList => {}
        DirOp::PresenceJoin(j) => {
            c.arg(j.client_id.to_string())
                .arg(j.group.as_str())
                .arg(j.key.as_str())
                .arg(j.info.to_string())
                .arg(event_channel(&j.event))
                .arg(j.added.as_str())
                .arg(j.removed.as_str())
                .arg(j.max);
            match &j.hooks {
                Some(h) => c
                    .arg(queue_stream(&h.queue))
                    .arg(h.added.as_str())
                    .arg(h.removed.as_str()),
                None => c.arg("").arg("").arg(""),
            };
            c.arg(if j.quiet { "1" } else { "0" });
        }
        DirOp::PresenceLeave { client_id, group } => {
            c.arg(client_id.to_string()).arg(group.as_str());
        }
        DirOp::GetPresence { group } | DirOp::GetPresenceCounts { group } => {
            c.arg(group.as_str());
        }
        DirOp::ListPresenceGroups { prefix } => {
            c.arg(prefix.as_str());
        }
    }
}

/// A presence group's members from the script's `HGETALL` (key, info JSON, …): `{key: info}`.
fn members(reply: &RValue) -> Value {
    let mut m = Map::new();
    if let RValue::Array(items) = reply {
        for kv in items.chunks(2) {
            if let [k, RValue::BulkString(v)] = kv {
                if let (Some(k), Ok(v)) = (text(k), serde_json::from_slice(v)) {
                    m.insert(k, v);
                }
            }
        }
    }
    Value::Object(m)
}

/// Clients per script call of a `register`: Redis runs nothing else while a script runs, and
/// a call's work grows with its clients (a node's 10,000 at once go as 20 calls).
const REGISTER_PER_CALL: usize = 500;

/// The script calls for `op`: one, or a `register` of many clients in several.
fn op_calls(bus: &Bus, op: &DirOp, data: &[u8], link: &str) -> Vec<redis::Cmd> {
    match op {
        DirOp::Register { clients } if clients.len() > REGISTER_PER_CALL => clients
            .chunks(REGISTER_PER_CALL)
            .map(|chunk| {
                let part = DirOp::Register {
                    clients: chunk.to_vec(),
                };
                op_call(bus, &part, data, link)
            })
            .collect(),
        _ => vec![op_call(bus, op, data, link)],
    }
}

/// The script call for `op`; `data` is the command's bytes, forwarded as they came.
fn op_call(bus: &Bus, op: &DirOp, data: &[u8], link: &str) -> redis::Cmd {
    let data = if op.is_forwarded() { data } else { b"" };
    // The sends have a script of their own, but a send to everyone.
    let own = matches!(op, DirOp::Send { target, .. } if !matches!(target, Target::All { .. }));
    let script = if own { &SEND_SCRIPT } else { &SCRIPT };
    let mut c = script_call(script, bus, op_name(op), data);
    op_args(&mut c, op, link);
    c
}

fn text(v: &RValue) -> Option<String> {
    match v {
        RValue::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RValue::SimpleString(s) | RValue::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

fn texts(v: &RValue) -> Vec<String> {
    match v {
        RValue::Array(items) | RValue::Set(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// Names ascending, each once.
fn sorted_names(v: &RValue) -> Vec<String> {
    let mut names = texts(v);
    names.sort_unstable();
    names.dedup();
    names
}

/// Client ids ascending (by worker, then connection).
fn sorted_ids(v: &RValue) -> Value {
    let mut ids: Vec<ClientId> = texts(v).iter().filter_map(|s| s.parse().ok()).collect();
    ids.sort_unstable();
    Value::Array(ids.iter().map(|id| Value::String(id.to_string())).collect())
}

fn strings(names: Vec<String>) -> Value {
    Value::Array(names.into_iter().map(Value::String).collect())
}

/// The answer to `op` (JSON, as `channel::dir` says) from the script's reply.
fn answer(op: &DirOp, reply: &RValue) -> Result<Value, String> {
    let int = || match reply {
        RValue::Int(n) => Ok(*n),
        other => Err(format!("directory script answered {other:?}")),
    };
    Ok(match op {
        DirOp::IsOnline { .. } | DirOp::IsUidOnline { .. } => Value::Bool(int()? == 1),
        DirOp::GetClientIdByUid { .. } | DirOp::GetClientIdListByGroup { .. } => sorted_ids(reply),
        DirOp::GetUidByClientId { .. } => text(reply).map_or(Value::Null, Value::String),
        DirOp::GetUidListByGroup { .. } | DirOp::GetAllGroupIdList => strings(sorted_names(reply)),
        DirOp::GetUidCountByGroup { .. } => Value::from(sorted_names(reply).len()),
        DirOp::PresenceJoin(_) => match reply {
            RValue::Int(-1) => Value::Null,
            RValue::Int(0) => Value::Bool(false),
            // A quiet join (it asked for no members).
            RValue::Int(1) => Value::Bool(true),
            RValue::Array(_) => members(reply),
            other => return Err(format!("directory script answered {other:?}")),
        },
        DirOp::GetPresence { .. } => members(reply),
        DirOp::GetPresenceCounts { .. } => match reply {
            RValue::Array(kc) if kc.len() == 2 => {
                let n = |v: &RValue| match v {
                    RValue::Int(n) => *n,
                    _ => 0,
                };
                serde_json::json!({ "keys": n(&kc[0]), "connections": n(&kc[1]) })
            }
            other => return Err(format!("directory script answered {other:?}")),
        },
        DirOp::ListPresenceGroups { .. } => strings(sorted_names(reply)),
        DirOp::GetSession { .. } => match reply {
            RValue::Array(items) => {
                let mut session = Map::new();
                for kv in items.get(1..).unwrap_or_default().chunks(2) {
                    if let [k, RValue::BulkString(v)] = kv {
                        if let (Some(k), Ok(v)) = (text(k), serde_json::from_slice(v)) {
                            session.insert(k, v);
                        }
                    }
                }
                Value::Object(session)
            }
            _ => Value::Null,
        },
        _ => Value::from(int()?.max(0)),
    })
}

/// Run script calls as one pipeline (every call in the directory's slot); each reply, errors
/// included. Calls refused with `NOSCRIPT` (a Redis that had not seen the script, or flushed
/// it) did not run: the script is loaded and they run again, in order — after the rest of the
/// pipeline, whose script calls a flush also refused, but whose plain commands (a cached
/// send's `PUBLISH`es, the cache's reads) ran: after a `SCRIPT FLUSH` a send through the
/// script may reach a node after a cached send that followed it.
async fn run_calls(bus: &mut Bus, cmds: Vec<redis::Cmd>) -> redis::RedisResult<Vec<RValue>> {
    let calls: Vec<(String, redis::Cmd)> =
        cmds.into_iter().map(|c| (WORKERS.to_string(), c)).collect();
    bus.run_scripts(&calls, &[&SCRIPT, &SEND_SCRIPT]).await
}

/// One script call's integer reply.
async fn run_one(bus: &mut Bus, cmd: redis::Cmd) -> redis::RedisResult<RValue> {
    let reply = run_calls(bus, vec![cmd])
        .await?
        .pop()
        .unwrap_or(RValue::Nil);
    match reply {
        RValue::ServerError(e) => Err(e.into()),
        r => Ok(r),
    }
}

/// What a batch of directory commands did.
pub(super) struct Executed {
    /// Each request's answer (JSON), `None` where it is not certain that it reached the nodes
    /// it counted (the connection failed right after).
    pub answers: Vec<(u64, Option<Bytes>)>,
    /// The workers whose clients this link registered.
    pub registered: Vec<u32>,
    /// Whether Redis answered a call of this batch (what proves an earlier batch's writes).
    pub replied: bool,
    /// Whether the answers count sends that no later reply has shown written to the nodes
    /// yet (a single server: the next batch's reply proves them, see `run_outbound`).
    pub unproven: bool,
}

/// The uid of a send to one uid (the usual push, the one the cache serves).
fn one_uid(op: &DirOp) -> Option<&str> {
    match op {
        DirOp::Send {
            target: Target::Uids { uids },
            ..
        } if uids.len() == 1 => Some(uids[0].as_str()),
        _ => None,
    }
}

/// Whether directory command `data` sends to one uid (as such sends travel: in the compact
/// form, recognised without reading the rest).
pub(super) fn is_uid_send(data: &Bytes) -> bool {
    Command::dir_json(data).is_ok_and(|wire| dir::UidSend::read(&wire).is_some())
}

/// A send made from a copy of the holders that changed before it ran: the place of its answer
/// (a request's), its uid and bytes, and the workers it reached.
type Overtaken<'a> = (Option<usize>, &'a str, &'a [u8], Vec<u32>);

/// A cached send's outcome from its publishes' replies (the receivers of each holder's), the
/// last answered as reply `at`: the connections reached, the workers reached, and whether a
/// change of the holders ran before it (it goes again).
fn tally(sent: &Filled, at: u64, replies: &[RValue]) -> (u64, Vec<u32>, bool) {
    let mut n = 0;
    let mut reached = Vec::with_capacity(sent.holders.len());
    for (&(w, k), p) in sent.holders.iter().zip(replies) {
        if matches!(p, RValue::Int(r) if *r > 0) {
            reached.push(w);
            n += u64::from(k);
        }
    }
    (n, reached, !sent.still(at))
}

/// One command of a batch, as `execute` sends it.
struct Item<'a> {
    /// Its request's key, if it is one.
    request: Option<u64>,
    /// Its bytes, forwarded to the nodes.
    data: &'a [u8],
    /// Its operation, or why it is refused.
    op: Result<DirOp, String>,
    /// How many replies it takes (they are next among the calls').
    calls: usize,
    /// A send to one uid made from the cache: the holders it was sent to, and the place of
    /// its last publish's reply.
    cached: Option<(std::sync::Arc<Filled>, u64)>,
}

/// Run a batch of directory commands (each with the key of its request's callback, if it is a
/// request) in order, as one pipeline. `link` is this link's id; with `cache` (the bus is the
/// link's directory connection, tracking the uids' holders: `uid_cache.rs`), a send to one
/// uid whose holders are cached is a `PUBLISH` to each of them.
pub(super) async fn execute(
    bus: &mut Bus,
    link: &str,
    batch: &[(Command, Option<u64>)],
    cache: Option<&UidCache>,
) -> redis::RedisResult<Executed> {
    let mut done = Executed {
        answers: Vec::new(),
        registered: Vec::new(),
        replied: false,
        unproven: false,
    };
    let mut items: Vec<Item> = Vec::with_capacity(batch.len());
    let mut cmds = Vec::with_capacity(batch.len());
    // Per call, 0, or the sends to one uid it runs (answered with a list of their counts).
    let mut runs: Vec<usize> = Vec::with_capacity(batch.len());
    let mut run: Option<(redis::Cmd, usize)> = None;
    // The uids a send missed in the cache: their holders are read at the end of the pipeline.
    let mut fills: Vec<String> = Vec::new();
    // Consecutive registrations nobody waits for (a node's new connections, one command
    // each): one `register` of them all, so a burst of connections costs a script call per
    // 500 clients, not one each (the script's fixed cost dwarfs a client's). The same
    // clients in the same order: what Redis holds after it is what the calls one by one
    // would have left.
    let mut regs: Vec<Registration> = Vec::new();
    let end_run = |run: &mut Option<(redis::Cmd, usize)>,
                   cmds: &mut Vec<redis::Cmd>,
                   runs: &mut Vec<usize>| {
        if let Some((c, n)) = run.take() {
            cmds.push(c);
            runs.push(n);
        }
    };
    let flush_regs = |regs: &mut Vec<Registration>,
                      cmds: &mut Vec<redis::Cmd>,
                      runs: &mut Vec<usize>,
                      items: &mut Vec<Item<'_>>| {
        if regs.is_empty() {
            return;
        }
        let op = DirOp::Register {
            clients: std::mem::take(regs),
        };
        let c = op_calls(bus, &op, b"", link);
        runs.extend(c.iter().map(|_| 0));
        items.push(Item {
            request: None,
            data: b"",
            op: Ok(op),
            calls: c.len(),
            cached: None,
        });
        cmds.extend(c);
    };
    // Sends to one uid that run the script.
    let mut scripted = 0u64;
    let ops: Vec<Result<DirOp, String>> = batch
        .iter()
        .map(|(cmd, _)| match cmd {
            Command::Dir(data) => parse(data),
            _ => Err(String::new()),
        })
        .collect();
    // A batch with other operations than sends runs its sends through the script: a cached
    // send after a change of holders made earlier in the batch (the cache hears of it only
    // with the batch's replies) would be found overtaken and sent again only after the whole
    // batch, behind its later operations (an unbind after it would keep the holder from a
    // send meant before); the script sees every operation in its place.
    let cache = cache.filter(|_| ops.iter().all(|op| matches!(op, Ok(DirOp::Send { .. }))));
    // The connection and the place of the pipeline's first reply.
    let places = cache.and_then(|c| c.pipeline());
    let cache = cache.filter(|_| places.is_some());
    for ((cmd, request), op) in batch.iter().zip(ops) {
        let Command::Dir(data) = cmd else { continue };
        if let (Ok(DirOp::Register { clients }), None) = (&op, request) {
            end_run(&mut run, &mut cmds, &mut runs);
            regs.extend(clients.iter().cloned());
            continue;
        }
        flush_regs(&mut regs, &mut cmds, &mut runs, &mut items);
        let mut item = Item {
            request: *request,
            data,
            op,
            calls: 0,
            cached: None,
        };
        match (&item.op, item.op.as_ref().ok().and_then(one_uid)) {
            (_, Some(uid)) => {
                match cache.map_or(Look::Off, |c| c.look(uid)) {
                    Look::Hit(filled) if !filled.holders.is_empty() => {
                        // In order with the run before it.
                        end_run(&mut run, &mut cmds, &mut runs);
                        for &(w, _) in filled.holders.iter() {
                            let mut c = redis::cmd("PUBLISH");
                            c.arg(event_channel(&dir::node_event(w))).arg(data.as_ref());
                            cmds.push(c);
                        }
                        item.calls = filled.holders.len();
                        runs.extend(std::iter::repeat_n(0, item.calls));
                        let last = places.map_or(0, |(_, first)| first + cmds.len() as u64 - 1);
                        item.cached = Some((filled, last));
                    }
                    look => {
                        scripted += 1;
                        if matches!(look, Look::Miss) && !fills.iter().any(|u| u == uid) {
                            fills.push(uid.to_string());
                        }
                        // Consecutive sends to one uid: one call (each atomic, in order).
                        let (c, n) = run.get_or_insert_with(|| {
                            (script_call(&SEND_SCRIPT, bus, "uid_sends", b""), 0)
                        });
                        c.arg(uid).arg(data.as_ref());
                        *n += 1;
                        item.calls = 1;
                    }
                }
            }
            (Ok(op), None) => {
                end_run(&mut run, &mut cmds, &mut runs);
                let c = op_calls(bus, op, data, link);
                item.calls = c.len();
                runs.extend(c.iter().map(|_| 0));
                cmds.extend(c);
            }
            (Err(why), _) if request.is_none() => {
                log::warn!("redis: directory operation refused: {why}");
            }
            (Err(_), _) => {}
        }
        items.push(item);
    }
    flush_regs(&mut regs, &mut cmds, &mut runs, &mut items);
    end_run(&mut run, &mut cmds, &mut runs);
    // The place of the first fill's `HGETALL` reply.
    let fills_at = places.map_or(0, |(_, first)| first + cmds.len() as u64 + 1);
    for uid in &fills {
        // Tracked (`OPTIN`): Redis tells this connection when these holders change.
        let mut caching = redis::cmd("CLIENT");
        caching.arg("CACHING").arg("YES");
        cmds.push(caching);
        let mut c = redis::cmd("HGETALL");
        c.arg(format!("{PREFIX}uw:{uid}"));
        cmds.push(c);
    }
    done.replied = !cmds.is_empty();
    let mut all = run_calls(bus, cmds).await?;
    let filled = all.split_off(all.len() - 2 * fills.len());
    if let (Some(cache), Some((conn, _))) = (cache, places) {
        for ((i, uid), pair) in fills.iter().enumerate().zip(filled.chunks(2)) {
            if !matches!(&pair[0], RValue::Okay) {
                // Read untracked (`CLIENT CACHING` refused, say by an ACL): nothing would tell
                // of a change. No cache on this connection.
                log::warn!(
                    "redis: CLIENT CACHING answered {:?}: sends to uids run the script",
                    pair[0]
                );
                cache.refuse();
                break;
            }
            if let Some(h) = uid_cache::holders(&pair[1]) {
                cache.fill(uid, conn, fills_at + 2 * i as u64, h);
            }
        }
    }
    // A run's list of counts becomes one reply per send (its error, one per send).
    let mut replies = Vec::with_capacity(items.len());
    for (reply, n) in all.into_iter().zip(runs) {
        match (reply, n) {
            (reply, 0) => replies.push(reply),
            (RValue::Array(counts), n) if counts.len() == n => replies.extend(counts),
            (RValue::ServerError(e), n) => {
                replies.extend(std::iter::repeat_n(RValue::ServerError(e), n));
            }
            (other, n) => {
                log::warn!("redis: sends to uids answered {other:?}");
                replies.extend(std::iter::repeat_n(RValue::Nil, n));
            }
        }
    }
    let mut replies = replies.into_iter();
    let mut counted = false;
    let mut again: Vec<Overtaken> = Vec::new();
    for item in &items {
        let answer = match (&item.op, &item.cached) {
            (Err(why), _) => error_answer(why),
            (Ok(op), Some((filled, at))) => {
                counted = true;
                let published: Vec<RValue> = replies.by_ref().take(item.calls).collect();
                let refused = published.iter().find_map(|r| match r {
                    RValue::ServerError(e) => Some(e),
                    _ => None,
                });
                if let Some(e) = refused {
                    // Refused (an ACL, say), as the script's `PUBLISH` would have been.
                    error_answer(&format!("redis: {e:?}"))
                } else {
                    let (n, reached, overtaken) = tally(filled, *at, &published);
                    if overtaken {
                        let uid = one_uid(op).expect("only sends to one uid are cached");
                        let at = item.request.map(|_| done.answers.len());
                        again.push((at, uid, item.data, reached));
                    }
                    Value::from(n)
                }
            }
            (Ok(op), None) => {
                // One answer from the call's replies (a `register` in parts: their sum).
                let mut a = Ok(Value::from(0));
                for _ in 0..item.calls {
                    let part = match replies.next().unwrap_or(RValue::Nil) {
                        RValue::ServerError(e) => Err(format!("redis: {e:?}")),
                        r => answer(op, &r),
                    };
                    a = match (a, part) {
                        (Ok(sum), Ok(v)) if item.calls > 1 => Ok(Value::from(
                            sum.as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0),
                        )),
                        (Ok(_), part) => part,
                        (Err(e), _) => Err(e),
                    };
                }
                match (&a, op) {
                    (Ok(_), DirOp::Register { clients }) => {
                        done.registered
                            .extend(clients.iter().map(|c| c.client_id.worker));
                    }
                    (Err(why), _) if item.request.is_none() => {
                        log::warn!("redis: directory operation failed: {why}");
                    }
                    _ => {}
                }
                counted |= op.is_forwarded();
                a.unwrap_or_else(|why| error_answer(&why))
            }
        };
        if let Some(id) = item.request {
            let json = serde_json::to_vec(&answer).expect("JSON values serialize");
            done.answers.push((id, Some(Bytes::from(json))));
        }
    }
    metrics::uid_sends(UidSendVia::Script, scripted);
    metrics::uid_sends(
        UidSendVia::Cache,
        items.iter().filter(|i| i.cached.is_some()).count() as u64 - again.len() as u64,
    );
    metrics::uid_sends(UidSendVia::Again, again.len() as u64);
    if !again.is_empty() {
        // Through the script: to the holders not reached yet, counting every holder reached.
        let calls = again
            .iter()
            .map(|(_, uid, data, reached)| {
                let mut c = script_call(&SEND_SCRIPT, bus, "uid_resend", b"");
                c.arg(*uid).arg(*data);
                for w in reached {
                    c.arg(w.to_string());
                }
                c
            })
            .collect();
        // The batch has run: a failure now leaves these sends' outcome unknown (`None`),
        // and is not a reason to run the batch again.
        let replies = run_calls(bus, calls).await.unwrap_or_else(|e| {
            log::warn!(
                "redis: {} sends overtaken by a change not sent again: {e}",
                again.len()
            );
            // Its replies may still come (a timeout): the places would be off. A new
            // connection for the next send to a uid.
            if let Some(c) = cache {
                c.stop();
            }
            Vec::new()
        });
        for (i, (at, ..)) in again.iter().enumerate() {
            let answer = match replies.get(i) {
                None => None,
                Some(RValue::Int(n)) => Some(Value::from((*n).max(0))),
                Some(RValue::ServerError(e)) => Some(error_answer(&format!("redis: {e:?}"))),
                Some(other) => Some(error_answer(&format!("redis: a send answered {other:?}"))),
            };
            if let Some((_, a)) = at.and_then(|at| done.answers.get_mut(at)) {
                *a = answer.map(|answer| {
                    Bytes::from(serde_json::to_vec(&answer).expect("JSON values serialize"))
                });
            }
        }
    }
    // Redis answers a script before it writes what the script published to the subscribers'
    // sockets: once a later command is answered, those writes are done (see `execute` in
    // mod.rs). On a single server that is the next batch's reply (or a `PING` when none
    // comes); a cluster's other nodes do not tell, so it asks the directory's node here.
    if counted && !done.answers.is_empty() && bus.is_single() {
        done.unproven = true;
    } else if counted && !done.answers.is_empty() {
        let mut probe = redis::cmd("EXISTS");
        probe.arg(WORKERS);
        if bus.run(vec![(WORKERS.to_string(), probe)]).await.is_err() {
            for (_, a) in &mut done.answers {
                *a = None;
            }
        }
    }
    done.registered.sort_unstable();
    done.registered.dedup();
    Ok(done)
}

/// A cache of the uids' holders for a link's sends (`uid_cache.rs`).
pub(super) fn uid_cache() -> UidCache {
    UidCache::new(&format!("{PREFIX}uw:"))
}

/// A directory command's operation, or why it is refused.
pub(super) fn parse(data: &Bytes) -> Result<DirOp, String> {
    let json = Command::dir_json(data).map_err(|e| e.to_string())?;
    DirOp::from_wire(&json).map_err(|e| e.0)
}

/// Workers as the script's arguments.
fn arg_workers(c: &mut redis::Cmd, workers: &[u32]) {
    for w in workers {
        c.arg(w);
    }
}

/// Remove the clients of `workers` that link `link` registered and still is the registrar of
/// (the link closes); how many.
pub(super) async fn drop_workers(
    bus: &mut Bus,
    link: &str,
    workers: &[u32],
) -> redis::RedisResult<i64> {
    let mut c = call(bus, "drop", b"");
    c.arg(link);
    arg_workers(&mut c, workers);
    int(run_one(bus, c).await?)
}

/// Remove every client of `workers` (their ids are given up); how many.
pub(super) async fn release_workers(bus: &mut Bus, workers: &[u32]) -> redis::RedisResult<i64> {
    let mut c = call(bus, "release", b"");
    arg_workers(&mut c, workers);
    int(run_one(bus, c).await?)
}

fn int(v: RValue) -> redis::RedisResult<i64> {
    match v {
        RValue::Int(n) => Ok(n),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "directory script",
            format!("{other:?}"),
        ))),
    }
}

/// What renewing a worker's alive key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewed {
    /// Renewed (or nothing to do).
    Kept,
    /// It had expired or been swept while the node is subscribed: register again.
    Lost,
    /// Another link registered the worker since.
    Taken,
}

/// Sweep if no one did this past second; clients removed.
async fn sweep(bus: &mut Bus) -> redis::RedisResult<i64> {
    let c = call(bus, "sweep", b"");
    int(run_one(bus, c).await?)
}

/// Renew link `link`'s alive keys of `workers` (`extend`), or only look whether they were lost.
async fn renew(
    bus: &mut Bus,
    link: &str,
    workers: &[u32],
    extend: bool,
) -> redis::RedisResult<Vec<Renewed>> {
    let mut c = call(bus, if extend { "refresh" } else { "check" }, b"");
    c.arg(link).arg(ALIVE_TTL_MS);
    arg_workers(&mut c, workers);
    let RValue::Array(codes) = run_one(bus, c).await? else {
        return Ok(vec![Renewed::Kept; workers.len()]);
    };
    Ok(codes
        .iter()
        .map(|c| match c {
            RValue::Int(1) => Renewed::Lost,
            RValue::Int(2) => Renewed::Taken,
            _ => Renewed::Kept,
        })
        .collect())
}

/// Seconds between two readings of the directory's sizes (only with an admin port).
const SIZES_EVERY: u64 = 2;

/// The directory's sizes, cluster-wide: clients, uids, groups (for the metrics).
async fn sizes(bus: &mut Bus) -> redis::RedisResult<[i64; 3]> {
    let mut groups = redis::cmd("SCARD");
    groups.arg(format!("{PREFIX}gs"));
    let calls = vec![
        call(bus, "get_all_client_id_count", b""),
        call(bus, "get_all_uid_count", b""),
        groups,
    ];
    let mut out = [0; 3];
    for (o, v) in out.iter_mut().zip(run_calls(bus, calls).await?) {
        *o = int(v)?;
    }
    Ok(out)
}

/// Every second, while the link registered clients or holds worker-id leases: sweep; every
/// tenth second renew the alive keys of the workers it registered (in the ten seconds after
/// it registered clients, look every second), and when one was lost (the link was out of
/// touch for longer than the key lives, or a sweep ran before the node's subscription reached
/// Redis) have the client register again.
pub(super) async fn run_directory(link: Weak<RedisLink>) {
    let every = (MEMBERSHIP_REFRESH.as_millis() / SWEEP_EVERY.as_millis()).max(1) as u64;
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(l) = link.upgrade() else { return };
        if l.closed.get() {
            return;
        }
        if !l.sweeps.get() || !l.up.get() {
            continue;
        }
        let Some(mut bus) = l.manager.borrow().clone() else {
            continue;
        };
        tick += 1;
        let fresh = l
            .registered_at
            .get()
            .is_some_and(|at| at.elapsed() < MEMBERSHIP_REFRESH);
        let extend = tick.is_multiple_of(every);
        let workers: Vec<u32> = if fresh || extend {
            l.dir_workers.borrow().iter().copied().collect()
        } else {
            Vec::new()
        };
        let (id, shown) = (l.id.clone(), l.shown.clone());
        drop(l);
        match sweep(&mut bus).await {
            Ok(0) => {}
            Ok(n) => log::info!("redis {shown}: directory: {n} clients of gone nodes removed"),
            Err(e) => log::debug!("redis {shown}: directory sweep: {e}"),
        }
        if tick.is_multiple_of(SIZES_EVERY) && crate::metrics::enabled() {
            // With an admin port: the directory's sizes as every node sees them (`hub="redis"`).
            match sizes(&mut bus).await {
                Ok([clients, uids, groups]) => {
                    let m = crate::metrics::directory_named("redis");
                    m.clients.set(clients);
                    m.uids.set(uids);
                    m.groups.set(groups);
                }
                Err(e) => log::debug!("redis {shown}: directory sizes: {e}"),
            }
        }
        if workers.is_empty() {
            continue;
        }
        let renewed = match renew(&mut bus, &id, &workers, extend).await {
            Ok(r) => r,
            Err(e) => {
                log::warn!("redis {shown}: directory: alive keys not renewed: {e}");
                continue;
            }
        };
        let Some(l) = link.upgrade() else { return };
        let mut lost = Vec::new();
        for (w, r) in workers.iter().zip(renewed) {
            match r {
                Renewed::Kept => {}
                Renewed::Lost => lost.push(*w),
                Renewed::Taken => {
                    l.dir_workers.borrow_mut().remove(w);
                }
            }
        }
        if !lost.is_empty() {
            log::warn!(
                "redis {shown}: directory: the clients of workers {lost:?} were swept (this \
                 link out of touch, or their node's subscription late); registering them again"
            );
            if let Some(o) = l.owner() {
                drop(l);
                o.registrations_lost();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::dir::Registration;
    use serde_json::json;

    fn args(op: &DirOp) -> Vec<String> {
        let mut c = redis::Cmd::new();
        op_args(&mut c, op, "L");
        c.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<not an argument>".into(),
            })
            .collect()
    }

    #[test]
    fn keys_and_node_channels_share_one_slot() {
        assert!(WORKERS.starts_with(PREFIX) && PREFIX.starts_with(TAG));
        let w3 = event_channel(&dir::node_event(3));
        assert_eq!(w3, "werkmann:e:{werkmann:dir}werkmann.gw.3");
        assert_eq!(
            event_channel(dir::ALL_NODES),
            "werkmann:e:{werkmann:dir}werkmann.gw"
        );
        // Redis Cluster hashes the part between the first `{` and the next `}`.
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open + 1..close].to_string()
        };
        for key in [&w3, WORKERS, &format!("{PREFIX}u:{{x}}")] {
            assert_eq!(tag(key), "werkmann:dir", "{key}");
        }
        // Other events keep their plain channel.
        assert_eq!(event_channel("werkmann.gwx"), "werkmann:e:werkmann.gwx");
        assert_eq!(event_channel("news"), "werkmann:e:news");
        for name in [
            "werkmann.gw",
            "werkmann.gw.3",
            "werkmann.gwx",
            "news",
            "{werkmann:dir}x",
        ] {
            let ch = event_channel(name);
            assert_eq!(event_name(ch.strip_prefix(PREFIX_EVENT).unwrap()), name);
        }
        for lua in [include_str!("directory.lua"), include_str!("send.lua")] {
            let text = script_text(lua);
            assert!(!text.contains('@'), "every constant filled in");
            assert!(text.contains("local NODE = 'werkmann:e:{werkmann:dir}werkmann.gw.'"));
        }
    }

    #[test]
    fn operations_become_script_arguments() {
        let id = |s: &str| s.parse::<ClientId>().unwrap();
        let reg = DirOp::Register {
            clients: vec![
                Registration {
                    client_id: id("01-2"),
                    uid: Some("alice".into()),
                    groups: vec!["a".into(), "b".into()],
                    session: Some(serde_json::from_value(json!({"k": [1], "n": null})).unwrap()),
                },
                Registration {
                    client_id: id("1-3"),
                    uid: None,
                    groups: vec![],
                    session: None,
                },
            ],
        };
        assert_eq!(
            args(&reg),
            [
                "L", "30000", "2", "1-2", "alice", "2", "a", "b", "2", "k", "[1]", "n", "null",
                "1-3", "", "0", "0"
            ]
        );
        let send = |target| DirOp::Send {
            target,
            data: "x".into(),
        };
        let groups = send(Target::Groups {
            groups: vec!["g".into(), "h".into(), "g".into()],
            exclude: vec![id("1-1"), id("1-1"), id("2-1")],
        });
        assert_eq!(args(&groups), ["groups", "2", "g", "h", "1-1", "2-1"]);
        let uids = send(Target::Uids {
            uids: vec!["u".into(), "u".into()],
        });
        assert_eq!(args(&uids), ["uids", "u"]);
        let all = send(Target::All { exclude: vec![] });
        assert_eq!(args(&all), ["all"]);
        assert_eq!(args(&DirOp::GetAllUidCount), Vec::<String>::new());
        let unreg = DirOp::Unregister {
            client_ids: vec![id("3-4"), id("3-4")],
        };
        assert_eq!(args(&unreg), ["3-4"]);
    }

    #[test]
    fn replies_become_answers() {
        let bulk = |s: &str| RValue::BulkString(s.as_bytes().to_vec());
        let arr = |v: &[&str]| RValue::Array(v.iter().map(|s| bulk(s)).collect());
        let id = "1-1".parse::<ClientId>().unwrap();
        let ok = |op: DirOp, r: RValue| answer(&op, &r).unwrap();
        assert_eq!(
            ok(DirOp::IsOnline { client_id: id }, RValue::Int(1)),
            json!(true)
        );
        assert_eq!(
            ok(
                DirOp::GetClientIdByUid { uid: "u".into() },
                arr(&["10-1", "2-30", "2-4"])
            ),
            json!(["2-4", "2-30", "10-1"])
        );
        assert_eq!(
            ok(DirOp::GetUidByClientId { client_id: id }, RValue::Nil),
            json!(null)
        );
        assert_eq!(
            ok(
                DirOp::GetUidByClientId { client_id: id },
                RValue::Boolean(false)
            ),
            json!(null)
        );
        let group = || "g".to_string();
        assert_eq!(
            ok(
                DirOp::GetUidListByGroup { group: group() },
                arr(&["b", "a", "b"])
            ),
            json!(["a", "b"])
        );
        assert_eq!(
            ok(
                DirOp::GetUidCountByGroup { group: group() },
                arr(&["b", "a", "b"])
            ),
            json!(2)
        );
        assert_eq!(
            ok(
                DirOp::GetSession { client_id: id },
                RValue::Array(vec![RValue::Int(1), bulk("k"), bulk("[1,{\"a\":2}]")])
            ),
            json!({"k": [1, {"a": 2}]})
        );
        assert_eq!(
            ok(
                DirOp::GetSession { client_id: id },
                RValue::Array(vec![RValue::Int(1)])
            ),
            json!({})
        );
        assert_eq!(
            ok(DirOp::GetSession { client_id: id }, RValue::Nil),
            json!(null)
        );
        assert_eq!(ok(DirOp::GetAllClientIdCount, RValue::Int(7)), json!(7));
        assert!(answer(&DirOp::GetAllClientIdCount, &RValue::Nil).is_err());
    }
}

//! Presence events for GatewayWorker's vocabulary: a uid's `online` (its first connection
//! anywhere in the cluster) and `offline` (its last one gone), a group's `join` and `leave`
//! (per member: its uid, or its client id while unbound), announced once cluster-wide — the
//! directory's presence groups (`channel::dir`) count the connections behind each key, on
//! every backend, and take a dead node's connections out within the directory's bound.
//!
//! A node that announces presence ([`crate::gateway::Gateway::announce_presence`]) joins its
//! connections to two kinds of presence groups as the directory tells it of binds and group
//! joins: `seed:uids` keyed by uid, and `seed:group:{G}` keyed by member. The announcements go
//! to [`uids_event`] and [`group_event`] as `{content: JSON}` (PHP), the JSON being
//! `{"event":"online","uid":…}`, `{"event":"offline","uid":…}`,
//! `{"event":"join","group":…,"member":…}` or `{"event":"leave",…}`; with hooks, the same
//! JSON is queued on [`hooks_queue`] for a webhook sender (one consumer each).

use serde_json::{json, Value};

use crate::channel::dir::{self, ClientId, DirOp, Hooks, Join};
use crate::channel::php_serde;

/// Most members a presence group of the gateway may hold (a bound, not a limit in practice).
const MAX_MEMBERS: usize = 100_000_000;

/// The event uids' `online`/`offline` are announced on.
pub fn uids_event() -> String {
    dir::announced_event("seed:uids")
}

/// The event group `group`'s `join`/`leave` are announced on.
pub fn group_event(group: &str) -> String {
    dir::announced_event(&format!("seed:group:{group}"))
}

/// The queue the presence events wait on for a webhook sender.
pub fn hooks_queue() -> String {
    dir::announced_event("seed:presence-hooks")
}

/// A presence event as an announcement's payload: `{content: JSON}` in PHP serialize form (a
/// reader of the event, `/sse` or `/werkmann`, gets the JSON as its data).
fn announcement(event: &Value) -> String {
    let bytes = php_serde::to_vec(&json!({ "content": event.to_string() }));
    String::from_utf8(bytes).expect("UTF-8 in, UTF-8 out")
}

/// A presence event as a hook's item: a PHP string of its JSON.
fn hook_item(event: &Value) -> String {
    let mut out = Vec::new();
    php_serde::write_str(&mut out, event.to_string().as_bytes());
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

fn join(
    client_id: ClientId,
    group: String,
    key: &str,
    event: String,
    came: Value,
    went: Value,
    hooks: bool,
) -> DirOp {
    DirOp::PresenceJoin(Join {
        client_id,
        group,
        key: key.to_string(),
        info: Value::Null,
        event,
        added: announcement(&came),
        removed: announcement(&went),
        max: MAX_MEMBERS,
        hooks: hooks.then(|| Hooks {
            queue: hooks_queue(),
            added: hook_item(&came),
            removed: hook_item(&went),
        }),
        // Every uid online is one group: never listed to each joiner.
        quiet: true,
    })
}

/// `client_id` is bound to `uid`: it counts for the uid's presence.
pub(crate) fn uid_join(client_id: ClientId, uid: &str, hooks: bool) -> DirOp {
    join(
        client_id,
        "seed:uids".into(),
        uid,
        uids_event(),
        json!({ "event": "online", "uid": uid }),
        json!({ "event": "offline", "uid": uid }),
        hooks,
    )
}

/// `client_id` is no longer bound.
pub(crate) fn uid_leave(client_id: ClientId) -> DirOp {
    DirOp::PresenceLeave {
        client_id,
        group: "seed:uids".into(),
    }
}

/// `client_id` (as `member`: its uid, or its client id) joined `group`.
pub(crate) fn group_join(client_id: ClientId, group: &str, member: &str, hooks: bool) -> DirOp {
    join(
        client_id,
        format!("seed:group:{group}"),
        member,
        group_event(group),
        json!({ "event": "join", "group": group, "member": member }),
        json!({ "event": "leave", "group": group, "member": member }),
        hooks,
    )
}

/// `client_id` left `group`.
pub(crate) fn group_leave(client_id: ClientId, group: &str) -> DirOp {
    DirOp::PresenceLeave {
        client_id,
        group: format!("seed:group:{group}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_carry_their_json_as_content() {
        let op = uid_join(ClientId::new(3, 17), "alice", true);
        let DirOp::PresenceJoin(j) = &op else {
            panic!()
        };
        let content = php_serde::field(j.added.as_bytes(), "content")
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(content, r#"{"event":"online","uid":"alice"}"#);
        assert!(j.hooks.is_some());
        op.check().unwrap();
        let op = group_join(ClientId::new(3, 17), "room", "alice", false);
        let DirOp::PresenceJoin(j) = &op else {
            panic!()
        };
        assert!(j.hooks.is_none());
        assert_eq!(j.event, group_event("room"));
    }
}

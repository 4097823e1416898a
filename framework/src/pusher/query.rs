//! The HTTP API's channel queries, answered from the directory: `GET channels` (the occupied
//! channels, by prefix, with `user_count` for presence ones), `GET channels/{name}`
//! (`occupied`, `subscription_count`, `user_count`), `GET channels/{name}/users`, and the
//! `info` of `POST events` and `batch_events` (the counts after publishing). A
//! channel's subscribers are counted cluster-wide when its app counts channels
//! (`App::channel_counts`, on by default); a presence channel's users always are.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::channel::{check_channel_name, ChannelKind};
use super::node::{channel_event, occupancy_group};
use super::App;
use crate::channel::dir::DirOp;
use crate::channel::report::Summary;
use crate::channel::{ChannelError, Client};
use crate::{Connection, Response};

/// An HTTP API error: `status` with `{"error": message}`.
pub(super) fn error(status: u16, message: impl std::fmt::Display) -> Response {
    Response::json(status, &json!({ "error": message.to_string() }))
}

/// Most channels `GET channels` lists.
pub const MAX_CHANNELS_LISTED: usize = 1000;

/// A query of the HTTP API.
pub(super) enum Query<'a> {
    /// `GET channels?filter_by_prefix=…&info=user_count`.
    Channels { prefix: &'a str, info: &'a str },
    /// `GET channels/{name}?info=…`.
    Channel { channel: &'a str, info: &'a str },
    /// `GET channels/{name}/users`.
    Users { channel: &'a str },
}

/// The attributes an `info` parameter asks for.
#[derive(Default, Clone, Copy)]
struct Info {
    user_count: bool,
    subscription_count: bool,
    /// werkmann's extension on `POST events`: what each channel's publish reached.
    report: bool,
}

impl Info {
    /// Read `info` (comma-separated); `allowed` are the attributes this query has.
    fn parse(info: &str, allowed: &[&str], presence: bool) -> Result<Info, Response> {
        let mut out = Info::default();
        for attr in info.split(',').filter(|a| !a.is_empty()) {
            if !allowed.contains(&attr) {
                return Err(error(400, format!("unknown info attribute {attr:?}")));
            }
            match attr {
                "user_count" if !presence => {
                    return Err(error(400, "user_count is for presence channels"));
                }
                "user_count" => out.user_count = true,
                _ => out.subscription_count = true,
            }
        }
        Ok(out)
    }
}

/// Answer `q` for `app` through `client` (its directory).
pub(super) fn reply(conn: &Connection, app: &App, client: Option<&Client>, q: Query) {
    match prepare(app, q) {
        Ok((ops, shape)) => {
            let Some(client) = client.filter(|c| c.is_connected()) else {
                conn.send(error(503, "the channel is unreachable"));
                return;
            };
            let (reply, c) = (conn.clone(), client.clone());
            ask_all(client, ops, move |answers| match shape {
                Shape::Listed {
                    app,
                    prefix_len,
                    info,
                } => match values(answers) {
                    Ok(v) => {
                        let groups: Vec<String> = v
                            .first()
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|g| g.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        list(&c, &reply, &app, groups, prefix_len, info);
                    }
                    Err(resp) => {
                        reply.send(resp);
                    }
                },
                shape => {
                    reply.send(match values(answers) {
                        Ok(v) => shape.finish(v),
                        Err(resp) => resp,
                    });
                }
            });
        }
        Err(resp) => {
            conn.send(resp);
        }
    }
}

/// What the answers make.
enum Shape {
    /// `{"channels": {name: {user_count?}}}` from the groups listed (then each presence
    /// channel's counts, when asked: [`Shape::Counted`]).
    Listed {
        app: App,
        prefix_len: usize,
        info: Info,
    },
    /// `{"occupied", "subscription_count"?, "user_count"?}` from the occupancy counts and
    /// the presence counts.
    Channel { info: Info },
    /// `{"users": [{"id"}]}` from the members.
    Users,
}

fn prepare(app: &App, q: Query) -> Result<(Vec<DirOp>, Shape), Response> {
    let counted = |what: &str| match app.counts_channels() {
        true => Ok(()),
        false => Err(error(
            501,
            format!("{what}: this app does not count its channels (channel_counts is off)"),
        )),
    };
    match q {
        Query::Users { channel } => {
            check_channel_name(channel).map_err(|e| error(400, e))?;
            if ChannelKind::of(channel) != ChannelKind::Presence {
                return Err(error(400, "only presence channels have users"));
            }
            let group = channel_event(&app.id, channel);
            Ok((vec![DirOp::GetPresence { group }], Shape::Users))
        }
        Query::Channel { channel, info } => {
            check_channel_name(channel).map_err(|e| error(400, e))?;
            let presence = ChannelKind::of(channel) == ChannelKind::Presence;
            let info = Info::parse(info, &["user_count", "subscription_count"], presence)?;
            let members = DirOp::GetPresenceCounts {
                group: channel_event(&app.id, channel),
            };
            // Without channel counts a presence channel is occupied while it has members;
            // other channels are not known.
            let occupancy = match (app.counts_channels(), presence, info.subscription_count) {
                (true, _, _) => DirOp::GetPresenceCounts {
                    group: occupancy_group(&app.id, channel),
                },
                (false, true, false) => members.clone(),
                _ => return Err(counted("channel info").unwrap_err()),
            };
            Ok((vec![occupancy, members], Shape::Channel { info }))
        }
        Query::Channels { prefix, info } => {
            let presence = prefix.starts_with("presence-");
            let info = Info::parse(info, &["user_count"], presence)
                .map_err(|_| error(400, "info=user_count needs filter_by_prefix=presence-"))?;
            counted("the channel list")?;
            let group_prefix = occupancy_group(&app.id, prefix);
            let ops = vec![DirOp::ListPresenceGroups {
                prefix: group_prefix.clone(),
            }];
            let prefix_len = group_prefix.len() - prefix.len();
            Ok((
                ops,
                Shape::Listed {
                    app: app.clone(),
                    prefix_len,
                    info,
                },
            ))
        }
    }
}

/// The directory's answers, or the response that says why there are none.
fn values(answers: Vec<Answer>) -> Result<Vec<Value>, Response> {
    answers
        .into_iter()
        .map(|a| {
            a.map_err(|e| match e {
                ChannelError::NoDirectory => error(
                    501,
                    "channel queries need a werkmann channel server or Redis",
                ),
                e => error(503, format!("not answered: {e}")),
            })
        })
        .collect()
}

impl Shape {
    fn finish(self, values: Vec<Value>) -> Response {
        let count = |v: &Value, what: &str| v.get(what).and_then(Value::as_u64).unwrap_or(0);
        match self {
            Shape::Users => {
                let Some(members) = values.first().and_then(Value::as_object) else {
                    return error(502, "the directory answered no members");
                };
                let list: Vec<Value> = members.keys().map(|id| json!({ "id": id })).collect();
                Response::json(200, &json!({ "users": list }))
            }
            Shape::Channel { info } => {
                let (occupancy, presence) = (&values[0], &values[1]);
                let subscriptions = count(occupancy, "connections");
                let mut out = json!({ "occupied": subscriptions > 0 });
                if info.subscription_count {
                    out["subscription_count"] = json!(subscriptions);
                }
                if info.user_count {
                    out["user_count"] = json!(count(presence, "keys"));
                }
                Response::json(200, &out)
            }
            Shape::Listed { .. } => error(500, "a channel list is answered by `list`"),
        }
    }
}

/// A directory's answer.
type Answer = Result<Value, ChannelError>;

/// Ask the directory each of `ops` and call `done` with every answer, in order.
fn ask_all(client: &Client, ops: Vec<DirOp>, done: impl FnOnce(Vec<Answer>) + 'static) {
    let n = ops.len();
    if n == 0 {
        return done(Vec::new());
    }
    let answers: Rc<RefCell<Vec<Option<Answer>>>> =
        Rc::new(RefCell::new((0..n).map(|_| None).collect()));
    type Done = Box<dyn FnOnce(Vec<Answer>)>;
    let done: Rc<RefCell<Option<Done>>> = Rc::new(RefCell::new(Some(Box::new(done))));
    for (i, op) in ops.into_iter().enumerate() {
        let (answers, done) = (answers.clone(), done.clone());
        client.dir_request(&op, move |a| {
            answers.borrow_mut()[i] = Some(a);
            if answers.borrow().iter().all(Option::is_some) {
                let all = answers.borrow_mut().drain(..).flatten().collect();
                if let Some(f) = done.borrow_mut().take() {
                    f(all);
                }
            }
        });
    }
}

/// `GET channels`: the listed groups become channel names; presence ones with `user_count`
/// asked get their counts in a second round.
fn list(
    client: &Client,
    conn: &Connection,
    app: &App,
    groups: Vec<String>,
    prefix_len: usize,
    info: Info,
) {
    let names: Vec<String> = groups
        .into_iter()
        .filter_map(|g| g.get(prefix_len..).map(str::to_string))
        .take(MAX_CHANNELS_LISTED)
        .collect();
    if !info.user_count {
        let channels: Map<String, Value> = names.into_iter().map(|n| (n, json!({}))).collect();
        conn.send(Response::json(200, &json!({ "channels": channels })));
        return;
    }
    let ops = names
        .iter()
        .map(|n| DirOp::GetPresenceCounts {
            group: channel_event(&app.id, n),
        })
        .collect();
    let reply = conn.clone();
    ask_all(client, ops, move |answers| {
        let mut channels = Map::new();
        for (n, a) in names.into_iter().zip(answers) {
            match a {
                Ok(v) => {
                    let users = v.get("keys").and_then(Value::as_u64).unwrap_or(0);
                    channels.insert(n, json!({ "user_count": users }));
                }
                Err(e) => {
                    reply.send(error(503, format!("not answered: {e}")));
                    return;
                }
            }
        }
        reply.send(Response::json(200, &json!({ "channels": channels })));
    });
}

/// The counts `POST events` (or `batch_events`) asked for with `info`, answered once published:
/// `{"channels": {name: {…}}}` (or `{"batch": [{…}, …]}`, one per event).
pub(super) struct EventInfo {
    batch: bool,
    /// Per event: its channels and what is asked of them.
    events: Vec<(Vec<String>, Info)>,
}

impl EventInfo {
    /// Whether an event's `info` asks what it reached (werkmann's `werkmann_report`).
    pub(super) fn asks_report(info: &str) -> bool {
        info.split(',').any(|a| a == REPORT)
    }

    /// Read each event's `info` (`None`: none asked, the answer is `{}`). `user_count` is
    /// given for presence channels only; `subscription_count` needs channel counts (501).
    pub(super) fn parse(
        app: &App,
        events: &[(Vec<String>, &str)],
        batch: bool,
    ) -> Result<Option<EventInfo>, Response> {
        let mut out = Vec::new();
        let mut any = false;
        for (channels, info) in events {
            let mut i = Info::default();
            for attr in info.split(',').filter(|a| !a.is_empty()) {
                match attr {
                    "user_count" => i.user_count = true,
                    REPORT => i.report = true,
                    "subscription_count" if app.counts_channels() => i.subscription_count = true,
                    "subscription_count" => {
                        return Err(error(
                            501,
                            "subscription_count: this app does not count its channels \
                             (channel_counts is off)",
                        ))
                    }
                    other => return Err(error(400, format!("unknown info attribute {other:?}"))),
                }
            }
            any |= i.user_count || i.subscription_count || i.report;
            out.push((channels.clone(), i));
        }
        Ok(any.then_some(EventInfo { batch, events: out }))
    }

    /// Read the counts and answer, with `reports` (per event and channel, in order) where
    /// asked.
    pub(super) fn reply(
        self,
        conn: &Connection,
        app: &App,
        client: &Client,
        reports: Vec<Option<Summary>>,
    ) {
        // Per event and channel that asks counts, two of them: subscriptions, then members.
        let mut ops = Vec::new();
        for (channels, info) in &self.events {
            if !(info.user_count || info.subscription_count) {
                continue;
            }
            for c in channels {
                ops.push(DirOp::GetPresenceCounts {
                    group: occupancy_group(&app.id, c),
                });
                ops.push(DirOp::GetPresenceCounts {
                    group: channel_event(&app.id, c),
                });
            }
        }
        let reply = conn.clone();
        ask_all(client, ops, move |answers| {
            let values = match values(answers) {
                Ok(v) => v,
                Err(resp) => {
                    reply.send(resp);
                    return;
                }
            };
            let count = |v: &Value, what: &str| v.get(what).and_then(Value::as_u64).unwrap_or(0);
            let mut at = values.chunks(2);
            let mut reports = reports.into_iter();
            let mut channels = Map::new();
            let mut batch = Vec::new();
            for (names, info) in self.events {
                for name in names {
                    let report = reports.next().flatten();
                    let mut attrs = Map::new();
                    if let (true, Some(r)) = (info.report, report) {
                        attrs.insert(REPORT.into(), r.json());
                    }
                    if !(info.user_count || info.subscription_count) {
                        push(&mut channels, &mut batch, self.batch, name, attrs);
                        continue;
                    }
                    let Some([subs, members]) = at.next() else {
                        break;
                    };
                    if info.subscription_count {
                        attrs.insert(
                            "subscription_count".into(),
                            json!(count(subs, "connections")),
                        );
                    }
                    if info.user_count && ChannelKind::of(&name) == ChannelKind::Presence {
                        attrs.insert("user_count".into(), json!(count(members, "keys")));
                    }
                    push(&mut channels, &mut batch, self.batch, name, attrs);
                }
            }
            let body = match self.batch {
                true => json!({ "batch": batch }),
                false => json!({ "channels": channels }),
            };
            reply.send(Response::json(200, &body));
        });
    }
}

/// The `info` attribute of werkmann's delivery reports on `POST events`: per channel,
/// `{"reached", "instances", "reported"}` (`channel::report::Summary`).
const REPORT: &str = "werkmann_report";

/// A channel's attributes into the answer: by channel name, or (a batch) in order.
fn push(
    channels: &mut Map<String, Value>,
    batch: &mut Vec<Value>,
    in_batch: bool,
    name: String,
    attrs: Map<String, Value>,
) {
    match in_batch {
        true => batch.push(Value::Object(attrs)),
        false => {
            channels.insert(name, Value::Object(attrs));
        }
    }
}

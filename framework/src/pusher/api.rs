//! The Pusher HTTP API on a publisher (`/apps/{id}/…`): every request signed
//! ([`sign::check_api_request`]: 401 with the reason), then `POST events` (one event to up to
//! [`MAX_CHANNELS`] channels, `socket_id` left out) and `POST batch_events` (up to
//! [`MAX_BATCH`] events), each channel one channel event ([`channel_event`]) carrying the frame
//! encoded once. The answer (`{}`, Pusher's) comes once the channel confirmed every publish; a
//! channel that cannot take them is a 503, so a publisher is never told `{}` for events that
//! went nowhere.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::channel::{check_channel_name, check_event_name, check_user_id};
use super::node::{channel_event, event_payload, reported_payload, user_event};
use super::query::{self, error as answer, Query};
use super::{frame, sign, Apps, SocketId};
use crate::channel::report::{Asked, Deliveries, Summary};
use crate::channel::{Client, Name};
use crate::message::http::parse_urlencoded;
use crate::{Connection, Request, Response};

/// Where the API's paths begin.
pub const API_PREFIX: &str = "/apps/";

/// Whether `path` is the Pusher HTTP API's: under [`API_PREFIX`], or
/// `/users/{id}/terminate_connections` without it (as the PyPI SDK 3.3 sends it).
pub fn is_api_path(path: &str) -> bool {
    path.starts_with(API_PREFIX)
        || (path.starts_with("/users/") && path.ends_with("/terminate_connections"))
}
/// Channels one event may name.
pub const MAX_CHANNELS: usize = 100;
/// Events one batch may hold.
pub const MAX_BATCH: usize = 10;
/// Largest `data` of one event, in bytes (Pusher's 10 KB).
pub const MAX_DATA: usize = 10 * 1024;

/// One event as `events` and `batch_events` take it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    name: String,
    data: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    batch: Vec<Event>,
}

impl Event {
    /// The channels it names: `channels` or `channel`, not both, not neither.
    fn channel_names(&self) -> Result<Vec<&str>, Response> {
        match (&self.channels, &self.channel) {
            (Some(list), None) => Ok(list.iter().map(String::as_str).collect()),
            (None, Some(one)) => Ok(vec![one.as_str()]),
            (Some(_), Some(_)) => Err(answer(400, "give channels or channel, not both")),
            (None, None) => Err(answer(400, "missing channels")),
        }
    }
}

/// One channel's publish of an event: its channel event, and what the payload holds.
struct Publish {
    event: String,
    skip: Option<SocketId>,
    frame: String,
    /// Whether its publisher asks what it reached (`info=werkmann_report`).
    report: bool,
}

impl Publish {
    fn payload(&self) -> Bytes {
        event_payload(self.skip, &self.frame)
    }
}

/// An event made ready to publish: one [`Publish`] per channel.
fn prepare(app_id: &str, e: &Event) -> Result<Vec<Publish>, Response> {
    check_event_name(&e.name).map_err(|err| answer(400, err))?;
    if e.data.len() > MAX_DATA {
        return Err(answer(
            413,
            format!("event data is {} bytes, more than {MAX_DATA}", e.data.len()),
        ));
    }
    let channels = e.channel_names()?;
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(answer(
            400,
            format!(
                "an event goes to 1 to {MAX_CHANNELS} channels, not {}",
                channels.len()
            ),
        ));
    }
    let skip = match &e.socket_id {
        Some(s) => Some(s.parse::<SocketId>().map_err(|err| answer(400, err))?),
        None => None,
    };
    channels
        .into_iter()
        .map(|ch| {
            check_channel_name(ch).map_err(|err| answer(400, err))?;
            Ok(Publish {
                event: channel_event(app_id, ch),
                skip,
                frame: frame::encode(&e.name, Some(ch), &e.data),
                report: query::EventInfo::asks_report(e.info.as_deref().unwrap_or("")),
            })
        })
        .collect()
}

/// Serve a request whose path begins with [`API_PREFIX`]; `client` publishes.
pub fn handle_api(conn: &Connection, req: &Request, apps: &Apps, client: Option<&Client>) {
    let path = req.path();
    let params = parse_urlencoded(req.query_string());
    let (app, what) = match path.strip_prefix(API_PREFIX) {
        Some(rest) => {
            let (app_id, what) = rest.split_once('/').unwrap_or((rest, ""));
            (apps.by_id(app_id).ok_or(app_id), what)
        }
        // `/users/{id}/terminate_connections`, as the PyPI SDK (3.3) sends it: the app is the
        // one whose key signs it.
        None => {
            let key = params
                .iter()
                .find(|(k, _)| k == "auth_key")
                .map_or("", |(_, v)| v.as_str());
            (apps.by_key(key).ok_or(key), path.trim_start_matches('/'))
        }
    };
    let app = match app {
        Ok(app) => app,
        Err(which) => {
            conn.send(answer(404, format!("no app {which:?}")));
            return;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Err(e) = sign::check_api_request(app, req.method(), path, &params, req.body(), now) {
        conn.send(answer(401, e));
        return;
    }
    let events: Vec<Event> = match (req.method(), what) {
        ("POST", "events") => match serde_json::from_slice::<Event>(req.body()) {
            Ok(e) => vec![e],
            Err(e) => {
                conn.send(answer(400, format!("bad event: {e}")));
                return;
            }
        },
        ("POST", "batch_events") => match serde_json::from_slice::<Batch>(req.body()) {
            Ok(b) if b.batch.is_empty() => {
                conn.send(answer(400, "an empty batch"));
                return;
            }
            Ok(b) if b.batch.len() <= MAX_BATCH => b.batch,
            Ok(b) => {
                conn.send(answer(
                    400,
                    format!("{} events, more than {MAX_BATCH}", b.batch.len()),
                ));
                return;
            }
            Err(e) => {
                conn.send(answer(400, format!("bad batch: {e}")));
                return;
            }
        },
        ("GET", w) if w == "channels" || w.starts_with("channels/") => {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let rest = w.strip_prefix("channels/");
            let q = match rest.map(|r| (r, r.strip_suffix("/users"))) {
                None => Query::Channels {
                    prefix: param("filter_by_prefix").unwrap_or(""),
                    info: param("info").unwrap_or(""),
                },
                Some((_, Some(channel))) => Query::Users { channel },
                Some((channel, None)) => Query::Channel {
                    channel,
                    info: param("info").unwrap_or(""),
                },
            };
            query::reply(conn, app, client, q);
            return;
        }
        ("POST", w) if w.starts_with("users/") => {
            let user = w
                .strip_prefix("users/")
                .and_then(|w| w.strip_suffix("/terminate_connections"));
            let Some(user) = user else {
                conn.send(answer(404, format!("no API {what:?}")));
                return;
            };
            if let Err(e) = check_user_id(user) {
                conn.send(answer(400, e));
                return;
            }
            // Every node with one of the user's sockets is subscribed to its user event.
            let publishes = vec![Publish {
                event: user_event(&app.id, user),
                skip: None,
                frame: "terminate_connections".into(),
                report: false,
            }];
            publish_all(conn, client, publishes, |reply, _| {
                reply.send(Response::json(200, &json!({})));
            });
            return;
        }
        (_, "events" | "batch_events") => {
            conn.send(answer(405, "use POST").with_header("Allow", "POST"));
            return;
        }
        _ => {
            conn.send(answer(404, format!("no API {what:?}")));
            return;
        }
    };
    let mut publishes = Vec::new();
    for e in &events {
        match prepare(&app.id, e) {
            Ok(p) => publishes.extend(p),
            Err(resp) => {
                conn.send(resp);
                return;
            }
        }
    }
    // The `info` asked of each event: its channels' counts, read once all is published.
    // (Every event's channels were checked by `prepare`.)
    let asked: Vec<(Vec<String>, &str)> = events
        .iter()
        .map(|e| {
            let channels = e.channel_names().unwrap_or_default();
            let names = channels.into_iter().map(str::to_string).collect();
            (names, e.info.as_deref().unwrap_or(""))
        })
        .collect();
    let info = match query::EventInfo::parse(app, &asked, what == "batch_events") {
        Ok(info) => info,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    let (app, counts) = (app.clone(), client.cloned());
    publish_all(conn, client, publishes, move |reply, reports| {
        match (info, counts) {
            (Some(info), Some(client)) => info.reply(&reply, &app, &client, reports),
            _ => {
                reply.send(Response::json(200, &json!({})));
            }
        }
    });
}

/// Publish each channel's event (those asking what they reached as reported publishes,
/// `channel::report`); once the channel confirmed them all and the reports are in, `done`
/// answers with the reports in order (503 when the channel cannot take them, or one failed).
fn publish_all(
    conn: &Connection,
    client: Option<&Client>,
    publishes: Vec<Publish>,
    done: impl FnOnce(Connection, Vec<Option<Summary>>) + 'static,
) {
    let Some(client) = client.filter(|c| c.is_connected()) else {
        conn.send(answer(503, "the channel is unreachable: nothing published"));
        return;
    };
    let deliveries = conn.worker().and_then(|w| w.data::<Rc<Deliveries>>());
    if deliveries.is_none() && publishes.iter().any(|p| p.report) {
        conn.send(answer(
            503,
            "werkmann_report: no reports on this publisher now",
        ));
        return;
    }
    // Answer once every publish is confirmed (and reported), or at the first failure.
    let started = std::time::Instant::now();
    type Done = Box<dyn FnOnce(Connection, Vec<Option<Summary>>)>;
    struct State {
        left: usize,
        failed: Option<String>,
        reports: Vec<Option<Summary>>,
        done: Option<Done>,
    }
    let state = Rc::new(RefCell::new(State {
        left: publishes.len(),
        failed: None,
        reports: vec![None; publishes.len()],
        done: Some(Box::new(done)),
    }));
    let finished = move |state: &RefCell<State>, reply: Connection| {
        let mut s = state.borrow_mut();
        s.left -= 1;
        if s.left > 0 {
            return;
        }
        crate::metrics::publish_answered(crate::metrics::PublishApi::Pusher, started);
        match s.failed.take() {
            None => {
                let reports = std::mem::take(&mut s.reports);
                if let Some(f) = s.done.take() {
                    drop(s);
                    f(reply, reports);
                }
            }
            Some(e) => {
                reply.send(answer(503, format!("not all published: {e}")));
            }
        }
    };
    for (i, p) in publishes.into_iter().enumerate() {
        let (state, reply) = (state.clone(), conn.clone());
        match (&deliveries, p.report) {
            (Some(d), true) => {
                let data = |a: &Asked| reported_payload(p.skip, &a.token(), &p.frame);
                d.publish(Name::from(p.event.as_str()), None, data, move |r| {
                    match r {
                        Ok(summary) => state.borrow_mut().reports[i] = Some(summary),
                        Err(e) => {
                            state.borrow_mut().failed.get_or_insert(e.to_string());
                        }
                    }
                    finished(&state, reply);
                })
            }
            _ => client.publish_raw_confirmed(p.event.as_str(), p.payload(), move |r| {
                if let Err(e) = r {
                    state.borrow_mut().failed.get_or_insert(e.to_string());
                }
                finished(&state, reply);
            }),
        }
    }
}

//! GatewayWorker's API over HTTP: `POST /api/<method>` on the publisher, GatewayWorker's
//! method names in snake_case with its parameter names, a JSON body or a form, a JSON answer
//! (see docs/addressing.md).

use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Map, Value};
use werkmann::channel::ChannelError;
use werkmann::gateway::{ClientId, DirOp, Gateway, GatewayError, Target};
use werkmann::metrics::{self, PublishApi};
use werkmann::protocol::http::parse_urlencoded;
use werkmann::webhook::Target as Url;
use werkmann::{Connection, Request, Response};

use super::report::{Asked, Reached, Reports};

/// Largest API request body, in bytes (a larger one is answered 413).
pub const MAX_BODY: usize = 1024 * 1024;

/// What a method answers, by the shape of the directory's answer.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A send: `{"reached": N}` (404 for a client id that is not online).
    Reached,
    /// A change to one client: `{"ok": true}`, or 404 when the client is not online.
    Applied,
    /// A change that may find nothing to undo: `{"ok": bool}`.
    Undone,
    /// A query: `{"result": …}`.
    Result,
}

/// A method's parameters: each with whether it is required.
type Spec = &'static [(&'static str, bool)];

fn method(name: &str) -> Option<(Spec, Shape)> {
    use Shape::*;
    const CID: Spec = &[("client_id", true)];
    const UID: Spec = &[("uid", true)];
    const GROUP: Spec = &[("group", true)];
    const NONE: Spec = &[];
    Some(match name {
        "send_to_all" => (
            &[
                ("message", true),
                ("client_id_array", false),
                ("exclude_client_id", false),
                ("callback_url", false),
            ],
            Reached,
        ),
        "send_to_client" => (
            &[
                ("client_id", true),
                ("message", true),
                ("callback_url", false),
            ],
            Reached,
        ),
        "close_client" => (&[("client_id", true), ("message", false)], Applied),
        "is_online" => (CID, Result),
        "bind_uid" => (&[("client_id", true), ("uid", true)], Applied),
        "unbind_uid" => (&[("client_id", true), ("uid", true)], Undone),
        "is_uid_online" => (UID, Result),
        "get_client_id_by_uid" => (UID, Result),
        "get_uid_by_client_id" => (CID, Result),
        "send_to_uid" => (
            &[
                ("uid", true),
                ("message", true),
                ("fallback", false),
                ("callback_url", false),
            ],
            Reached,
        ),
        "join_group" => (&[("client_id", true), ("group", true)], Applied),
        "leave_group" => (&[("client_id", true), ("group", true)], Undone),
        "ungroup" => (GROUP, Result),
        "send_to_group" => (
            &[
                ("group", true),
                ("message", true),
                ("exclude_client_id", false),
                ("callback_url", false),
            ],
            Reached,
        ),
        "get_client_id_count_by_group" => (GROUP, Result),
        "get_client_id_list_by_group" => (GROUP, Result),
        "get_uid_list_by_group" => (GROUP, Result),
        "get_uid_count_by_group" => (GROUP, Result),
        "get_all_client_id_count" | "get_all_uid_count" | "get_all_group_id_list" => (NONE, Result),
        "set_session" | "update_session" => (&[("client_id", true), ("session", true)], Applied),
        "get_session" => (CID, Result),
        _ => return None,
    })
}

/// A 4xx with `{"error": why}`.
fn refuse(status: u16, why: impl std::fmt::Display) -> Response {
    Response::json(status, &json!({ "error": why.to_string() }))
}

/// Read the parameters: a JSON object, or a form (`name[]=…` repeated for a list, `session`
/// as a JSON object in a string).
fn params(req: &Request) -> Result<Map<String, Value>, Response> {
    let body = req.body();
    if body.len() > MAX_BODY {
        return Err(refuse(
            413,
            format!("body is {} bytes, more than {MAX_BODY}", body.len()),
        ));
    }
    let content_type = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") || body.first() == Some(&b'{') {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(refuse(400, "the JSON body must be an object")),
            Err(e) => Err(refuse(400, format!("malformed JSON body: {e}"))),
        };
    }
    let text = std::str::from_utf8(body).map_err(|_| refuse(400, "the form is not UTF-8"))?;
    let mut m = Map::new();
    for (k, v) in parse_urlencoded(text) {
        if let Some(list) = k.strip_suffix("[]") {
            let slot = m
                .entry(list.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            match slot {
                Value::Array(a) => a.push(Value::String(v)),
                _ => {
                    return Err(refuse(
                        400,
                        format!("{list} given both as a list and a value"),
                    ))
                }
            }
        } else if k == "session" {
            let s: Value = serde_json::from_str(&v)
                .map_err(|e| refuse(400, format!("session is not a JSON object: {e}")))?;
            m.insert(k, s);
        } else if m.insert(k.clone(), Value::String(v)).is_some() {
            return Err(refuse(
                400,
                format!("{k} given twice (use {k}[] for a list)"),
            ));
        }
    }
    Ok(m)
}

/// A string parameter (a number is taken as its decimal form, as PHP takes an int uid).
fn string(p: &Map<String, Value>, key: &str) -> Result<String, Response> {
    match p.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(refuse(400, format!("{key} must be a string"))),
        None => Err(refuse(400, format!("missing parameter {key}"))),
    }
}

/// One name or a list of them.
fn strings(p: &Map<String, Value>, key: &str) -> Result<Vec<String>, Response> {
    match p.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(refuse(400, format!("{key} must list strings"))),
            })
            .collect(),
        Some(_) => Ok(vec![string(p, key)?]),
        None => Ok(Vec::new()),
    }
}

fn client_id(p: &Map<String, Value>, key: &str) -> Result<ClientId, Response> {
    string(p, key)?.parse().map_err(|e| refuse(400, e))
}

fn client_ids(p: &Map<String, Value>, key: &str) -> Result<Vec<ClientId>, Response> {
    strings(p, key)?
        .iter()
        .map(|s| s.parse().map_err(|e| refuse(400, e)))
        .collect()
}

fn session(p: &Map<String, Value>) -> Result<Map<String, Value>, Response> {
    match p.get("session") {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(refuse(400, "session must be a JSON object")),
        None => Err(refuse(400, "missing parameter session")),
    }
}

/// The directory operation a request asks for, or the 4xx that says what is wrong with it.
fn operation(name: &str, p: &Map<String, Value>) -> Result<(DirOp, Shape), Response> {
    let (spec, shape) = method(name).ok_or_else(|| refuse(404, format!("no method {name:?}")))?;
    for key in p.keys() {
        if !spec.iter().any(|(k, _)| k == key) {
            let known: Vec<&str> = spec.iter().map(|(k, _)| *k).collect();
            return Err(refuse(
                400,
                format!("unknown parameter {key:?} for {name} (it takes {known:?})"),
            ));
        }
    }
    for (key, required) in spec {
        if *required && !p.contains_key(*key) {
            return Err(refuse(400, format!("missing parameter {key}")));
        }
    }
    let op = match name {
        "send_to_all" => {
            let data = string(p, "message")?;
            let exclude = client_ids(p, "exclude_client_id")?;
            match p.get("client_id_array") {
                Some(_) => {
                    let mut ids = client_ids(p, "client_id_array")?;
                    ids.retain(|c| !exclude.contains(c));
                    DirOp::Send {
                        target: Target::Clients { client_ids: ids },
                        data,
                    }
                }
                None => DirOp::Send {
                    target: Target::All { exclude },
                    data,
                },
            }
        }
        "send_to_client" => DirOp::Send {
            target: Target::Clients {
                client_ids: vec![client_id(p, "client_id")?],
            },
            data: string(p, "message")?,
        },
        "close_client" => DirOp::CloseClient {
            client_id: client_id(p, "client_id")?,
            data: p.get("message").map(|_| string(p, "message")).transpose()?,
        },
        "is_online" => DirOp::IsOnline {
            client_id: client_id(p, "client_id")?,
        },
        "bind_uid" => DirOp::BindUid {
            client_id: client_id(p, "client_id")?,
            uid: string(p, "uid")?,
        },
        "unbind_uid" => DirOp::UnbindUid {
            client_id: client_id(p, "client_id")?,
            uid: string(p, "uid")?,
        },
        "is_uid_online" => DirOp::IsUidOnline {
            uid: string(p, "uid")?,
        },
        "get_client_id_by_uid" => DirOp::GetClientIdByUid {
            uid: string(p, "uid")?,
        },
        "get_uid_by_client_id" => DirOp::GetUidByClientId {
            client_id: client_id(p, "client_id")?,
        },
        "send_to_uid" => DirOp::Send {
            target: Target::Uids {
                uids: strings(p, "uid")?,
            },
            data: string(p, "message")?,
        },
        "join_group" => DirOp::JoinGroup {
            client_id: client_id(p, "client_id")?,
            group: string(p, "group")?,
        },
        "leave_group" => DirOp::LeaveGroup {
            client_id: client_id(p, "client_id")?,
            group: string(p, "group")?,
        },
        "ungroup" => DirOp::Ungroup {
            group: string(p, "group")?,
        },
        "send_to_group" => DirOp::Send {
            target: Target::Groups {
                groups: strings(p, "group")?,
                exclude: client_ids(p, "exclude_client_id")?,
            },
            data: string(p, "message")?,
        },
        "get_client_id_count_by_group" => DirOp::GetClientIdCountByGroup {
            group: string(p, "group")?,
        },
        "get_client_id_list_by_group" => DirOp::GetClientIdListByGroup {
            group: string(p, "group")?,
        },
        "get_uid_list_by_group" => DirOp::GetUidListByGroup {
            group: string(p, "group")?,
        },
        "get_uid_count_by_group" => DirOp::GetUidCountByGroup {
            group: string(p, "group")?,
        },
        "get_all_client_id_count" => DirOp::GetAllClientIdCount,
        "get_all_uid_count" => DirOp::GetAllUidCount,
        "get_all_group_id_list" => DirOp::GetAllGroupIdList,
        "set_session" => DirOp::SetSession {
            client_id: client_id(p, "client_id")?,
            session: session(p)?,
        },
        "update_session" => DirOp::UpdateSession {
            client_id: client_id(p, "client_id")?,
            session: session(p)?,
        },
        "get_session" => DirOp::GetSession {
            client_id: client_id(p, "client_id")?,
        },
        _ => unreachable!("every method of `method` is handled"),
    };
    op.check().map_err(|e| refuse(400, e))?;
    Ok((op, shape))
}

/// The answer to a request the directory answered (not a send: see [`reached_answer`]).
fn answer(shape: Shape, result: Result<Value, GatewayError>) -> Response {
    let v = match result {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    let n = v.as_u64();
    match shape {
        Shape::Applied if n == Some(0) => Response::json(
            404,
            &json!({ "ok": false, "error": "the client is not online" }),
        ),
        Shape::Applied | Shape::Undone => Response::json(200, &json!({ "ok": n == Some(1) })),
        Shape::Result | Shape::Reached => Response::json(200, &json!({ "result": v })),
    }
}

/// The usual push, `send_to_uid` to one uid as a JSON object of strings, read without
/// building a JSON map; `None` for anything else (the general reading then answers it, errors
/// included).
fn quick_send_to_uid(name: &str, body: &[u8]) -> Option<(DirOp, Shape)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct One<'a> {
        #[serde(borrow)]
        uid: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    }
    if name != "send_to_uid" || body.len() > MAX_BODY || body.first() != Some(&b'{') {
        return None;
    }
    let one: One = serde_json::from_slice(body).ok()?;
    let op = DirOp::Send {
        target: Target::Uids {
            uids: vec![one.uid.into_owned()],
        },
        data: one.message.into_owned(),
    };
    op.check().ok()?;
    Some((op, Shape::Reached))
}

/// What a request asks to be told besides its answer: `callback_url` (a report POSTed there,
/// 202 at once) and `fallback` (`send_to_uid`: a webhook naming the uids that were offline).
fn asked(p: &Map<String, Value>, reports: &Reports) -> Result<Asked, Response> {
    let callback = match p.get("callback_url") {
        None => None,
        Some(_) => Some(
            Url::parse(&string(p, "callback_url")?)
                .map_err(|why| refuse(400, format!("callback_url: {why}")))?,
        ),
    };
    let fallback = match p.get("fallback") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::String(s)) if s == "1" || s == "true" => true,
        Some(Value::String(s)) if s == "0" || s == "false" => false,
        Some(_) => return Err(refuse(400, "fallback must be true or false")),
    };
    if fallback && reports.fallback.is_none() {
        return Err(refuse(
            400,
            "fallback needs a fallback webhook: start the publisher with --fallback-webhook",
        ));
    }
    Ok(Asked { callback, fallback })
}

/// Serve `POST /api/<method>` (the push API's auth already checked).
pub fn handle(
    conn: &Connection,
    req: &Request,
    name: &str,
    gateway: Option<Gateway>,
    reports: Option<Rc<Reports>>,
) {
    if req.method() != "POST" {
        conn.send(refuse(405, "use POST").with_header("Allow", "POST"));
        return;
    }
    // The instance's settings, shared (not copied per request).
    let reports = reports.unwrap_or_default();
    let request = match quick_send_to_uid(name, req.body()) {
        Some((op, shape)) => Ok((op, shape, Asked::default())),
        None => params(req).and_then(|p| {
            let (op, shape) = operation(name, &p)?;
            Ok((op, shape, asked(&p, &reports)?))
        }),
    };
    let (op, shape, asked) = match request {
        Ok(r) => r,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    let Some(gw) = gateway else {
        conn.send(refuse(503, "channel client not started"));
        return;
    };
    if shape == Shape::Reached {
        send(conn, &gw, name, op, asked, reports);
        return;
    }
    let reply_to = conn.clone();
    let started = Instant::now();
    gw.request_then(&op, move |result| {
        metrics::publish_answered(PublishApi::Gateway, started);
        reply_to.send(answer(shape, result));
    });
}

/// A send: answered with what it reached (or 202, then reported to its `callback_url`); the
/// uids of a `send_to_uid` go one send each, so that the answer names those offline.
fn send(
    conn: &Connection,
    gw: &Gateway,
    method: &str,
    op: DirOp,
    asked: Asked,
    reports: Rc<Reports>,
) {
    let one_client = matches!(
        &op,
        DirOp::Send {
            target: Target::Clients { client_ids },
            ..
        } if client_ids.len() == 1
    );
    let uids = match &op {
        DirOp::Send {
            target: Target::Uids { uids },
            ..
        } => Some(uids.clone()),
        _ => None,
    };
    let reply_to = match &asked.callback {
        Some(_) => {
            conn.send(Response::json(202, &json!({ "accepted": true })));
            None
        }
        None => Some(conn.clone()),
    };
    let method = method.to_string();
    // The message again only for a fallback webhook to name.
    let message = match (&op, asked.fallback) {
        (DirOp::Send { data, .. }, true) => data.clone(),
        _ => String::new(),
    };
    let started = Instant::now();
    let done = move |outcome: Result<Reached, GatewayError>| {
        metrics::publish_answered(PublishApi::Gateway, started);
        if let (Ok(r), true) = (&outcome, asked.fallback) {
            if !r.offline.is_empty() {
                reports.fallback(&r.offline, &message);
            }
        }
        if let Some(to) = asked.callback {
            reports.callback(to, &method, outcome.as_ref().map_err(|e| e.to_string()));
        }
        if let Some(c) = reply_to {
            c.send(reached_answer(one_client, outcome));
        }
    };
    match (uids, op) {
        (Some(uids), DirOp::Send { data, .. }) if uids.len() > 1 => {
            send_each_uid(gw, uids, data, done)
        }
        (Some(uids), op) => gw.request_then(&op, move |r| {
            done(count(r).map(|n| Reached {
                reached: n,
                offline: if n == 0 { uids } else { Vec::new() },
            }))
        }),
        (None, op) => gw.request_then(&op, move |r| {
            done(count(r).map(|n| Reached {
                reached: n,
                offline: Vec::new(),
            }))
        }),
    }
}

/// A send to several uids as one send each (in one pipeline): the connections reached in
/// all, and the uids without any. The first failure is the answer.
fn send_each_uid(
    gw: &Gateway,
    uids: Vec<String>,
    data: String,
    done: impl FnOnce(Result<Reached, GatewayError>) + 'static,
) {
    type State = (usize, u64, Vec<Option<bool>>, Option<GatewayError>);
    let mut unique = uids;
    let mut seen = std::collections::HashSet::new();
    unique.retain(|u| seen.insert(u.clone()));
    let state: std::rc::Rc<std::cell::RefCell<State>> = std::rc::Rc::new(std::cell::RefCell::new(
        (unique.len(), 0, vec![None; unique.len()], None),
    ));
    let done = std::rc::Rc::new(std::cell::RefCell::new(Some(done)));
    let names = std::rc::Rc::new(unique.clone());
    for (i, uid) in unique.into_iter().enumerate() {
        let op = DirOp::Send {
            target: Target::Uids { uids: vec![uid] },
            data: data.clone(),
        };
        let (state, done, names) = (state.clone(), done.clone(), names.clone());
        gw.request_then(&op, move |r| {
            let mut st = state.borrow_mut();
            st.0 -= 1;
            match count(r) {
                Ok(n) => {
                    st.1 += n;
                    st.2[i] = Some(n > 0);
                }
                Err(e) => {
                    st.3.get_or_insert(e);
                }
            }
            if st.0 > 0 {
                return;
            }
            let outcome = match st.3.take() {
                Some(e) => Err(e),
                None => Ok(Reached {
                    reached: st.1,
                    offline: names
                        .iter()
                        .zip(&st.2)
                        .filter(|(_, on)| **on == Some(false))
                        .map(|(u, _)| u.clone())
                        .collect(),
                }),
            };
            drop(st);
            if let Some(f) = done.borrow_mut().take() {
                f(outcome);
            }
        });
    }
}

/// A send's count from the directory's answer.
fn count(r: Result<Value, GatewayError>) -> Result<u64, GatewayError> {
    let v = r?;
    v.as_u64().ok_or(GatewayError::Answer(v))
}

/// The answer to a send (`one_client`: to one client id, answered 404 when it reached no one).
fn reached_answer(one_client: bool, outcome: Result<Reached, GatewayError>) -> Response {
    match outcome {
        Ok(r) if r.reached == 0 && one_client => {
            let error = "the client is not online: reached no one";
            Response::json(404, &json!({ "reached": 0, "error": error }))
        }
        // Written without a JSON value to serialize in the usual case.
        Ok(r) => Response::new(200)
            .with_header("Content-Type", "application/json")
            .with_body(r.json()),
        Err(e) => failure(e),
    }
}

/// The 4xx/5xx of an operation the directory did not do.
fn failure(e: GatewayError) -> Response {
    match e {
        GatewayError::Channel(ChannelError::Refused(why)) => refuse(400, why),
        GatewayError::Channel(e @ ChannelError::NoDirectory) => refuse(501, e),
        GatewayError::Answer(v) => refuse(502, format!("unexpected directory answer {v}")),
        e => refuse(503, format!("not done: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, p: Value) -> Result<DirOp, u16> {
        let Value::Object(m) = p else { panic!() };
        operation(name, &m).map(|(o, _)| o).map_err(|r| r.status())
    }

    #[test]
    fn methods_take_gatewayworkers_parameters() {
        assert_eq!(
            op("send_to_uid", json!({"uid": ["a", 7], "message": "hi"})),
            Ok(DirOp::Send {
                target: Target::Uids {
                    uids: vec!["a".into(), "7".into()]
                },
                data: "hi".into()
            })
        );
        assert_eq!(
            op("bind_uid", json!({"client_id": "1-2", "uid": 42})),
            Ok(DirOp::BindUid {
                client_id: ClientId::new(1, 2),
                uid: "42".into()
            })
        );
        assert_eq!(
            op(
                "send_to_all",
                json!({"message": "m", "client_id_array": ["1-2", "1-3"], "exclude_client_id": "1-3"})
            ),
            Ok(DirOp::Send {
                target: Target::Clients {
                    client_ids: vec![ClientId::new(1, 2)]
                },
                data: "m".into()
            })
        );
        assert_eq!(
            op("get_all_uid_count", json!({})),
            Ok(DirOp::GetAllUidCount)
        );
    }

    #[test]
    fn the_quick_send_to_uid_reads_as_the_general_reading_does() {
        let quick = |j: Value| quick_send_to_uid("send_to_uid", j.to_string().as_bytes());
        for j in [
            json!({"uid": "alice", "message": "hi"}),
            json!({"message": "a \"quoted\"\né text", "uid": "böb"}),
        ] {
            let (op, _) = quick(j.clone()).expect("the quick reading");
            assert_eq!(Ok(op), self::op("send_to_uid", j));
        }
        // Anything else is the general reading's (which answers errors).
        for j in [
            json!({"uid": 7, "message": "hi"}),
            json!({"uid": ["a", "b"], "message": "hi"}),
            json!({"uid": "a"}),
            json!({"uid": "a", "message": "m", "extra": 1}),
            json!({"uid": "", "message": "m"}),
        ] {
            assert!(quick(j.clone()).is_none(), "{j}");
        }
        assert!(quick_send_to_uid("send_to_group", br#"{"uid":"a","message":"m"}"#).is_none());
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(op("nope", json!({})), Err(404));
        assert_eq!(op("bind_uid", json!({"client_id": "1-2"})), Err(400));
        assert_eq!(
            op(
                "bind_uid",
                json!({"client_id": "1-2", "uid": "a", "uuid": "b"})
            ),
            Err(400)
        );
        assert_eq!(
            op("bind_uid", json!({"client_id": "12", "uid": "a"})),
            Err(400)
        );
        assert_eq!(
            op("bind_uid", json!({"client_id": "1-2", "uid": ""})),
            Err(400)
        );
        assert_eq!(
            op(
                "bind_uid",
                json!({"client_id": "1-2", "uid": "x".repeat(129)})
            ),
            Err(400)
        );
        assert_eq!(
            op("set_session", json!({"client_id": "1-2", "session": "x"})),
            Err(400)
        );
        assert_eq!(
            op("send_to_uid", json!({"uid": {"a": 1}, "message": "m"})),
            Err(400)
        );
    }
}

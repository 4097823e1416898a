//! Webhooks: an app's events (`channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed`, `client_event`) POSTed to the URLs its configuration names, as Pusher
//! sends them: `{"time_ms": …, "events": […]}`, signed with `X-Pusher-Key` and
//! `X-Pusher-Signature` (HMAC-SHA256 of the body with the app's secret).
//!
//! Who makes an event: the directory, for a transition it alone sees once cluster-wide (a
//! channel's first subscriber and its last, a presence member's first socket and its last —
//! the hooks of `channel::dir`'s presence groups), and the node a client event arrives at.
//! Either way the event is an item on the app's webhook queue ([`queue`]), which each item
//! leaves once, to one of the processes that send ([`Webhooks::start`]: the publishers).
//! A sender batches what arrives within [`BATCH_WINDOW`] (at most [`MAX_BATCH`] events) into
//! one request per webhook, and retries a request that fails (no answer within
//! `crate::webhook::TIMEOUT`, or not a 2xx) after 1, 2, 4, 8 and 16 s before it gives up
//! (logged; `crate::webhook` sends).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{sign, App, Apps};
use crate::channel::dir;
use crate::channel::php_serde;
use crate::channel::Client;

/// How long a sender gathers events into one request.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Most events in one request.
pub const MAX_BATCH: usize = 100;
pub use crate::webhook::Target;

/// The queue an app's webhook events go to (it lives where the directory does: the
/// directory adds to it).
pub fn queue(app_id: &str) -> String {
    dir::announced_event(&format!("pusher-webhooks:{app_id}"))
}

/// A webhook event as an item of [`queue`], as it travels (a PHP string of its JSON).
pub fn item(event: &Value) -> String {
    let mut out = Vec::new();
    php_serde::write_str(&mut out, event.to_string().as_bytes());
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

/// The events gathered for one app, sent when the window closes.
#[derive(Default)]
struct Batch {
    events: Vec<Value>,
    scheduled: bool,
}

/// The webhook senders of one process (one per worker instance that calls
/// [`Webhooks::start`]).
pub struct Webhooks {
    apps: Arc<Apps>,
    batches: RefCell<HashMap<String, Batch>>,
}

impl Webhooks {
    /// Take the webhook events of every app of `apps` that has webhooks from their queues,
    /// through `client`, and send them (on this thread).
    pub fn start(client: &Client, apps: Arc<Apps>) {
        let ids: Vec<String> = apps
            .iter()
            .filter(|a| !a.webhooks.is_empty())
            .map(|a| a.id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        let me = Rc::new(Webhooks {
            apps,
            batches: RefCell::new(HashMap::new()),
        });
        for id in ids {
            let me = me.clone();
            let app_id = id.clone();
            client.watch(queue(&id).as_str(), move |v| me.take(&app_id, v), true);
        }
    }

    /// One event from the queue of app `app_id` (a JSON text).
    fn take(self: &Rc<Self>, app_id: &str, item: Value) {
        let event = match item {
            Value::String(text) => serde_json::from_str::<Value>(&text).ok(),
            _ => None,
        };
        let Some(event) = event.filter(Value::is_object) else {
            log::warn!("webhooks of app {app_id}: an item that is not an event: dropped");
            return;
        };
        let full = {
            let mut batches = self.batches.borrow_mut();
            let b = batches.entry(app_id.to_string()).or_default();
            b.events.push(event);
            if b.scheduled {
                b.events.len() >= MAX_BATCH
            } else {
                b.scheduled = true;
                let (me, id) = (self.clone(), app_id.to_string());
                actix_rt::spawn(async move {
                    tokio::time::sleep(BATCH_WINDOW).await;
                    me.flush(&id);
                });
                false
            }
        };
        if full {
            self.flush(app_id);
        }
    }

    /// Send what app `app_id` gathered, one request per webhook that wants any of it.
    fn flush(&self, app_id: &str) {
        let events = {
            let mut batches = self.batches.borrow_mut();
            let Some(b) = batches.get_mut(app_id) else {
                return;
            };
            b.scheduled = false;
            std::mem::take(&mut b.events)
        };
        let Some(app) = self.apps.by_id(app_id).cloned() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for hook in &app.webhooks {
            let wanted: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or("");
                    hook.event_types.iter().any(|t| t == name)
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let Ok(target) = Target::parse(&hook.url) else {
                continue;
            };
            let body = json!({ "time_ms": time_ms, "events": wanted }).to_string();
            actix_rt::spawn(send_signed(app.clone(), target, body));
        }
    }
}

/// POST `body` to `target`, signed for `app` (`X-Pusher-Key`, `X-Pusher-Signature`).
async fn send_signed(app: Arc<App>, target: Target, body: String) {
    let signature = sign::hmac_hex(&app.secret, &body);
    let headers = vec![
        ("X-Pusher-Key".to_string(), app.key.clone()),
        ("X-Pusher-Signature".to_string(), signature),
    ];
    let what = format!("app {}", app.id);
    crate::webhook::send_with_retries(target, headers, body, what).await;
}

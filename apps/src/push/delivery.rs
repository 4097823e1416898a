//! Delivery reports for the seed's pushes (`?content=X` with `report=1`, `ack=MS` or
//! `callback_url=URL`; `docs/recovery.md`): how many connections a broadcast, a channel push or
//! a targeted push was written to across the cluster, and — with `ack` — which of them
//! acknowledged it in time (the clients of `/werkmann.js` do).
//!
//! The publisher asks in the event itself: its data carries `report: "INBOX#SEQ"` (and `ack`:
//! milliseconds). Each instance the event reaches writes it, then publishes
//! `{seq, written, acked}` to the publisher's inbox event (`werkmann.report:…`) — at once, or
//! once the ack time is over. The publisher knows from the channel's confirmation how many
//! instances the event reached, and answers when all of them reported, or when the time is
//! up (saying how many did). Nothing of this runs for a push that does not ask.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use werkmann::channel::{php_serde, ChannelError, Client, Name};
use werkmann::{Timer, TimerId};

/// Longest acknowledgement time a push may ask for.
pub const MAX_ACK: Duration = Duration::from_secs(30);
/// How long past its ack time a publisher waits for the instances' reports.
pub const GRACE: Duration = Duration::from_millis(1500);
/// Most client ids a report lists as having acknowledged.
pub const MAX_LISTED: usize = 1000;

/// What a reported push asks of the instances it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The publisher's inbox event.
    pub inbox: String,
    /// The push's number there.
    pub seq: u64,
    /// How long to wait for acknowledgements, if wanted.
    pub ack: Option<Duration>,
}

impl Asked {
    /// What the event's data asks (`None` for an ordinary push: one field scan).
    pub fn of(data: &[u8]) -> Option<Asked> {
        let token = php_serde::field(data, "report").ok()?.text()?;
        let (inbox, seq) = token.rsplit_once('#')?;
        let ack = php_serde::field(data, "ack")
            .ok()
            .and_then(|f| f.to_u64())
            .map(Duration::from_millis)
            .filter(|d| *d <= MAX_ACK);
        Some(Asked {
            inbox: inbox.to_string(),
            seq: seq.parse().ok()?,
            ack,
        })
    }

    /// The token readers acknowledge with.
    pub fn token(&self) -> String {
        format!("{}#{}", self.inbox, self.seq)
    }
}

/// The data of a reported push: `{content, [to_connection_id], report, [ack]}` (PHP).
pub fn event_data(content: &str, to: Option<u64>, asked: &Asked) -> Bytes {
    let mut v = json!({ "content": content, "report": asked.token() });
    if let Some(to) = to {
        v["to_connection_id"] = to.into();
    }
    if let Some(ack) = asked.ack {
        v["ack"] = (ack.as_millis() as u64).into();
    }
    php_serde::to_vec(&v).into()
}

/// Acknowledgements an instance waits for: by token, its report so far.
#[derive(Default)]
pub struct NodeReports {
    waiting: RefCell<HashMap<String, Waiting>>,
}

#[derive(Default)]
struct Waiting {
    written: u64,
    /// Connections asked to acknowledge, with their client ids.
    asked: HashMap<u64, String>,
    acked: Vec<String>,
}

impl NodeReports {
    /// A reported push arrived: when it wants acknowledgements, wait for them until its ack
    /// time is over, then report (call before handing it to readers, so that they are asked).
    pub fn begin(self: &Rc<Self>, client: &Client, asked: &Asked) {
        let Some(ack) = asked.ack else { return };
        let token = asked.token();
        self.waiting.borrow_mut().entry(token.clone()).or_default();
        let (me, client, asked) = (Rc::downgrade(self), client.clone(), asked.clone());
        Timer::once(ack, move || {
            let Some(me) = me.upgrade() else { return };
            let done = me.waiting.borrow_mut().remove(&token);
            if let Some(w) = done {
                send(&client, &asked, w.written, &w.acked);
            }
        });
    }

    /// The push was written to `written` connections here: reported now, or (acknowledgements
    /// wanted) with them when the time is over.
    pub fn wrote(&self, client: &Client, asked: &Asked, written: u64) {
        if asked.ack.is_none() {
            send(client, asked, written, &[]);
            return;
        }
        if let Some(w) = self.waiting.borrow_mut().get_mut(&asked.token()) {
            w.written += written;
        }
    }

    /// A reader was asked to acknowledge `token` (its frame carries it), while it may.
    pub fn expect(&self, token: &str, conn: u64, client_id: String) {
        if let Some(w) = self.waiting.borrow_mut().get_mut(token) {
            w.asked.insert(conn, client_id);
        }
    }

    /// A connection that was asked acknowledged `token` in time (anything else is ignored).
    pub fn acked(&self, token: &str, conn: u64) {
        if let Some(w) = self.waiting.borrow_mut().get_mut(token) {
            if let Some(id) = w.asked.remove(&conn) {
                w.acked.push(id);
            }
        }
    }
}

/// Publish an instance's report to the publisher's inbox.
fn send(client: &Client, asked: &Asked, written: u64, acked: &[String]) {
    let listed: Vec<&String> = acked.iter().take(MAX_LISTED).collect();
    let report = json!({
        "seq": asked.seq, "written": written, "acked": acked.len(), "acked_clients": listed,
    });
    if let Err(e) = client.publish(Name::from(asked.inbox.as_str()), &report) {
        log::warn!("report of push {} not sent: {e}", asked.seq);
    }
}

/// What a reported push reached, as the publisher answers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Connections written to, in the instances that reported.
    pub reached: u64,
    /// Instances the channel handed the push to.
    pub instances: usize,
    /// Of those, the ones that reported in time.
    pub reported: usize,
    /// With `ack`: connections that acknowledged in time, and (at most [`MAX_LISTED`]) their
    /// client ids.
    pub acked: Option<(u64, Vec<String>)>,
}

impl Summary {
    /// The report as JSON.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "reached": self.reached, "instances": self.instances, "reported": self.reported,
        });
        if let Some((n, ids)) = &self.acked {
            v["acked"] = (*n).into();
            v["acked_clients"] = json!(ids);
        }
        v
    }
}

type Done = Box<dyn FnOnce(Result<Summary, ChannelError>)>;

struct Pending {
    summary: Summary,
    /// Known once the channel confirmed.
    expected: Option<usize>,
    done: Option<Done>,
    timer: Option<TimerId>,
}

/// A publisher instance's reported pushes: its inbox, and the pushes waiting for reports.
pub struct Deliveries {
    client: Client,
    inbox: String,
    next: Cell<u64>,
    pending: RefCell<HashMap<u64, Pending>>,
}

impl Deliveries {
    /// Reports for `client`'s pushes, received on an inbox event of this instance's own.
    pub fn start(client: &Client) -> Rc<Deliveries> {
        // A random name of its own (a history epoch is one: random, never 0).
        let inbox = format!(
            "werkmann.report:{:x}",
            werkmann::channel::history::new_epoch()
        );
        let me = Rc::new(Deliveries {
            client: client.clone(),
            inbox: inbox.clone(),
            next: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
        });
        let weak = Rc::downgrade(&me);
        client.on(Name::from(inbox.as_str()), move |v| {
            if let Some(me) = weak.upgrade() {
                me.reported(&v);
            }
        });
        me
    }

    /// Publish a reported push (`content` to `event`, targeted at `to` when given) and tell
    /// `done` what it reached once every instance reported, or the time is up.
    pub fn push(
        self: &Rc<Self>,
        event: Name,
        content: &str,
        to: Option<u64>,
        ack: Option<Duration>,
        done: impl FnOnce(Result<Summary, ChannelError>) + 'static,
    ) {
        let seq = self.next.get();
        self.next.set(seq + 1);
        let asked = Asked {
            inbox: self.inbox.clone(),
            seq,
            ack,
        };
        let wait = ack.unwrap_or_default() + GRACE;
        let weak = Rc::downgrade(self);
        let timer = Timer::once(wait, move || {
            if let Some(me) = weak.upgrade() {
                me.finish(seq);
            }
        });
        self.pending.borrow_mut().insert(
            seq,
            Pending {
                summary: Summary {
                    acked: ack.map(|_| (0, Vec::new())),
                    ..Summary::default()
                },
                expected: None,
                done: Some(Box::new(done)),
                timer: Some(timer),
            },
        );
        let weak = Rc::downgrade(self);
        let data = event_data(content, to, &asked);
        self.client.publish_raw_confirmed(event, data, move |r| {
            let Some(me) = weak.upgrade() else { return };
            match r {
                Ok(n) => {
                    if let Some(p) = me.pending.borrow_mut().get_mut(&seq) {
                        p.expected = Some(n.unwrap_or(0));
                        p.summary.instances = n.unwrap_or(0);
                    }
                    me.check(seq);
                }
                Err(e) => me.fail(seq, e),
            }
        });
    }

    /// An instance's report arrived.
    fn reported(&self, v: &Value) {
        let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
            return;
        };
        {
            let mut pending = self.pending.borrow_mut();
            let Some(p) = pending.get_mut(&seq) else {
                return; // too late: already answered
            };
            p.summary.reported += 1;
            p.summary.reached += v.get("written").and_then(Value::as_u64).unwrap_or(0);
            if let Some((n, ids)) = p.summary.acked.as_mut() {
                *n += v.get("acked").and_then(Value::as_u64).unwrap_or(0);
                if let Some(list) = v.get("acked_clients").and_then(Value::as_array) {
                    for id in list.iter().filter_map(Value::as_str) {
                        if ids.len() < MAX_LISTED {
                            ids.push(id.to_string());
                        }
                    }
                }
            }
        }
        self.check(seq);
    }

    /// Answer once every instance reported.
    fn check(&self, seq: u64) {
        let complete = self
            .pending
            .borrow()
            .get(&seq)
            .is_some_and(|p| p.expected.is_some_and(|e| p.summary.reported >= e));
        if complete {
            self.finish(seq);
        }
    }

    fn finish(&self, seq: u64) {
        let Some(mut p) = self.pending.borrow_mut().remove(&seq) else {
            return;
        };
        if let Some(t) = p.timer.take() {
            Timer::del(t);
        }
        if let Some(done) = p.done.take() {
            done(Ok(p.summary));
        }
    }

    fn fail(&self, seq: u64, e: ChannelError) {
        let Some(mut p) = self.pending.borrow_mut().remove(&seq) else {
            return;
        };
        if let Some(t) = p.timer.take() {
            Timer::del(t);
        }
        if let Some(done) = p.done.take() {
            done(Err(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_asks_in_its_data() {
        let asked = Asked {
            inbox: "werkmann.report:ab".into(),
            seq: 7,
            ack: Some(Duration::from_millis(500)),
        };
        let data = event_data("hi", Some(3), &asked);
        assert_eq!(Asked::of(&data), Some(asked));
        assert_eq!(
            php_serde::field(&data, "content")
                .unwrap()
                .text()
                .as_deref(),
            Some("hi")
        );
        let plain = super::super::params::event_data("hi", None);
        assert_eq!(Asked::of(&plain), None);
        let s = Summary {
            reached: 3,
            instances: 2,
            reported: 2,
            acked: Some((1, vec!["1-2".into()])),
        };
        assert_eq!(
            s.json(),
            json!({"reached": 3, "instances": 2, "reported": 2, "acked": 1, "acked_clients": ["1-2"]})
        );
    }
}

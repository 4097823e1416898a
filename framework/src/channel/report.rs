//! Delivery reports: what a publish reached across the cluster — how many connections it was
//! written to and, when asked, which of them acknowledged it in time.
//!
//! The publisher asks in the event itself: its data carries a token `INBOX#SEQ` (how is the
//! data's format's business: a field of the seed's pushes, a line of a Pusher event) and
//! possibly an ack time. Each instance the event reaches writes it, then publishes
//! `{seq, written, acked, acked_clients}` to the publisher's inbox event
//! (`werkmann.report:…`) — at once, or once the ack time is over ([`NodeReports`]). The
//! publisher ([`Deliveries`]) knows from the channel's confirmation how many instances the
//! event reached, and answers when all of them reported, or when the time is up (saying how
//! many did). Nothing of this runs for a publish that does not ask.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ChannelError, Client, Name};
use crate::{Timer, TimerId};

/// Longest acknowledgement time a publish may ask for.
pub const MAX_ACK: Duration = Duration::from_secs(30);
/// How long past its ack time a publisher waits for the instances' reports.
pub const GRACE: Duration = Duration::from_millis(1500);
/// Most client ids a report lists as having acknowledged.
pub const MAX_LISTED: usize = 1000;

/// What a reported publish asks of the instances it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The publisher's inbox event.
    pub inbox: String,
    /// The publish's number there.
    pub seq: u64,
    /// How long to wait for acknowledgements, if wanted.
    pub ack: Option<Duration>,
}

impl Asked {
    /// Read a token (`INBOX#SEQ`) and an ack time in milliseconds (ignored past [`MAX_ACK`]).
    pub fn parse(token: &str, ack_ms: Option<u64>) -> Option<Asked> {
        let (inbox, seq) = token.rsplit_once('#')?;
        if !inbox.starts_with(INBOX_PREFIX) {
            return None;
        }
        Some(Asked {
            inbox: inbox.to_string(),
            seq: seq.parse().ok()?,
            ack: ack_ms.map(Duration::from_millis).filter(|d| *d <= MAX_ACK),
        })
    }

    /// The token the event carries, and readers acknowledge with.
    pub fn token(&self) -> String {
        format!("{}#{}", self.inbox, self.seq)
    }

    /// Report to the publisher: written to `written` connections here, `acked` of them
    /// acknowledged (their client ids).
    pub fn report(&self, client: &Client, written: u64, acked: &[String]) {
        let listed: Vec<&String> = acked.iter().take(MAX_LISTED).collect();
        let report = json!({
            "seq": self.seq, "written": written, "acked": acked.len(), "acked_clients": listed,
        });
        if let Err(e) = client.publish(Name::from(self.inbox.as_str()), &report) {
            log::warn!("report of publish {} not sent: {e}", self.seq);
        }
    }
}

/// What every inbox event's name starts with.
const INBOX_PREFIX: &str = "werkmann.report:";

/// An instance's reported publishes that wait for acknowledgements: by token, the report so
/// far.
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
    /// A reported publish arrived: when it wants acknowledgements, wait for them until its ack
    /// time is over, then report (call before handing it to readers, so that they are asked).
    pub fn begin(self: &Rc<Self>, client: &Client, asked: &Asked) {
        let Some(ack) = asked.ack else { return };
        let token = asked.token();
        self.waiting.borrow_mut().entry(token.clone()).or_default();
        let (me, client, asked) = (Rc::downgrade(self), client.clone(), asked.clone());
        Timer::once_internal(ack, move || {
            let Some(me) = me.upgrade() else { return };
            let done = me.waiting.borrow_mut().remove(&token);
            if let Some(w) = done {
                asked.report(&client, w.written, &w.acked);
            }
        });
    }

    /// The publish was written to `written` connections here: reported now, or
    /// (acknowledgements wanted) with them when the time is over.
    pub fn wrote(&self, client: &Client, asked: &Asked, written: u64) {
        if asked.ack.is_none() {
            asked.report(client, written, &[]);
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

/// What a reported publish reached, as the publisher answers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Connections written to, in the instances that reported.
    pub reached: u64,
    /// Instances the channel handed the publish to.
    pub instances: usize,
    /// Of those, the ones that reported in time.
    pub reported: usize,
    /// With `ack`: connections that acknowledged in time, and (at most [`MAX_LISTED`]) their
    /// client ids.
    pub acked: Option<(u64, Vec<String>)>,
}

impl Summary {
    /// The report as JSON: `{"reached", "instances", "reported"[, "acked", "acked_clients"]}`.
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

/// A publisher instance's reported publishes: its inbox, and the publishes waiting for
/// reports.
pub struct Deliveries {
    client: Client,
    inbox: String,
    next: Cell<u64>,
    pending: RefCell<HashMap<u64, Pending>>,
}

impl Deliveries {
    /// Reports for `client`'s publishes, received on an inbox event of this instance's own.
    pub fn start(client: &Client) -> Rc<Deliveries> {
        // A random name of its own (a history epoch is one: random, never 0).
        let inbox = format!("{INBOX_PREFIX}{:x}", super::history::new_epoch());
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

    /// Publish `data(asked)` to `event` as a reported publish (with acknowledgements when
    /// `ack` is given) and tell `done` what it reached once every instance reported, or the
    /// time is up.
    pub fn publish(
        self: &Rc<Self>,
        event: Name,
        ack: Option<Duration>,
        data: impl FnOnce(&Asked) -> Bytes,
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
        let timer = Timer::once_internal(wait, move || {
            if let Some(me) = weak.upgrade() {
                me.finish(seq, None);
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
        // Every subscriber answers, parked ones too (`Command::Waking`).
        self.client
            .publish_raw_confirmed_waking(event, data(&asked), move |r| {
                let Some(me) = weak.upgrade() else { return };
                match r {
                    Ok(n) => {
                        if let Some(p) = me.pending.borrow_mut().get_mut(&seq) {
                            p.expected = Some(n.unwrap_or(0));
                            p.summary.instances = n.unwrap_or(0);
                        }
                        me.check(seq);
                    }
                    Err(e) => me.finish(seq, Some(e)),
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
            self.finish(seq, None);
        }
    }

    /// Answer publish `seq`: what it reached, or `failed`.
    fn finish(&self, seq: u64, failed: Option<ChannelError>) {
        let Some(mut p) = self.pending.borrow_mut().remove(&seq) else {
            return;
        };
        if let Some(t) = p.timer.take() {
            Timer::del(t);
        }
        if let Some(done) = p.done.take() {
            done(match failed {
                None => Ok(p.summary),
                Some(e) => Err(e),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_summaries() {
        let asked = Asked::parse("werkmann.report:ab#7", Some(500)).unwrap();
        assert_eq!(
            asked,
            Asked {
                inbox: "werkmann.report:ab".into(),
                seq: 7,
                ack: Some(Duration::from_millis(500)),
            }
        );
        assert_eq!(asked.token(), "werkmann.report:ab#7");
        assert_eq!(
            Asked::parse("werkmann.report:ab#7", Some(30_001))
                .unwrap()
                .ack,
            None
        );
        for bad in ["werkmann.report:ab", "werkmann.report:ab#x", "other#7", ""] {
            assert_eq!(Asked::parse(bad, None), None, "{bad}");
        }
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

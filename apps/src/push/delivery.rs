//! Delivery reports for the seed's pushes (`?content=X` with `report=1`, `ack=MS` or
//! `callback_url=URL`; `docs/recovery.md`): how many connections a broadcast, a channel push or
//! a targeted push was written to across the cluster, and — with `ack` — which of them
//! acknowledged it in time (the clients of `/werkmann.js` do). The reports travel as
//! `werkmann::channel::report` has them; here is where a seed push carries its question: the
//! fields `report: "INBOX#SEQ"` and `ack` (milliseconds) of its data.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use werkmann::channel::report::{Asked, Deliveries, Summary};
use werkmann::channel::{php_serde, ChannelError, Name};

/// What a seed push's data asks (`None` for an ordinary push: one field scan).
pub fn asked(data: &[u8]) -> Option<Asked> {
    let token = php_serde::field(data, "report").ok()?.text()?;
    let ack = php_serde::field(data, "ack").ok().and_then(|f| f.to_u64());
    Asked::parse(&token, ack)
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

/// Publish a reported seed push (`content` to `event`, targeted at `to` when given) and tell
/// `done` what it reached.
pub fn push(
    deliveries: &Rc<Deliveries>,
    event: Name,
    content: &str,
    to: Option<u64>,
    ack: Option<Duration>,
    done: impl FnOnce(Result<Summary, ChannelError>) + 'static,
) {
    deliveries.publish(event, ack, |a| event_data(content, to, a), done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_asks_in_its_data() {
        let a = Asked {
            inbox: "werkmann.report:ab".into(),
            seq: 7,
            ack: Some(Duration::from_millis(500)),
        };
        let data = event_data("hi", Some(3), &a);
        assert_eq!(asked(&data), Some(a));
        assert_eq!(
            php_serde::field(&data, "content")
                .unwrap()
                .text()
                .as_deref(),
            Some("hi")
        );
        let plain = super::super::params::event_data("hi", None);
        assert_eq!(asked(&plain), None);
    }
}

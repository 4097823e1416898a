//! What a push through the API reached, told to whoever asked: the answer itself
//! (`{"reached": N, "offline": [uids]}`), a report POSTed to the request's `callback_url`
//! when it asked for one (answered 202 at once), and — for a `send_to_uid` marked
//! `fallback` — a webhook naming the uids that were offline, for the app to turn into an
//! e-mail or a mobile push. Webhooks are JSON, signed with the push API's secret when it has
//! one (`X-Werkmann-Signature`: HMAC-SHA256 of the body, hex), and retried with back-off
//! (`werkmann::webhook`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use werkmann::webhook::{send_with_retries, Target};

/// The publisher's webhook settings (kept as each publisher instance's data).
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// Where `fallback` sends go when uids were offline (`--fallback-webhook`).
    pub fallback: Option<Target>,
    /// Where the nodes' presence events go (`--presence-webhook`).
    pub presence: Option<Target>,
    /// What signs the webhooks (`--secret`).
    pub secret: Option<String>,
}

/// What a request asked to be told besides the answer.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// POST the report here (and answer 202 at once).
    pub callback: Option<Target>,
    /// Tell the fallback webhook which uids were offline.
    pub fallback: bool,
}

/// What a send reached: connections, and the uids (of a `send_to_uid`) with none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// Connections written to, counted across nodes.
    pub reached: u64,
    /// The uids that had no connection.
    pub offline: Vec<String>,
}

impl Reached {
    /// `{"reached":N}`, with `"offline":[…]` when a uid was.
    pub fn json(&self) -> String {
        if self.offline.is_empty() {
            return format!("{{\"reached\":{}}}", self.reached);
        }
        json!({ "reached": self.reached, "offline": self.offline }).to_string()
    }
}

impl Reports {
    /// The settings, checked: the fallback and presence webhooks must be signed (`--secret`).
    pub fn new(
        fallback: Option<&str>,
        presence: Option<&str>,
        secret: Option<&str>,
    ) -> anyhow::Result<Reports> {
        let url = |opt: &str, u: Option<&str>| -> anyhow::Result<Option<Target>> {
            let Some(u) = u.filter(|u| !u.is_empty()) else {
                return Ok(None);
            };
            let t = Target::parse(u).map_err(|why| anyhow::anyhow!("--{opt}: {why}"))?;
            if secret.is_none() {
                anyhow::bail!("--{opt} is signed with the push API's secret: set --secret");
            }
            Ok(Some(t))
        };
        Ok(Reports {
            fallback: url("fallback-webhook", fallback)?,
            presence: url("presence-webhook", presence)?,
            secret: secret.map(str::to_string),
        })
    }

    /// With a presence webhook: take the nodes' presence events from their queue (each to
    /// one publisher instance) and POST each, `{"time_ms", "events": [event]}`.
    pub fn take_presence_hooks(&self, client: &werkmann::channel::Client) {
        let Some(to) = self.presence.clone() else {
            return;
        };
        let me = self.clone();
        let queue = werkmann::gateway::presence::hooks_queue();
        client.watch(
            werkmann::channel::Name::from(queue.as_str()),
            move |item| {
                let event = match &item {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(item.clone()),
                    other => other.clone(),
                };
                let body = json!({ "time_ms": now_ms(), "events": [event] });
                me.post(to.clone(), body, "presence");
            },
            true,
        );
    }

    /// POST `body` to `to`, signed when there is a secret.
    fn post(&self, to: Target, body: Value, what: &str) {
        let body = body.to_string();
        let headers = match &self.secret {
            Some(s) => vec![(
                "X-Werkmann-Signature".to_string(),
                werkmann::pusher::sign::hmac_hex(s, &body),
            )],
            None => Vec::new(),
        };
        actix_rt::spawn(send_with_retries(to, headers, body, what.to_string()));
    }

    /// A seed push's report (`delivery.rs`) to the `callback_url` it asked for.
    pub fn push_report(&self, to: Target, mut report: Value) {
        report["time_ms"] = now_ms().into();
        self.post(to, report, "push report");
    }

    /// The report of a send to the `callback_url` it asked for: what it reached, or why it
    /// was not done.
    pub fn callback(&self, to: Target, method: &str, outcome: Result<&Reached, String>) {
        let body = match outcome {
            Ok(r) => json!({
                "method": method, "reached": r.reached, "offline": r.offline, "time_ms": now_ms(),
            }),
            Err(why) => json!({ "method": method, "error": why, "time_ms": now_ms() }),
        };
        self.post(to, body, "push report");
    }

    /// The fallback webhook for the uids a `send_to_uid` found offline.
    pub fn fallback(&self, uids: &[String], message: &str) {
        let Some(to) = self.fallback.clone() else {
            return;
        };
        let body = json!({
            "event": "undelivered", "method": "send_to_uid", "uids": uids,
            "message": message, "time_ms": now_ms(),
        });
        self.post(to, body, "fallback");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_settings() {
        let r = Reached {
            reached: 2,
            offline: vec![],
        };
        assert_eq!(r.json(), r#"{"reached":2}"#);
        let r = Reached {
            reached: 0,
            offline: vec!["bob".into()],
        };
        assert_eq!(r.json(), r#"{"offline":["bob"],"reached":0}"#);
        let h = Some("http://127.0.0.1:9/h");
        assert!(Reports::new(h, None, None).is_err());
        assert!(Reports::new(None, h, None).is_err());
        assert!(Reports::new(Some("https://x/"), None, Some("s")).is_err());
        assert!(Reports::new(h, h, Some("s")).is_ok());
        assert!(Reports::new(None, None, None).unwrap().fallback.is_none());
    }
}

//! Throughput over the last minutes: the totals read once a second on the admin thread, kept
//! as per-second rates for the page's chart (nothing is kept while no admin port runs).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use serde_json::Value;

use crate::metrics;

/// How many seconds are kept (ten minutes).
const KEPT: usize = 600;

/// One second's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Sample {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Connections open.
    pub connections: i64,
    /// Per second: connections accepted, messages received, messages sent, deliveries,
    /// publishes answered.
    pub accepted: f64,
    pub messages_in: f64,
    pub messages_out: f64,
    pub deliveries: f64,
    pub publishes: f64,
}

/// The samples kept, oldest first.
#[derive(Default)]
pub(super) struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Sample once a second, for good (on the admin thread).
    pub async fn run(&self) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<(Value, std::time::Instant)> = None;
        loop {
            every.tick().await;
            // Every child's, with processes (`metrics::siblings`).
            let now = metrics::totals_all();
            let at = std::time::Instant::now();
            if let Some((before, then)) = &last {
                let secs = at.duration_since(*then).as_secs_f64().max(0.001);
                let count = |t: &Value, k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
                let rate = |k: &str| count(&now, k).saturating_sub(count(before, k)) as f64 / secs;
                let s = Sample {
                    at_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    connections: now
                        .get("connections")
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.values().filter_map(Value::as_i64).sum()),
                    accepted: rate("accepted"),
                    messages_in: rate("messages_in"),
                    messages_out: rate("messages_out"),
                    deliveries: rate("deliveries"),
                    publishes: rate("publishes"),
                };
                let mut k = self.samples.lock().unwrap_or_else(|e| e.into_inner());
                if k.len() == KEPT {
                    k.pop_front();
                }
                k.push_back(s);
            }
            last = Some((now, at));
        }
    }
}

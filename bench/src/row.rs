//! One measured row of the results, and the median of repeated runs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::systems::Setup;

/// What a row measures.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Idle clients: memory per connection, new connections per second.
    Idle,
    /// Broadcasts back to back.
    Broadcast,
    /// Broadcasts at a fixed rate.
    Paced,
    /// Targeted pushes to random clients.
    Targeted,
    /// HTTP publish requests per second.
    Publish,
    /// Paced broadcasts next to clients that never read, against clients that do.
    Slow,
    /// Pushes to uids through GatewayWorker's API (`send_to_uid`), one client per uid (or
    /// two, on two nodes): pushes/s, latency, copies sent to nodes per push.
    Uid,
    /// Pushes to groups through the API (`send_to_group`): deliveries/s, latency.
    Group,
    /// The directory's memory per client registered and bound to a uid.
    DirMemory,
    /// The Pusher protocol next to Soketi (`pusher_rows.rs`): idle memory, broadcast,
    /// signed publishes, presence join/leave; the label tells which.
    Pusher,
    /// The fault group (`faults.rs`): resuming clients reset under paced pushes, and the
    /// broadcast row with history on and off; the label tells which.
    Faults,
    /// Server-Sent Events next to Nchan's EventSource (`sse_rows.rs`): idle memory,
    /// broadcast, paced latency, resume after drops; the label tells which.
    Sse,
    /// The processes group (`processes.rs`): one WebSocket node's instances, and
    /// all-in-one's, as threads and as child processes: idle memory, broadcast, and
    /// all-in-one's publish rate; the label tells which row, the mode which setup.
    Processes,
}

/// Delivery errors (summed over runs).
#[derive(Serialize, Clone, Debug, Default)]
pub struct Errors {
    /// Deliveries that never came.
    pub missing: u64,
    /// Deliveries that came twice.
    pub dup: u64,
    /// Targeted pushes at the wrong client.
    pub wrong: u64,
    /// Pushes of an earlier phase arriving late.
    pub stray: u64,
    /// Frames that were not pushes.
    pub bad: u64,
    /// Publish requests not answered 2xx.
    pub http: u64,
    /// Publish requests answered 2xx, but not as due (a directory send's `{"reached": N}`).
    pub answer: u64,
    /// Clients that failed to open.
    pub open_failed: u64,
}

impl Errors {
    /// Add another run's errors.
    pub fn add(&mut self, o: &Errors) {
        self.missing += o.missing;
        self.dup += o.dup;
        self.wrong += o.wrong;
        self.stray += o.stray;
        self.bad += o.bad;
        self.http += o.http;
        self.answer += o.answer;
        self.open_failed += o.open_failed;
    }

    /// A short text: `0` or the non-zero counters.
    pub fn text(&self) -> String {
        let parts: Vec<String> = [
            ("missing", self.missing),
            ("dup", self.dup),
            ("wrong", self.wrong),
            ("bad", self.bad),
            ("http", self.http),
            ("answers not as due", self.answer),
            ("open failed", self.open_failed),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
        if parts.is_empty() {
            "0".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One row: a scenario on one setup.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// What it measures.
    pub scenario: Scenario,
    /// The scenario with its sizes, e.g. `broadcast 10k × 200`.
    pub label: String,
    /// werkmann, Nchan or Socket.IO.
    pub system: String,
    /// The mode (all-in-one, cluster, …).
    pub mode: String,
    /// What ran.
    pub setup: String,
    /// Nodes holding clients.
    pub nodes: usize,
    /// Whether this is a peer.
    pub peer: bool,
    /// Runs the figures are the median of.
    pub runs: usize,
    /// Figures by name (see the report for units).
    pub m: BTreeMap<String, f64>,
    /// Delivery errors, summed over the runs.
    pub errors: Errors,
    /// Remarks.
    pub notes: Vec<String>,
}

impl Row {
    /// An empty row for `setup`.
    pub fn new(scenario: Scenario, label: &str, setup: Setup) -> Row {
        Row {
            scenario,
            label: label.to_string(),
            system: setup.system().to_string(),
            mode: setup.mode(),
            setup: setup.describe(),
            nodes: setup.nodes(),
            peer: setup.is_peer(),
            runs: 1,
            m: BTreeMap::new(),
            errors: Errors::default(),
            notes: Vec::new(),
        }
    }

    /// Set a figure.
    pub fn set(&mut self, key: &str, v: f64) {
        if v.is_finite() {
            self.m.insert(key.to_string(), v);
        }
    }

    /// A figure.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.m.get(key).copied()
    }
}

/// The median of each figure over repeated runs of one row; errors and notes are summed.
pub fn median(mut runs: Vec<Row>) -> Option<Row> {
    let mut out = runs.first()?.clone();
    out.runs = runs.len();
    out.m.clear();
    let keys: Vec<String> = runs.iter().flat_map(|r| r.m.keys().cloned()).collect();
    for k in keys {
        let mut vals: Vec<f64> = runs.iter().filter_map(|r| r.get(&k)).collect();
        vals.sort_by(|a, b| a.total_cmp(b));
        let v = if vals.len() % 2 == 1 {
            vals[vals.len() / 2]
        } else {
            (vals[vals.len() / 2 - 1] + vals[vals.len() / 2]) / 2.0
        };
        out.m.insert(k, v);
    }
    out.errors = Errors::default();
    out.notes.clear();
    for r in runs.drain(..) {
        out.errors.add(&r.errors);
        for n in r.notes {
            if !out.notes.contains(&n) {
                out.notes.push(n);
            }
        }
    }
    Some(out)
}

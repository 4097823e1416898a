//! The metrics summed over this process, for the admin page and scripts (`serde`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::cell::HistogramValue;
use super::reasons::{Closed, Refused};
use super::sources::{lock, registry, Backend, NodeFigures, PublishApi};

/// One worker instance's figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct InstanceFigures {
    /// The worker's name.
    pub worker: String,
    /// The instance id.
    pub instance: usize,
    /// Connections open now.
    pub connections: i64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused.
    pub refused: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent or queued.
    pub messages_out: u64,
    /// Messages written by sends to many.
    pub deliveries: u64,
    /// Messages dropped.
    pub send_drops: u64,
}

/// This process's figures now, summed over its instances, threads and hubs.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    /// Each instance's own.
    pub instances: Vec<InstanceFigures>,
    /// Connections open now, per worker name.
    pub connections: BTreeMap<String, i64>,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Connections closed, by reason.
    pub closed: BTreeMap<&'static str, u64>,
    /// Messages received from clients.
    pub messages_in: u64,
    /// Messages sent or queued to clients.
    pub messages_out: u64,
    /// Messages written by sends to many.
    pub deliveries: u64,
    /// Messages dropped.
    pub send_drops: u64,
    /// Publishes answered, over every API.
    pub publishes: u64,
    /// Their answer's latency, 50th and 99th percentile (upper bound of the bucket), seconds.
    pub publish_p50: Option<f64>,
    /// See `publish_p50`.
    pub publish_p99: Option<f64>,
    /// Channel round trips' 99th percentile, seconds.
    pub round_trip_p99: Option<f64>,
    /// Broker reconnects.
    pub broker_reconnects: u64,
    /// Channel clients connected to their broker now, by backend (`embedded`, `channel`,
    /// `redis`); only backends with a client.
    pub broker_connected: BTreeMap<&'static str, i64>,
    /// The hubs in this process: subscribers, events, directory, presence and history sizes.
    pub hubs: Vec<HubTotals>,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used, seconds.
    pub cpu_secs: f64,
    /// When the process started, seconds since the Unix epoch.
    pub started_unix: f64,
}

/// One hub's sizes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HubTotals {
    /// Where it is declared, or `redis` (then only the directory's sizes are known).
    pub hub: String,
    /// Only the directory's sizes are known.
    pub directory_only: bool,
    /// Nodes and clients subscribed.
    pub subscribers: i64,
    /// Event names with a subscriber.
    pub events: i64,
    /// Directory: connections, uids, groups.
    pub clients: i64,
    /// See `clients`.
    pub uids: i64,
    /// See `clients`.
    pub groups: i64,
    /// Presence members.
    pub presence_members: i64,
    /// Events kept in history.
    pub history_events: i64,
    /// The nodes with connections in its directory.
    pub nodes: Vec<NodeFigures>,
}

/// Read every source now.
pub fn totals() -> Totals {
    let r = registry();
    let mut t = Totals::default();
    for i in lock(&r.instances).iter() {
        t.instances.push(InstanceFigures {
            worker: i.worker.clone(),
            instance: i.instance,
            connections: i.connections.get(),
            accepted: i.accepted.get(),
            refused: i.refused_total(),
            messages_in: i.messages_in.get(),
            messages_out: i.messages_out.get(),
            deliveries: i.deliveries.get(),
            send_drops: i.send_failures.get(),
        });
        *t.connections.entry(i.worker.clone()).or_default() += i.connections.get();
        t.accepted += i.accepted.get();
        for why in Refused::ALL {
            *t.refused.entry(why.label()).or_default() += i.refused_count(why);
        }
        for why in Closed::ALL {
            *t.closed.entry(why.label()).or_default() += i.closed_count(why);
        }
        t.messages_in += i.messages_in.get();
        t.messages_out += i.messages_out.get();
        t.deliveries += i.deliveries.get();
        t.send_drops += i.send_failures.get();
    }
    let mut publish = HistogramValue::default();
    let mut rtt = HistogramValue::default();
    for th in lock(&r.threads).iter() {
        for api in PublishApi::ALL {
            th.publish[api as usize].read_into(&mut publish);
        }
        for b in Backend::ALL {
            th.round_trip[b as usize].read_into(&mut rtt);
            t.broker_reconnects += th.broker_reconnects[b as usize].get();
            let up = th.broker_connected[b as usize].get();
            if up != 0 || t.broker_connected.contains_key(b.label()) {
                *t.broker_connected.entry(b.label()).or_default() += up;
            }
        }
    }
    t.publishes = publish.count;
    t.publish_p50 = publish.quantile(0.5);
    t.publish_p99 = publish.quantile(0.99);
    t.round_trip_p99 = rtt.quantile(0.99);
    t.hubs = lock(&r.hubs)
        .iter()
        .map(|h| HubTotals {
            hub: h.hub.clone(),
            directory_only: h.directory_only,
            subscribers: h.subscribers.get(),
            events: h.events.get(),
            clients: h.clients.get(),
            uids: h.uids.get(),
            groups: h.groups.get(),
            presence_members: h.presence_members.get(),
            history_events: h.history_events.get(),
            nodes: lock(&h.nodes).clone(),
        })
        .collect();
    let p = super::process::read(false);
    t.rss_bytes = p.rss_bytes;
    t.cpu_secs = p.cpu_secs;
    t.started_unix = p.start_time_secs;
    t
}

/// Add one process's metrics totals to the sums: counts add up, lists join, and the figures
/// that are not counts (latency quantiles, the start time) keep the larger or the earlier.
pub(crate) fn add_json(into: &mut serde_json::Value, from: serde_json::Value) {
    use serde_json::Value;
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    None => {
                        a.insert(k, v);
                    }
                    Some(Value::Number(n)) if k.contains("p50") || k.contains("p99") => {
                        if v.as_f64() > n.as_f64() {
                            a.insert(k, v);
                        }
                    }
                    Some(Value::Number(n)) if k.starts_with("started") => {
                        if v.as_f64().is_some_and(|v| v > 0.0 && Some(v) < n.as_f64()) {
                            a.insert(k, v);
                        }
                    }
                    Some(slot) => add_json(slot, v),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (slot @ Value::Null, v) => *slot = v,
        (Value::Number(a), Value::Number(b)) => {
            *a = match (a.as_u64(), b.as_u64(), a.as_i64(), b.as_i64()) {
                (Some(x), Some(y), _, _) => x.saturating_add(y).into(),
                (_, _, Some(x), Some(y)) => x.saturating_add(y).into(),
                _ => serde_json::Number::from_f64(
                    a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0),
                )
                .unwrap_or_else(|| 0.into()),
            }
        }
        _ => {}
    }
}

//! The scrape: every registered source read and encoded as Prometheus metrics (the text
//! exposition format, through the `prometheus` crate's encoder).

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;

use super::cell::{HistogramValue, LATENCY_BUCKETS};
use super::reasons::{Closed, Refused};
use super::sources::{
    lock, registry, Backend, HubMetrics, InstanceMetrics, PublishApi, UidSendVia,
};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// This process's metrics, as a scrape answers them.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // A family without samples (no hub in this process) is left out, as the encoder wants.
    let mut all = families();
    all.retain(|f| !f.get_metric().is_empty());
    if let Err(e) = TextEncoder::new().encode_utf8(&all, &mut out) {
        log::error!("metrics not encoded: {e}");
    }
    out
}

type Labels = Vec<(&'static str, String)>;

fn metric(labels: Labels) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .into_iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v);
                l
            })
            .collect(),
    );
    m
}

fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    f.set_metric(metrics);
    f
}

/// A family of one-value samples, each value put in its metric by `set`.
fn family_of(
    name: &str,
    help: &str,
    ty: MetricType,
    samples: impl IntoIterator<Item = (Labels, f64)>,
    set: impl Fn(&mut Metric, f64),
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(labels, v)| {
            let mut m = metric(labels);
            set(&mut m, v);
            m
        })
        .collect();
    family(name, help, ty, metrics)
}

/// A counter family (`name` ends in `_total`).
fn counters(
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> MetricFamily {
    family_of(name, help, MetricType::COUNTER, samples, |m, v| {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    })
}

fn gauges(
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> MetricFamily {
    family_of(name, help, MetricType::GAUGE, samples, |m, v| {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    })
}

fn histograms(
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, HistogramValue)>,
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(labels, v)| {
            let mut m = metric(labels);
            let mut h = Histogram::default();
            h.set_sample_count(v.count);
            h.set_sample_sum(v.sum_secs);
            let mut seen = 0;
            h.set_bucket(
                LATENCY_BUCKETS
                    .iter()
                    .zip(&v.buckets)
                    .map(|(&le, &n)| {
                        seen += n;
                        let mut b = Bucket::default();
                        b.set_upper_bound(le);
                        b.set_cumulative_count(seen);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(h);
            m
        })
        .collect();
    family(name, help, MetricType::HISTOGRAM, metrics)
}

fn of(i: &InstanceMetrics) -> Labels {
    vec![
        ("worker", i.worker.clone()),
        ("instance", i.instance.to_string()),
    ]
}

/// Every metric, read now.
fn families() -> Vec<MetricFamily> {
    let r = registry();
    let insts = lock(&r.instances).clone();
    let per = |f: fn(&InstanceMetrics) -> f64| insts.iter().map(move |i| (of(i), f(i)));
    let threads = lock(&r.threads).clone();
    let hubs = lock(&r.hubs).clone();
    let per_hub = |f: fn(&HubMetrics) -> i64| {
        hubs.iter()
            .filter(|h| !h.directory_only)
            .map(move |h| (vec![("hub", h.hub.clone())], f(h) as f64))
    };
    // The directory's sizes also where only they are known (read from Redis).
    let per_directory = |f: fn(&HubMetrics) -> i64| {
        hubs.iter()
            .map(move |h| (vec![("hub", h.hub.clone())], f(h) as f64))
    };
    let p = super::process::read(true);
    vec![
        gauges(
            "werkmann_connections",
            "Connections open now",
            per(|i| i.connections.get() as f64),
        ),
        counters(
            "werkmann_connections_accepted_total",
            "Connections accepted",
            per(|i| i.accepted.get() as f64),
        ),
        counters(
            "werkmann_connections_refused_total",
            "Connections refused, by reason",
            insts.iter().flat_map(|i| {
                Refused::ALL.map(|why| {
                    let mut l = of(i);
                    l.push(("reason", why.label().to_string()));
                    (l, i.refused_count(why) as f64)
                })
            }),
        ),
        counters(
            "werkmann_connections_closed_total",
            "Connections closed, by reason",
            insts.iter().flat_map(|i| {
                Closed::ALL.map(|why| {
                    let mut l = of(i);
                    l.push(("reason", why.label().to_string()));
                    (l, i.closed_count(why) as f64)
                })
            }),
        ),
        counters(
            "werkmann_messages_received_total",
            "Messages received from clients",
            per(|i| i.messages_in.get() as f64),
        ),
        counters(
            "werkmann_messages_sent_total",
            "Messages sent or queued to clients",
            per(|i| i.messages_out.get() as f64),
        ),
        counters(
            "werkmann_deliveries_total",
            "Messages written to clients by sends to many: broadcasts, groups, event streams",
            per(|i| i.deliveries.get() as f64),
        ),
        counters(
            "werkmann_send_drops_total",
            "Messages dropped: a full send buffer, a closed connection, a failed write",
            per(|i| i.send_failures.get() as f64),
        ),
        histograms(
            "werkmann_publish_duration_seconds",
            "From a publish request to its answer, by API",
            PublishApi::ALL.map(|api| {
                let mut h = HistogramValue::default();
                for t in &threads {
                    t.publish[api as usize].read_into(&mut h);
                }
                (vec![("api", api.label().to_string())], h)
            }),
        ),
        histograms(
            "werkmann_channel_round_trip_seconds",
            "From a channel command to its acknowledgement, by backend",
            Backend::ALL.map(|b| {
                let mut h = HistogramValue::default();
                for t in &threads {
                    t.round_trip[b as usize].read_into(&mut h);
                }
                (vec![("backend", b.label().to_string())], h)
            }),
        ),
        counters(
            "werkmann_broker_reconnects_total",
            "Connections to the broker made again after one was lost, by backend",
            Backend::ALL.map(|b| {
                let n: u64 = threads
                    .iter()
                    .map(|t| t.broker_reconnects[b as usize].get())
                    .sum();
                (vec![("backend", b.label().to_string())], n as f64)
            }),
        ),
        gauges(
            "werkmann_broker_connected",
            "Channel clients connected to the broker now, by backend",
            Backend::ALL.map(|b| {
                let n: i64 = threads
                    .iter()
                    .map(|t| t.broker_connected[b as usize].get())
                    .sum();
                (vec![("backend", b.label().to_string())], n as f64)
            }),
        ),
        counters(
            "werkmann_worker_id_claims_total",
            "Cluster worker ids claimed, by result",
            [("ok", 0), ("failed", 1)].map(|(label, k)| {
                let n: u64 = threads.iter().map(|t| t.worker_id_claims[k].get()).sum();
                (vec![("result", label.to_string())], n as f64)
            }),
        ),
        counters(
            "werkmann_redis_uid_sends_total",
            "Sends to one uid on Redis, by how they went: cache (PUBLISH to the cached holders), script, again (from the cache, then through the script: the holders changed meanwhile)",
            UidSendVia::ALL.map(|v| {
                let n: u64 = threads.iter().map(|t| t.uid_sends[v as usize].get()).sum();
                (vec![("via", v.label().to_string())], n as f64)
            }),
        ),
        gauges(
            "werkmann_channel_subscribers",
            "Nodes and in-process clients subscribed to the hub",
            per_hub(|h| h.subscribers.get()),
        ),
        gauges(
            "werkmann_channel_events",
            "Event names with a subscriber",
            per_hub(|h| h.events.get()),
        ),
        gauges(
            "werkmann_channel_parked_subscriptions",
            "Subscriptions parked by instances without connections: counted, sent nothing",
            per_hub(|h| h.parked.get()),
        ),
        counters(
            "werkmann_channel_deliveries_total",
            "Events the hub handed to subscribers",
            per_hub(|h| h.deliveries.get()),
        ),
        gauges(
            "werkmann_directory_clients",
            "Connections in the directory",
            per_directory(|h| h.clients.get()),
        ),
        gauges(
            "werkmann_directory_uids",
            "Uids bound in the directory",
            per_directory(|h| h.uids.get()),
        ),
        gauges(
            "werkmann_directory_groups",
            "Groups with members in the directory",
            per_directory(|h| h.groups.get()),
        ),
        gauges(
            "werkmann_presence_groups",
            "Presence groups with members",
            per_hub(|h| h.presence_groups.get()),
        ),
        gauges(
            "werkmann_presence_members",
            "Members of presence groups",
            per_hub(|h| h.presence_members.get()),
        ),
        gauges(
            "werkmann_history_streams",
            "Event streams keeping history",
            per_hub(|h| h.history_streams.get()),
        ),
        gauges(
            "werkmann_history_events",
            "Events kept in history",
            per_hub(|h| h.history_events.get()),
        ),
        gauges(
            "process_resident_memory_bytes",
            "Resident memory in bytes",
            [(vec![], p.rss_bytes as f64)],
        ),
        gauges(
            "process_open_fds",
            "Open file descriptors",
            [(vec![], p.open_fds as f64)],
        ),
        gauges(
            "process_max_fds",
            "The limit of open file descriptors",
            [(vec![], p.max_fds as f64)],
        ),
        counters(
            "process_cpu_seconds_total",
            "CPU time used, user and system, in seconds",
            [(vec![], p.cpu_secs)],
        ),
        gauges(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            [(vec![], p.start_time_secs)],
        ),
        gauges(
            "werkmann_build_info",
            "The werkmann version serving",
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        ),
    ]
}

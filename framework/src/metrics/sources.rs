//! Where metrics are counted: one [`InstanceMetrics`] per worker instance, one
//! [`ThreadMetrics`] per thread that publishes or talks to a broker, one [`HubMetrics`] per
//! channel hub. Each is written by its own thread only and registered here once, so a scrape
//! reads every one of them without asking their threads.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::cell::{Counter, Gauge, Histogram};
use super::reasons::{Closed, Refused};

/// What one worker instance counts (the figures `status` shows, and more).
#[derive(Debug, Default)]
pub(crate) struct InstanceMetrics {
    pub worker: String,
    pub instance: usize,
    /// Connections open now.
    pub connections: Gauge,
    pub accepted: Counter,
    refused: [Counter; Refused::ALL.len()],
    closed: [Counter; Closed::ALL.len()],
    pub messages_in: Counter,
    pub messages_out: Counter,
    /// Messages dropped: a full send buffer, a closed connection, a failed write.
    pub send_failures: Counter,
    /// Messages written to clients by sends to many (broadcasts, groups, streams).
    pub deliveries: Counter,
}

impl InstanceMetrics {
    /// The metrics of instance `instance` of worker `worker`, registered for scrapes.
    pub fn register(worker: &str, instance: usize) -> Arc<InstanceMetrics> {
        let m = Arc::new(InstanceMetrics {
            worker: worker.to_string(),
            instance,
            ..Default::default()
        });
        lock(&registry().instances).push(m.clone());
        m
    }

    /// Count a refusal.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].inc();
    }

    /// Count a closed connection.
    pub fn closed(&self, why: Closed) {
        self.closed[why as usize].inc();
        self.connections.add(-1);
    }

    /// Refusals for `why` so far.
    pub fn refused_count(&self, why: Refused) -> u64 {
        self.refused[why as usize].get()
    }

    /// Connections closed for `why` so far.
    pub fn closed_count(&self, why: Closed) -> u64 {
        self.closed[why as usize].get()
    }

    /// Refusals of every reason so far.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(Counter::get).sum()
    }
}

/// Which of the HTTP push APIs answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishApi {
    /// The seed's `GET/POST /?content=…` (broadcast or one connection).
    Push,
    /// GatewayWorker's vocabulary, `POST /api/<method>`.
    Gateway,
    /// The Pusher HTTP API (`/apps/<id>/events`, `/batch_events`, users).
    Pusher,
}

impl PublishApi {
    pub(crate) const ALL: [PublishApi; 3] =
        [PublishApi::Push, PublishApi::Gateway, PublishApi::Pusher];

    pub(crate) fn label(self) -> &'static str {
        match self {
            PublishApi::Push => "push",
            PublishApi::Gateway => "gateway",
            PublishApi::Pusher => "pusher",
        }
    }
}

/// Which broker carried a channel command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The hub in this process.
    Embedded,
    /// A channel server over TCP.
    Channel,
    /// Redis.
    Redis,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Embedded, Backend::Channel, Backend::Redis];

    pub fn label(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Channel => "channel",
            Backend::Redis => "redis",
        }
    }
}

/// What one thread counts outside its instance's connections: latencies and rare events.
#[derive(Debug, Default)]
pub(crate) struct ThreadMetrics {
    /// From a publish request's head to its answer, per API.
    pub publish: [Histogram; PublishApi::ALL.len()],
    /// From a channel command to its acknowledgement, per backend.
    pub round_trip: [Histogram; Backend::ALL.len()],
    /// Connections to the broker made again after one was lost, per backend.
    pub broker_reconnects: [Counter; Backend::ALL.len()],
    /// Channel clients of this thread connected now, per backend.
    pub broker_connected: [Gauge; Backend::ALL.len()],
    /// Cluster worker ids claimed (`[0]`) and claims refused or failed (`[1]`).
    pub worker_id_claims: [Counter; 2],
    /// Sends to one uid on Redis, by how they went: [`UidSendVia`].
    pub uid_sends: [Counter; UidSendVia::ALL.len()],
}

/// How a send to one uid went on Redis (`channel/redis/uid_cache.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UidSendVia {
    /// `PUBLISH`es to the holders cached in the link.
    Cache,
    /// The script (not cached yet, no tracking, a Redis Cluster).
    Script,
    /// From the cache, then again through the script: a change of the holders overtook it.
    Again,
}

impl UidSendVia {
    pub const ALL: [UidSendVia; 3] = [UidSendVia::Cache, UidSendVia::Script, UidSendVia::Again];

    pub(crate) fn label(self) -> &'static str {
        match self {
            UidSendVia::Cache => "cache",
            UidSendVia::Script => "script",
            UidSendVia::Again => "again",
        }
    }
}

thread_local! {
    /// The metrics of the worker instance running on this thread, if one does.
    static INSTANCE: std::cell::RefCell<Option<Arc<InstanceMetrics>>> =
        const { std::cell::RefCell::new(None) };
    static THREAD: Arc<ThreadMetrics> = {
        let m = Arc::new(ThreadMetrics::default());
        lock(&registry().threads).push(m.clone());
        m
    };
}

/// Make `m` this thread's instance metrics (the instance's actor starting on it).
pub(crate) fn set_thread_instance(m: Arc<InstanceMetrics>) {
    INSTANCE.with(|i| *i.borrow_mut() = Some(m));
}

/// Count `n` deliveries of a send to many made outside the instance's own sends (event
/// streams' readers) to the instance on this thread.
pub(crate) fn delivered_here(n: u64) {
    INSTANCE.with(|i| {
        if let Some(m) = &*i.borrow() {
            m.deliveries.add(n);
        }
    });
}

/// Run `f` with this thread's metrics (registered on first use).
pub(crate) fn with_thread<R>(f: impl FnOnce(&ThreadMetrics) -> R) -> R {
    THREAD.with(|m| f(m))
}

/// Count a publish answered by `api`, begun at `started`.
pub fn publish_answered(api: PublishApi, started: Instant) {
    let d = started.elapsed();
    with_thread(|m| m.publish[api as usize].observe(d));
}

/// Count a channel command acknowledged by `backend` after `d`.
pub(crate) fn round_trip(backend: Backend, d: Duration) {
    with_thread(|m| m.round_trip[backend as usize].observe(d));
}

/// Count a reconnection to `backend`.
pub(crate) fn broker_reconnected(backend: Backend) {
    with_thread(|m| m.broker_reconnects[backend as usize].inc());
}

/// A channel client of this thread connected (`up`) or lost its connection.
pub(crate) fn broker_connected(backend: Backend, up: bool) {
    with_thread(|m| m.broker_connected[backend as usize].add(if up { 1 } else { -1 }));
}

/// Count `n` sends to one uid on Redis that went `via`.
pub(crate) fn uid_sends(via: UidSendVia, n: u64) {
    if n > 0 {
        with_thread(|m| m.uid_sends[via as usize].add(n));
    }
}

/// Count a claim of a cluster worker id (`ok`: claimed; else refused or failed).
pub(crate) fn worker_id_claim(ok: bool) {
    with_thread(|m| m.worker_id_claims[usize::from(!ok)].inc());
}

/// Sizes of a channel hub (the channel server's, or the embedded one), set by the hub's
/// thread once a second.
#[derive(Debug, Default)]
pub(crate) struct HubMetrics {
    /// Where the hub is declared (its listening address, or `embedded`), or `redis`.
    pub hub: String,
    /// Only the directory's sizes are known (the directory in Redis, read by a node).
    pub directory_only: bool,
    /// Nodes and in-process clients subscribed.
    pub subscribers: Gauge,
    /// Event names with a subscriber.
    pub events: Gauge,
    /// Subscriptions parked by instances without connections (`channel::parking`).
    pub parked: Gauge,
    /// Events handed to subscribers (a total kept by the hub).
    pub deliveries: Gauge,
    /// Directory: connections registered, uids bound, groups with members.
    pub clients: Gauge,
    pub uids: Gauge,
    pub groups: Gauge,
    /// Presence groups and their members.
    pub presence_groups: Gauge,
    pub presence_members: Gauge,
    /// History: events kept and the streams they are kept in.
    pub history_streams: Gauge,
    pub history_events: Gauge,
    /// The nodes with connections in the directory (set with the gauges).
    pub nodes: Mutex<Vec<NodeFigures>>,
}

/// A node (a channel client) with connections in a hub's directory.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct NodeFigures {
    /// Where it is: `tcp 10.0.0.5:41234`, or `in-process`.
    pub node: String,
    /// The cluster worker ids it registered connections on.
    pub workers: Vec<u32>,
    /// The connections it registered.
    pub connections: usize,
}

impl HubMetrics {
    /// The metrics of the hub declared as `hub`, registered for scrapes.
    pub fn register(hub: &str) -> Arc<HubMetrics> {
        let m = Arc::new(HubMetrics {
            hub: hub.to_string(),
            ..Default::default()
        });
        lock(&registry().hubs).push(m.clone());
        m
    }
}

/// The directory sizes a node reads from a directory kept elsewhere (`hub`: `redis`),
/// registered on first use; several threads may share them (each sets whole values).
pub(crate) fn directory_named(hub: &str) -> Arc<HubMetrics> {
    let mut hubs = lock(&registry().hubs);
    if let Some(h) = hubs.iter().find(|h| h.hub == hub) {
        return h.clone();
    }
    let m = Arc::new(HubMetrics {
        hub: hub.to_string(),
        directory_only: true,
        ..Default::default()
    });
    hubs.push(m.clone());
    m
}

/// An admin port serves this process's metrics (set when it starts): work done only for the
/// metrics (reading sizes kept elsewhere, in Redis) is skipped until then.
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// See [`ENABLED`].
pub(crate) fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// See [`ENABLED`].
pub(crate) fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Connections open now on this process's instances.
pub(crate) fn open_connections() -> u64 {
    lock(&registry().instances)
        .iter()
        .map(|m| m.connections.get().max(0) as u64)
        .sum()
}

/// Every source registered in this process.
#[derive(Default)]
pub(crate) struct Registry {
    pub instances: Mutex<Vec<Arc<InstanceMetrics>>>,
    pub threads: Mutex<Vec<Arc<ThreadMetrics>>>,
    pub hubs: Mutex<Vec<Arc<HubMetrics>>>,
}

pub(crate) fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Lock a registry list (taken at registration and at scrapes only).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

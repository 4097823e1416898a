//! The channel on Redis: the same [`Client`](super::Client) API with Redis as the event bus, for
//! clusters that outgrow one channel server.
//!
//! - **Events**: `PUBLISH werkmann:e:{name}`; each client holds one RESP3 connection (the
//!   `redis` crate's connection manager) that multiplexes its commands and all its
//!   subscriptions, and re-subscribes by itself after a reconnect. On a Redis Cluster (found
//!   with `INFO cluster` on the node in the URL) it is sharded pub/sub: `SPUBLISH` and
//!   `SSUBSCRIBE` through the crate's cluster connection, routed to each channel's node.
//! - **`publish_loop`** (one subscriber, in turn): subscribers keep a membership in the sorted
//!   set `werkmann:loop:{name}:members` (refreshed every 10 s, expiring after 30 s); a Lua
//!   script drops expired members, advances the counter `werkmann:loop:{name}:rr` (one hash
//!   slot for both) and publishes to the chosen member's inbox channel `werkmann:c:{client id}`
//!   — atomically, on the server.
//! - **Queues**: streams `werkmann:q:{name}` with the consumer group `werkmann`. `enqueue` is
//!   `XADD`; a watcher reads with `XREADGROUP … >` on a second connection (reads block), so each
//!   item goes to exactly one watcher, and acknowledges (`XACK` + `XDEL`) after its callback.
//!   Items survive restarts of every worker; an item whose watcher died before acknowledging
//!   is claimed by another watcher after 30 s (`XAUTOCLAIM`).
//!
//! - **The directory** (`channel::dir`: client ids, uids, groups, sessions): keys in one hash
//!   slot, one Lua script per operation, forwarded to the nodes from the script; see
//!   `directory.rs`.
//!
//! Data is PHP `serialize()` bytes, as on the channel server, so the two modes carry the same
//! values.

mod bus;
mod directory;
mod frames;
mod history;
mod leases;
mod queues;
mod tap;
mod uid_cache;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManagerConfig;
use redis::{PushKind, Value as RValue};
use tokio::sync::Notify;

use super::broker::{redact, Broker, BrokerEvents, Confirm, Leases, Options, Reply};
use super::dir::error_answer;
use super::php_serde::{self, Key, Reader};
use super::wire::{Command, Delivery, DeliveryKind, WireName};
use super::ChannelError;
use bus::{cluster_builder, is_cluster, open_client, with_resp3, Bus};
use queues::run_queues;

const PREFIX_EVENT: &str = "werkmann:e:";
/// How long a pipeline may take to be answered before the connection counts as failed (the
/// library's default, 0.5 s, dropped a busy link and made its node register everything
/// again; Redis's own limit for a busy script is 5 s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most commands in one pipeline.
const MAX_BATCH: usize = 512;
/// Most bytes of directory operations in one pipeline (a 10,000-client `register` is about
/// 300 KiB and goes alone).
const MAX_DIR_BATCH_BYTES: usize = 64 * 1024;
const PREFIX_INBOX: &str = "werkmann:c:";
/// How long a link whose server refused `CLIENT TRACKING` sends to uids without a cache
/// before it asks again.
const TRACKING_RETRY: Duration = Duration::from_secs(60);
const MEMBERSHIP_REFRESH: Duration = Duration::from_secs(10);
const MEMBERSHIP_TTL_MS: u64 = 30_000;
const CLAIM_IDLE_MS: u64 = 30_000;
const GROUP: &str = "werkmann";
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The Lua script behind `publish_loop`: KEYS = members, counter; ARGV = inbox prefix, payload.
/// The inbox gets a classic `PUBLISH`, which a cluster carries to every node.
const LOOP_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members == 0 then return 0 end
local i = redis.call('INCR', KEYS[2])
local m = members[(i % #members) + 1]
redis.call('PUBLISH', ARGV[1] .. m, ARGV[2])
return 1
"#;

fn name_str(k: &Key) -> String {
    k.to_string()
}

fn event_channel(k: &Key) -> String {
    directory::event_channel(&name_str(k))
}

fn queue_key(k: &Key) -> String {
    directory::queue_stream(&name_str(k))
}

/// Who waits for the outcome of a queued command.
enum Waiter {
    /// A confirmed publish: the subscriptions reached.
    Publish(Confirm),
    /// A directory request: its answer.
    Dir(Reply),
}

/// The outcome of a queued command, for its [`Waiter`]; `None`: not certain.
enum Outcome {
    Reached(Option<usize>),
    Answer(Option<Bytes>),
    /// Redis answered this count, but no later reply has yet shown that the event was
    /// written to the subscribers (`run_outbound` waits for the next batch's).
    Unproven(usize),
    /// A directory answer counting sends not yet shown written, as `Unproven`.
    UnprovenAnswer(Option<Bytes>),
}

/// One client's link to Redis.
pub(crate) struct RedisLink {
    url: String,
    /// The URL without its password, for logs.
    shown: String,
    id: String,
    /// A private CA's PEM file for `rediss://`.
    ca: Option<PathBuf>,
    owner: RefCell<Option<Weak<dyn BrokerEvents>>>,
    me: Weak<RedisLink>,
    manager: RefCell<Option<Bus>>,
    /// Commands in order; a confirmed publish or a directory request carries the key of its
    /// callback in `confirms`.
    outbound: RefCell<VecDeque<(Command, Option<u64>)>>,
    confirms: RefCell<HashMap<u64, Waiter>>,
    next_confirm: Cell<u64>,
    wake_out: Notify,
    events: RefCell<BTreeSet<Key>>,
    queues: RefCell<BTreeSet<Key>>,
    reserved: Cell<u32>,
    wake_queue: Notify,
    up: Cell<bool>,
    closed: Cell<bool>,
    /// Whether this link sweeps the directory (it used the directory or holds worker ids).
    sweeps: Cell<bool>,
    /// The workers whose clients this link registered in the directory (it renews their alive
    /// keys, and removes their clients when it closes).
    dir_workers: RefCell<BTreeSet<u32>>,
    /// When this link last registered clients: for `MEMBERSHIP_REFRESH` after it, their
    /// workers' alive keys are looked at every second, so that a sweep which ran before the
    /// node's subscription reached Redis is noticed, and the clients registered again, at once.
    registered_at: Cell<Option<std::time::Instant>>,
    /// The directory's connection of its own on a single server, made when the link first
    /// sends to a uid: it tracks the uids' holders for `uid_cache`.
    dir_bus: RefCell<Option<Bus>>,
    uid_cache: uid_cache::UidCache,
}

impl RedisLink {
    /// Start connecting to `url` (`redis://[:password@]host:port[/db]`).
    pub(crate) fn start(
        url: &str,
        options: &Options,
        owner: Weak<dyn BrokerEvents>,
    ) -> Result<Rc<dyn Broker>, String> {
        let url = with_resp3(url);
        let ca = options.tls_ca.clone();
        open_client(url.as_str(), ca.as_deref()).map_err(|e| e.to_string())?;
        let link = Rc::new_cyclic(|me| RedisLink {
            ca,
            me: me.clone(),
            shown: redact(&url),
            url,
            id: format!("{:016x}", rand::random::<u64>()),
            owner: RefCell::new(Some(owner)),
            manager: RefCell::new(None),
            outbound: RefCell::new(VecDeque::new()),
            confirms: RefCell::new(HashMap::new()),
            next_confirm: Cell::new(0),
            wake_out: Notify::new(),
            events: RefCell::new(BTreeSet::new()),
            queues: RefCell::new(BTreeSet::new()),
            reserved: Cell::new(0),
            wake_queue: Notify::new(),
            up: Cell::new(false),
            closed: Cell::new(false),
            sweeps: Cell::new(false),
            dir_workers: RefCell::new(BTreeSet::new()),
            registered_at: Cell::new(None),
            dir_bus: RefCell::new(None),
            uid_cache: directory::uid_cache(),
        });
        actix_rt::spawn(run_outbound(Rc::downgrade(&link)));
        actix_rt::spawn(run_queues(Rc::downgrade(&link)));
        actix_rt::spawn(run_membership(Rc::downgrade(&link)));
        actix_rt::spawn(directory::run_directory(Rc::downgrade(&link)));
        Ok(link)
    }

    fn owner(&self) -> Option<Rc<dyn BrokerEvents>> {
        self.owner.borrow().as_ref().and_then(|w| w.upgrade())
    }

    /// Subscribe to `names` again after each reconnect.
    fn keep_subscribed(&self, names: &[WireName]) {
        self.events
            .borrow_mut()
            .extend(names.iter().map(|w| w.key.clone()));
    }

    /// Queue a command; the link sends it in order, retrying across reconnects.
    fn queue(&self, cmd: Command) {
        // Nothing is parked on Redis (`Broker::parks`): a waking publish is a publish.
        let cmd = cmd.unwake().0;
        match &cmd {
            Command::Subscribe(n) => self.keep_subscribed(n),
            Command::Unsubscribe(n) => {
                let mut ev = self.events.borrow_mut();
                for w in n {
                    ev.remove(&w.key);
                }
            }
            Command::Watch(n) => {
                self.queues
                    .borrow_mut()
                    .extend(n.iter().map(|w| w.key.clone()));
                self.wake_queue.notify_one();
            }
            Command::Unwatch(n) => {
                let mut q = self.queues.borrow_mut();
                for w in n {
                    q.remove(&w.key);
                }
            }
            Command::Reserve => {
                self.reserved.set(self.reserved.get().saturating_add(1));
                self.wake_queue.notify_one();
                return;
            }
            Command::Ping => return,
            Command::Dir(_) => self.sweeps.set(true),
            _ => {}
        }
        self.outbound.borrow_mut().push_back((cmd, None));
        self.wake_out.notify_one();
    }

    /// Publish and report what Redis answered: the number of subscriptions reached (the
    /// `PUBLISH` reply, summed over the names), or `Unconfirmed` if the connection fails
    /// first. A confirmed publish is never sent again after a failure: its caller was told.
    fn queue_confirmed(&self, cmd: Command, on_done: Confirm) {
        if !self.up.get() || self.closed.get() {
            return on_done(Err(ChannelError::Disconnected));
        }
        // A confirmed subscription (`Client::when_subscribed`) is one to keep across
        // reconnects, as any other.
        if let Command::Subscribe(n) = &cmd {
            self.keep_subscribed(n);
        }
        self.queue_waiting(cmd, Waiter::Publish(on_done));
    }

    /// Queue a command whose outcome `waiter` is told.
    fn queue_waiting(&self, cmd: Command, waiter: Waiter) {
        let cmd = cmd.unwake().0;
        let id = self.next_confirm.get();
        self.next_confirm.set(id + 1);
        self.confirms.borrow_mut().insert(id, waiter);
        self.outbound.borrow_mut().push_back((cmd, Some(id)));
        self.wake_out.notify_one();
    }

    /// Apply a directory operation in order with the other commands and tell `done` its
    /// answer; one the directory refuses is answered at once.
    fn queue_request(&self, cmd: Command, done: Reply) {
        if !self.up.get() || self.closed.get() {
            return done(Err(ChannelError::Disconnected));
        }
        if matches!(cmd, Command::History(..)) {
            return self.queue_waiting(cmd, Waiter::Dir(done));
        }
        let Command::Dir(data) = &cmd else {
            return done(Err(ChannelError::Refused(
                "not a directory operation".into(),
            )));
        };
        if let Err(why) = directory::parse(data) {
            let json = serde_json::to_vec(&error_answer(&why)).expect("JSON values serialize");
            return done(Ok(Bytes::from(json)));
        }
        self.sweeps.set(true);
        self.queue_waiting(cmd, Waiter::Dir(done));
    }

    /// Tell the waiter of queued command `id` its outcome.
    fn settle(&self, id: u64, outcome: Outcome) {
        let waiter = self.confirms.borrow_mut().remove(&id);
        match (waiter, outcome) {
            (Some(Waiter::Publish(cb)), Outcome::Reached(n)) => {
                cb(n.map(Some).ok_or(ChannelError::Unconfirmed))
            }
            (Some(Waiter::Dir(cb)), Outcome::Answer(a)) => cb(a.ok_or(ChannelError::Unconfirmed)),
            (Some(w), _) => w.fail(),
            (None, _) => {}
        }
    }

    /// Answer the confirmed publishes among the first `n` outbound commands with `Unconfirmed`
    /// and remove them from the queue; the others stay for a retry.
    fn fail_confirmed(&self, n: usize) {
        let mut failed = Vec::new();
        {
            let mut out = self.outbound.borrow_mut();
            let at = n.min(out.len());
            let rest = out.split_off(at);
            let mut kept: VecDeque<_> = out
                .drain(..)
                .filter(|(_, c)| match c {
                    Some(id) => {
                        failed.push(*id);
                        false
                    }
                    None => true,
                })
                .collect();
            kept.extend(rest);
            *out = kept;
        }
        for id in failed {
            let waiter = self.confirms.borrow_mut().remove(&id);
            if let Some(w) = waiter {
                w.fail();
            }
        }
    }

    /// Stop for good: leave the `publish_loop` memberships, and remove the clients this link
    /// registered in the directory.
    fn shut(&self) {
        self.closed.set(true);
        self.wake_out.notify_one();
        self.wake_queue.notify_one();
        let members: Vec<Key> = self.events.borrow().iter().cloned().collect();
        let workers: Vec<u32> = self.dir_workers.borrow().iter().copied().collect();
        if let Some(mut bus) = self.manager.borrow().clone() {
            let id = self.id.clone();
            let shown = self.shown.clone();
            actix_rt::spawn(async move {
                if !workers.is_empty() {
                    match directory::drop_workers(&mut bus, &id, &workers).await {
                        Ok(n) => log::debug!(
                            "redis {shown}: directory: {n} clients of workers {workers:?} removed"
                        ),
                        Err(e) => log::warn!(
                            "redis {shown}: directory: clients of workers {workers:?} not \
                             removed ({e}); a sweep will"
                        ),
                    }
                }
                let cmds = members
                    .iter()
                    .map(|k| {
                        let key = loop_keys(k).0;
                        let mut c = redis::cmd("ZREM");
                        c.arg(&key).arg(&id);
                        (key, c)
                    })
                    .collect();
                let _ = bus.run(cmds).await;
            });
        }
        *self.owner.borrow_mut() = None;
    }

    fn set_up(&self, up: bool) {
        if self.up.replace(up) != up {
            if let Some(o) = self.owner() {
                if up {
                    o.up();
                } else {
                    o.down();
                }
            }
        }
    }
}

impl Waiter {
    /// Tell the waiter that the outcome is not known.
    fn fail(self) {
        match self {
            Waiter::Publish(cb) => cb(Err(ChannelError::Unconfirmed)),
            Waiter::Dir(cb) => cb(Err(ChannelError::Unconfirmed)),
        }
    }
}

impl Broker for RedisLink {
    fn send(&self, cmd: Command) -> Result<(), ChannelError> {
        self.queue(cmd);
        Ok(())
    }

    fn publish_confirmed(&self, cmd: Command, done: Confirm) {
        self.queue_confirmed(cmd, done);
    }

    fn request(&self, cmd: Command, done: Reply) {
        self.queue_request(cmd, done);
    }

    fn leases(&self) -> Option<Rc<dyn Leases>> {
        let me: Rc<dyn Leases> = self.me.upgrade()?;
        Some(me)
    }

    fn close(&self) {
        self.shut();
    }
}

async fn connect(link: &Weak<RedisLink>) -> Option<Bus> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let l = link.upgrade()?;
        if l.closed.get() {
            return None;
        }
        let url = l.url.clone();
        let ca = l.ca.clone();
        let shown = l.shown.clone();
        let inbox = format!("{PREFIX_INBOX}{}", l.id);
        let events: Vec<String> = l.events.borrow().iter().map(event_channel).collect();
        let weak = link.clone();
        drop(l);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let attempt = async {
            // The inbox (publish_loop) is classic pub/sub in both modes: a script publishes
            // to it from whichever node holds the loop's keys.
            let mut bus = if is_cluster(&url, ca.as_deref()).await? {
                let client = cluster_builder(&url, ca.as_deref())?
                    .push_sender(tx)
                    .build()?;
                let mut c = client.get_async_connection().await?;
                c.subscribe(&inbox).await?;
                Bus::Cluster(c)
            } else {
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(tx)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1);
                let client = open_client(url.as_str(), ca.as_deref())?;
                let mut m = client.get_connection_manager_with_config(config).await?;
                m.subscribe(&inbox).await?;
                Bus::Single(m)
            };
            if !events.is_empty() {
                bus.subscribe_events(&events).await?;
            }
            Ok::<_, redis::RedisError>(bus)
        };
        match attempt.await {
            Ok(bus) => {
                if matches!(bus, Bus::Cluster(_)) {
                    log::info!("redis {shown}: a cluster; sharded pub/sub");
                }
                actix_rt::spawn(run_pushes(weak, rx));
                return Some(bus);
            }
            Err(e) => {
                log::warn!("redis {shown}: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Hand queued commands to Redis in order, pipelined; on an error keep them and reconnect.
async fn run_outbound(link: Weak<RedisLink>) {
    let mut backoff = Duration::from_millis(100);
    // Confirmed publishes Redis answered in the last batch whose subscribers' writes no
    // later reply has proven yet (see `execute`): the next batch's reply proves them.
    let mut unproven: Vec<(u64, Outcome)> = Vec::new();
    loop {
        let Some(l) = link.upgrade() else { return };
        if l.closed.get() {
            settle_all(&l, std::mem::take(&mut unproven), false);
            return;
        }
        let current = l.manager.borrow().clone();
        let mut manager = match current {
            Some(m) => m,
            None => {
                drop(l);
                let Some(m) = connect(&link).await else {
                    return;
                };
                let Some(l) = link.upgrade() else { return };
                *l.manager.borrow_mut() = Some(m);
                l.set_up(true);
                continue;
            }
        };
        // A batch is directory commands only (one pipeline of script calls), or none; at
        // most `MAX_BATCH` commands, and directory commands up to `MAX_DIR_BATCH_BYTES` (a
        // script's work grows with its operation: a pipeline must be answered well within
        // the response timeout).
        let batch: Vec<(Command, Option<u64>)> = {
            let out = l.outbound.borrow();
            let kind = out.front().map(|(c, _)| batch_kind(c));
            let mut bytes = 0;
            out.iter()
                .take(MAX_BATCH)
                .take_while(|(c, _)| Some(batch_kind(c)) == kind)
                .take_while(|(c, _)| {
                    let first = bytes == 0;
                    if let Command::Dir(data) = c {
                        bytes += data.len().max(1);
                    }
                    first || bytes <= MAX_DIR_BATCH_BYTES
                })
                .cloned()
                .collect()
        };
        if batch.is_empty() {
            if !unproven.is_empty() {
                // Nothing came to carry the proof: a `PING` of its own, in a task of its own,
                // so that what is queued while it travels goes at once (and proves it too:
                // whichever answer comes first settles them; a settled waiter is gone).
                let outcomes = std::mem::take(&mut unproven);
                actix_rt::spawn(prove_apart(link.clone(), manager.clone(), outcomes));
                continue;
            }
            l.wake_out.notified().await;
            continue;
        }
        let id = l.id.clone();
        drop(l);
        // Whether Redis answered a command of this batch (what proves the last batch's writes);
        // every kind of batch tells.
        let mut answered = false;
        let result = if history::is_history(&batch[0].0) {
            history::execute(&mut manager, &batch, event_channel)
                .await
                .map(|(outcomes, replied)| {
                    answered = replied;
                    (outcomes, Vec::new())
                })
        } else if matches!(batch[0].0, Command::Dir(_)) {
            let (mut bus, cache) = directory_bus(&link, &manager, &batch).await;
            directory::execute(&mut bus, &id, &batch, cache.as_ref())
                .await
                .map(|done| {
                    answered = done.replied;
                    let outcomes = done
                        .answers
                        .into_iter()
                        .map(|(id, a)| match done.unproven {
                            true => (id, Outcome::UnprovenAnswer(a)),
                            false => (id, Outcome::Answer(a)),
                        })
                        .collect();
                    (outcomes, done.registered)
                })
        } else {
            execute(&mut manager, &id, &batch)
                .await
                .map(|(outcomes, replied)| {
                    answered = replied;
                    (outcomes, Vec::new())
                })
        };
        if !answered && !unproven.is_empty() && result.is_ok() {
            // Nothing of this batch reached Redis (or it does not tell): a command of its own.
            let outcomes = std::mem::take(&mut unproven);
            prove_apart(link.clone(), manager.clone(), outcomes).await;
        }
        match result {
            Ok((outcomes, registered)) => {
                backoff = Duration::from_millis(100);
                let Some(l) = link.upgrade() else { return };
                l.outbound.borrow_mut().drain(..batch.len());
                if !registered.is_empty() {
                    l.registered_at.set(Some(std::time::Instant::now()));
                    l.dir_workers.borrow_mut().extend(registered);
                }
                l.set_up(true);
                // This batch was sent after the last one's replies came, and Redis answered
                // it: the last one's loop iteration, subscribers' writes included, is done.
                settle_all(&l, std::mem::take(&mut unproven), true);
                for (id, outcome) in outcomes {
                    match outcome {
                        Outcome::Unproven(n) => unproven.push((id, Outcome::Reached(Some(n)))),
                        Outcome::UnprovenAnswer(a) => unproven.push((id, Outcome::Answer(a))),
                        outcome => l.settle(id, outcome),
                    }
                }
            }
            Err(e) if !retry(&e) => {
                // Redis refused a command (it answered): prove the last batch's writes on
                // their own.
                if !unproven.is_empty() {
                    let outcomes = std::mem::take(&mut unproven);
                    prove_apart(link.clone(), manager.clone(), outcomes).await;
                }
                let Some(l) = link.upgrade() else { return };
                log::error!(
                    "redis {}: {e}; {} commands not repeated",
                    l.shown,
                    batch.len()
                );
                l.fail_confirmed(batch.len());
                l.outbound
                    .borrow_mut()
                    .drain(..batch.len() - confirmed_in(&batch));
            }
            Err(e) => {
                let Some(l) = link.upgrade() else { return };
                // The directory's connection goes too, if it was that one; a new one is made
                // for the next send to a uid.
                if l.dir_bus.borrow_mut().take().is_some() {
                    l.uid_cache.stop();
                }
                // The connection failed: whether the last batch's events were written is
                // not known.
                settle_all(&l, std::mem::take(&mut unproven), false);
                // Confirmed publishes are answered now (they may or may not have run); the
                // other commands are sent again.
                l.fail_confirmed(batch.len());
                log::warn!(
                    "redis {}: {e}; {} commands kept for retry",
                    l.shown,
                    l.outbound.borrow().len()
                );
                l.set_up(false);
                drop(l);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The bus for a directory batch, with the uids' holders cached for it: on a single server,
/// once a batch sends to a uid, the link's directory connection, which tracks them (made
/// then, and again after it failed); else the connection manager, without a cache. Batches
/// run one after the other, so directory operations keep their order with the link's other
/// commands whichever connection carries them.
async fn directory_bus(
    link: &Weak<RedisLink>,
    manager: &Bus,
    batch: &[(Command, Option<u64>)],
) -> (Bus, Option<uid_cache::UidCache>) {
    let without = || (manager.clone(), None);
    let Some(l) = link.upgrade() else {
        return without();
    };
    if !matches!(manager, Bus::Single(_)) || l.uid_cache.refused_within(TRACKING_RETRY) {
        return without();
    }
    let cache = l.uid_cache.clone();
    let current = l.dir_bus.borrow().clone();
    if let Some(bus) = current {
        if cache.live() {
            return (bus, Some(cache));
        }
        // It failed (its reader saw the connection close): replaced below.
        l.dir_bus.borrow_mut().take();
    }
    let sends_to_a_uid = batch
        .iter()
        .any(|(c, _)| matches!(c, Command::Dir(data) if directory::is_uid_send(data)));
    if !sends_to_a_uid {
        return without();
    }
    let (url, ca, shown) = (l.url.clone(), l.ca.clone(), l.shown.clone());
    drop(l);
    let conn = cache.begin();
    let attempt = async {
        let tracked =
            tap::connect(&url, ca.as_deref(), RESPONSE_TIMEOUT, cache.clone(), conn).await?;
        let mut bus = Bus::Direct(tracked);
        let mut track = redis::cmd("CLIENT");
        track.arg("TRACKING").arg("ON").arg("OPTIN");
        bus.run(vec![(String::new(), track)]).await?;
        Ok::<_, redis::RedisError>(bus)
    };
    let result = attempt.await;
    let Some(l) = link.upgrade() else {
        return without();
    };
    match result {
        Ok(bus) => {
            cache.start(conn);
            *l.dir_bus.borrow_mut() = Some(bus.clone());
            (bus, Some(cache))
        }
        Err(e) if retry(&e) => {
            log::warn!("redis {shown}: directory connection: {e}; sends to uids use scripts");
            without()
        }
        Err(e) => {
            log::warn!(
                "redis {shown}: no client-side tracking ({e}): sends to uids run a script; \
                 trying again in {TRACKING_RETRY:?}"
            );
            cache.refuse();
            without()
        }
    }
}

/// Prove `outcomes` with a `PING` of their own on `bus` (sent after their replies came), then
/// settle them.
async fn prove_apart(link: Weak<RedisLink>, mut bus: Bus, outcomes: Vec<(u64, Outcome)>) {
    let proven = written(&mut bus, Vec::new()).await;
    if let Some(l) = link.upgrade() {
        settle_all(&l, outcomes, proven);
    }
}

/// Tell the waiters of confirmed publishes Redis answered their counts, once a later reply
/// `proven` their writes (else `Unconfirmed`).
fn settle_all(l: &RedisLink, outcomes: Vec<(u64, Outcome)>, proven: bool) {
    for (id, outcome) in outcomes {
        l.settle(
            id,
            if proven {
                outcome
            } else {
                Outcome::Reached(None)
            },
        );
    }
}

/// Which batches a command goes in: directory operations (0), history calls (1), the rest (2).
fn batch_kind(cmd: &Command) -> u8 {
    match cmd {
        Command::Dir(_) => 0,
        c if history::is_history(c) => 1,
        _ => 2,
    }
}

/// The keys of a `publish_loop` name; the hash tag keeps both in one cluster slot.
fn loop_keys(k: &Key) -> (String, String) {
    let n = name_str(k);
    (
        format!("werkmann:loop:{{{n}}}:members"),
        format!("werkmann:loop:{{{n}}}:rr"),
    )
}

fn confirmed_in(batch: &[(Command, Option<u64>)]) -> usize {
    batch.iter().filter(|(_, c)| c.is_some()).count()
}

/// Run a batch; returns each confirmed publish's key with the subscriptions it reached (`None`
/// when the connection failed before that was certain).
/// With whether Redis answered any of it.
///
/// On a single server the counts come back [`Outcome::Unproven`], without a `PING` round trip
/// here (see [`written`]): the caller settles them when the next batch is answered, or with a
/// `PING` that does not hold back what comes meanwhile.
async fn execute(
    bus: &mut Bus,
    id: &str,
    batch: &[(Command, Option<u64>)],
) -> redis::RedisResult<(Vec<(u64, Outcome)>, bool)> {
    let mut cmds = Vec::new();
    // For each wanted reply, the confirmed publish it belongs to.
    let mut replies_of: Vec<u64> = Vec::new();
    let mut subscribe = Vec::new();
    // Confirmed subscriptions (`Client::when_subscribed`): answered once Redis confirmed them.
    let mut subscribed = Vec::new();
    let mut unsubscribe = Vec::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for (cmd, confirm) in batch {
        match cmd {
            Command::Publish(names, data) => {
                for n in names {
                    let ch = event_channel(&n.key);
                    let mut c = redis::cmd(bus.publish_command());
                    c.arg(&ch).arg(data.as_ref());
                    cmds.push((ch, c, confirm.is_some()));
                    replies_of.extend(*confirm);
                }
            }
            // In batches of their own: `history::execute`.
            Command::PublishKept(..) | Command::History(..) => {}
            Command::PublishLoop(names, data) => {
                for n in names {
                    let (members, rr) = loop_keys(&n.key);
                    let mut c = redis::cmd("EVAL");
                    c.arg(LOOP_SCRIPT)
                        .arg(2)
                        .arg(&members)
                        .arg(rr)
                        .arg(PREFIX_INBOX)
                        .arg(inbox_payload(n, data));
                    cmds.push((members, c, false));
                }
            }
            Command::Enqueue(names, data) => {
                for n in names {
                    let key = queue_key(&n.key);
                    let mut c = redis::cmd("XADD");
                    c.arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(1_000_000)
                        .arg("*")
                        .arg("d")
                        .arg(data.as_ref());
                    cmds.push((key, c, false));
                }
            }
            Command::Subscribe(names) => {
                subscribed.extend(*confirm);
                for n in names {
                    subscribe.push(event_channel(&n.key));
                    let key = loop_keys(&n.key).0;
                    let mut c = redis::cmd("ZADD");
                    c.arg(&key).arg(now_ms + MEMBERSHIP_TTL_MS).arg(id);
                    cmds.push((key, c, false));
                }
            }
            Command::Unsubscribe(names) => {
                for n in names {
                    unsubscribe.push(event_channel(&n.key));
                    let key = loop_keys(&n.key).0;
                    let mut c = redis::cmd("ZREM");
                    c.arg(&key).arg(id);
                    cmds.push((key, c, false));
                }
            }
            Command::Watch(names) => {
                for n in names {
                    // Created once, reading from the start, so items enqueued before the first
                    // watcher are kept for it; a second creation answers BUSYGROUP.
                    let key = queue_key(&n.key);
                    let mut c = redis::cmd("XGROUP");
                    c.arg("CREATE")
                        .arg(&key)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM");
                    match bus.run(vec![(key, c)]).await {
                        Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
                        _ => {}
                    }
                }
            }
            Command::Ping => cmds.push((String::new(), redis::cmd("PING"), false)),
            Command::Unwatch(_) | Command::Reserve | Command::Auth(_) | Command::Hello => {}
            // Never sent to Redis (`Broker::parks`); a waking publish was unwrapped when queued.
            Command::Park(_) | Command::Unpark(_) | Command::Waking(_) => {}
            // In batches of their own: `directory::execute`.
            Command::Dir(_) => {}
        }
    }
    if !subscribe.is_empty() {
        bus.subscribe_events(&subscribe).await?;
    }
    // Redis answered the subscriptions: what is published from now on reaches them.
    let subscribed: Vec<(u64, Outcome)> = subscribed
        .into_iter()
        .map(|id| (id, Outcome::Reached(Some(0))))
        .collect();
    if !unsubscribe.is_empty() {
        bus.unsubscribe_events(&unsubscribe).await?;
    }
    // The channels of confirmed publishes, for the round trip below (a cluster probes each;
    // a single server needs none).
    let confirmed_channels: Vec<String> = if bus.is_single() {
        Vec::new()
    } else {
        let mut v: Vec<String> = cmds
            .iter()
            .filter(|(_, _, want)| *want)
            .map(|(ch, _, _)| ch.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    // An empty pipeline is not sent at all: Redis answered nothing of this batch.
    let replied = !cmds.is_empty();
    let replies = bus.run_with_replies(cmds).await?;
    let mut reached: Vec<(u64, Option<usize>)> = Vec::new();
    for (confirm, v) in replies_of.into_iter().zip(replies) {
        let n = match v {
            RValue::Int(n) => n.max(0) as usize,
            _ => 0,
        };
        match reached.last_mut() {
            Some((c, Some(total))) if *c == confirm => *total += n,
            _ => reached.push((confirm, Some(n))),
        }
    }
    if !reached.is_empty() && bus.is_single() {
        let unproven = reached
            .into_iter()
            .map(|(id, n)| (id, Outcome::Unproven(n.unwrap_or(0))))
            .chain(subscribed)
            .collect();
        return Ok((unproven, replied));
    }
    if !reached.is_empty() && !written(bus, confirmed_channels).await {
        for (_, n) in &mut reached {
            *n = None;
        }
    }
    let outcomes = reached
        .into_iter()
        .map(|(id, n)| (id, Outcome::Reached(n)))
        .chain(subscribed)
        .collect();
    Ok((outcomes, replied))
}

/// Whether what was published on `channels` was surely written to the subscribers: Redis
/// answers PUBLISH before it writes the message to the subscribers' sockets (both happen when
/// its event loop next sleeps, the publisher first), so a Redis killed in between answered a
/// count for messages nobody gets. Once a later command, sent after that answer came, is answered
/// (on a single server, on any connection; on a cluster, by the same nodes), that loop
/// iteration — and every write of it — is done.
/// On a single server under load the next batch is that later command (`run_outbound`); this
/// `PING` is for the last batch of a burst, and for a cluster.
async fn written(bus: &mut Bus, channels: Vec<String>) -> bool {
    let after = match bus {
        Bus::Single(_) | Bus::Direct(_) => bus.run(vec![(String::new(), redis::cmd("PING"))]).await,
        Bus::Cluster(_) => {
            let probes = channels
                .into_iter()
                .map(|ch| {
                    let mut c = redis::cmd("EXISTS");
                    c.arg(&ch);
                    (ch, c)
                })
                .collect();
            bus.run(probes).await
        }
    };
    after.is_ok()
}

/// Whether a failed batch may be sent again: only when the connection failed. A command that
/// Redis refused (the others of its pipeline did run) is not repeated.
fn retry(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// `a:2:{i:0;<name>;i:1;<data>}`: what an inbox carries for `publish_loop`.
fn inbox_payload(name: &WireName, data: &Bytes) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + name.raw.len() + data.len());
    php_serde::write_array_start(&mut out, 2);
    Key::Int(0).write(&mut out);
    out.extend_from_slice(&name.raw);
    Key::Int(1).write(&mut out);
    out.extend_from_slice(data);
    out.push(b'}');
    out
}

fn parse_inbox(payload: &Bytes) -> Option<(Key, Bytes)> {
    let mut r = Reader::new(payload);
    if r.array_start().ok()? != 2 {
        return None;
    }
    r.key().ok()?;
    let name = r.key().ok()?;
    r.key().ok()?;
    let range = r.skip().ok()?;
    Some((name, payload.slice(range)))
}

/// Deliver what Redis pushes: messages on event channels and the inbox; notice disconnects.
async fn run_pushes(
    link: Weak<RedisLink>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    while let Some(push) = rx.recv().await {
        let Some(l) = link.upgrade() else { return };
        match push.kind {
            PushKind::Disconnection => {
                l.set_up(false);
                // The manager reconnects on the next command; make sure there is one.
                l.outbound.borrow_mut().push_back((Command::Ping, None));
                l.wake_out.notify_one();
            }
            PushKind::Message | PushKind::SMessage => {
                let (Some(RValue::BulkString(ch)), Some(RValue::BulkString(data))) =
                    (push.data.first(), push.data.get(1))
                else {
                    continue;
                };
                let ch = String::from_utf8_lossy(ch);
                let data = Bytes::copy_from_slice(data);
                let delivery = if let Some(name) = ch.strip_prefix(PREFIX_EVENT) {
                    let (pos, data) = history::parse_event(data);
                    Some(Delivery {
                        kind: DeliveryKind::Event,
                        channel: Key::from_str_normalized(directory::event_name(name)),
                        data,
                        pos,
                    })
                } else if ch.starts_with(PREFIX_INBOX) {
                    parse_inbox(&data).map(|(channel, data)| Delivery {
                        kind: DeliveryKind::Event,
                        channel,
                        data,
                        pos: None,
                    })
                } else {
                    None
                };
                if let (Some(d), Some(o)) = (delivery, l.owner()) {
                    o.delivery(d);
                }
            }
            PushKind::Subscribe => l.set_up(true),
            _ => {}
        }
    }
}

/// Keep this client's `publish_loop` memberships alive.
async fn run_membership(link: Weak<RedisLink>) {
    loop {
        tokio::time::sleep(MEMBERSHIP_REFRESH).await;
        let Some(l) = link.upgrade() else { return };
        if l.closed.get() {
            return;
        }
        let names: Vec<WireName> = l
            .events
            .borrow()
            .iter()
            .cloned()
            .map(WireName::from_key)
            .collect();
        if !names.is_empty() && l.up.get() {
            // Re-sending the subscription refreshes the expiry; the manager ignores the
            // duplicate SUBSCRIBE.
            l.outbound
                .borrow_mut()
                .push_back((Command::Subscribe(names), None));
            l.wake_out.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_payload_round_trip() {
        let name = WireName::from_key(Key::Int(3));
        let data = Bytes::from_static(b"a:1:{s:1:\"x\";i:1;}");
        let p = Bytes::from(inbox_payload(&name, &data));
        let (k, d) = parse_inbox(&p).unwrap();
        assert_eq!(k, Key::Int(3));
        assert_eq!(d, data);
    }

    #[test]
    fn resp3_is_requested() {
        assert_eq!(with_resp3("redis://h:1/0"), "redis://h:1/0?protocol=resp3");
        assert_eq!(
            with_resp3("redis://h:1/0?x=1"),
            "redis://h:1/0?x=1&protocol=resp3"
        );
    }
}

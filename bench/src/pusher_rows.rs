//! The Pusher rows (issue 17): werkmann's Pusher protocol (`start_all --apps-file`) next to
//! Soketi, one session each, the same clients speaking Pusher to both (`pusher.rs`):
//!
//! 1. **publish**: on the fresh server, `pusher_subs` clients on the public channel and
//!    `pusher_publishes` signed `POST /apps/{id}/events`, `inflight` in flight on keep-alive
//!    connections: publishes/s and the requests' p50/p99; every one must be answered 200 and
//!    reach every subscriber exactly once.
//! 2. **idle**: `pusher_n` clients subscribed to the public channel: server memory (PSS and
//!    RSS of every process) per connection, after a warm-up publish reached them all.
//! 3. **broadcast**: on them, `pusher_m` signed publishes back to back: deliveries per server
//!    CPU-second (and per second, latency); each client must get each exactly once.
//! 4. **presence**: `pusher_presence` clients each joining `presence-bench` as user `u{i}`
//!    (signed with the app's secret, as an auth endpoint would): joins/s from the first connect
//!    to the last `subscription_succeeded`, the channel's `user_count` (HTTP API) checked to
//!    be all of them; then every client closes, and leaves/s until `user_count` is 0.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::clock::mono_ns;
use crate::hist::Hist;
use crate::http::Conn;
use crate::proto::{payload, Flavor, Kind};
use crate::pusher;
use crate::row::{self, Row, Scenario};
use crate::run::{k, record_answer, Publish, Suite};
use crate::systems::{Running, Setup};

/// The idle row's label.
pub fn idle_label(n: u32) -> String {
    format!("Pusher idle {}", k(n))
}

/// The broadcast row's label.
pub fn broadcast_label(n: u32, m: u32) -> String {
    format!("Pusher broadcast {} × {m}", k(n))
}

/// The publish row's label.
pub fn publish_label(subs: u32, inflight: usize) -> String {
    format!("Pusher publish, {inflight} in flight, {subs} subscribers")
}

/// The presence row's label.
pub fn presence_label(n: u32) -> String {
    format!("Pusher presence join/leave {}", k(n))
}

/// Longest the presence channel may take to empty after the clients closed.
const LEAVE_CAP: Duration = Duration::from_secs(120);

impl Suite {
    /// The Pusher sessions' setups: werkmann's `start_all` (each build), then Soketi.
    pub(crate) fn setups_pusher(&self) -> Vec<Setup> {
        let mut v: Vec<Setup> = self
            .builds()
            .into_iter()
            .map(|build| Setup::WerkmannPusher { build })
            .collect();
        if self.sys("soketi") {
            v.push(Setup::Soketi);
        }
        v
    }

    /// The four Pusher rows on one setup (see the module's text).
    pub(crate) async fn session_pusher(&mut self, setup: Setup) -> Result<()> {
        let p = self.opts.plan.clone();
        let mut sys = self.start(setup, "pusher").await?;
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        // 1. Publishes, on the fresh server.
        let mut gen = self.gen(p.pusher_subs).await?;
        let opened = gen
            .open(Flavor::Pusher, &sys.ws.clone(), p.pusher_subs)
            .await?;
        if opened.failed > 0 {
            bail!(
                "{} of {} subscribers failed to open: {}",
                opened.failed,
                p.pusher_subs,
                opened.first_error.unwrap_or_default()
            );
        }
        let live = gen.live.len() as u64;
        crate::run::warm(&mut gen, &sys.api, &mut conn, live).await?;
        let mut runs = Vec::new();
        for _ in 0..p.repeats {
            runs.push(self.pusher_publish(&sys, &mut gen, &mut conns).await?);
        }
        if let Some(r) = row::median(runs) {
            self.push(r);
        }
        gen.quit().await;
        sys.check_alive()?;
        // 2. and 3. Idle clients, then broadcasts to them.
        let mut gen = self.gen(p.pusher_n).await?;
        let i = self.idle(&mut sys, &mut gen, &mut conn, p.pusher_n).await?;
        let mut row = self.idle_row(&idle_label(p.pusher_n), setup, &i);
        row.scenario = Scenario::Pusher;
        self.push(row);
        let mut runs = Vec::new();
        for _ in 0..p.repeats {
            let how = Publish::Burst {
                inflight: p.inflight,
            };
            let d = self
                .deliver(&sys, &mut gen, &mut conns, Kind::Broadcast, p.pusher_m, how)
                .await?;
            let label = broadcast_label(p.pusher_n, p.pusher_m);
            runs.push(self.delivery_row(Scenario::Pusher, &label, setup, &d));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(r) = row::median(runs) {
            self.push(r);
        }
        gen.quit().await;
        sys.check_alive()?;
        // 4. Presence.
        let r = self.pusher_presence(&sys, &mut conn).await?;
        self.push(r);
        sys.check_alive()?;
        sys.stop();
        Ok(())
    }

    /// One run of the publish row on the subscribed clients of `gen`.
    async fn pusher_publish(
        &mut self,
        sys: &Running,
        gen: &mut crate::gen::Gen,
        conns: &mut Vec<Conn>,
    ) -> Result<Row> {
        let p = self.opts.plan.clone();
        let count = p.pusher_publishes;
        let subs = gen.live.len() as u64;
        let phase = gen.phase(Kind::Broadcast, count).await?;
        let (api, size) = (sys.api, p.size);
        let next = Arc::new(AtomicU32::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first = Arc::new(Mutex::new(None::<String>));
        let hist = Arc::new(Mutex::new(Hist::default()));
        let cpu0 = sys.cpu_ns();
        let start = Instant::now();
        let mut tasks = Vec::new();
        let n = p.inflight.clamp(1, conns.len().max(1));
        for mut c in conns.drain(..n.min(conns.len())) {
            let (next, ok, failed, first, hist) = (
                next.clone(),
                ok.clone(),
                failed.clone(),
                first.clone(),
                hist.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let t = mono_ns();
                    let req = api.broadcast(&payload(phase, Kind::Broadcast, i, 0, t, size));
                    let r = c.roundtrip(&req).await;
                    let took = mono_ns().saturating_sub(t);
                    if matches!(&r, Ok((200, _))) {
                        hist.lock().expect("hist").record(took);
                    }
                    record_answer(r, &ok, &failed, &first);
                }
                c
            }));
        }
        for t in tasks {
            conns.push(t.await?);
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = sys.cpu_ns().saturating_sub(cpu0);
        let ok = ok.load(Ordering::Relaxed);
        let cap = Duration::from_secs(if self.opts.quick { 30 } else { 60 });
        gen.wait_received(subs * ok, Duration::from_secs(5), cap)
            .await?;
        let rep = gen.report().await?;
        let mut r = Row::new(Scenario::Pusher, &publish_label(subs as u32, n), sys.setup);
        r.set("requests", ok as f64);
        r.set("req_per_s", ok as f64 / secs);
        if ok > 0 {
            r.set("cpu_us", cpu as f64 / 1e3 / ok as f64);
        }
        let h = hist.lock().expect("hist");
        for (key, q) in [("p50_ms", 0.5), ("p99_ms", 0.99)] {
            if let Some(v) = h.quantile_ns(q) {
                r.set(key, v as f64 / 1e6);
            }
        }
        r.set("received", rep.progress.received as f64);
        if let Some(v) = rep.hist.quantile_ns(0.99) {
            r.set("delivery_p99_ms", v as f64 / 1e6);
        }
        r.errors.http = failed.load(Ordering::Relaxed);
        r.errors.missing = rep.missing;
        r.errors.dup = rep.progress.dup;
        r.errors.stray = rep.progress.stray;
        r.errors.bad = rep.progress.bad;
        if let Some(e) = first.lock().expect("error").take() {
            r.notes.push(format!("first failed publish: {e}"));
        }
        Ok(r)
    }

    /// The presence row: joins, the member count, leaves.
    async fn pusher_presence(&mut self, sys: &Running, conn: &mut Conn) -> Result<Row> {
        let n = self.opts.plan.pusher_presence;
        let mut r = Row::new(Scenario::Pusher, &presence_label(n), sys.setup);
        let mut gen = self.gen(n).await?;
        let cpu0 = sys.cpu_ns();
        let opened = gen.open(Flavor::PusherPresence, &sys.ws.clone(), n).await?;
        let cpu1 = sys.cpu_ns();
        r.set("clients", f64::from(opened.opened));
        r.set("joins_per_s", f64::from(opened.opened) / opened.secs);
        r.set("join_cpu_s", cpu1.saturating_sub(cpu0) as f64 / 1e9);
        r.errors.open_failed = u64::from(opened.failed);
        if let Some(e) = opened.first_error {
            r.notes.push(format!("first failed join: {e}"));
        }
        // Every member counted once.
        let members = presence_count(sys, conn).await;
        match members {
            Ok(c) if c == u64::from(opened.opened) => {}
            Ok(c) => {
                r.errors.missing += u64::from(opened.opened).abs_diff(c);
                r.notes
                    .push(format!("user_count {c} after {} joins", opened.opened));
            }
            Err(e) => r.notes.push(format!("user_count: {e:#}")),
        }
        // Everyone leaves at once.
        let cpu2 = sys.cpu_ns();
        let t0 = Instant::now();
        gen.close(opened.group).await?;
        let left = loop {
            match presence_count(sys, conn).await {
                Ok(0) => break Ok(t0.elapsed()),
                Ok(c) if t0.elapsed() > LEAVE_CAP => break Err(format!("{c} members left")),
                Err(e) if t0.elapsed() > LEAVE_CAP => break Err(format!("{e:#}")),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let cpu3 = sys.cpu_ns();
        gen.quit().await;
        match left {
            Ok(d) => {
                r.set("leaves_per_s", f64::from(opened.opened) / d.as_secs_f64());
                r.set("leave_cpu_s", cpu3.saturating_sub(cpu2) as f64 / 1e9);
            }
            Err(e) => {
                r.errors.missing += 1;
                r.notes.push(format!(
                    "the channel did not empty within {} s: {e}",
                    LEAVE_CAP.as_secs()
                ));
            }
        }
        Ok(r)
    }
}

/// The presence channel's `user_count`, through the signed HTTP API.
async fn presence_count(sys: &Running, conn: &mut Conn) -> Result<u64> {
    let (status, body) = conn
        .roundtrip(&pusher::presence_count(sys.api.addr))
        .await?;
    if status != 200 {
        bail!("GET channels/{}: {status} {body}", pusher::PRESENCE);
    }
    pusher::user_count(&body).ok_or_else(|| anyhow::anyhow!("no user_count in {body}"))
}

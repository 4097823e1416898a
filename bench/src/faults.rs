//! The fault rows (issue 18's fault bench; `--only faults`, not in the default run):
//!
//! 1. **resets**: `fault_n` clients of the resuming WebSocket protocol (`resumer.rs`) follow
//!    `Broadcast` on every WebSocket node (after one push, so that they stand in the name's
//!    epoch); once each stands (`ready`), a pacer pushes `GET /?content=SEQ` (0, 1, 2, …) at
//!    `fault_rate` per second for `fault_secs` seconds, and every second `fault_reset_pct` %
//!    of the clients, drawn at random and spread over the second, abort their connection (a
//!    RST) and reconnect at once, to the next node, with the last id they got. After the last
//!    push, until every client has every
//!    push (or nothing moved for 5 s): pushes lost silently (target 0: the history, 100 per
//!    name, covers what a reset client misses), duplicated (0), `recovered: false` signals
//!    (0), and of those the ones where the history still covered the gap (never due); resume
//!    latency (reconnect's start to `recovery`) p50/p99; reconnects; refused handshakes,
//!    connections the server closed, frames out of place — all counted as errors. On every
//!    werkmann mode selected (cluster and Redis on 2 WebSocket nodes: a resume lands on the
//!    other node).
//! 2. **history on and off**: the broadcast row (`bcast_n` clients, `bcast_m` pushes back to
//!    back) on two all-in-one servers started side by side, the default history
//!    (`*=100/5m`) and `--history '*=off'`; runs alternate between the two (on, off, off, on,
//!    …) and each reports the median: deliveries per server CPU-second, and on ÷ off (target
//!    ≥ 0.8).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::http::Conn;
use crate::proto::Kind;
use crate::resumer::{self, Shared};
use crate::row::{self, Row, Scenario};
use crate::run::{k, warm, Publish, Suite};
use crate::systems::{Build, Setup};

/// The history werkmann keeps per name by default (`--history '*=100/5m'`).
const DEFAULT_HISTORY: u64 = 100;
/// Handshakes in flight while the clients first connect.
const OPEN_CONCURRENCY: usize = 256;
/// Slices of a second the resets of a round are spread over.
const RESET_SLICES: usize = 20;
/// Longest the clients may take to stand.
const OPEN_CAP: Duration = Duration::from_secs(90);
/// After the last push: give up waiting when nothing arrived for this long…
const STALL: Duration = Duration::from_secs(5);
/// … or after this long.
const CATCH_UP_CAP: Duration = Duration::from_secs(30);

/// The reset row's label.
pub fn reset_label(n: u32, rate: u32, pct: u32, secs: u32) -> String {
    format!(
        "resets: {} clients × {rate}/s, {pct} % reset every second for {secs} s",
        k(n)
    )
}

/// The metrics cost rows' label (the mode tells which).
pub fn metrics_label(n: u32, m: u32) -> String {
    format!("metrics on/off: broadcast {} × {m}", k(n))
}

/// The history on/off rows' label (the mode tells which).
pub fn history_label(n: u32, m: u32) -> String {
    format!("history on/off: broadcast {} × {m}", k(n))
}

/// The `--history` rules of the history-off server.
pub const HISTORY_OFF: &str = "*=off";

impl Suite {
    /// The reset row's setups: each werkmann mode selected (2 WebSocket nodes in cluster and
    /// Redis modes), each build.
    pub(crate) fn setups_faults(&self) -> Vec<Setup> {
        self.setups_werkmann()
    }

    /// The reset row on one setup (see the module's text).
    pub(crate) async fn session_faults(&mut self, setup: Setup) -> Result<()> {
        let p = self.opts.plan.clone();
        let (n, rate, secs) = (p.fault_n, p.fault_rate.max(1), p.fault_secs.max(1));
        let pushes = rate * secs;
        let mut sys = self.start(setup, "faults").await?;
        let mut conn = Conn::connect(sys.api.addr).await?;
        let shared = Arc::new(Shared::new(
            pushes,
            DEFAULT_HISTORY,
            sys.ws.clone(),
            OPEN_CONCURRENCY,
        ));
        // One push first, so that the clients stand in the name's epoch: a reader at `0:0`
        // (a name that kept nothing yet) is told "not recovered" once anything was kept (the
        // hub cannot tell what it missed), which is not what this row measures.
        match conn.roundtrip(&sys.api.broadcast("start")).await? {
            (200..=299, _) => {}
            (s, body) => bail!("the first push was answered {s} {}", body.trim()),
        }
        let (wakes, tasks) = resumer::start(n, &shared);
        let opened = Instant::now();
        loop {
            let (r, f) = (
                shared.ready.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
            );
            if r + f >= u64::from(n) {
                break;
            }
            if opened.elapsed() > OPEN_CAP {
                shared.stop.store(true, Ordering::Relaxed);
                wakes.iter().for_each(|w| w.notify_one());
                bail!(
                    "only {r} of {n} resuming clients stood within {} s",
                    OPEN_CAP.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stood = shared.ready.load(Ordering::Relaxed);
        sys.check_alive()?;
        // The pacer: push `i` leaves at `i / rate` s (late ones catch up).
        let api = sys.api;
        let cpu0 = sys.cpu_ns();
        let base = tokio::time::Instant::now();
        let pacer = tokio::spawn(async move {
            let mut published = vec![false; pushes as usize];
            let (mut failed, mut first) = (0u64, None::<String>);
            for i in 0..pushes {
                let at = base + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                tokio::time::sleep_until(at).await;
                match conn.roundtrip(&api.broadcast(&i.to_string())).await {
                    Ok((s, _)) if (200..300).contains(&s) => published[i as usize] = true,
                    Ok((s, body)) => {
                        failed += 1;
                        first.get_or_insert(format!("{s} {}", body.trim()));
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (published, failed, first)
        });
        // The resets: each second of the pushes, `pct` % of the clients drawn at random, reset
        // spread over the second (in slices of 50 ms).
        let per_round = (n as usize * p.fault_reset_pct as usize / 100).clamp(1, n as usize);
        let mut ordered = 0u64;
        for round in 0..secs {
            let picked = rand::seq::index::sample(&mut rand::rng(), n as usize, per_round);
            let picked: Vec<usize> = picked.into_iter().collect();
            let per_slice = picked.len().div_ceil(RESET_SLICES);
            for (j, slice) in picked.chunks(per_slice).enumerate() {
                let at = f64::from(round) + j as f64 / RESET_SLICES as f64;
                tokio::time::sleep_until(base + Duration::from_secs_f64(at)).await;
                for &i in slice {
                    wakes[i].notify_one();
                }
            }
            ordered += per_round as u64;
        }
        let (published, http_failed, http_first) = pacer.await?;
        let ok = published.iter().filter(|p| **p).count() as u64;
        // Until every standing client has every push, or nothing moves.
        let due = stood * ok;
        let (wait0, mut last, mut last_change) = (Instant::now(), 0, Instant::now());
        loop {
            let d = shared.distinct.load(Ordering::Relaxed);
            if d >= due || last_change.elapsed() > STALL || wait0.elapsed() > CATCH_UP_CAP {
                break;
            }
            if d != last {
                (last, last_change) = (d, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = base.elapsed().as_secs_f64();
        let cpu = sys.cpu_ns().saturating_sub(cpu0);
        // Late duplicates would come now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        shared.stop.store(true, Ordering::Relaxed);
        wakes.iter().for_each(|w| w.notify_one());
        let mut t = Tally::default();
        for task in tasks {
            let s = task.await?;
            let (lost, announced) = s.missing(&published);
            t.lost += lost;
            t.announced += announced;
            t.dup += s.dup;
            t.out_of_order += s.out_of_order;
            t.bad += s.bad;
            t.text += s.text;
            t.reconnects += s.reconnects;
            t.refused += s.refused;
            t.dropped += s.dropped;
            t.not_recovered += s.not_recovered;
            t.covered += s.not_recovered_covered;
        }
        sys.check_alive()?;
        let deliveries = shared.distinct.load(Ordering::Relaxed);
        let mut r = Row::new(
            Scenario::Faults,
            &reset_label(n, rate, p.fault_reset_pct, secs),
            setup,
        );
        r.set("clients", stood as f64);
        r.set("pushes", ok as f64);
        r.set("deliveries", deliveries as f64);
        r.set("resets", ordered as f64);
        r.set("reconnects", t.reconnects as f64);
        r.set("lost", t.lost as f64);
        r.set("dup", t.dup as f64);
        r.set("not_recovered", t.not_recovered as f64);
        r.set("not_recovered_covered", t.covered as f64);
        r.set("announced_lost", t.announced as f64);
        r.set("refused", t.refused as f64);
        r.set("dropped", t.dropped as f64);
        r.set("out_of_order", t.out_of_order as f64);
        r.set("bad_frames", t.bad as f64);
        r.set("text_frames", t.text as f64);
        r.set("secs", wall);
        r.set("server_cpu_s", cpu as f64 / 1e9);
        if cpu > 0 {
            r.set("per_cpu_s", deliveries as f64 / (cpu as f64 / 1e9));
        }
        {
            let h = shared.resume.lock().expect("hist");
            r.set("resumes", h.count() as f64);
            for (key, q) in [("resume_p50_ms", 0.5), ("resume_p99_ms", 0.99)] {
                if let Some(v) = h.quantile_ns(q) {
                    r.set(key, v as f64 / 1e6);
                }
            }
            if h.count() > 0 {
                r.set("resume_max_ms", h.max_ns() as f64 / 1e6);
            }
        }
        r.errors.missing = t.lost;
        r.errors.dup = t.dup;
        r.errors.bad = t.bad + t.text + t.out_of_order + t.covered + t.dropped;
        r.errors.http = http_failed;
        r.errors.open_failed = t.refused + (u64::from(n) - stood);
        if let Some(e) = http_first {
            r.notes.push(format!("first failed push: {e}"));
        }
        if let Some(e) = shared.first_error.lock().expect("error").take() {
            r.notes.push(format!("first client error: {e}"));
        }
        self.push(r);
        sys.stop();
        Ok(())
    }

    /// The history on/off rows: two all-in-one servers side by side (see the module's text).
    pub(crate) async fn session_history(&mut self, build: Build) -> Result<()> {
        let p = &self.opts.plan;
        let label = history_label(p.bcast_n, p.bcast_m);
        let off = Setup::WerkmannHistory {
            build,
            rules: HISTORY_OFF,
        };
        self.side_by_side(&label, [Setup::WerkmannAll { build }, off])
            .await
    }

    /// The metrics cost rows: `start_all` with its admin port scraped every second next to
    /// one without (the same broadcast row, alternating runs).
    pub(crate) async fn session_metrics(&mut self, build: Build) -> Result<()> {
        let p = &self.opts.plan;
        let label = metrics_label(p.bcast_n, p.bcast_m);
        let on = Setup::WerkmannMetrics { build };
        self.side_by_side(&label, [on, Setup::WerkmannAll { build }])
            .await
    }

    /// The broadcast row on two all-in-one setups started side by side, runs alternating
    /// (a, b, then b, a, …), the median of each; a setup with a metrics port is scraped
    /// every second meanwhile (scrapes and failures in its row's notes).
    async fn side_by_side(&mut self, label: &str, setups: [Setup; 2]) -> Result<()> {
        let p = self.opts.plan.clone();
        let mut sides = Vec::new();
        for (i, s) in setups.into_iter().enumerate() {
            let sys = self.start(s, &format!("side-{i}")).await?;
            let mut conn = Conn::connect(sys.api.addr).await?;
            let mut conns = Vec::new();
            for _ in 0..p.inflight.max(1) {
                conns.push(Conn::connect(sys.api.addr).await?);
            }
            let mut gen = self.gen(p.bcast_n).await?;
            let opened = gen.open(s.flavor(), &sys.ws.clone(), p.bcast_n).await?;
            if opened.failed > 0 {
                bail!(
                    "{} ({}): {} of {} clients failed to open: {}",
                    s.system(),
                    s.mode(),
                    opened.failed,
                    p.bcast_n,
                    opened.first_error.unwrap_or_default()
                );
            }
            let live = gen.live.len() as u64;
            warm(&mut gen, &sys.api, &mut conn, live).await?;
            let scraper = sys.metrics.map(Scraper::start);
            sides.push((sys, gen, conns, Vec::new(), scraper));
        }
        for run in 0..p.repeats {
            // a, b, then b, a, …: neither always goes first.
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (sys, gen, conns, runs, _) = &mut sides[i];
                let how = Publish::Burst {
                    inflight: p.inflight,
                };
                let d = self
                    .deliver(sys, gen, conns, Kind::Broadcast, p.bcast_m, how)
                    .await?;
                runs.push(self.delivery_row(Scenario::Faults, label, sys.setup, &d));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        for (mut sys, gen, _, runs, scraper) in sides {
            gen.quit().await;
            sys.check_alive()?;
            sys.stop();
            if let Some(mut r) = row::median(runs) {
                if let Some(s) = scraper {
                    let (done, failed) = s.stop();
                    r.notes
                        .push(format!("{done} scrapes of /metrics, {failed} failed"));
                    if failed > 0 {
                        r.errors.http += failed;
                    }
                }
                self.push(r);
            }
        }
        Ok(())
    }
}

/// `GET /metrics` every second on a task of its own, until stopped.
struct Scraper {
    task: tokio::task::JoinHandle<()>,
    counts: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

impl Scraper {
    fn start(addr: std::net::SocketAddr) -> Scraper {
        let counts = Arc::new(Default::default());
        let c: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)> =
            Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let mut conn = Conn::connect(addr).await.ok();
            loop {
                every.tick().await;
                let ok = match conn.as_mut() {
                    Some(conn) => matches!(
                        conn.roundtrip(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").await,
                        Ok((200, ref body)) if body.contains("werkmann_")
                    ),
                    None => false,
                };
                let n = if ok { &c.0 } else { &c.1 };
                n.fetch_add(1, Ordering::Relaxed);
                if conn.is_none() {
                    conn = Conn::connect(addr).await.ok();
                }
            }
        });
        Scraper { task, counts }
    }

    /// Stop; the scrapes done and failed.
    fn stop(self) -> (u64, u64) {
        self.task.abort();
        (
            self.counts.0.load(Ordering::Relaxed),
            self.counts.1.load(Ordering::Relaxed),
        )
    }
}

/// The reset row's counts, summed over the clients.
#[derive(Default)]
struct Tally {
    lost: u64,
    announced: u64,
    dup: u64,
    out_of_order: u64,
    bad: u64,
    text: u64,
    reconnects: u64,
    refused: u64,
    dropped: u64,
    not_recovered: u64,
    covered: u64,
}

//! The Server-Sent Events rows (`--only sse`, not in the default run): werkmann's
//! `/sse?channel=Broadcast` on the publisher's port (each werkmann mode selected) next to
//! Nchan's EventSource subscribers (`nchan_subscriber eventsource`, 2 nginx workers, the last
//! 100 messages kept for 5 minutes as werkmann's default history keeps them). One session per
//! setup and run, the setups in turn (reversed every other run), each row the median of the
//! runs:
//!
//! 1. **idle**: `sse_n` streams from the generator processes, each on the broadcast channel:
//!    the server's memory (PSS and RSS of every process) after a warm-up push reached them
//!    all, less before, per stream.
//! 2. **broadcast**: on them, `sse_m` pushes back to back (`inflight` at a time): deliveries
//!    per server CPU-second; every stream must get every push once (each `data:` a push), its
//!    event ids in order.
//! 3. **paced**: `sse_paced_rate` pushes a second for `sse_paced_secs` s to the same streams:
//!    delivery latency (push sent → event read) p50/p99.
//! 4. **resume**: `sse_n` resuming streams in the coordinator (`sse_resumer.rs`) under
//!    `sse_rate` pushes a second (`data: SEQ`) for `sse_secs` s; every second `sse_drop_pct` %
//!    of them, drawn at random, abort their connection (RST) and reconnect 1 s later (an
//!    `EventSource`'s `retry:`) with `Last-Event-ID`, the pushes of that second missed and due
//!    from the history: pushes lost (0 due), duplicated (0), out of order, werkmann's
//!    `recovered: false`, resume time p50/p99 (from the reconnect's start until the stream
//!    holds every push published before it).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::http::Conn;
use crate::proto::{Flavor, Kind};
use crate::report::{num, table};
use crate::row::{Row, Scenario};
use crate::run::{k, Plan, Publish, Suite};
use crate::sse_resumer::{self, Shared, READY};
use crate::systems::{Running, Setup};

/// Connects in flight while the resume row's streams first connect.
const OPEN_CONCURRENCY: usize = 256;
/// Slices of a second the drops of a round are spread over.
const DROP_SLICES: usize = 20;
/// Longest the resume row's streams may take to connect and stand.
const OPEN_CAP: Duration = Duration::from_secs(90);
/// After the last push: give up waiting when nothing arrived for this long…
const STALL: Duration = Duration::from_secs(5);
/// … or after this long.
const CATCH_UP_CAP: Duration = Duration::from_secs(30);

/// The idle row's label.
pub fn idle_label(n: u32) -> String {
    format!("SSE idle {} streams", k(n))
}

/// The broadcast row's label.
pub fn broadcast_label(n: u32, m: u32) -> String {
    format!("SSE broadcast {} × {m}", k(n))
}

/// The paced row's label.
pub fn paced_label(n: u32, rate: u32, secs: u32) -> String {
    format!("SSE paced {} × {rate}/s for {secs} s", k(n))
}

/// The resume row's label.
pub fn resume_label(n: u32, rate: u32, pct: u32, secs: u32) -> String {
    format!(
        "SSE resume: {} streams × {rate}/s, {pct} % dropped every second for {secs} s",
        k(n)
    )
}

/// How the streams of a setup are served: werkmann's `/sse`, or Nchan's EventSource.
pub fn flavor(setup: Setup) -> Flavor {
    match setup {
        Setup::Nchan { .. } => Flavor::NchanSse,
        _ => Flavor::Sse,
    }
}

/// Every figure an SSE row may have, for its progress line and detail table.
pub const SSE_FIGURES: &[(&str, &str)] = &[
    ("clients", "streams"),
    ("kib_per_conn", "KiB/stream (PSS)"),
    ("rss_per_conn", "KiB/stream (RSS)"),
    ("conns_per_s", "new streams/s"),
    ("per_cpu_s", "deliveries/server CPU-s"),
    ("deliveries_per_s", "deliveries/s"),
    ("cpu_us", "server µs CPU/delivery"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("out_of_order", "ids out of order"),
    ("pushes", "pushes"),
    ("drops", "drops ordered"),
    ("reconnects", "reconnects"),
    ("missed", "pushes missed while away"),
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("not_recovered", "not recovered"),
    ("resume_p50_ms", "resume p50 ms"),
    ("resume_p99_ms", "resume p99 ms"),
    ("resume_max_ms", "resume max ms"),
    ("refused", "refused connects"),
    ("dropped", "closed by server"),
    ("bad_events", "bad events"),
];

impl Suite {
    /// The SSE sessions' setups: each werkmann mode selected, each build, then Nchan.
    pub(crate) fn setups_sse(&self) -> Vec<Setup> {
        let mut v = self.setups_werkmann();
        if self.sys("nchan") {
            v.push(Setup::Nchan {
                workers: 2,
                redis: false,
            });
        }
        v
    }

    /// The SSE group: `repeats` sessions of each setup, in turn, and each row's median.
    pub(crate) async fn group_sse(&mut self) {
        let mut setups = Vec::new();
        for s in self.setups_sse() {
            if self.usable(s) {
                setups.push(s);
            }
        }
        self.alternating("SSE", &[setups], Self::session_sse).await;
    }

    /// One session of the four rows on a fresh server (see the module's text).
    async fn session_sse(&mut self, setup: Setup) -> Result<Vec<Row>> {
        let p = self.opts.plan.clone();
        let mut sys = self.start(setup, "sse").await?;
        // Pushes go where the streams are: werkmann's seed API, Nchan's kept SSE channel.
        let flavor = flavor(setup);
        sys.api.flavor = flavor;
        let targets = vec![sys.api.addr];
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        let mut out = Vec::new();
        let mut gen = self.gen(p.sse_n).await?;
        let i = self
            .idle_as(&mut sys, &mut gen, &mut conn, p.sse_n, flavor, &targets)
            .await?;
        let mut r = self.idle_row(&idle_label(p.sse_n), setup, &i);
        r.scenario = Scenario::Sse;
        out.push(r);
        let how = Publish::Burst {
            inflight: p.inflight,
        };
        let d = self
            .deliver(&sys, &mut gen, &mut conns, Kind::Broadcast, p.sse_m, how)
            .await?;
        let label = broadcast_label(p.sse_n, p.sse_m);
        out.push(self.delivery_row(Scenario::Sse, &label, setup, &d));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rate = p.sse_paced_rate.max(1);
        let how = Publish::Paced { rate };
        let m = rate * p.sse_paced_secs.max(1);
        let d = self
            .deliver(&sys, &mut gen, &mut conns, Kind::Broadcast, m, how)
            .await?;
        let label = paced_label(p.sse_n, rate, p.sse_paced_secs);
        out.push(self.delivery_row(Scenario::Sse, &label, setup, &d));
        gen.quit().await;
        sys.check_alive()?;
        out.push(self.sse_resume(&sys, &mut conn).await?);
        sys.check_alive()?;
        sys.stop();
        Ok(out)
    }

    /// The resume row on a running server whose `api` serves the streams' pushes.
    async fn sse_resume(&mut self, sys: &Running, conn: &mut Conn) -> Result<Row> {
        let p = self.opts.plan.clone();
        let (n, rate, secs) = (p.sse_n, p.sse_rate.max(1), p.sse_secs.max(1));
        let pushes = rate * secs;
        let api = sys.api;
        let shared = Arc::new(Shared::new(pushes, api.addr, api.flavor, OPEN_CONCURRENCY));
        // One push first, so that werkmann's streams stand in the name's epoch (a stream at
        // `0:0` is told "not recovered" once anything was kept).
        let ready = api.broadcast(READY);
        match conn.roundtrip(&ready).await? {
            (200..=299, _) => {}
            (s, body) => bail!("the first push was answered {s} {}", body.trim()),
        }
        let (wakes, tasks) = sse_resumer::start(n, &shared);
        let stop = |shared: &Shared| {
            shared.stop.store(true, Ordering::Relaxed);
            wakes.iter().for_each(|w| w.notify_one());
        };
        // Until every stream answered, then readiness pushes until each has an id (Nchan's
        // streams get none before a message).
        let opened = Instant::now();
        let mut last_ready = Instant::now();
        loop {
            let (o, s, f) = (
                shared.opened.load(Ordering::Relaxed),
                shared.stood.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
            );
            if s + f >= u64::from(n) {
                break;
            }
            if opened.elapsed() > OPEN_CAP {
                stop(&shared);
                bail!(
                    "only {s} of {n} streams stood ({o} answered) within {} s",
                    OPEN_CAP.as_secs()
                );
            }
            if o + f >= u64::from(n) && last_ready.elapsed() > Duration::from_millis(300) {
                let _ = conn.roundtrip(&ready).await;
                last_ready = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stood = shared.stood.load(Ordering::Relaxed);
        // The pacer: push `i` leaves at `i / rate` s, one at a time, in order.
        let mut pacer_conn = Conn::connect(api.addr).await?;
        let cpu0 = sys.cpu_ns();
        let base = tokio::time::Instant::now();
        let sh = shared.clone();
        let pacer = tokio::spawn(async move {
            let (mut failed, mut first) = (0u64, None::<String>);
            for i in 0..pushes {
                let at = base + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                tokio::time::sleep_until(at).await;
                match pacer_conn.roundtrip(&api.broadcast(&i.to_string())).await {
                    Ok((s, _)) if (200..300).contains(&s) => {}
                    Ok((s, body)) => {
                        failed += 1;
                        first.get_or_insert(format!("{s} {}", body.trim()));
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(format!("{e:#}"));
                    }
                }
                // Answered or not, `i` is behind: resumes wait for what was answered.
                sh.published.store(i + 1, Ordering::Relaxed);
            }
            (failed, first)
        });
        // The drops: each second, `pct` % of the streams drawn at random, spread over the
        // second.
        let per_round = (n as usize * p.sse_drop_pct as usize / 100).clamp(1, n as usize);
        let mut ordered = 0u64;
        for round in 0..secs {
            let picked = rand::seq::index::sample(&mut rand::rng(), n as usize, per_round);
            let picked: Vec<usize> = picked.into_iter().collect();
            let per_slice = picked.len().div_ceil(DROP_SLICES);
            for (j, slice) in picked.chunks(per_slice).enumerate() {
                let at = f64::from(round) + j as f64 / DROP_SLICES as f64;
                tokio::time::sleep_until(base + Duration::from_secs_f64(at)).await;
                for &i in slice {
                    wakes[i].notify_one();
                }
            }
            ordered += per_round as u64;
        }
        let (http_failed, http_first) = pacer.await?;
        let ok = u64::from(pushes) - http_failed;
        let due = stood * u64::from(pushes);
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
        stop(&shared);
        let mut t = Tally::default();
        for task in tasks {
            let s = task.await?;
            t.lost += s.missing(pushes);
            t.dup += s.dup;
            t.out_of_order += s.out_of_order;
            t.bad += s.bad;
            t.reconnects += s.reconnects;
            t.refused += s.refused;
            t.dropped += s.dropped;
            t.not_recovered += s.not_recovered;
            t.missed += s.missed;
        }
        let deliveries = shared.distinct.load(Ordering::Relaxed);
        let label = resume_label(n, rate, p.sse_drop_pct, secs);
        let mut r = Row::new(Scenario::Sse, &label, sys.setup);
        r.set("clients", stood as f64);
        r.set("pushes", ok as f64);
        r.set("deliveries", deliveries as f64);
        r.set("drops", ordered as f64);
        r.set("reconnects", t.reconnects as f64);
        r.set("lost", t.lost as f64);
        r.set("dup", t.dup as f64);
        r.set("out_of_order", t.out_of_order as f64);
        r.set("not_recovered", t.not_recovered as f64);
        r.set("missed", t.missed as f64);
        r.set("refused", t.refused as f64);
        r.set("dropped", t.dropped as f64);
        r.set("bad_events", t.bad as f64);
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
        // Pushes that failed to publish are not due; the pacer's count says which did.
        r.errors.missing = t.lost.saturating_sub(stood * http_failed);
        r.errors.dup = t.dup;
        r.errors.bad = t.bad + t.out_of_order + t.dropped + t.not_recovered;
        r.errors.http = http_failed;
        r.errors.open_failed = t.refused + (u64::from(n) - stood);
        if let Some(e) = http_first {
            r.notes.push(format!("first failed push: {e}"));
        }
        if let Some(e) = shared.first_error.lock().expect("error").take() {
            r.notes.push(format!("first stream error: {e}"));
        }
        Ok(r)
    }
}

/// The resume row's counts, summed over the streams.
#[derive(Default)]
struct Tally {
    lost: u64,
    dup: u64,
    out_of_order: u64,
    bad: u64,
    reconnects: u64,
    refused: u64,
    dropped: u64,
    not_recovered: u64,
    missed: u64,
}

/// What the SSE section's rows are.
const SSE_NOTE: &str = "\
werkmann serves `GET /sse?channel=Broadcast` on the publisher's port (`start_all --count 2`: \
2 publisher instances; in cluster mode `start_http`), pushed with the seed API \
(`GET /?content=X`), its default history (`*=100/5m`) on. Nchan (2 nginx workers) serves \
`GET /ssesub/broadcast` as an EventSource subscriber (`nchan_subscriber eventsource`, \
`nchan_subscriber_first_message newest`), pushed with `POST /ssepub/broadcast`, the channel \
keeping the last 100 messages for 5 minutes (`nchan_message_buffer_length 100`, \
`nchan_message_timeout 5m`) so that `Last-Event-ID` resumes. Streams are plain HTTP/1.1 \
requests with `Accept: text/event-stream` from the generator processes (idle, broadcast, \
paced) or the coordinator (resume), each from a loopback address of its own; werkmann's \
body is chunked, Nchan's is not. Every `data:` is a push, checked to come once per stream, \
its event ids in increasing order. Idle: server memory (PSS of every process) after a \
warm-up push reached every stream, less before, per stream. Broadcast: pushes back to back \
(16 in flight), server CPU (utime + stime of every server process) per delivery. Paced: \
latency from sending the push to reading its event. Resume: streams dropped (RST) at random \
every second while pushes go on at a steady rate, each reconnecting 1 s later (as an \
EventSource after werkmann's `retry: 1000`; drops ordered meanwhile are void) with \
`Last-Event-ID` = the last id it read, so that it missed about a second of pushes; lost = pushes published that a stream never got, \
resume = from the reconnect's start until the stream holds every push published before it \
(what it missed, replayed from the history; or just the new connection when it missed \
nothing). Each session starts a fresh server; the setups take turns, reversed every other \
run; each figure is the median of the runs.\n\n";

/// The figures each SSE row shows in the section's table.
fn figures(label_of: &str, plan: &Plan) -> &'static [(&'static str, &'static str)] {
    if label_of == idle_label(plan.sse_n) {
        &[
            ("kib_per_conn", "KiB/stream (PSS)"),
            ("rss_per_conn", "KiB/stream (RSS)"),
            ("conns_per_s", "new streams/s"),
        ]
    } else if label_of == broadcast_label(plan.sse_n, plan.sse_m) {
        &[
            ("per_cpu_s", "deliveries/server CPU-s"),
            ("deliveries_per_s", "deliveries/s"),
            ("cpu_us", "server µs CPU/delivery"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
        ]
    } else if label_of.starts_with("SSE paced") {
        &[
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("per_cpu_s", "deliveries/server CPU-s"),
        ]
    } else {
        &[
            ("reconnects", "reconnects"),
            ("missed", "pushes missed while away"),
            ("lost", "lost"),
            ("dup", "duplicated"),
            ("resume_p50_ms", "resume p50 ms"),
            ("resume_p99_ms", "resume p99 ms"),
            ("resume_max_ms", "resume max ms"),
            ("not_recovered", "not recovered"),
            ("per_cpu_s", "deliveries/server CPU-s"),
        ]
    }
}

/// Figures that count events: whole numbers, and no ratio.
const COUNTS: [&str; 5] = ["reconnects", "missed", "lost", "dup", "not_recovered"];

/// The SSE section: every row, each setup a column, and werkmann's first mode ÷ Nchan.
pub(crate) fn section(out: &mut String, rows: &[Row], plan: &Plan) {
    let sse: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Sse)
        .collect();
    if sse.is_empty() {
        return;
    }
    out.push_str("### Server-Sent Events: werkmann next to Nchan\n\n");
    out.push_str(SSE_NOTE);
    let mut columns: Vec<(String, String)> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for r in &sse {
        let c = (r.system.clone(), r.mode.clone());
        if !columns.contains(&c) {
            columns.push(c);
        }
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    let of = |c: &(String, String), label: &str| {
        sse.iter()
            .find(|r| r.system == c.0 && r.mode == c.1 && r.label == label)
            .copied()
    };
    let werkmann = columns.iter().find(|c| c.0 == "werkmann").cloned();
    let nchan = columns.iter().find(|c| c.0 == "Nchan").cloned();
    let mut header: Vec<String> = vec!["row".into(), "figure".into()];
    header.extend(columns.iter().map(|(s, m)| format!("{s} ({m})")));
    if let (Some(w), Some(_)) = (&werkmann, &nchan) {
        header.push(format!("werkmann ({}) ÷ Nchan", w.1));
    }
    let mut lines = Vec::new();
    for label in &labels {
        for (key, name) in figures(label, plan) {
            let vals: Vec<Option<f64>> = columns
                .iter()
                .map(|c| of(c, label).and_then(|r| r.get(key)))
                .collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let count = COUNTS.contains(key);
            let mut line = vec![label.clone(), name.to_string()];
            line.extend(vals.iter().map(|v| match v {
                Some(v) if count && *v < 1000.0 => format!("{v:.0}"),
                Some(v) => num(*v),
                None => "—".into(),
            }));
            if count && werkmann.is_some() && nchan.is_some() {
                line.push(String::new());
            } else if let (Some(w), Some(n)) = (&werkmann, &nchan) {
                let (a, b) = (
                    of(w, label).and_then(|r| r.get(key)),
                    of(n, label).and_then(|r| r.get(key)),
                );
                line.push(match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{}×", num(a / b)),
                    _ => "—".into(),
                });
            }
            lines.push(line);
        }
        let mut line = vec![label.clone(), "errors (runs)".into()];
        line.extend(columns.iter().map(|c| {
            of(c, label).map_or("—".into(), |r| {
                format!("{} ({})", r.errors.text(), r.runs)
            })
        }));
        if werkmann.is_some() && nchan.is_some() {
            line.push(String::new());
        }
        lines.push(line);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(out, &header, lines);
    let _ = writeln!(
        out,
        "Sizes: {} streams; broadcast {} pushes back to back; paced {}/s for {} s; resume {}/s \
         for {} s with {} % of the streams dropped every second.\n",
        k(plan.sse_n),
        plan.sse_m,
        plan.sse_paced_rate,
        plan.sse_paced_secs,
        plan.sse_rate,
        plan.sse_secs,
        plan.sse_drop_pct
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::Build;

    #[test]
    fn the_section_puts_each_setup_in_a_column() {
        let plan = Plan::quick_set();
        let w = Setup::WerkmannAll {
            build: Build::Current,
        };
        let n = Setup::Nchan {
            workers: 2,
            redis: false,
        };
        let label = broadcast_label(plan.sse_n, plan.sse_m);
        let mut a = Row::new(Scenario::Sse, &label, w);
        a.set("per_cpu_s", 300.0);
        let mut b = Row::new(Scenario::Sse, &label, n);
        b.set("per_cpu_s", 100.0);
        b.errors.dup = 2;
        let mut out = String::new();
        section(&mut out, &[a, b], &plan);
        assert!(
            out.contains("| werkmann (all-in-one) | Nchan (nginx, 2 workers) | werkmann (all-in-one) ÷ Nchan |"),
            "{out}"
        );
        assert!(
            out.contains("| deliveries/server CPU-s | 300 | 100 | 3.00× |"),
            "{out}"
        );
        assert!(
            out.contains("| errors (runs) | 0 (1) | 2 dup (1) |"),
            "{out}"
        );
        assert_eq!(flavor(n), Flavor::NchanSse);
        assert_eq!(flavor(w), Flavor::Sse);
        // Counts: whole numbers, no ratio.
        let label = resume_label(plan.sse_n, plan.sse_rate, plan.sse_drop_pct, plan.sse_secs);
        let mut a = Row::new(Scenario::Sse, &label, w);
        a.set("lost", 0.0);
        a.set("reconnects", 19_044.0);
        let mut b = Row::new(Scenario::Sse, &label, n);
        b.set("lost", 0.0);
        b.set("reconnects", 19_048.0);
        let mut out = String::new();
        section(&mut out, &[a, b], &plan);
        assert!(out.contains("| lost | 0 | 0 |  |"), "{out}");
        assert!(out.contains("| reconnects | 19,044 | 19,048 |  |"), "{out}");
    }
}

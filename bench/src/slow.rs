//! The slow-client row: clients receiving paced broadcasts, measured once next to K clients
//! that read what they are sent and once next to K clients that never read.
//!
//! A broadcast large enough to fill a non-reading client's 1 MiB send buffer within seconds
//! would, sent to 10k clients 20 times a second, be gigabytes per second of loopback copies on
//! two shared cores. So the others get the paced row's 64-byte broadcasts, and each of the K
//! clients also gets its own stream of large targeted pushes (about 1 MiB/s each). In the first
//! run the K clients read it; in the second they never read (a 4 KiB receive buffer, then
//! nothing but a ping every 200 ms to notice the drop). Everything the server is asked to do is
//! the same in both runs; only the K clients' reading differs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};

use crate::clock::mono_ns;
use crate::gen::Gen;
use crate::http::Conn;
use crate::proto::{payload, Kind};
use crate::row::{Errors, Row, Scenario};
use crate::run::{publish, warm, Plan, Publish};
use crate::systems::Running;

/// What the server logs when its push node drops a client on `on_buffer_full`
/// (`apps/src/push.rs`).
const DROP_LOG: &str = "does not read its pushes";
/// Phase numbers of the K clients' generator (apart from the others').
const HEAVY_PHASES: u32 = 1 << 20;

/// One of the two runs.
struct Run {
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    max_ns: u64,
    errors: Errors,
    first_error: Option<String>,
    mem_before: u64,
    mem_peak: u64,
    mem_after: u64,
    /// Seconds from the start of the run to each of the K clients' drop.
    drops: Vec<f64>,
    /// Large pushes answered 2xx, and their bytes.
    large_ok: u64,
    large_bytes: u64,
    /// Large pushes not answered 2xx.
    large_failed: u64,
    /// Large pushes the K clients received (reading run only).
    large_received: u64,
    /// Drops the server logged during the run (werkmann).
    logged: usize,
    secs: f64,
}

/// The row: `gen` holds the others (open and warmed), `heavy` is a generator of its own for
/// the K clients; `conns` are publisher connections (two are used).
pub async fn row(
    sys: &Running,
    gen: &mut Gen,
    heavy: &mut Gen,
    conns: &mut Vec<Conn>,
    plan: &Plan,
    label: &str,
) -> Result<Row> {
    ensure!(
        conns.len() >= 2,
        "the slow-client row needs two publisher connections"
    );
    let flavor = sys.setup.flavor();
    let ws = sys.ws.clone();
    heavy.number_phases_from(HEAVY_PHASES);
    let k = plan.slow_k;

    let readers = heavy.open(flavor, &ws, k).await?;
    ensure!(
        readers.failed == 0,
        "{} of {k} reading clients failed to open: {}",
        readers.failed,
        readers.first_error.unwrap_or_default()
    );
    warm(heavy, &sys.api, &mut conns[0], u64::from(k)).await?;
    let base = phase(sys, gen, heavy, conns, plan).await?;
    heavy.close(readers.group).await?;

    let slow = heavy.open_slow(flavor, &ws, k).await?;
    ensure!(
        slow.failed == 0,
        "{} of {k} slow clients failed to open: {}",
        slow.failed,
        slow.first_error.unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with = phase(sys, gen, heavy, conns, plan).await?;
    heavy.close(slow.group).await?;

    let mut r = Row::new(Scenario::Slow, label, sys.setup);
    let ms = |v: Option<u64>| v.map(|v| v as f64 / 1e6);
    r.set("others", gen.live.len() as f64);
    r.set("slow", f64::from(k));
    for (key, v) in [
        ("p50_base_ms", ms(base.p50_ns)),
        ("p99_base_ms", ms(base.p99_ns)),
        ("p50_ms", ms(with.p50_ns)),
        ("p99_ms", ms(with.p99_ns)),
    ] {
        if let Some(v) = v {
            r.set(key, v);
        }
    }
    r.set("max_base_ms", base.max_ns as f64 / 1e6);
    r.set("max_ms", with.max_ns as f64 / 1e6);
    if let (Some(a), Some(b)) = (base.p99_ns, with.p99_ns) {
        r.set("p99_ratio", b as f64 / a.max(1) as f64);
    }
    if let (Some(a), Some(b)) = (base.p50_ns, with.p50_ns) {
        r.set("p50_ratio", b as f64 / a.max(1) as f64);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    r.set("mem_base_before_mib", mib(base.mem_before));
    r.set("mem_base_peak_mib", mib(base.mem_peak));
    r.set("mem_before_mib", mib(with.mem_before));
    r.set("mem_peak_mib", mib(with.mem_peak));
    r.set("mem_after_mib", mib(with.mem_after));
    r.set("dropped", with.drops.len() as f64);
    r.set("readers_dropped", base.drops.len() as f64);
    if let Some(first) = with.drops.iter().copied().reduce(f64::min) {
        r.set("drop_first_s", first);
    }
    if let Some(last) = with.drops.iter().copied().reduce(f64::max) {
        r.set("drop_last_s", last);
    }
    if !sys.setup.is_peer() {
        r.set("logged_drops", with.logged as f64);
    }
    if with.secs > 0.0 {
        r.set(
            "large_mib_per_s",
            with.large_bytes as f64 / 1_048_576.0 / with.secs / f64::from(k),
        );
    }
    if base.large_ok > 0 {
        r.set(
            "readers_received",
            base.large_received as f64 / base.large_ok as f64,
        );
    }
    r.errors = base.errors.clone();
    r.errors.add(&with.errors);
    r.notes
        .extend(base.first_error.clone().or(with.first_error.clone()));
    for (what, run) in [("reading", &base), ("slow", &with)] {
        if run.large_failed > 0 {
            r.notes.push(format!(
                "{} large pushes to the {what} clients not answered 2xx",
                run.large_failed
            ));
        }
    }
    Ok(r)
}

/// One run: `slow_rate` broadcasts a second for `slow_secs` to everyone, and large targeted pushes
/// to each of `heavy`'s clients at `slow_bytes_per_s`, while the server's memory is sampled.
async fn phase(
    sys: &Running,
    gen: &mut Gen,
    heavy: &mut Gen,
    conns: &mut Vec<Conn>,
    plan: &Plan,
) -> Result<Run> {
    let api = sys.api;
    let m = plan.slow_rate * plan.slow_secs;
    let expected = gen.live.len() as u64 * u64::from(m);
    let chunk = api.max_large();
    let to: Vec<_> = heavy.live.iter().map(|(_, a)| a.clone()).collect();
    let per_s = (to.len() * plan.slow_bytes_per_s / chunk).max(1);
    let large_m = (per_s * plan.slow_secs as usize) as u32;
    let bphase = gen.phase(Kind::Broadcast, m).await?;
    let hphase = heavy.phase(Kind::Targeted, large_m).await?;
    let logged0 = sys.log_count(DROP_LOG);
    let mem_before = sys.mem_kib();
    let t0 = mono_ns();

    let mut bconns = conns.drain(..1).collect::<Vec<_>>();
    let mut lconn = conns.remove(0);
    let done = AtomicBool::new(false);
    let (large_ok, large_failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let broadcasts = publish(
        api,
        &mut bconns,
        bphase,
        Kind::Broadcast,
        m,
        plan.size,
        Publish::Paced {
            rate: plan.slow_rate,
        },
    );
    let large = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..large_m {
            tick.tick().await;
            let a = &to[seq as usize % to.len()];
            let content = payload(hphase, Kind::Targeted, seq, a.idx, mono_ns(), chunk);
            match lconn.roundtrip(&api.targeted_large(a, &content)).await {
                Ok((s, _)) if (200..300).contains(&s) => large_ok.fetch_add(1, Ordering::Relaxed),
                _ => large_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    };
    let publishing = async {
        let r = tokio::join!(broadcasts, large);
        done.store(true, Ordering::Relaxed);
        r.0
    };
    let sampling = async {
        let mut peak = mem_before;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(sys.mem_kib());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    };
    let (published, mem_peak) = tokio::join!(publishing, sampling);
    conns.insert(0, lconn);
    conns.insert(0, bconns.pop().context("publisher connection")?);
    let (_ok, http_failed, first_error) = published?;
    let secs = mono_ns().saturating_sub(t0) as f64 / 1e9;

    gen.wait_received(expected, Duration::from_secs(10), Duration::from_secs(30))
        .await?;
    let rep = gen.report().await?;
    let large_received = heavy.progress().await?.received;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_after = sys.mem_kib();
    let drops = heavy
        .drops()
        .await?
        .into_iter()
        .filter(|(_, at)| *at >= t0)
        .map(|(_, at)| (at - t0) as f64 / 1e9)
        .collect();
    let large_ok = large_ok.load(Ordering::Relaxed);
    Ok(Run {
        p50_ns: rep.hist.quantile_ns(0.5),
        p99_ns: rep.hist.quantile_ns(0.99),
        max_ns: rep.hist.max_ns(),
        errors: Errors {
            missing: rep.missing,
            dup: rep.progress.dup,
            wrong: rep.progress.wrong,
            stray: rep.progress.stray,
            bad: rep.progress.bad,
            http: http_failed,
            answer: 0,
            open_failed: 0,
        },
        first_error: first_error.map(|e| format!("{http_failed} broadcasts failed: {e}")),
        mem_before,
        mem_peak: mem_peak.max(mem_after),
        mem_after,
        drops,
        large_ok,
        large_bytes: large_ok * chunk as u64,
        large_failed: large_failed.load(Ordering::Relaxed),
        large_received,
        logged: sys.log_count(DROP_LOG).saturating_sub(logged0),
        secs,
    })
}

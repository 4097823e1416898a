//! The processes group (issue 20; `--only processes`, not in the default run): two pairs of
//! setups, each the same topology with its instances as threads of one process and as child
//! processes of a supervisor, side by side in one run:
//!
//! - cluster (`--modes cluster`), threads: `start_channel` + 1 × `start_ws --count 2` +
//!   `start_http` ([`Setup::WerkmannCluster`]); processes: the same with `start_ws --count 2
//!   --processes` ([`Setup::WerkmannProcesses`]): a single-threaded supervisor forks one
//!   child per instance, the children sharing the listening socket;
//! - all-in-one (`--modes all`), threads: `start_all --count 2` ([`Setup::WerkmannAll`]: the
//!   channel hub embedded, publishes reaching the WebSocket instances in-process);
//!   processes: `start_all --count 2 --processes` ([`Setup::WerkmannAllProcesses`]): each
//!   WebSocket and publisher instance a child process, the channel hub in another child,
//!   which the instances reach over a Unix socket.
//!
//! One session per setup and run on a fresh server, each pair's two in turn (threads first
//! on even runs, processes first on odd ones), each row the median of the runs:
//!
//! 0. **publish** (all-in-one only, first, on the fresh server): requests per second the
//!    publisher answers, as the `publish` group measures them (`Suite::publish_rate`).
//! 1. **idle**: `bcast_n` WebSocket clients on the broadcast channel: the server's memory (PSS
//!    and RSS of every process, the supervisor's children included) after a warm-up push
//!    reached them all, less before, per connection; new connections per second.
//! 2. **broadcast**: on them, `bcast_m` pushes back to back (`inflight` at a time):
//!    deliveries per second, server CPU per delivery, latency p50/p99.

use std::time::Duration;

use anyhow::Result;

use crate::http::Conn;
use crate::proto::Kind;
use crate::row::{Row, Scenario};
use crate::run::{k, Publish, Suite};
use crate::systems::{Build, Setup};

/// The idle row's label (the mode tells threads from processes).
pub fn idle_label(n: u32) -> String {
    format!("processes group: idle {}", k(n))
}

/// The broadcast row's label.
pub fn broadcast_label(n: u32, m: u32) -> String {
    format!("processes group: broadcast {} × {m}", k(n))
}

/// The publish row's label (all-in-one only).
pub fn publish_label(conns: usize) -> String {
    format!("processes group: publish, {conns} keep-alive connections")
}

/// The cluster pair, threads first: one WebSocket node of `--count 2`.
pub fn setups(build: Build) -> [Setup; 2] {
    [
        Setup::WerkmannCluster { ws: 1, build },
        Setup::WerkmannProcesses { ws: 1, build },
    ]
}

/// The all-in-one pair, threads first: `start_all --count 2` [`--processes`].
pub fn all_setups(build: Build) -> [Setup; 2] {
    [
        Setup::WerkmannAll { build },
        Setup::WerkmannAllProcesses { build },
    ]
}

impl Suite {
    /// The processes group: `repeats` sessions of each setup, in turn, and each row's median.
    /// Only the current build (an older one may not know `--processes`).
    pub(crate) async fn group_processes(&mut self) {
        if !self.sys("werkmann") {
            return;
        }
        let mut pairs = Vec::new();
        for (mode, pair) in [
            ("cluster", setups(Build::Current)),
            ("all", all_setups(Build::Current)),
        ] {
            if !self.mode(mode) {
                continue;
            }
            let mut both = Vec::new();
            for s in pair {
                if self.usable(s) {
                    both.push(s);
                }
            }
            pairs.push(both);
        }
        self.alternating("processes", &pairs, Self::session_processes)
            .await;
    }

    /// One session of the rows on a fresh server (see the module's text).
    async fn session_processes(&mut self, setup: Setup) -> Result<Vec<Row>> {
        let p = self.opts.plan.clone();
        let mut sys = self.start(setup, "processes").await?;
        let procs = sys.pids().len() as f64;
        let mut out = Vec::new();
        if setup.mode().starts_with("all-in-one") {
            // First, on the fresh server: nobody subscribed, nothing being cleaned up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut r = self.publish_rate(&sys).await?;
            r.scenario = Scenario::Processes;
            r.label = publish_label(p.rate_conns);
            // Per request, not per delivery as on the other rows: a name of its own.
            if let Some(v) = r.m.remove("cpu_us") {
                r.set("req_cpu_us", v);
            }
            r.set("processes", procs);
            out.push(r);
        }
        let mut conn = Conn::connect(sys.api.addr).await?;
        let mut conns = Vec::new();
        for _ in 0..p.inflight.max(1) {
            conns.push(Conn::connect(sys.api.addr).await?);
        }
        let mut gen = self.gen(p.bcast_n).await?;
        let i = self.idle(&mut sys, &mut gen, &mut conn, p.bcast_n).await?;
        let mut r = self.idle_row(&idle_label(p.bcast_n), setup, &i);
        r.scenario = Scenario::Processes;
        r.set("processes", procs);
        out.push(r);
        let how = Publish::Burst {
            inflight: p.inflight,
        };
        let d = self
            .deliver(&sys, &mut gen, &mut conns, Kind::Broadcast, p.bcast_m, how)
            .await?;
        let label = broadcast_label(p.bcast_n, p.bcast_m);
        let mut r = self.delivery_row(Scenario::Processes, &label, setup, &d);
        r.set("processes", procs);
        out.push(r);
        tokio::time::sleep(Duration::from_millis(300)).await;
        gen.quit().await;
        sys.check_alive()?;
        sys.stop();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_runs_only_when_named_on_one_node_of_each_kind() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = crate::run::parse(&args("--quick")).unwrap();
        assert!(!o.only.iter().any(|g| g == "processes"));
        let o = crate::run::parse(&args("--only processes --systems werkmann")).unwrap();
        assert_eq!(o.only, ["processes"]);
        let [t, p] = setups(Build::Current);
        assert_eq!(t.mode(), "cluster, 1 ws node");
        assert_eq!(p.mode(), "cluster, 1 ws node, processes");
        assert_eq!(
            p.describe(),
            "start_channel + 1 × start_ws --count 2 --processes + start_http"
        );
        assert_eq!((p.nodes(), p.system()), (1, "werkmann"));
        let [t, p] = all_setups(Build::Current);
        assert_eq!(t.mode(), "all-in-one");
        assert_eq!(p.mode(), "all-in-one, processes");
        assert_eq!(p.describe(), "start_all --count 2 --processes");
        assert_eq!((p.nodes(), p.system()), (1, "werkmann"));
    }
}

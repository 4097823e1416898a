//! The coordinator's handle on its generator worker processes (`pushbench worker`): it
//! spreads clients over them, starts phases, collects counters and histograms.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::hist::Hist;
use crate::proto::{Address, Cmd, Flavor, Kind, Progress, Reply};

/// Most clients one worker process is given (the machine allows 20,000 open files each).
pub const MAX_PER_WORKER: u32 = 19_000;
/// Handshakes in flight per worker process.
const OPEN_CONCURRENCY: u32 = 256;

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Clients opened by one `open`.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The group, for `close`.
    pub group: u32,
    /// Clients connected and greeted.
    pub opened: u32,
    /// Clients that failed.
    pub failed: u32,
    /// The first failure.
    pub first_error: Option<String>,
    /// Wall time from the first connect to the last greeting.
    pub secs: f64,
}

/// What a phase's workers report, merged.
#[derive(Debug, Default)]
pub struct Merged {
    /// Summed counters (`last_ns` is the latest).
    pub progress: Progress,
    /// Broadcast deliveries missing.
    pub missing: u64,
    /// All latencies.
    pub hist: Hist,
}

/// The worker processes and the clients they hold.
pub struct Gen {
    procs: Vec<Proc>,
    next_idx: u32,
    next_group: u32,
    next_phase: u32,
    /// Every open client: (group, address).
    pub live: Vec<(u32, Address)>,
}

impl Gen {
    /// Start `k` worker processes (`exe worker`), their stderr appended to `log`.
    pub async fn spawn(k: usize, exe: &Path, log: &Path) -> Result<Gen> {
        let mut procs = Vec::with_capacity(k);
        for _ in 0..k {
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(err)
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe; the worker dies with the coordinator.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().context("starting a generator worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            procs.push(Proc {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        Ok(Gen {
            procs,
            next_idx: 0,
            next_group: 1,
            next_phase: 1,
            live: Vec::new(),
        })
    }

    /// The worker processes' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Send each worker its command (None: nothing), then read each one's reply.
    async fn call(&mut self, cmds: Vec<Option<Cmd>>) -> Result<Vec<Option<Reply>>> {
        for (p, cmd) in self.procs.iter_mut().zip(&cmds) {
            if let Some(cmd) = cmd {
                let mut line = serde_json::to_string(cmd)?;
                line.push('\n');
                p.stdin.write_all(line.as_bytes()).await?;
                p.stdin.flush().await?;
            }
        }
        let mut out = Vec::with_capacity(cmds.len());
        for (p, cmd) in self.procs.iter_mut().zip(&cmds) {
            if cmd.is_none() {
                out.push(None);
                continue;
            }
            let line = p
                .lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow!("a generator worker exited"))?;
            let reply: Reply = serde_json::from_str(&line).context("worker reply")?;
            if let Reply::Error { message } = reply {
                bail!("generator worker: {message}");
            }
            out.push(Some(reply));
        }
        Ok(out)
    }

    async fn call_all(&mut self, make: impl Fn() -> Cmd) -> Result<Vec<Reply>> {
        let cmds = self.procs.iter().map(|_| Some(make())).collect();
        Ok(self.call(cmds).await?.into_iter().flatten().collect())
    }

    /// Open `n` clients spread evenly over the workers; client `i` connects to
    /// `targets[i % targets.len()]`.
    pub async fn open(&mut self, flavor: Flavor, targets: &[SocketAddr], n: u32) -> Result<Opened> {
        self.open_group(flavor, targets, n, false).await
    }

    /// Open `n` slow clients like [`Gen::open`]: a small receive buffer, and once greeted
    /// they never read (see `client::hold`); [`Gen::drops`] tells when the server dropped them.
    pub async fn open_slow(
        &mut self,
        flavor: Flavor,
        targets: &[SocketAddr],
        n: u32,
    ) -> Result<Opened> {
        self.open_group(flavor, targets, n, true).await
    }

    async fn open_group(
        &mut self,
        flavor: Flavor,
        targets: &[SocketAddr],
        n: u32,
        slow: bool,
    ) -> Result<Opened> {
        let k = self.procs.len() as u32;
        let group = self.next_group;
        self.next_group += 1;
        let mut cmds = Vec::new();
        let mut first = self.next_idx;
        for w in 0..k {
            let share = n / k + u32::from(w < n % k);
            cmds.push((share > 0).then(|| Cmd::Open {
                group,
                flavor,
                targets: targets.to_vec(),
                first,
                n: share,
                concurrency: OPEN_CONCURRENCY,
                slow,
            }));
            first += share;
        }
        self.next_idx = first;
        let t0 = Instant::now();
        let replies = self.call(cmds).await?;
        let secs = t0.elapsed().as_secs_f64();
        let mut r = Opened {
            group,
            opened: 0,
            failed: 0,
            first_error: None,
            secs,
        };
        for reply in replies.into_iter().flatten() {
            if let Reply::Opened {
                opened,
                failed,
                first_error,
                addrs,
            } = reply
            {
                r.opened += opened;
                r.failed += failed;
                if r.first_error.is_none() {
                    r.first_error = first_error;
                }
                self.live.extend(addrs.into_iter().map(|a| (group, a)));
            }
        }
        Ok(r)
    }

    /// Close a group's clients.
    pub async fn close(&mut self, group: u32) -> Result<()> {
        self.call_all(|| Cmd::Close { group }).await?;
        self.live.retain(|(g, _)| *g != group);
        Ok(())
    }

    /// Number this generator's phases from `first` on, so that two generators driven at the
    /// same time tell their pushes apart (a push of the other's phase is then stray).
    pub fn number_phases_from(&mut self, first: u32) {
        self.next_phase = self.next_phase.max(first);
    }

    /// Every client whose connection the server closed so far: (global index,
    /// `CLOCK_MONOTONIC` ns when it was seen).
    pub async fn drops(&mut self) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for r in self.call_all(|| Cmd::Drops).await? {
            if let Reply::Drops { drops } = r {
                out.extend(drops);
            }
        }
        Ok(out)
    }

    /// Start a phase in every worker; returns its id.
    pub async fn phase(&mut self, kind: Kind, m: u32) -> Result<u32> {
        self.phase_per(kind, m, 1).await
    }

    /// Start a uid or group phase: client `i` belongs to uid or group `i / per`.
    pub async fn phase_per(&mut self, kind: Kind, m: u32, per: u32) -> Result<u32> {
        let id = self.next_phase;
        self.next_phase += 1;
        self.call_all(|| Cmd::Phase { id, kind, m, per }).await?;
        Ok(id)
    }

    /// Counters summed over the workers.
    pub async fn progress(&mut self) -> Result<Progress> {
        let mut sum = Progress::default();
        for r in self.call_all(|| Cmd::Progress).await? {
            if let Reply::Progress(p) = r {
                add(&mut sum, &p);
            }
        }
        Ok(sum)
    }

    /// Everything the workers know about the phase.
    pub async fn report(&mut self) -> Result<Merged> {
        let mut m = Merged::default();
        for r in self.call_all(|| Cmd::Report).await? {
            if let Reply::Report(rep) = r {
                add(&mut m.progress, &rep.progress);
                m.missing += rep.missing;
                m.hist.merge(&rep.hist);
            }
        }
        Ok(m)
    }

    /// Poll until `received` reaches `expected`, or nothing arrived for `stall`, or `cap`
    /// passed; then wait `grace` more so late duplicates are seen.
    pub async fn wait_received(
        &mut self,
        expected: u64,
        stall: Duration,
        cap: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        let (mut last, mut last_change) = (0, Instant::now());
        loop {
            let p = self.progress().await?;
            if p.received >= expected {
                break;
            }
            if p.received != last {
                last = p.received;
                last_change = Instant::now();
            }
            if last_change.elapsed() > stall || start.elapsed() > cap {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok(())
    }

    /// Warm counters summed (clients that saw the current warm phase).
    pub async fn warm_count(&mut self) -> Result<u64> {
        Ok(self.progress().await?.warm)
    }

    /// Stop every worker.
    pub async fn quit(mut self) {
        let _ = self.call_all(|| Cmd::Quit).await;
        for p in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
            let _ = p.child.start_kill();
        }
    }
}

fn add(sum: &mut Progress, p: &Progress) {
    sum.received += p.received;
    sum.warm += p.warm;
    sum.stray += p.stray;
    sum.dup += p.dup;
    sum.wrong += p.wrong;
    sum.bad += p.bad;
    sum.out_of_order += p.out_of_order;
    sum.last_ns = sum.last_ns.max(p.last_ns);
}

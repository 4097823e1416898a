//! A generator worker process (`pushbench worker`): holds a share of the clients (at most
//! ~19k: the machine allows 20,000 open files per process) and answers the coordinator's
//! commands, one JSON line each, on stdin/stdout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{self, Shared};
use crate::proto::{Address, Cmd, Flavor, Reply};

/// Longest a client may take to connect, upgrade and be greeted.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Run the worker until `Quit` or the end of stdin.
pub fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve())
}

async fn serve() -> Result<()> {
    let shared = Arc::new(Shared::default());
    let mut groups: HashMap<u32, Vec<JoinHandle<()>>> = HashMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let cmd: Cmd = serde_json::from_str(&line).with_context(|| format!("command {line}"))?;
        let reply = match cmd {
            Cmd::Open {
                group,
                flavor,
                targets,
                first,
                n,
                concurrency,
                slow,
            } => {
                let how = How {
                    group,
                    flavor,
                    concurrency,
                    slow,
                };
                let (reply, tasks) = open(&shared, how, &targets, first, n).await;
                groups.entry(group).or_default().extend(tasks);
                reply
            }
            Cmd::Phase { id, kind, m, per } => {
                shared.start_phase(id, kind, m, per);
                Reply::Ack
            }
            Cmd::Progress => Reply::Progress(shared.progress()),
            Cmd::Report => Reply::Report(shared.report()),
            Cmd::Close { group } => {
                let tasks = groups.remove(&group).unwrap_or_default();
                shared.remove_group(group);
                let closed = tasks.len() as u32;
                for t in &tasks {
                    t.abort();
                }
                for t in tasks {
                    let _ = t.await;
                }
                Reply::Closed { closed }
            }
            Cmd::Drops => Reply::Drops {
                drops: shared.drops(),
            },
            Cmd::Quit => break,
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await?;
    }
    for (_, tasks) in groups {
        for t in tasks {
            t.abort();
        }
    }
    Ok(())
}

/// Receive buffer of a slow client, bytes (the kernel doubles it).
const SLOW_RCVBUF: u32 = 4096;

/// How a group of clients is opened.
#[derive(Clone, Copy)]
struct How {
    group: u32,
    flavor: Flavor,
    concurrency: u32,
    slow: bool,
}

/// Open clients `first..first + n` with at most `concurrency` handshakes at once; wait for
/// each to be greeted or to fail.
async fn open(
    shared: &Arc<Shared>,
    how: How,
    targets: &[std::net::SocketAddr],
    first: u32,
    n: u32,
) -> (Reply, Vec<JoinHandle<()>>) {
    let How {
        group,
        flavor,
        concurrency,
        slow,
    } = how;
    if targets.is_empty() {
        return (
            Reply::Error {
                message: "no targets".into(),
            },
            Vec::new(),
        );
    }
    let sem = Arc::new(Semaphore::new(concurrency.max(1) as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Address, String>>();
    let mut tasks = Vec::with_capacity(n as usize);
    for idx in first..first + n {
        let target = targets[idx as usize % targets.len()];
        let (sem, tx, shared) = (sem.clone(), tx.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let rcvbuf = slow.then_some(SLOW_RCVBUF);
            let r =
                tokio::time::timeout(OPEN_TIMEOUT, client::open(idx, target, flavor, rcvbuf)).await;
            drop(permit);
            match r {
                Ok(Ok((stream, addr, left))) => {
                    let _ = tx.send(Ok(addr.clone()));
                    if slow {
                        client::hold(stream, &addr, shared).await;
                    } else {
                        client::run(stream, &addr, left, flavor, group, shared.clone()).await;
                        // Not aborted by its group's close: the server closed it.
                        shared.dropped(addr.idx);
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
                Err(_) => {
                    let _ = tx.send(Err(format!(
                        "connect, upgrade and greeting took over {} s",
                        OPEN_TIMEOUT.as_secs()
                    )));
                }
            }
        }));
    }
    drop(tx);
    let (mut opened, mut failed, mut first_error) = (0u32, 0u32, None);
    let mut addrs = Vec::with_capacity(n as usize);
    while let Some(r) = rx.recv().await {
        match r {
            Ok(a) => {
                opened += 1;
                addrs.push(a);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if opened + failed == n {
            break;
        }
    }
    (
        Reply::Opened {
            opened,
            failed,
            first_error,
            addrs,
        },
        tasks,
    )
}

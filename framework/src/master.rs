//! The master: one process serving its part of the workers (all of them, or a supervisor's
//! child's share) — one arbiter and actor per instance, an acceptor per listening socket
//! handing connections out round-robin, the signals of the command line, the shutdown.
//!
//! One acceptor per listening socket runs on the main thread; an accepted socket goes to an
//! instance actor as a plain `std` socket, which registers it on its own thread. The listening
//! sockets survive a `reload`: the new process inherits them (`WERKMANN_INHERIT_FDS`), so no
//! connection is refused while the binary is swapped.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::cli::{self, Paths};
use crate::error::Error;
use crate::listener::{Accepted, Listener};
use crate::signals::{Sig, Signals};
use crate::worker::instance::{ConnectionInfo, GetConnections, GetStatus, InstanceActor, Stop};
use crate::worker::{InstanceStatus, Worker};

/// The least a graceful stop waits for connections to finish (`stop_timeout` if longer).
pub(crate) const GRACEFUL_MIN: Duration = Duration::from_secs(10);
pub(crate) const RELOAD_PARENT_ENV: &str = "WERKMANN_RELOAD_PARENT";

/// A reload handed this process's listening sockets to a new one: their files stay.
pub(crate) static RELOADED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// What one process serves of a worker: its listening socket and which of its instances.
pub(crate) struct Part {
    pub worker: Worker,
    pub listener: Option<Listener>,
    pub ids: std::ops::Range<usize>,
}

/// Whether the process serving is the only one, or a child of the supervisor (`supervisor.rs`),
/// which reloads and reports for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Alone,
    Child,
}

pub(crate) fn describe(workers: &[Worker], listeners: &[Option<Listener>]) -> String {
    let mut out = String::new();
    for (w, l) in workers.iter().zip(listeners) {
        let at = l
            .as_ref()
            .map(|l| format!(" listening on {}", l.describe()))
            .unwrap_or_default();
        out.push_str(&format!(
            "worker {} ({}) x{}{}{}\n",
            w.name,
            if w.socket_name().is_empty() {
                "none"
            } else {
                w.socket_name()
            },
            w.count,
            if w.processes { " processes" } else { "" },
            at
        ));
    }
    out
}

struct Running {
    addrs: Vec<Addr<InstanceActor>>,
    arbiters: Vec<actix_rt::Arbiter>,
    stop_timeout: Duration,
    reloadable: bool,
}

/// Serve `parts` in this process: an arbiter and actor per instance, an acceptor per listening
/// socket, the signals; returns when stopped.
pub(crate) fn serve(
    parts: Vec<Part>,
    paths: Paths,
    pipe: Option<OwnedFd>,
    summary: String,
    reload_parent: Option<i32>,
    role: Role,
) -> Result<(), Error> {
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        // Handlers first: a command may arrive as soon as the start is reported.
        let signals = match role {
            Role::Alone => Signals::handlers()?,
            Role::Child => Signals::descriptor()?,
        };
        let mut running = Vec::new();
        let mut acceptors = Vec::new();
        let mut kept: Vec<(String, RawFd)> = Vec::new();
        for Part {
            worker: w,
            listener,
            ids,
        } in parts
        {
            let config = Arc::new(w);
            if let (Some(serve), Some(a)) = (config.serve.clone(), config.address()) {
                let Some(Listener::Tcp(l)) = listener else {
                    continue;
                };
                // A worker that serves its socket itself (the admin port): a thread of its own,
                // which holds the socket (its number is passed on by a reload) and ends with
                // the process.
                kept.push((a.to_string(), l.as_raw_fd()));
                std::thread::Builder::new()
                    .name(format!("werkmann-{}", config.name))
                    .spawn(move || serve(l))?;
                running.push(Running {
                    addrs: Vec::new(),
                    arbiters: Vec::new(),
                    stop_timeout: config.stop_timeout,
                    reloadable: config.reloadable,
                });
                continue;
            }
            let mut addrs = Vec::new();
            let mut arbiters = Vec::new();
            for id in ids {
                let arb = actix_rt::Arbiter::new();
                let cfg = config.clone();
                let addr = InstanceActor::start_in_arbiter(&arb.handle(), move |_| {
                    InstanceActor::new(cfg, id)
                });
                addrs.push(addr);
                arbiters.push(arb);
            }
            if let (Some(Listener::Udp(sock)), Some(a)) = (&listener, config.address()) {
                // Datagrams: each instance reads the socket itself, on its own thread.
                kept.push((a.to_string(), sock.as_raw_fd()));
                for addr in &addrs {
                    let sock = sock.try_clone()?;
                    addr.do_send(crate::worker::instance::Exec(Box::new(move |inst| {
                        inst.serve_datagrams(sock)
                    })));
                }
                // The socket itself stays open with the process (a reload passes it on).
                std::mem::forget(listener);
            } else if let (Some(l), Some(a)) = (listener, config.address()) {
                kept.push((a.to_string(), l.as_raw_fd()));
                use tokio::io::{unix::AsyncFd, Interest};
                // SAFETY: the listener owns its descriptor, which stays open and the same for
                // as long as the AsyncFd that owns the listener (a listener's `as_raw_fd`
                // never changes).
                let listener = unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?;
                acceptors.push(actix_rt::spawn(accept_loop(listener, addrs.clone())));
            }
            running.push(Running {
                addrs,
                arbiters,
                stop_timeout: config.stop_timeout,
                reloadable: config.reloadable,
            });
        }
        log::info!(
            "started (pid {}):\n{}",
            std::process::id(),
            summary.trim_end()
        );
        cli::report_start(pipe, &format!("ok\n{summary}"));
        if let Some(parent) = reload_parent {
            // The old process may stop accepting now: every socket is served here.
            let _ = cli::signal(parent, libc::SIGQUIT);
        }
        let ending = answer_signals(signals, &running, &paths, &kept, role).await;
        for a in &acceptors {
            a.abort();
        }
        log::info!("{}", ending.describe());
        let mut stops = Vec::new();
        for r in &running {
            for a in &r.addrs {
                stops.push(a.send(ending.stop(r.stop_timeout)));
            }
        }
        futures_util::future::join_all(stops).await;
        for r in running {
            for arb in r.arbiters {
                arb.stop();
                let _ = arb.join();
            }
        }
        log::info!("stopped");
        Ok::<(), Error>(())
    });
    result
}

/// Most connections the acceptor takes from the backlog before it hands them over.
const ACCEPT_BURST: usize = 64;
/// The same for a supervisor's child, which shares the socket with its siblings.
const SHARED_BURST: usize = 16;

async fn accept_loop(
    listener: tokio::io::unix::AsyncFd<Listener>,
    instances: Vec<Addr<InstanceActor>>,
) {
    let mut next = 0usize;
    // What this wake-up accepted, per instance.
    let mut batches: Vec<Vec<Accepted>> = instances.iter().map(|_| Vec::new()).collect();
    loop {
        // Once the listener is readable, the connections waiting in the backlog are taken
        // without sleeping (up to a burst), then each instance gets its share in one message:
        // a burst of new connections wakes an instance's thread once, not once per connection
        // (each message that finds it parked is an eventfd write and a context switch).
        // Round-robin per connection. A socket is accepted as a plain one, non-blocking, and
        // registered only with its instance's reactor (none here to add and remove again).
        let mut ready = match listener.readable().await {
            Ok(r) => r,
            Err(e) => {
                log::error!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A supervisor's child ahead of its siblings lets the connection wait for them a
        // moment (`balance.rs`), and takes fewer at a time.
        let burst = match crate::balance::shared() {
            false => ACCEPT_BURST,
            true => {
                let mut waited = Duration::ZERO;
                while crate::balance::ahead(crate::metrics::open_connections()) {
                    if waited >= crate::balance::PATIENCE {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    waited += Duration::from_millis(2);
                }
                // Still ahead: the siblings did not come; one at a time.
                match waited >= crate::balance::PATIENCE {
                    true => 1,
                    false => SHARED_BURST,
                }
            }
        };
        let mut taken = 0;
        while taken < burst {
            match listener.get_ref().accept() {
                Ok(accepted) => {
                    batches[next % instances.len()].push(accepted);
                    next = next.wrapping_add(1);
                    taken += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    hand_over(&instances, &mut batches);
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::error!("accept failed: {e}");
                    drop(ready);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
        hand_over(&instances, &mut batches);
    }
}

/// Send each instance the connections accepted for it: one message each.
fn hand_over(instances: &[Addr<InstanceActor>], batches: &mut [Vec<Accepted>]) {
    for (addr, batch) in instances.iter().zip(batches.iter_mut()) {
        match batch.len() {
            0 => {}
            1 => {
                let accepted = batch.pop().expect("one");
                addr.do_send(crate::worker::instance::Adopt(accepted));
            }
            _ => addr.do_send(crate::worker::instance::AdoptMany(std::mem::take(batch))),
        }
    }
}

/// How a process's instances end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Closed after `stop_timeout` (SIGINT, SIGTERM).
    Stop,
    /// `stop -g`: connections finish, up to the graceful timeout.
    Graceful,
    /// Replaced by a reload: `on_worker_reload`, then as `stop` (or as `stop -g` with -g).
    Reload { graceful: bool },
}

impl Ending {
    fn describe(self) -> &'static str {
        match self {
            Ending::Stop => "stopping",
            Ending::Graceful => "stopping gracefully",
            Ending::Reload { graceful: false } => "reloaded: stopping",
            Ending::Reload { graceful: true } => "reloaded: stopping gracefully",
        }
    }

    /// The message that stops an instance of a worker with this `stop_timeout`.
    fn stop(self, stop_timeout: Duration) -> Stop {
        let graceful_timeout = stop_timeout.max(GRACEFUL_MIN);
        let (timeout, graceful, reload) = match self {
            Ending::Stop => (stop_timeout, false, false),
            Ending::Graceful => (graceful_timeout, true, false),
            // Resting HTTP connections go at once, the others after `stop_timeout`.
            Ending::Reload { graceful: false } => (stop_timeout, true, true),
            Ending::Reload { graceful: true } => (graceful_timeout, true, true),
        };
        Stop {
            timeout,
            graceful,
            reload,
        }
    }
}

/// A reload this process started (`Some(graceful)`); a new process then asks it to stop
/// (SIGQUIT), which it does as the reload said.
static RELOADING: std::sync::Mutex<Option<bool>> = std::sync::Mutex::new(None);

/// Wait for signals; answer status requests and reloads. Returns how the instances end.
async fn answer_signals(
    mut signals: Signals,
    running: &[Running],
    paths: &Paths,
    listeners: &[(String, RawFd)],
    role: Role,
) -> Ending {
    loop {
        let graceful = match signals.next().await {
            Sig::Stop => return Ending::Stop,
            Sig::Graceful => {
                return match *RELOADING.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(graceful) => Ending::Reload { graceful },
                    None => Ending::Graceful,
                }
            }
            Sig::Status => {
                write_status(running, paths).await;
                continue;
            }
            Sig::Connections => {
                write_connections(running, paths).await;
                continue;
            }
            Sig::Reload => false,
            Sig::GracefulReload => true,
        };
        match role {
            // The supervisor replaces this child: it ends unless its workers stay.
            Role::Child if running.iter().all(|r| r.reloadable) => {
                return Ending::Reload { graceful };
            }
            Role::Child => {
                log::info!("reload: this process's workers are not reloadable; they go on");
                for r in running {
                    for a in &r.addrs {
                        a.do_send(crate::worker::instance::Reloaded);
                    }
                }
            }
            Role::Alone => match spawn_reload(listeners) {
                Ok(()) => *RELOADING.lock().unwrap_or_else(|e| e.into_inner()) = Some(graceful),
                Err(e) => log::error!("reload failed: {e}"),
            },
        }
    }
}

/// The binary now on disk and this process's arguments, to start it again in the
/// foreground (a daemon is detached already).
pub(crate) fn reload_command() -> (std::path::PathBuf, Vec<String>) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => std::path::PathBuf::from(p),
        None => exe,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| if a == "reload" { "start".into() } else { a })
        .filter(|a| a != "-d")
        .collect();
    (exe, args)
}

/// `WERKMANN_INHERIT_FDS`'s value for these listening sockets.
pub(crate) fn inherit_list(listeners: &[(String, RawFd)]) -> String {
    let fds: Vec<String> = listeners
        .iter()
        .map(|(a, fd)| format!("{a}={fd}"))
        .collect();
    fds.join(",")
}

pub(crate) fn spawn_reload(listeners: &[(String, RawFd)]) -> std::io::Result<()> {
    let (exe, args) = reload_command();
    for (_, fd) in listeners {
        crate::listener::set_cloexec(*fd, false);
    }
    RELOADED.store(true, std::sync::atomic::Ordering::Relaxed);
    log::info!("reloading: starting {} {}", exe.display(), args.join(" "));
    let child = std::process::Command::new(&exe)
        .args(&args)
        .env(crate::listener::INHERIT_ENV, inherit_list(listeners))
        .env(RELOAD_PARENT_ENV, std::process::id().to_string())
        .spawn();
    for (_, fd) in listeners {
        crate::listener::set_cloexec(*fd, true);
    }
    child.map(|c| log::info!("new process {} started", c.id()))
}

async fn write_status(running: &[Running], paths: &Paths) {
    let mut rows: Vec<InstanceStatus> = Vec::new();
    for r in running {
        for a in &r.addrs {
            if let Ok(s) = a.send(GetStatus).await {
                rows.push(s);
            }
        }
    }
    let report = crate::status::Report::now(running.len(), rows);
    write_atomic(
        &paths.status,
        &serde_json::to_string(&report).unwrap_or_default(),
    );
}

async fn write_connections(running: &[Running], paths: &Paths) {
    let mut all: Vec<ConnectionInfo> = Vec::new();
    for r in running {
        for a in &r.addrs {
            all.extend(a.send(GetConnections).await.unwrap_or_default());
        }
    }
    write_atomic(
        &paths.connections,
        &serde_json::to_string(&all).unwrap_or_default(),
    );
}

pub(crate) fn write_atomic(path: &std::path::Path, text: &str) {
    // Next to the file, named after all of it: a supervisor's children write theirs at once.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        log::error!("cannot write {}: {e}", path.display());
    }
}

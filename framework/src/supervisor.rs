//! The supervisor: Workerman's master process. When a worker runs its instances as processes
//! ([`Worker::processes`](crate::Worker)), the process that bound the sockets forks a child per
//! such instance (and one child for every worker that runs as threads), starts a child that
//! dies again with the same instance id — at once after a long life, backing off in a crash
//! loop — and passes the command line's signals on: stop and graceful stop to every child,
//! `status` and `connections` as requests whose answers it merges, `reload` as before (a new
//! binary inherits the listening sockets and starts children of its own).
//!
//! The supervisor stays single-threaded (no runtime, no arbiter): it waits for signals with
//! `sigtimedwait(2)`, so a child forked from it starts from a clean copy with no thread or lock
//! of anyone else's. Each child serves its part with `master::serve`, exactly as a process of
//! threads would, and is asked to stop by the kernel if the supervisor dies
//! (`PR_SET_PDEATHSIG`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::{self, Paths};
use crate::error::Error;
use crate::master::{self, Part, Role};
use crate::status::{ChildStatus, Report};
use crate::{balance, signals};

/// A child that lived less than this ended "at once": the next start waits longer.
const QUICK_EXIT: Duration = Duration::from_secs(5);
/// The first wait after a quick exit; doubled for each further one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a child has to answer `status` or `connections`.
const REPORT_WAIT: Duration = Duration::from_secs(3);
/// One child process the supervisor keeps running: which parts (by index) and instances it
/// serves, and how it has fared.
struct Child {
    serves: Vec<(usize, std::ops::Range<usize>)>,
    /// Who it runs as (its workers' `user`), if not as the supervisor.
    identity: Option<crate::identity::Identity>,
    /// Whether a reload replaces it (all its workers are reloadable).
    reloadable: bool,
    /// The longest `stop_timeout` of its workers.
    stop_timeout: Duration,
    /// Its worker's slots and its own in the shared load (`balance.rs`); none for the child
    /// of the workers run as threads.
    slot: Option<(std::ops::Range<usize>, usize)>,
    /// Shown in logs and `status`: "pusher #1", or the workers run as threads.
    label: String,
    pid: Option<i32>,
    started: Instant,
    started_unix: f64,
    restarts: u32,
    /// Quick exits in a row.
    quick: u32,
    /// When to start it again (set while it is down).
    due: Option<Instant>,
}

/// The environment an in-place reload passes to the new binary: the children running
/// (`pid:restarts:label;…`), how to replace them, and the shared load's memory.
const ADOPT_ENV: &str = "WERKMANN_ADOPT";
const ADOPT_GRACEFUL_ENV: &str = "WERKMANN_ADOPT_GRACEFUL";

/// A reload: the supervisor executes the binary now on disk in its own place (same pid, same
/// children, the listening sockets and the shared load's memory passed on), and that one
/// replaces the children one at a time. Returns only if it could not.
fn reexec(
    kept: &[(String, i32)],
    children: &[Child],
    slots: &balance::Slots,
    graceful: bool,
) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let running: Vec<String> = children
        .iter()
        .filter_map(|c| Some(format!("{}:{}:{}", c.pid?, c.restarts, c.label)))
        .collect();
    let mut fds: Vec<i32> = kept.iter().map(|(_, fd)| *fd).collect();
    fds.push(slots.fd());
    // This binary, for the new one to go back to if it cannot take over (`revert.rs`).
    let previous = match std::fs::File::open("/proc/self/exe") {
        Ok(f) => std::os::fd::IntoRawFd::into_raw_fd(f),
        Err(e) => return e,
    };
    fds.push(previous);
    for fd in &fds {
        crate::listener::set_cloexec(*fd, false);
    }
    let (exe, args) = master::reload_command();
    log::info!(
        "reloading{}: executing {} {}",
        if graceful { " gracefully" } else { "" },
        exe.display(),
        args.join(" ")
    );
    let err = std::process::Command::new(&exe)
        .args(&args)
        .env(crate::listener::INHERIT_ENV, master::inherit_list(kept))
        .env(ADOPT_ENV, running.join(";"))
        .env(ADOPT_GRACEFUL_ENV, if graceful { "1" } else { "0" })
        .env(balance::FD_ENV, slots.fd().to_string())
        .env(crate::revert::PREVIOUS_EXE_ENV, previous.to_string())
        .exec();
    for fd in &fds {
        crate::listener::set_cloexec(*fd, true);
    }
    // SAFETY: opened above, for the exec that failed.
    unsafe { libc::close(previous) };
    err
}

/// The children of the binary before a reload, and their replacement, one at a time: the
/// new child starts, then the old one is told to reload (it runs `on_worker_reload`, stops
/// accepting, and finishes its connections — with `reload -g` up to the graceful timeout),
/// and the next waits until it has ended. A child whose workers are not reloadable is kept.
struct Generation {
    /// (index in `children`, old pid) still to replace, in order.
    queue: std::collections::VecDeque<(usize, i32)>,
    /// Old processes of workers this binary no longer has: stopped at once.
    orphans: Vec<i32>,
    /// The old process being replaced, and when to stop waiting for it.
    draining: Option<(i32, Instant)>,
    graceful: bool,
}

impl Generation {
    /// The children an in-place reload passed on, matched to `children` by what they serve;
    /// a child with an old process is not started until its turn.
    fn adopt(children: &mut [Child]) -> Generation {
        let mut g = Generation {
            queue: Default::default(),
            orphans: Vec::new(),
            draining: None,
            graceful: std::env::var(ADOPT_GRACEFUL_ENV).is_ok_and(|v| v == "1"),
        };
        let Ok(list) = std::env::var(ADOPT_ENV) else {
            return g;
        };
        std::env::remove_var(ADOPT_ENV);
        for entry in list.split(';').filter(|e| !e.is_empty()) {
            let mut it = entry.splitn(3, ':');
            let (Some(pid), Some(restarts), Some(label)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let (Ok(pid), Ok(restarts)) = (pid.parse::<i32>(), restarts.parse::<u32>()) else {
                continue;
            };
            match children.iter().position(|c| c.label == label) {
                Some(i) => {
                    let c = &mut children[i];
                    c.restarts = restarts;
                    if c.reloadable {
                        g.queue.push_back((i, pid));
                    } else {
                        // Kept: it goes on as this binary's child, told of the reload.
                        c.pid = Some(pid);
                        c.due = None;
                        c.started_unix = 1.0;
                        let sig = if g.graceful {
                            libc::SIGHUP
                        } else {
                            libc::SIGUSR1
                        };
                        let _ = cli::signal(pid, sig);
                        log::info!("{label} (pid {pid}) is not reloadable: kept");
                    }
                    if g.queue.back().is_some_and(|(j, _)| *j == i) {
                        // Started in its turn, not now (a replacement, not a restart).
                        children[i].due = None;
                    }
                }
                None => g.orphans.push(pid),
            }
        }
        for pid in &g.orphans {
            log::info!("pid {pid} serves what this binary no longer has: stopped");
            let _ = cli::signal(*pid, libc::SIGTERM);
        }
        g
    }

    /// Whether no replacement is under way.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.draining.is_none() && self.orphans.is_empty()
    }

    /// A process ended: the one being replaced (the next may go), an orphan, or one still
    /// waiting for its turn — whose replacement (the child at the index returned) then starts
    /// at once instead.
    fn ended(&mut self, pid: i32) -> Option<usize> {
        if self.draining.is_some_and(|(p, _)| p == pid) {
            log::info!("the old process {pid} has finished");
            self.draining = None;
        }
        self.orphans.retain(|p| *p != pid);
        let at = self.queue.iter().position(|(_, p)| *p == pid)?;
        let (i, _) = self.queue.remove(at)?;
        log::warn!("the old process {pid} ended before its turn: its replacement starts now");
        Some(i)
    }

    /// Replace the next child when the one before has ended (or its time is up).
    fn step(
        &mut self,
        children: &mut [Child],
        parts: &mut Vec<Part>,
        paths: &Paths,
        summary: &str,
        slots: &balance::Slots,
    ) {
        if let Some((pid, deadline)) = self.draining {
            if Instant::now() < deadline {
                return;
            }
            log::warn!("the old process {pid} did not finish in time: killed");
            let _ = cli::signal(pid, libc::SIGKILL);
            self.draining = None;
        }
        let Some((i, pid)) = self.queue.pop_front() else {
            return;
        };
        let c = &mut children[i];
        c.due = Some(Instant::now());
        start(c, parts, paths, summary, slots);
        let wait = master::GRACEFUL_MIN.max(c.stop_timeout);
        let _ = cli::signal(
            pid,
            if self.graceful {
                libc::SIGHUP
            } else {
                libc::SIGUSR1
            },
        );
        log::info!("{} (pid {pid}) replaced; waiting for it to finish", c.label);
        self.draining = Some((pid, Instant::now() + wait + Duration::from_secs(5)));
    }

    /// A stop during a replacement: the old processes stop too.
    fn stop_all(&mut self) {
        for (_, pid) in self.queue.drain(..) {
            let _ = cli::signal(pid, libc::SIGTERM);
            self.orphans.push(pid);
        }
        if let Some((pid, _)) = self.draining.take() {
            let _ = cli::signal(pid, libc::SIGTERM);
            self.orphans.push(pid);
        }
    }
}

/// A stop under way: graceful or not, and when to stop waiting.
struct Stopping {
    deadline: Instant,
    killed: bool,
}

/// Run `parts` under a supervisor; returns when every child has ended after a stop.
pub(crate) fn run(
    mut parts: Vec<Part>,
    paths: &Paths,
    pipe: Option<OwnedFd>,
    summary: String,
    reload_parent: Option<i32>,
) -> Result<(), Error> {
    let threads = thread_count();
    if threads > 1 {
        // Nothing here should have left a thread running; a fork copies only this one.
        log::warn!("supervisor: {threads} threads before forking (expected 1)");
    }
    let set = signals::supervisor_set();
    signals::mask(libc::SIG_BLOCK, &set)?;
    let mut children = plan(&parts)?;
    for id in children.iter().filter_map(|c| c.identity) {
        report_dir(&paths.status, id);
        report_dir(&paths.connections, id);
    }
    let slots = balance::Slots::open(children.iter().filter(|c| c.slot.is_some()).count())?;
    // After an in-place reload: the children of the binary before, each replaced in turn.
    let mut old = Generation::adopt(&mut children);
    // This binary supervises now: a failure later is not one of the reload.
    crate::revert::disarm();
    let stop_timeout = parts
        .iter()
        .map(|p| p.worker.stop_timeout)
        .max()
        .unwrap_or_default();
    let workers = parts.len();
    let kept: Vec<(String, i32)> = parts
        .iter()
        .filter_map(|p| {
            use std::os::fd::AsRawFd;
            Some((
                p.worker.address()?.to_string(),
                p.listener.as_ref()?.as_raw_fd(),
            ))
        })
        .collect();
    log::info!(
        "supervisor started (pid {}), {} children:\n{}",
        std::process::id(),
        children.len(),
        summary.trim_end()
    );
    // Every socket is bound and listening: connections wait in the backlog for the children.
    cli::report_start(pipe, &format!("ok\n{summary}"));
    for c in children.iter_mut() {
        if c.due.is_some() {
            start(c, &mut parts, paths, &summary, &slots);
        }
    }
    old.step(&mut children, &mut parts, paths, &summary, &slots);
    if let Some(parent) = reload_parent {
        let _ = cli::signal(parent, libc::SIGQUIT);
    }
    let mut stopping: Option<Stopping> = None;
    loop {
        let now = Instant::now();
        let wake = children
            .iter()
            .filter_map(|c| c.due)
            .chain(stopping.as_ref().map(|s| s.deadline))
            .min()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        match signals::wait(&set, wake) {
            Some(libc::SIGINT | libc::SIGTERM) if stopping.is_none() => {
                log::info!("stopping");
                stopping = Some(begin_stop(&children, libc::SIGTERM, stop_timeout));
            }
            Some(libc::SIGQUIT) if stopping.is_none() => {
                log::info!("stopping gracefully");
                let wait = stop_timeout.max(Duration::from_secs(10));
                stopping = Some(begin_stop(&children, libc::SIGQUIT, wait));
            }
            Some(sig @ (libc::SIGUSR1 | libc::SIGHUP)) if stopping.is_none() && old.idle() => {
                // Only returns if the new binary could not be started.
                let e = reexec(&kept, &children, &slots, sig == libc::SIGHUP);
                log::error!("reload failed: {e}");
            }
            Some(libc::SIGUSR1 | libc::SIGHUP) if stopping.is_none() => {
                log::warn!("a reload is under way: this one is ignored");
            }
            Some(libc::SIGUSR2) => write_status(&children, paths, workers),
            Some(libc::SIGIO) => write_connections(&children, paths),
            _ => {}
        }
        for pid in reap(&mut children, stopping.is_some(), &slots, &paths.status) {
            if let (Some(i), None) = (old.ended(pid), &stopping) {
                children[i].due = Some(Instant::now());
            }
        }
        if stopping.is_none() {
            old.step(&mut children, &mut parts, paths, &summary, &slots);
        } else {
            old.stop_all();
        }
        match &mut stopping {
            Some(_) if children.iter().all(|c| c.pid.is_none()) && old.idle() => break,
            Some(s) if Instant::now() >= s.deadline && !s.killed => {
                for c in &children {
                    if let Some(pid) = c.pid {
                        log::warn!("{} (pid {pid}) did not stop in time: killed", c.label);
                        let _ = cli::signal(pid, libc::SIGKILL);
                    }
                }
                for pid in &old.orphans {
                    let _ = cli::signal(*pid, libc::SIGKILL);
                }
                s.killed = true;
            }
            Some(_) => {}
            None => {
                let now = Instant::now();
                for c in children.iter_mut() {
                    if c.pid.is_none() && c.due.is_some_and(|t| t <= now) {
                        start(c, &mut parts, paths, &summary, &slots);
                    }
                }
            }
        }
    }
    log::info!("stopped");
    Ok(())
}

/// The children: one per instance of each worker run as processes, one for the rest.
fn plan(parts: &[Part]) -> Result<Vec<Child>, Error> {
    let mut children = Vec::new();
    let mut rest = Vec::new();
    let mut rest_names = Vec::new();
    let mut slot = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.worker.processes && p.worker.serve.is_none() {
            let group = slot..slot + p.ids.len();
            for id in p.ids.clone() {
                let label = format!("{} #{id}", p.worker.name);
                let mut c = Child::new(vec![(i, id..id + 1)], label);
                c.slot = Some((group.clone(), slot));
                slot += 1;
                children.push(c);
            }
        } else {
            rest.push((i, p.ids.clone()));
            rest_names.push(p.worker.name.clone());
        }
    }
    if !rest.is_empty() {
        children.push(Child::new(
            rest,
            format!("threads ({})", rest_names.join(", ")),
        ));
    }
    for c in children.iter_mut() {
        let workers = || c.serves.iter().map(|(i, _)| &parts[*i].worker);
        c.reloadable = workers().all(|w| w.reloadable);
        c.stop_timeout = workers().map(|w| w.stop_timeout).max().unwrap_or_default();
        c.identity = crate::identity::of_workers(workers().map(|w| w.run_as()))?;
    }
    Ok(children)
}

impl Child {
    fn new(serves: Vec<(usize, std::ops::Range<usize>)>, label: String) -> Child {
        Child {
            serves,
            identity: None,
            reloadable: true,
            stop_timeout: Duration::ZERO,
            slot: None,
            label,
            pid: None,
            started: Instant::now(),
            started_unix: 0.0,
            restarts: 0,
            quick: 0,
            due: Some(Instant::now()),
        }
    }
}

/// Fork `child`. In the child this never returns: it serves its parts and exits.
fn start(
    child: &mut Child,
    parts: &mut Vec<Part>,
    paths: &Paths,
    summary: &str,
    slots: &balance::Slots,
) {
    let supervisor = std::process::id() as i32;
    // SAFETY: fork(2) in a process with one thread (see `run`): the child gets a consistent
    // copy of this thread's memory and no other thread's locks.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        log::error!(
            "cannot start {}: fork: {e}; trying again in 1 s",
            child.label
        );
        child.due = Some(Instant::now() + Duration::from_secs(1));
        return;
    }
    if pid == 0 {
        if let Some((group, me)) = &child.slot {
            balance::join(slots.copy(), group.clone(), *me);
        }
        let code = serve_child(child, std::mem::take(parts), paths, summary, supervisor);
        std::process::exit(code);
    }
    if child.started_unix > 0.0 {
        child.restarts += 1;
    }
    child.pid = Some(pid);
    child.started = Instant::now();
    child.started_unix = unix_now();
    child.due = None;
    log::info!("started {} (pid {pid})", child.label);
}

/// In a new child: take its parts (the others' sockets are closed here), serve them.
fn serve_child(
    child: &Child,
    parts: Vec<Part>,
    paths: &Paths,
    summary: &str,
    supervisor: i32,
) -> i32 {
    // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number; getppid(2) cannot fail.
    // Asked first, then checked: a supervisor that died in between is seen by getppid.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != supervisor {
            return 1;
        }
    }
    // SIGCHLD is the child's own again; the command line's signals stay blocked, for the
    // signalfd the child reads them from (`signals.rs`).
    if let Err(e) = signals::mask(libc::SIG_UNBLOCK, &signals::set_of(&[libc::SIGCHLD])) {
        log::error!("{}: {e}", child.label);
        return 1;
    }
    // The metrics port is served by one child; the others report to it (`metrics::siblings`).
    let metrics_on = parts.iter().any(|p| p.worker.serve.is_some());
    let mine: Vec<Part> = parts
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut p)| {
            let (_, ids) = child.serves.iter().find(|(j, _)| *j == i)?;
            p.ids = ids.clone();
            Some(p)
        })
        .collect();
    let hubs: Vec<&str> = mine
        .iter()
        .filter_map(|p| p.worker.hub.as_deref())
        .collect();
    crate::channel::keep_hubs(&hubs);
    let me = std::process::id() as i32;
    let uid = child.identity.map(|id| id.uid);
    let own = Paths {
        status: child_file(&paths.status, me, uid),
        connections: child_file(&paths.connections, me, uid),
        ..paths.clone()
    };
    // Privileges go last, once everything that needs them is done (the sockets are bound).
    if let Some(id) = child.identity {
        if let Err(e) = id.assume() {
            log::error!(
                "{}: cannot run as uid {} gid {}: {e}",
                child.label,
                id.uid,
                id.gid
            );
            return 1;
        }
    }
    if mine.iter().any(|p| p.worker.serve.is_some()) {
        let mut dirs = Vec::new();
        if let (Some(dir), Some(name)) = (paths.status.parent(), paths.status.file_name()) {
            dirs.push((dir.to_path_buf(), format!("{}.", name.to_string_lossy())));
        }
        if let Some(dir) = uid.and_then(|u| {
            child_file(&paths.status, 0, Some(u))
                .parent()
                .map(Path::to_path_buf)
        }) {
            dirs.push((dir, String::new()));
        }
        crate::metrics::read_siblings(dirs);
    } else if metrics_on {
        crate::metrics::write_reports(crate::metrics::report_file(&own.status));
    }
    match master::serve(mine, own, None, summary.to_string(), None, Role::Child) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{}: {e}", child.label);
            1
        }
    }
}

/// A report file's name for this child process (`….status.<pid>`).
/// A child's report file: `….status.<pid>` next to the supervisor's, or, for a child run as
/// another user, in a directory of that user's own (`….status.u<uid>/<pid>`).
fn child_file(path: &Path, pid: i32, uid: Option<u32>) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    match uid {
        Some(uid) => {
            name.push(format!(".u{uid}"));
            PathBuf::from(name).join(pid.to_string())
        }
        None => {
            name.push(format!(".{pid}"));
            PathBuf::from(name)
        }
    }
}

/// The directory of a user's children's report files, theirs to write (made once, as root).
fn report_dir(path: &Path, id: crate::identity::Identity) {
    let dir = child_file(path, 0, Some(id.uid));
    let Some(dir) = dir.parent() else { return };
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|_| std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid)))
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
    {
        log::error!("cannot prepare {}: {e}", dir.display());
    }
}

/// Signal every running child to stop; the deadline is `wait` and a margin for the children's
/// own shutdown.
fn begin_stop(children: &[Child], sig: i32, wait: Duration) -> Stopping {
    for c in children {
        if let Some(pid) = c.pid {
            let _ = cli::signal(pid, sig);
        }
    }
    Stopping {
        deadline: Instant::now() + wait + Duration::from_secs(3),
        killed: false,
    }
}

/// Collect the children that ended; schedule each one's new start unless stopping.
/// Returns the pids that ended and were none of `children`'s (the old generation's, after a
/// reload, or processes the app started itself).
fn reap(children: &mut [Child], stopping: bool, slots: &balance::Slots, status: &Path) -> Vec<i32> {
    let mut others = Vec::new();
    // An ended child's metrics report goes with it (`metrics::siblings`).
    let forget = |pid: i32, uid: Option<u32>| {
        let report = crate::metrics::report_file(&child_file(status, pid, uid));
        let _ = std::fs::remove_file(report.with_extension("totals"));
        let _ = std::fs::remove_file(report);
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with WNOHANG writes the status into a local integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return others;
        }
        let Some(c) = children.iter_mut().find(|c| c.pid == Some(pid)) else {
            forget(pid, None);
            others.push(pid);
            continue;
        };
        forget(pid, c.identity.map(|id| id.uid));
        c.pid = None;
        if let Some((_, me)) = &c.slot {
            slots.absent(*me);
        }
        let lived = c.started.elapsed();
        let how = ended(status);
        if stopping {
            log::info!("{} (pid {pid}) {how}", c.label);
            continue;
        }
        let wait = if lived < QUICK_EXIT {
            c.quick += 1;
            FIRST_BACKOFF
                .saturating_mul(1 << (c.quick - 1).min(16))
                .min(MAX_BACKOFF)
        } else {
            c.quick = 0;
            Duration::ZERO
        };
        let again = match c.quick {
            0 => String::new(),
            n => format!(", {n} quick exit{} in a row", if n == 1 { "" } else { "s" }),
        };
        log::error!(
            "{} (pid {pid}) {how} after {:.1} s{again}: starting it again in {:.1} s",
            c.label,
            lived.as_secs_f64(),
            wait.as_secs_f64()
        );
        c.due = Some(Instant::now() + wait);
    }
}

/// How a child ended, from its wait status.
fn ended(status: i32) -> String {
    if libc::WIFEXITED(status) {
        return format!("exited with status {}", libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGKILL => "SIGKILL: killed, or out of memory",
            libc::SIGABRT => "SIGABRT: aborted",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGBUS => "SIGBUS",
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            _ => "",
        };
        return format!("was killed by signal {sig} ({name})");
    }
    format!("ended (status {status})")
}

/// Ask every running child for its report file (`sig`), wait for the answers (at most
/// [`REPORT_WAIT`]), and return each child with its file's text.
fn gather<'a>(children: &'a [Child], sig: i32, file: &Path) -> Vec<(&'a Child, String)> {
    let asked: Vec<(&Child, PathBuf)> = children
        .iter()
        .filter_map(|c| {
            let pid = c.pid?;
            let path = child_file(file, pid, c.identity.map(|id| id.uid));
            let _ = std::fs::remove_file(&path);
            cli::signal(pid, sig).ok()?;
            Some((c, path))
        })
        .collect();
    let deadline = Instant::now() + REPORT_WAIT;
    let mut answers = Vec::new();
    let mut waiting = asked;
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|(c, path)| match std::fs::read_to_string(path) {
            Ok(text) => {
                let _ = std::fs::remove_file(path);
                answers.push((*c, text));
                false
            }
            Err(_) => true,
        });
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for (c, _) in waiting {
        log::warn!("{} did not answer in time", c.label);
    }
    answers
}

/// `status`: the children's reports merged into one, with a line per child.
fn write_status(children: &[Child], paths: &Paths, workers: usize) {
    let mut merged = Report::now(workers, Vec::new());
    for (c, text) in gather(children, libc::SIGUSR2, &paths.status) {
        let Ok(r) = serde_json::from_str::<Report>(&text) else {
            log::warn!("{}: unreadable status", c.label);
            continue;
        };
        merged.children.push(ChildStatus {
            pid: r.pid,
            serves: c.label.clone(),
            started_unix: r.started_unix,
            restarts: c.restarts,
            rss_bytes: r.rss_bytes,
            cpu_secs: r.cpu_secs,
            connections: r.instances.iter().map(|i| i.connections).sum(),
        });
        merged.rss_bytes += r.rss_bytes;
        merged.cpu_secs += r.cpu_secs;
        merged.instances.extend(r.instances);
        crate::metrics::add_json(&mut merged.totals, r.totals);
    }
    merged
        .instances
        .sort_by(|a, b| (&a.worker, a.id).cmp(&(&b.worker, b.id)));
    master::write_atomic(
        &paths.status,
        &serde_json::to_string(&merged).unwrap_or_default(),
    );
}

/// `connections`: the children's lists, one after the other.
fn write_connections(children: &[Child], paths: &Paths) {
    let mut all: Vec<serde_json::Value> = Vec::new();
    for (c, text) in gather(children, libc::SIGIO, &paths.connections) {
        match serde_json::from_str::<Vec<serde_json::Value>>(&text) {
            Ok(list) => all.extend(list),
            Err(_) => log::warn!("{}: unreadable connections", c.label),
        }
    }
    master::write_atomic(
        &paths.connections,
        &serde_json::to_string(&all).unwrap_or_default(),
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_quantiles_keep_the_larger() {
        let mut a = serde_json::json!({"accepted": 2, "refused": {"limit": 1},
            "publish_p99": 0.5, "hubs": [1], "started_unix": 10.0, "cpu": 1.5});
        let b = serde_json::json!({"accepted": 3, "refused": {"limit": 2, "origin": 1},
            "publish_p99": 0.7, "hubs": [2], "started_unix": 5.0, "cpu": 1.0});
        crate::metrics::add_json(&mut a, b);
        assert_eq!(
            a,
            serde_json::json!({"accepted": 5, "refused": {"limit": 3, "origin": 1},
                "publish_p99": 0.7, "hubs": [1, 2], "started_unix": 5.0, "cpu": 2.5})
        );
    }

    #[test]
    fn a_crash_loop_is_described() {
        // A raw wait status: killed by SIGKILL (9), no core.
        assert!(ended(9).contains("SIGKILL"));
        assert_eq!(ended(3 << 8), "exited with status 3");
    }
}

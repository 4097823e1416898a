//! Running a command: `start` binds (or inherits) every listening socket before detaching,
//! then serves the workers in this process (`master`) or under a supervisor
//! (`supervisor`, when a worker runs as processes or as another user); the other commands
//! reach the running process by signal (`cli`, `status`).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::cli::{self, Command, Paths};
use crate::error::Error;
use crate::listener::{unix_path, Listener, SocketFiles, INHERIT_ENV};
use crate::master::{describe, serve, Part, Role, GRACEFUL_MIN, RELOADED, RELOAD_PARENT_ENV};
use crate::worker::Worker;

/// Run Workerman's command line from `argv` (see [`cli::Workerman`]) for these workers;
/// returns the process exit code. A bad command line exits with status 2 at once.
pub fn main(workers: Vec<Worker>) -> i32 {
    crate::revert::arm();
    use clap::Parser;
    let cli = cli::Workerman::parse();
    match cli.common.with(workers, None) {
        Ok(workers) => run(cli.command, workers),
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// Run `cmd` for these workers; returns the process exit code.
pub fn run(cmd: Command, workers: Vec<Worker>) -> i32 {
    let program = std::env::args()
        .next()
        .as_deref()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|s| s.to_str())
        .unwrap_or("werkmann")
        .to_string();
    // The admin port is left out: `status` finds the process without `--metrics`; so is a
    // channel hub's Unix socket (`start_all --processes`): `status` finds it without the flag.
    let tag: Vec<&str> = workers
        .iter()
        .filter(|w| w.serve.is_none() && !w.socket_name().is_empty())
        .filter(|w| !(w.hub.is_some() && w.address().is_some_and(|a| unix_path(a).is_some())))
        .map(|w| w.socket_name())
        .collect();
    let paths = Paths::new(&program, &tag.join(","));
    let stop_wait = workers
        .iter()
        .map(|w| w.stop_timeout)
        .max()
        .unwrap_or_default();
    // A graceful stop waits up to its timeout, then closes what is left within `stop_timeout`.
    let stop_wait = stop_wait.max(GRACEFUL_MIN) + stop_wait + Duration::from_secs(5);
    let result = match cmd {
        Command::Start { daemon } => start(workers, &paths, &program, daemon),
        Command::Stop { graceful } => cli::stop(&paths, &program, graceful, stop_wait),
        Command::Restart { daemon, graceful } => {
            match cli::stop(&paths, &program, graceful, stop_wait) {
                Ok(()) | Err(Error::Cli(_)) => start(workers, &paths, &program, daemon),
                Err(e) => Err(e),
            }
        }
        Command::Reload { graceful } => match cli::running_pid(&paths.pid) {
            Some(pid) => cli::signal(
                pid,
                if graceful {
                    libc::SIGHUP
                } else {
                    libc::SIGUSR1
                },
            )
            .map(|_| {
                let how = if graceful { " gracefully" } else { "" };
                println!("{program} reloading{how} (pid {pid})")
            })
            .map_err(Error::from),
            None => Err(Error::Cli(format!("{program} is not running"))),
        },
        Command::Status { live, json } => crate::status::show(&paths, &program, live, json),
        Command::Connections(filter) => crate::status::connections(&paths, &program, &filter),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Listening sockets handed over by the process that reloaded into this one.
fn inherited() -> HashMap<String, RawFd> {
    std::env::var(INHERIT_ENV)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.rsplit_once('='))
                .filter_map(|(k, fd)| Some((k.to_string(), fd.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn start(workers: Vec<Worker>, paths: &Paths, program: &str, daemon: bool) -> Result<(), Error> {
    let reload_parent: Option<i32> = std::env::var(RELOAD_PARENT_ENV)
        .ok()
        .and_then(|p| p.parse().ok());
    if let Some(pid) = cli::running_pid(&paths.pid) {
        // A reload of a supervisor executes the new binary in its own place: its pid.
        if Some(pid) != reload_parent && pid != std::process::id() as i32 {
            return Err(Error::Cli(format!(
                "{program} already running (pid {pid}, pid file {})",
                paths.pid.display()
            )));
        }
    }
    // A worker run as another user runs in a child: this process keeps its privileges.
    let supervised = workers
        .iter()
        .any(|w| (w.processes && w.serve.is_none()) || w.user.is_some());
    // The workers run as threads share one child: one user for them all.
    crate::identity::of_workers(
        workers
            .iter()
            .filter(|w| !w.processes || w.serve.is_some())
            .map(Worker::run_as),
    )?;
    if let (false, Some(w)) = (supervised, workers.iter().find(|w| !w.reloadable)) {
        return Err(Error::Config(format!(
            "{}: reloadable = false keeps a worker's instances through a reload, which replaces \
             this whole process unless some worker runs as processes",
            w.name
        )));
    }
    // Bind (or inherit) every listening socket before detaching, so errors reach the terminal.
    let mut inherit = inherited();
    let mut listeners: Vec<Option<Listener>> = Vec::new();
    for w in &workers {
        w.check()?;
        let l = match w.address() {
            None => None,
            Some(addr) => Some(match inherit.remove(addr) {
                // SAFETY: the parent of a reload passed this listening socket by number in
                // WERKMANN_INHERIT_FDS under this address; it is open here and nothing else
                // owns it (each name is taken from the map once).
                Some(fd) => unsafe { Listener::inherit(addr, fd)? },
                None => Listener::bind(addr, w.unix_mode)?,
            }),
        };
        listeners.push(l);
    }
    for (_, fd) in inherit {
        // Sockets of workers the new binary no longer has.
        // SAFETY: an inherited descriptor no worker took: open, and owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let pipe = if daemon {
        Some(cli::daemonize(&paths.log, &paths.stdout)?)
    } else {
        None
    };
    cli::write_pid(&paths.pid)?;
    let summary = describe(&workers, &listeners);
    let files = SocketFiles::of(listeners.iter().flatten());
    let parts: Vec<Part> = workers
        .into_iter()
        .zip(listeners)
        .map(|(worker, listener)| Part {
            ids: 0..worker.count.max(1),
            worker,
            listener,
        })
        .collect();
    let result = if supervised {
        crate::supervisor::run(parts, paths, pipe, summary, reload_parent)
    } else {
        serve(
            parts,
            paths.clone(),
            pipe,
            summary,
            reload_parent,
            Role::Alone,
        )
    };
    if !RELOADED.load(std::sync::atomic::Ordering::Relaxed) {
        files.remove();
    }
    cli::remove_pid_if_ours(&paths.pid);
    result
}

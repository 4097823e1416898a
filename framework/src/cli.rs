//! The Workerman command line: `start [-d]`, `stop [-g]`, `restart`, `reload`, `status`,
//! `connections`; the pid file, the status files and the signals that carry the commands.
//!
//! Signals sent to the running process: `SIGINT`/`SIGTERM` stop, `SIGQUIT` stops gracefully,
//! `SIGUSR1` reloads, `SIGUSR2` writes the status file, `SIGIO` the connections file.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;

/// A command given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start; `daemon` detaches (`-d`).
    Start {
        /// Run in the background.
        daemon: bool,
    },
    /// Stop; `graceful` lets connections finish (`-g`).
    Stop {
        /// Graceful stop.
        graceful: bool,
    },
    /// Stop, then start.
    Restart {
        /// Run in the background.
        daemon: bool,
        /// Graceful stop.
        graceful: bool,
    },
    /// Swap in the binary now on disk without refusing a connection.
    Reload,
    /// Print per-instance figures.
    Status,
    /// Print every connection.
    Connections,
}

/// The usage text.
pub fn usage(program: &str) -> String {
    format!(
        "Usage: {program} <command> [mode] [options]\n\
         Commands:\n  start        start in the foreground (logs to stderr)\n  \
         start -d     start as a daemon\n  stop         stop\n  stop -g      stop gracefully\n  \
         restart      stop and start\n  reload       swap in the binary on disk without refusing connections\n  \
         status       show per-instance figures\n  connections  list connections\n\
         Environment: RUST_LOG (log filter), WERKMANN_RUN_DIR (pid and status files, default /tmp/werkmann),\n  \
         WERKMANN_PID_FILE (pid file path)\n"
    )
}

/// Find the command among the arguments (options the app parses itself are skipped).
pub fn parse(args: &[String]) -> Result<Command, Error> {
    let daemon = args.iter().any(|a| a == "-d");
    let graceful = args.iter().any(|a| a == "-g");
    for a in args.iter().skip(1) {
        let cmd = match a.as_str() {
            "start" => Command::Start { daemon },
            "stop" => Command::Stop { graceful },
            "restart" => Command::Restart { daemon, graceful },
            "reload" => Command::Reload,
            "status" => Command::Status,
            "connections" => Command::Connections,
            _ => continue,
        };
        return Ok(cmd);
    }
    Err(Error::Cli(usage(
        args.first().map(String::as_str).unwrap_or("app"),
    )))
}

/// Where pid, status and log files live: `$WERKMANN_RUN_DIR`, or `/tmp/werkmann`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("WERKMANN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("werkmann"))
}

/// The files of one running app.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The pid file.
    pub pid: PathBuf,
    /// Written on `status`.
    pub status: PathBuf,
    /// Written on `connections`.
    pub connections: PathBuf,
    /// Where a daemon logs.
    pub log: PathBuf,
}

impl Paths {
    /// Files named after the program and what tells two of its nodes apart (`tag`: the
    /// workers' socket names). `$WERKMANN_PID_FILE` overrides the pid file's path.
    pub fn new(program: &str, tag: &str) -> Paths {
        let stem = Path::new(program)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("werkmann")
            .to_string();
        let safe: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut hash: u64 = 0xcbf29ce484222325;
        for b in tag.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
        }
        let short: String = safe.chars().take(40).collect();
        let base = format!("{stem}.{short}.{:08x}", hash as u32);
        let pid = std::env::var_os("WERKMANN_PID_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| run_dir().join(format!("{base}.pid")));
        let with = |ext: &str| pid.with_extension(ext);
        Paths {
            status: with("status"),
            connections: with("connections"),
            log: with("log"),
            pid,
        }
    }
}

/// The pid in the pid file, if the file exists and that process is alive.
pub fn running_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether a process exists and has not exited (a zombie waiting for its parent has).
pub fn alive(pid: i32) -> bool {
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    !zombie
}

/// Send a signal.
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Write the pid file atomically.
pub fn write_pid(pid_file: &Path) -> std::io::Result<()> {
    if let Some(dir) = pid_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = pid_file.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(tmp, pid_file)
}

/// Remove the pid file if it still names this process.
pub fn remove_pid_if_ours(pid_file: &Path) {
    let ours = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(pid_file);
    }
}

/// Ask the running process to stop and wait until it is gone.
pub fn stop(paths: &Paths, program: &str, graceful: bool, wait: Duration) -> Result<(), Error> {
    let Some(pid) = running_pid(&paths.pid) else {
        return Err(Error::Cli(format!("{program} is not running")));
    };
    println!(
        "{program} is {}stopping ...",
        if graceful { "gracefully " } else { "" }
    );
    signal(
        pid,
        if graceful {
            libc::SIGQUIT
        } else {
            libc::SIGINT
        },
    )?;
    let deadline = Instant::now() + wait;
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(Error::Cli(format!(
                "{program} stop fail (pid {pid} still alive)"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{program} stop success");
    Ok(())
}

/// Signal the running process to write a report file, wait for it, and return its text.
pub fn request_report(
    paths: &Paths,
    program: &str,
    sig: i32,
    file: &Path,
) -> Result<String, Error> {
    let Some(pid) = running_pid(&paths.pid) else {
        return Err(Error::Cli(format!("{program} is not running")));
    };
    // The process writes the file anew (atomically, by rename): remove the old one first.
    let _ = std::fs::remove_file(file);
    signal(pid, sig)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            return Err(Error::Cli(format!("{program}: no answer from pid {pid}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Detach into the background. The parent waits for the child's word on a pipe: `ok` once it
/// listens, or an error, prints it and exits. Returns, in the child, the pipe to report on.
pub fn daemonize(log_file: &Path) -> Result<OwnedFd, Error> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().into()),
        0 => {
            drop(rd);
            unsafe { libc::setsid() };
            if let Some(dir) = log_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_file)?;
            let null = std::fs::File::open("/dev/null")?;
            use std::os::fd::AsRawFd;
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(log.as_raw_fd(), 1);
                libc::dup2(log.as_raw_fd(), 2);
            }
            Ok(wr)
        }
        _child => {
            drop(wr);
            let mut answer = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut answer);
            if answer.starts_with("ok") {
                print!("{}", answer.trim_start_matches("ok").trim_start());
                std::process::exit(0);
            }
            let msg = if answer.is_empty() {
                format!("start failed; see {}", log_file.display())
            } else {
                answer
            };
            eprintln!("{}", msg.trim_end());
            std::process::exit(1);
        }
    }
}

/// Tell a waiting daemon parent how the start went.
pub fn report_start(pipe: Option<OwnedFd>, text: &str) {
    if let Some(fd) = pipe {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(text.as_bytes());
    }
}

/// An app option: `--name VALUE` or `--name=VALUE` on the command line, else the environment
/// variable `env`, else `default`.
pub fn option(name: &str, env: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    let prefix = format!("{name}=");
    for (i, a) in args.iter().enumerate() {
        if a == name {
            if let Some(v) = args.get(i + 1) {
                return v.clone();
            }
        } else if let Some(v) = a.strip_prefix(&prefix) {
            return v.to_string();
        }
    }
    std::env::var(env).unwrap_or_else(|_| default.to_string())
}

/// Apply the limit options to a worker: `--max-connections N`, `--max-conns-per-ip N`,
/// `--origins URL,URL`, `--idle-timeout SECS` (`0` turns it off); environment
/// `WERKMANN_MAX_CONNECTIONS`, `WERKMANN_MAX_CONNS_PER_IP`, `WERKMANN_ORIGINS`,
/// `WERKMANN_IDLE_TIMEOUT`. Unset options keep the worker's defaults.
pub fn apply_limits(worker: &mut crate::Worker) -> Result<(), Error> {
    let num = |name: &str, env: &str| -> Result<Option<u64>, Error> {
        let v = option(name, env, "");
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| Error::Cli(format!("{name} takes a number, not {v:?}")))
    };
    if let Some(n) = num("--max-connections", "WERKMANN_MAX_CONNECTIONS")? {
        worker.max_connections = n as usize;
    }
    if let Some(n) = num("--max-conns-per-ip", "WERKMANN_MAX_CONNS_PER_IP")? {
        worker.max_connections_per_ip = n as usize;
    }
    if let Some(n) = num("--idle-timeout", "WERKMANN_IDLE_TIMEOUT")? {
        worker.idle_timeout = (n > 0).then(|| Duration::from_secs(n));
    }
    let origins = option("--origins", "WERKMANN_ORIGINS", "");
    if !origins.is_empty() {
        worker.allowed_origins = origins.split(',').map(|o| o.trim().to_string()).collect();
    }
    Ok(())
}

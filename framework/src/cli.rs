//! The Workerman command line: `start [-d]`, `stop [-g]`, `restart`, `reload`, `status`,
//! `connections`; the pid file, the status files and the signals that carry the commands.
//!
//! Signals sent to the running process: `SIGINT`/`SIGTERM` stop, `SIGQUIT` stops gracefully,
//! `SIGUSR1` reloads, `SIGUSR2` writes the status file, `SIGIO` the connections file.
//!
//! An app declares its command line once, with clap: its options as a `clap::Args` struct —
//! the shared groups ([`Listen`], [`Limits`], [`Tls`], [`Channel`]) flattened, its own options
//! next to them — parsed as an [`App`] with Workerman's [`Command`]. Every option has its
//! `WERKMANN_…` variable, and `--help` lists them.
//!
//! ```no_run
//! use werkmann::{cli, Worker};
//!
//! #[derive(clap::Args)]
//! struct Options {
//!     #[command(flatten)]
//!     listen: cli::Listen,
//!     #[command(flatten)]
//!     limits: cli::Limits,
//! }
//!
//! let cli::App { command, options, common } =
//!     cli::parse::<cli::App<Options>>(&[("listen", "0.0.0.0:4236"), ("count", "2")]);
//! let mut worker = Worker::new(&format!("websocket://{}", options.listen.listen))?;
//! worker.count = options.listen.count;
//! options.limits.apply(&mut worker);
//! worker.on_message(|conn, msg| {
//!     conn.send(msg);
//! });
//! command.run(common.with([worker], None)?)
//! # ; Ok::<(), werkmann::Error>(())
//! ```

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Workerman's commands, as an app's parser takes them (`#[command(subcommand)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Start in the foreground (logs to stderr), or as a daemon with -d
    Start {
        /// Run as a daemon (logs to the log file next to the pid file)
        #[arg(short = 'd')]
        daemon: bool,
    },
    /// Stop the running process, or gracefully with -g
    Stop {
        /// Stop gracefully: let connections finish what is queued
        #[arg(short = 'g')]
        graceful: bool,
    },
    /// Stop, then start
    Restart {
        /// Run as a daemon
        #[arg(short = 'd')]
        daemon: bool,
        /// Stop gracefully
        #[arg(short = 'g')]
        graceful: bool,
    },
    /// Swap in the binary now on disk without refusing a connection; with -g the old
    /// instances finish their connections first
    Reload {
        /// Gracefully: each old instance waits for its connections to finish (up to the
        /// graceful timeout) instead of closing them after `stop_timeout`
        #[arg(short = 'g')]
        graceful: bool,
    },
    /// Show the running process's figures, per instance
    Status {
        /// Refresh every second, with rates per second (Ctrl+C to quit)
        #[arg(short = 'd')]
        live: bool,
        /// Print JSON (one object) for scripts
        #[arg(long)]
        json: bool,
    },
    /// List the running process's connections, or those the filters pick
    Connections(ConnectionFilter),
}

/// `connections`' filters: a connection is listed when it matches every one given.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConnectionFilter {
    /// Only this worker's (its name)
    #[arg(long)]
    pub worker: Option<String>,
    /// Only this instance's (its id)
    #[arg(long)]
    pub instance: Option<usize>,
    /// Only those from this IP address
    #[arg(long)]
    pub ip: Option<std::net::IpAddr>,
    /// Only this client id (`{worker id}-{connection id}`, a gateway node's)
    #[arg(long)]
    pub client_id: Option<String>,
    /// Only those bound to this uid
    #[arg(long)]
    pub uid: Option<String>,
    /// Only members of this group
    #[arg(long)]
    pub group: Option<String>,
    /// Only those with at least this many bytes waiting to be sent (slow readers)
    #[arg(long, value_name = "BYTES")]
    pub min_buffered: Option<usize>,
    /// Only those whose peer sent nothing for at least this many seconds
    #[arg(long, value_name = "SECS")]
    pub idle: Option<u32>,
    /// List the largest first by this figure
    #[arg(long, value_enum)]
    pub sort: Option<SortBy>,
    /// List at most this many
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON (an array) for scripts
    #[arg(long)]
    pub json: bool,
}

/// What `connections --sort` orders by (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Bytes waiting to be sent
    Buffered,
    /// Seconds since the peer last sent anything
    Idle,
    /// Seconds since it was accepted
    Age,
    /// Messages received
    In,
    /// Messages sent
    Out,
}

impl Command {
    /// Whether this command starts the workers (`start`, `restart`): only then do they need
    /// what serving takes (worker ids, certificates, …).
    pub fn starts(&self) -> bool {
        matches!(self, Command::Start { .. } | Command::Restart { .. })
    }
}

/// Workerman's command line alone, for an app without options of its own:
/// `app start -d`, `app stop -g`, …. [`crate::Worker::run_all`] parses it from `argv`.
#[derive(Debug, Clone, clap::Parser)]
#[command(after_help = ENVIRONMENT)]
pub struct Workerman {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The admin port and the process's files.
    #[command(flatten)]
    pub common: Common,
}

/// An app's command line: Workerman's [`Command`] and the app's own options `O` (a
/// `#[derive(clap::Args)]` struct that flattens the shared groups it needs):
/// `let cli::App { command, options, common } = cli::parse::<cli::App<Options>>(&[…]);`,
/// then `command.run(common.with(workers, secret)?)`.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = None, long_about = None, after_help = ENVIRONMENT)]
pub struct App<O: clap::Args> {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The app's options.
    #[command(flatten)]
    pub options: O,
    /// What every app takes: the admin port (`--metrics IP:PORT`, off by default) and the
    /// process's files (`--pid-file`, `--log-file`, `--stdout-file`).
    #[command(flatten)]
    pub common: Common,
}

/// Parse the app's command line `P` from `argv`, with `defaults` as `(argument id, value)`
/// for the shared options whose default is the app's (`("listen", "0.0.0.0:4236")`,
/// `("count", "2")`). Every option may stand before or after the command. A bad command line — an unknown option, a bad value, no command —
/// prints what is wrong and exits with status 2; `--help` prints the options with their
/// environment variables and defaults.
pub fn parse<P: clap::Parser>(defaults: &[(&'static str, &'static str)]) -> P {
    // A binary a supervisor's reload started goes back if it cannot take over (`revert.rs`).
    crate::revert::arm();
    // Options may follow the command, as Workerman's do: `app start -d --listen …`.
    let mut command = P::command().mut_args(|a| a.global(true));
    for &(id, value) in defaults {
        command = command.mut_arg(id, |a| a.default_value(value));
    }
    let matches = command.get_matches();
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The environment every app reads, shown at the end of `--help` (see [`App`]).
pub const ENVIRONMENT: &str = "Environment: RUST_LOG (log filter, default info), \
WERKMANN_RUN_DIR (pid, status and daemon log files, default /tmp/werkmann)";

/// Where a worker listens and how many instances it runs: `--listen IP:PORT`
/// (`WERKMANN_LISTEN`), `--count N` (`WERKMANN_COUNT`). An app sets its own defaults with
/// [`parse`]'s defaults: `cli::parse::<cli::App<Options>>(&[("listen", "0.0.0.0:4236")])`.
#[derive(Debug, Clone, clap::Args)]
pub struct Listen {
    /// Where to listen, IP:PORT
    #[arg(long, env = "WERKMANN_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// How many instances (threads) serve it
    #[arg(long, env = "WERKMANN_COUNT", default_value_t = 1)]
    pub count: usize,
    /// Run each instance as a supervised child process instead of a thread (restarted with
    /// the same instance id if it dies)
    #[arg(long, env = "WERKMANN_PROCESSES")]
    pub processes: bool,
    /// A Unix socket's (`--listen unix:/PATH`) file permissions, in octal (e.g. 660)
    #[arg(long, env = "WERKMANN_UNIX_MODE", value_name = "OCTAL", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,
}

impl Listen {
    /// Set `worker`'s instance count, whether they run as processes, and a Unix socket's
    /// permissions from these options.
    pub fn apply(&self, worker: &mut crate::Worker) {
        worker.count = self.count;
        worker.processes = self.processes;
        worker.unix_mode = self.unix_mode;
    }
}

/// File permission bits in octal (`660`, `0660` or `0o660`), at most `777`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 660")),
    }
}

/// The limits of a worker (docs/reliability.md); unset ones keep the worker's defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Limits {
    /// Connections open at once, at most
    #[arg(long, env = "WERKMANN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one IP address, at most
    #[arg(long, env = "WERKMANN_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<usize>,
    /// The WebSocket Origins accepted, comma-separated (others are refused with 403)
    #[arg(long, env = "WERKMANN_ORIGINS", value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Close connections idle this many seconds (0: never)
    #[arg(long, env = "WERKMANN_IDLE_TIMEOUT", value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Answer 408 and close a request head not complete this many seconds after its first byte
    /// (HTTP, WebSocket upgrades; default 10; 0: never)
    #[arg(long, env = "WERKMANN_HEAD_TIMEOUT", value_name = "SECS")]
    pub head_timeout: Option<u64>,
    /// WebSocket: negotiate permessage-deflate compression when a client offers it (on/off;
    /// the default is the app's: off, ws_echo on)
    #[arg(long, env = "WERKMANN_WS_COMPRESSION", value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ws_compression: Option<bool>,
}

impl Limits {
    /// Set the given limits on `worker`.
    pub fn apply(&self, worker: &mut crate::Worker) {
        if let Some(n) = self.max_connections {
            worker.max_connections = n;
        }
        if let Some(n) = self.max_conns_per_ip {
            worker.max_connections_per_ip = n;
        }
        if let Some(secs) = self.idle_timeout {
            worker.idle_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(secs) = self.head_timeout {
            worker.head_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(on) = self.ws_compression {
            worker.websocket_compression = on;
        }
        let origins: Vec<String> = self
            .origins
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if !origins.is_empty() {
            worker.allowed_origins = origins;
        }
    }
}

/// A certificate and key to serve TLS with (`wss://`, `https://`, a TLS channel): `--cert PEM
/// --key PEM` (`WERKMANN_TLS_CERT`, `WERKMANN_TLS_KEY`), both or neither.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Tls {
    /// Serve TLS with this certificate chain (PEM; needs --key)
    #[arg(long, env = "WERKMANN_TLS_CERT", value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM; needs --cert)
    #[arg(long, env = "WERKMANN_TLS_KEY", value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl Tls {
    /// The server's TLS settings, `None` without a certificate.
    pub fn load(&self) -> Result<Option<crate::ServerTls>, Error> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => crate::ServerTls::from_pem_files(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err(Error::Cli("--cert and --key go together".into())),
        }
    }
}

/// The admin and metrics port (`crate::admin`): `--metrics IP:PORT` (`WERKMANN_METRICS`;
/// off by default) serves Prometheus metrics at `/metrics` and the admin page at `/admin`;
/// `--metrics-secret S` (`WERKMANN_METRICS_SECRET`) is asked for there, and required off
/// loopback. An app with a push API secret uses that one when none is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Metrics {
    /// Serve Prometheus metrics (/metrics) and the admin page (/admin) on IP:PORT
    #[arg(long, env = "WERKMANN_METRICS", value_name = "IP:PORT")]
    pub metrics: Option<String>,
    /// The secret the metrics port asks for (Bearer token, or Basic auth password); needed
    /// when it does not listen on loopback
    #[arg(long, env = "WERKMANN_METRICS_SECRET", hide_env_values = true)]
    pub metrics_secret: Option<String>,
}

impl Metrics {
    /// `workers`, and the admin port's worker when `--metrics` was given; `secret` is the
    /// app's own (the push API's), used when `--metrics-secret` is not given.
    pub fn with(
        &self,
        workers: impl IntoIterator<Item = crate::Worker>,
        secret: Option<&str>,
    ) -> Result<Vec<crate::Worker>, Error> {
        let mut all: Vec<crate::Worker> = workers.into_iter().collect();
        if let Some(listen) = &self.metrics {
            let secret = self.metrics_secret.as_deref().or(secret);
            all.push(crate::admin::Admin::new(listen, secret)?.into_worker()?);
        }
        Ok(all)
    }
}

/// How a node reaches its channel: `--channel ADDR` (`WERKMANN_CHANNEL`: `IP:PORT`,
/// `tls://HOST:PORT`, `redis://…`), `--channel-secret S` (`WERKMANN_CHANNEL_SECRET`),
/// `--tls-ca PEM` (`WERKMANN_TLS_CA`) and `--redis-ca PEM` (`WERKMANN_REDIS_CA`).
#[derive(Debug, Clone, clap::Args)]
pub struct Channel {
    /// The channel: IP:PORT, tls://HOST:PORT, redis://… or rediss://…
    #[arg(long, env = "WERKMANN_CHANNEL", default_value = "127.0.0.1:2206")]
    pub channel: String,
    /// The channel server's secret (its --secret)
    #[arg(long, env = "WERKMANN_CHANNEL_SECRET", hide_env_values = true)]
    pub channel_secret: Option<String>,
    /// A private CA (PEM) that signed a tls:// channel server's certificate
    #[arg(long, env = "WERKMANN_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// A private CA (PEM) that signed a rediss:// server's certificate
    #[arg(long, env = "WERKMANN_REDIS_CA", value_name = "PEM")]
    pub redis_ca: Option<PathBuf>,
    /// Which events keep history for resuming readers: PATTERN=SIZE/TTL or PATTERN=off,
    /// comma-separated, the first match wins (`*=off` for none)
    #[arg(
        long,
        env = "WERKMANN_HISTORY",
        value_name = "RULES",
        default_value = DEFAULT_HISTORY,
        value_parser = crate::channel::History::parse
    )]
    pub history: crate::channel::History,
}

/// The history a node keeps unless told otherwise: the last 100 messages of every named
/// event, each for 5 minutes (worker ids' events never keep any).
pub const DEFAULT_HISTORY: &str = "*=100/5m";

impl Channel {
    /// This process's embedded channel (`channel::Server::embedded()`), no secret, no CA.
    pub fn embedded() -> Channel {
        Channel {
            channel: crate::channel::EMBEDDED.into(),
            channel_secret: None,
            tls_ca: None,
            redis_ca: None,
            history: crate::channel::History::parse(DEFAULT_HISTORY).expect("a valid default"),
        }
    }

    /// A channel client connected (in the background) as these options say; call it on a
    /// worker instance's thread, e.g. in `on_worker_start`.
    pub fn connect(&self) -> Result<crate::channel::Client, crate::channel::ChannelError> {
        crate::channel::Client::connect_with(&self.channel, &self.options())
    }

    /// The options of this node's channel clients.
    pub fn options(&self) -> crate::channel::Options {
        crate::channel::Options {
            secret: self.channel_secret.clone().filter(|s| !s.is_empty()),
            tls_ca: self.redis_ca.clone().or_else(|| self.tls_ca.clone()),
            history: self.history.clone(),
        }
    }
}

/// Where pid, status and log files live: `$WERKMANN_RUN_DIR`, or `/tmp/werkmann`.
/// Where the processes' files go: `$WERKMANN_RUN_DIR`, or `werkmann` in the temporary
/// directory.
pub fn run_dir() -> PathBuf {
    std::env::var_os("WERKMANN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("werkmann"))
}

/// What every app takes besides its own options: the admin port and the process's files.
/// [`Common::with`] applies both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Common {
    /// The admin and metrics port.
    #[command(flatten)]
    pub admin: Metrics,
    /// The pid file, the log file, the standard output file.
    #[command(flatten)]
    pub files: Files,
    /// The user and group to run as.
    #[command(flatten)]
    pub identity: RunAs,
}

/// Who the workers' processes run as (Workerman's `user` and `group`): `--user NAME`
/// (`WERKMANN_USER`) and `--user-group NAME` (`WERKMANN_GROUP`; `--group` is `connections`'
/// filter), for every worker that names none itself; see [`crate::Worker::user`].
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct RunAs {
    /// Run the workers as this user, privileges dropped after binding (the supervisor stays)
    #[arg(long, env = "WERKMANN_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// With --user: this group instead of the user's own
    #[arg(
        id = "user_group",
        long = "user-group",
        env = "WERKMANN_GROUP",
        value_name = "NAME"
    )]
    pub group: Option<String>,
}

impl RunAs {
    /// Give every worker that names no user this one.
    pub fn apply(&self, workers: &mut [crate::Worker]) {
        let Some(user) = &self.user else { return };
        for w in workers.iter_mut().filter(|w| w.user.is_none()) {
            w.user = Some(user.clone());
            w.group = self.group.clone();
        }
    }
}

impl Common {
    /// Take the process's files as given ([`Files::apply`]), then `workers` and the admin
    /// port's worker ([`Metrics::with`]).
    pub fn with(
        &self,
        workers: impl IntoIterator<Item = crate::Worker>,
        secret: Option<&str>,
    ) -> Result<Vec<crate::Worker>, Error> {
        self.files.apply()?;
        if self.identity.group.is_some() && self.identity.user.is_none() {
            return Err(Error::Cli("--user-group needs --user".into()));
        }
        let mut all = self.admin.with(workers, secret)?;
        self.identity.apply(&mut all);
        Ok(all)
    }
}

/// The process's files, Workerman's `Worker::$pidFile`, `$logFile` and `$stdoutFile`: each
/// `None` keeps the default (the run directory, `WERKMANN_RUN_DIR`, with a name from the app
/// and where it listens). An app without a command line of its own sets them with
/// [`Files::apply`] before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Files {
    /// The pid file (`stop`, `status`, … find the process by it)
    #[arg(long, env = "WERKMANN_PID_FILE", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Where a daemon writes its log lines (default: the pid file's path with .log)
    #[arg(long, env = "WERKMANN_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Where a daemon's standard output goes (what the app prints; default: the log file)
    #[arg(long, env = "WERKMANN_STDOUT_FILE", value_name = "PATH")]
    pub stdout_file: Option<PathBuf>,
}

fn files() -> &'static std::sync::Mutex<Files> {
    static F: std::sync::OnceLock<std::sync::Mutex<Files>> = std::sync::OnceLock::new();
    F.get_or_init(Default::default)
}

impl Files {
    /// Use these files for this process's commands (`start`, `stop`, `status`, …). A path
    /// whose directory cannot be created is an error now, not at the daemon's start.
    pub fn apply(&self) -> Result<(), Error> {
        for path in [&self.pid_file, &self.log_file, &self.stdout_file]
            .into_iter()
            .flatten()
        {
            if path.as_os_str().is_empty() || path.to_string_lossy().ends_with('/') || path.is_dir()
            {
                return Err(Error::Cli(format!("{}: not a file path", path.display())));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Cli(format!(
                        "cannot create {} for {}: {e}",
                        dir.display(),
                        path.display()
                    ))
                })?;
            }
        }
        *files().lock().unwrap_or_else(|e| e.into_inner()) = self.clone();
        Ok(())
    }
}

/// The files of one running app.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The pid file.
    pub pid: PathBuf,
    /// Written on `status`.
    pub status: PathBuf,
    /// Written on `connections`.
    pub connections: PathBuf,
    /// Where a daemon logs.
    pub log: PathBuf,
    /// Where a daemon's standard output goes.
    pub stdout: PathBuf,
}

impl Paths {
    /// Files named after the program and what tells two of its nodes apart (`tag`: the
    /// workers' socket names), or as [`Files`] names them (`$WERKMANN_PID_FILE` too).
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
        let named = files().lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pid = named
            .pid_file
            .or_else(|| std::env::var_os("WERKMANN_PID_FILE").map(PathBuf::from))
            .unwrap_or_else(|| run_dir().join(format!("{base}.pid")));
        let with = |ext: &str| pid.with_extension(ext);
        let log = named.log_file.unwrap_or_else(|| with("log"));
        Paths {
            status: with("status"),
            connections: with("connections"),
            stdout: named.stdout_file.unwrap_or_else(|| log.clone()),
            log,
            pid,
        }
    }
}

/// The pid in the pid file, if the file exists and that process is alive.
pub(crate) fn running_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether a process exists and has not exited (a zombie waiting for its parent has).
pub(crate) fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; no memory is passed.
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
pub(crate) fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Write the pid file atomically.
pub(crate) fn write_pid(pid_file: &Path) -> std::io::Result<()> {
    if let Some(dir) = pid_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = pid_file.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(tmp, pid_file)
}

/// Remove the pid file if it still names this process.
pub(crate) fn remove_pid_if_ours(pid_file: &Path) {
    let ours = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(pid_file);
    }
}

/// Ask the running process to stop and wait until it is gone.
pub(crate) fn stop(
    paths: &Paths,
    program: &str,
    graceful: bool,
    wait: Duration,
) -> Result<(), Error> {
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
pub(crate) fn request_report(
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
pub(crate) fn daemonize(log_file: &Path, stdout_file: &Path) -> Result<OwnedFd, Error> {
    // Opened before detaching, so a file that cannot be written is said on the terminal.
    let open = |path: &Path| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Cli(format!("cannot open {}: {e}", path.display())))
    };
    let log = open(log_file)?;
    let stdout = match stdout_file == log_file {
        true => log.try_clone()?,
        false => open(stdout_file)?,
    };
    let null = std::fs::File::open("/dev/null")?;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is an array of two c_ints that pipe(2) fills.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe(2) succeeded, so both descriptors are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: called before the actix system and its threads start (worker-id claims join
    // their thread before returning), so the child copies a process with this one thread and
    // no lock held by another; the child goes on in ordinary Rust.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().into()),
        0 => {
            drop(rd);
            // SAFETY: setsid(2) takes no arguments; in a fresh child it cannot fail.
            unsafe { libc::setsid() };
            use std::os::fd::AsRawFd;
            // SAFETY: the three descriptors are open files owned by this function; dup2(2)
            // only replaces the standard descriptors, which nothing else holds as an owned fd.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(stdout.as_raw_fd(), 1);
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
pub(crate) fn report_start(pipe: Option<OwnedFd>, text: &str) {
    if let Some(fd) = pipe {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(text.as_bytes());
    }
}

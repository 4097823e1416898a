//! A server process the benchmarks start: spawned with its output in a log file and its own
//! run directory, killed by the kernel if the benchmark dies, waited for until its ports
//! accept connections, and stopped — SIGTERM, then SIGKILL after 5 s — when dropped.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Raise the soft open-files limit to the hard one when `need` is above it; fail clearly when
/// even the hard limit is too low.
pub fn raise_nofile(need: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        ensure!(
            lim.rlim_max >= need,
            "needs {need} open files but the hard limit is {}",
            lim.rlim_max
        );
        if lim.rlim_cur < need {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A started server process.
pub struct Child {
    /// Its name (the log is `{name}.log` in its directory).
    pub name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Start `cmd` in `dir` (created if missing) with `WERKMANN_RUN_DIR` there, stdout and
    /// stderr in `dir/{name}.log`, `RUST_LOG` from `BENCH_RUST_LOG` (default `warn`), and
    /// `PDEATHSIG` so the kernel kills it with the benchmark. With `wrap`, a profiler from
    /// `PUSHBENCH_WRAP` (e.g. `valgrind --tool=callgrind`; it must keep the pid) runs it.
    pub fn spawn(name: &str, cmd: Command, dir: &Path, wrap: bool) -> Result<Child> {
        std::fs::create_dir_all(dir)?;
        let wrapper = if wrap {
            std::env::var("PUSHBENCH_WRAP").unwrap_or_default()
        } else {
            String::new()
        };
        let mut cmd = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(cmd.get_program()).args(cmd.get_args());
                c
            }
            None => cmd,
        };
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        cmd.current_dir(dir)
            .env("WERKMANN_RUN_DIR", dir)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("warn".into()),
            )
            .env("NODE_ENV", "production")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; a server dies with the benchmark.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Child {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Wait until every one of `ports` accepts connections, at most `timeout`; `Err` with the
    /// log's tail when the process exits or does not listen in time.
    pub async fn wait_ports(&mut self, ports: &[SocketAddr], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for port in ports {
            loop {
                self.check_alive()?;
                if tokio::net::TcpStream::connect(port).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} does not listen on {port}:\n{}", self.name, self.tail());
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        Ok(())
    }

    /// `Err` with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.tail());
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Command-line options, `--name value` or `--name=value`, one at a time.
pub struct Args {
    rest: std::collections::VecDeque<String>,
    usage: &'static str,
}

impl Args {
    /// The options in `args`; `usage` is shown when one lacks its value.
    pub fn new(args: &[String], usage: &'static str) -> Args {
        Args {
            rest: args.iter().cloned().collect(),
            usage,
        }
    }

    /// The next option's name and, for `--name=value`, its value.
    pub fn next_option(&mut self) -> Option<(String, Option<String>)> {
        let a = self.rest.pop_front()?;
        Some(match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a, None),
        })
    }

    /// The value of option `name`: `inline` (from `--name=value`) or the next argument.
    pub fn value(&mut self, name: &str, inline: &Option<String>) -> Result<String> {
        inline
            .clone()
            .or_else(|| self.rest.pop_front())
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{}", self.usage))
    }
}

//! `pushbench transports` (issue 20): HTTP over a Unix socket and over TCP, and UDP echo,
//! werkmann side by side with nginx
//! (HTTP) and a Python asyncio echo (UDP).
//!
//! `pushbench transports [--conns C] [--senders K] [--secs T] [--warmup W] [--repeats R]
//! [--count N]`
//!
//! It builds nothing: it starts, next to its own executable, `http_echo start --listen
//! 127.0.0.1:PORT --count N`, `http_echo start --listen unix:/PATH --count N` and `udp_echo
//! start --listen 127.0.0.1:PORT --count N`, and one nginx with `N` worker processes
//! ([`nginx_conf`]: `return 200 "ok";` on TCP and on a Unix socket); the UDP peer is a
//! Python asyncio echo ([`PY_UDP_ECHO`], one process: this nginx's `stream` module is
//! dynamic and not installed). Each round (`R`, default 3) runs every
//! case once, the order reversed on odd rounds, `W` s of warm-up (default 1) then `T` s
//! measured (default 3):
//!
//! - HTTP: `C` keep-alive connections (default 32), each sending `GET /` and waiting for the
//!   whole answer (status 200, `Content-Length` bytes of body) before the next. Note the
//!   bodies differ: http_echo answers a JSON description of the request (~400 bytes), nginx
//!   `ok`.
//! - UDP: `K` senders (default 32), each on its own socket sending a 32-byte datagram and
//!   waiting for the answer (1 s at most, else counted lost) before the next.
//!
//! Figures: answers per second and server CPU per answer (every server process), medians of
//! the rounds, and werkmann ÷ peer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};

use crate::child::{free_addr, raise_nofile, Args, Child};
use crate::{procfs, report};

const USAGE: &str = "\
Usage: pushbench transports [--conns C] [--senders K] [--secs T] [--warmup W] [--repeats R]
                            [--count N]
  --conns C      HTTP keep-alive connections, one request at a time each (default 32)
  --senders K    UDP senders, one datagram at a time each (default 32)
  --secs T       measured seconds per run (default 3)
  --warmup W     seconds of load before each measurement (default 1)
  --repeats R    rounds, each running every case once, medians shown (default 3)
  --count N      werkmann instances and nginx worker processes (default 2)
";

#[derive(Debug, Clone)]
struct Options {
    conns: usize,
    senders: usize,
    secs: f64,
    warmup: f64,
    repeats: usize,
    count: usize,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        conns: 32,
        senders: 32,
        secs: 3.0,
        warmup: 1.0,
        repeats: 3,
        count: 2,
    };
    let mut args = Args::new(args, USAGE);
    while let Some((name, inline)) = args.next_option() {
        let mut value = || args.value(&name, &inline);
        match name.as_str() {
            "--conns" => o.conns = value()?.parse().context("--conns")?,
            "--senders" => o.senders = value()?.parse().context("--senders")?,
            "--secs" => o.secs = value()?.parse().context("--secs")?,
            "--warmup" => o.warmup = value()?.parse().context("--warmup")?,
            "--repeats" => o.repeats = value()?.parse().context("--repeats")?,
            "--count" => o.count = value()?.parse().context("--count")?,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(
        (1..=10_000).contains(&o.conns) && (1..=10_000).contains(&o.senders),
        "--conns and --senders must be 1 to 10000"
    );
    ensure!(o.secs > 0.0 && o.warmup >= 0.0, "--secs must be above 0");
    ensure!(
        o.repeats > 0 && o.count > 0,
        "--repeats and --count must be at least 1"
    );
    Ok(o)
}

/// The nginx configuration: `workers` worker processes, no access log, `return 200 "ok";`
/// on `tcp` and on the Unix socket `unix`. (This nginx's `stream` module is dynamic and not
/// installed, hence the Python UDP peer.)
fn nginx_conf(prefix: &Path, tcp: SocketAddr, unix: &Path, workers: usize) -> String {
    let server = format!(
        "    server {{
        listen {tcp};
        listen unix:{unix};
        location / {{
            return 200 \"ok\";
        }}
    }}
",
        unix = unix.display()
    );
    crate::files::nginx_conf_with(prefix, workers, "", &server)
}

/// Where a case sends its load.
#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Udp(SocketAddr),
}

impl Target {
    fn transport(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "HTTP, TCP",
            Target::Unix(_) => "HTTP, Unix socket",
            Target::Udp(_) => "UDP echo",
        }
    }
}

/// CPU time of a process and its direct children, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    procfs::cpu_ns(pid)
        + procfs::children(pid)
            .into_iter()
            .map(procfs::cpu_ns)
            .sum::<u64>()
}

fn spawn_werkmann(bin: &str, listen: &str, count: usize, dir: &Path) -> Result<Child> {
    let exe = std::env::current_exe()?.with_file_name(bin);
    ensure!(
        exe.exists(),
        "{} not found; build it with `cargo build --release --workspace`",
        exe.display()
    );
    let mut cmd = Command::new(exe);
    cmd.args(["start", "--listen", listen])
        .args(["--count", &count.to_string()]);
    Child::spawn(bin, cmd, &dir.join(format!("{bin}-{}", listen.len())), true)
}

async fn wait_unix(child: &mut Child, path: &Path) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        child.check_alive()?;
        ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "{} not listening",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_udp(child: &mut Child, addr: SocketAddr) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(addr).await?;
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        s.send(b"ping").await?;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await
        {
            return Ok(());
        }
        child.check_alive()?;
        ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "nothing answers on udp {addr}"
        );
    }
}

/// The UDP peer: one Python asyncio process answering each datagram with its bytes.
const PY_UDP_ECHO: &str = "\
import asyncio, sys
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', int(sys.argv[1])))
    await asyncio.Event().wait()
asyncio.run(main())
";

/// One request and its answer (status 200, `Content-Length` bytes of body).
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    req: &[u8],
) -> Result<()> {
    buf.clear();
    s.write_all(req).await?;
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        ensure!(buf.len() < 16384, "response head too long");
        ensure!(s.read_buf(buf).await? > 0, "connection closed");
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    ensure!(status.starts_with("HTTP/1.1 200"), "status line {status:?}");
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<usize>().context("Content-Length")?);
            }
        }
    }
    let length = length.ok_or_else(|| anyhow!("no Content-Length"))?;
    while buf.len() < head_end + length {
        ensure!(s.read_buf(buf).await? > 0, "connection closed in the body");
    }
    ensure!(buf.len() == head_end + length, "bytes after the body");
    Ok(())
}

/// What one connection or sender counted while measuring: (answers, errors, first error).
type Tally = (u64, u64, Option<String>);

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn http_loop(target: Target, measuring: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Tally {
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: pushbench\r\n\r\n";
    let mut t: Tally = (0, 0, None);
    let mut buf = Vec::with_capacity(4096);
    let mut stream: Option<Stream> = None;
    while !stop.load(Ordering::Relaxed) {
        if stream.is_none() {
            let c = match &target {
                Target::Tcp(a) => TcpStream::connect(a).await.map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                Target::Unix(p) => UnixStream::connect(p).await.map(Stream::Unix),
                Target::Udp(_) => unreachable!(),
            };
            match c {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    t.1 += 1;
                    t.2.get_or_insert(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let fut = async {
            match stream.as_mut() {
                Some(Stream::Tcp(s)) => request(s, &mut buf, req).await,
                Some(Stream::Unix(s)) => request(s, &mut buf, req).await,
                None => unreachable!(),
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within 5 s")));
        let counted = measuring.load(Ordering::Relaxed);
        match r {
            Ok(()) if counted => t.0 += 1,
            Ok(()) => {}
            Err(e) => {
                if counted {
                    t.1 += 1;
                    t.2.get_or_insert(format!("{e:#}"));
                }
                stream = None;
            }
        }
    }
    t
}

async fn udp_loop(addr: SocketAddr, measuring: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Tally {
    let mut t: Tally = (0, 0, None);
    let s = match UdpSocket::bind("127.0.0.1:0").await {
        Ok(s) => s,
        Err(e) => return (0, 1, Some(format!("bind: {e}"))),
    };
    if let Err(e) = s.connect(addr).await {
        return (0, 1, Some(format!("connect: {e}")));
    }
    let msg = [b'u'; 32];
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        let r = async {
            s.send(&msg).await?;
            s.recv(&mut buf).await
        };
        let r = tokio::time::timeout(Duration::from_secs(1), r).await;
        let counted = measuring.load(Ordering::Relaxed);
        match r {
            Ok(Ok(n)) if n > 0 => t.0 += u64::from(counted),
            Ok(Ok(_)) => {
                t.1 += u64::from(counted);
            }
            Ok(Err(e)) => {
                if counted {
                    t.1 += 1;
                    t.2.get_or_insert(format!("{e}"));
                }
            }
            Err(_) => {
                if counted {
                    t.1 += 1;
                    t.2.get_or_insert("no answer within 1 s".into());
                }
            }
        }
    }
    t
}

/// One measured run: (answers per second, server µs CPU per answer, errors, note).
async fn load(o: &Options, pid: u32, target: &Target) -> Result<(f64, f64, u64, String)> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = match target {
        Target::Udp(a) => (0..o.senders)
            .map(|_| tokio::spawn(udp_loop(*a, measuring.clone(), stop.clone())))
            .collect(),
        _ => (0..o.conns)
            .map(|_| tokio::spawn(http_loop(target.clone(), measuring.clone(), stop.clone())))
            .collect(),
    };
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(o.secs)).await;
    measuring.store(false, Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns(pid).saturating_sub(cpu0);
    stop.store(true, Ordering::SeqCst);
    let (mut n, mut errors, mut first) = (0, 0, None);
    for t in tasks {
        let t = t.await?;
        n += t.0;
        errors += t.1;
        if first.is_none() {
            first = t.2;
        }
    }
    let rate = n as f64 / secs;
    let cpu_us = if n > 0 {
        cpu as f64 / 1e3 / n as f64
    } else {
        0.0
    };
    let note = format!(
        "{n} answers in {secs:.2} s, {errors} errors{}, server CPU {:.2} s",
        first.map(|e| format!(" (first: {e})")).unwrap_or_default(),
        cpu as f64 / 1e9
    );
    Ok((rate, cpu_us, errors, note))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `pushbench transports [options]`.
pub async fn main(args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    raise_nofile((o.conns + o.senders) as u64 + 200)?;
    let dir = std::env::temp_dir().join(format!("werkmann-transports-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    println!(
        "bench transports: HTTP GET / on {} keep-alive connections, UDP echo with {} senders, \
         {} s measured after {} s warm-up, {} rounds; {} werkmann instances / nginx workers",
        o.conns, o.senders, o.secs, o.warmup, o.repeats, o.count
    );
    let result = async {
        let (w_tcp, w_udp, n_tcp, n_udp) = (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
        let (w_unix, n_unix) = (dir.join("werkmann.sock"), dir.join("nginx.sock"));
        let mut wt = spawn_werkmann("http_echo", &w_tcp.to_string(), o.count, &dir)?;
        let mut wu = spawn_werkmann(
            "http_echo",
            &format!("unix:{}", w_unix.display()),
            o.count,
            &dir,
        )?;
        let mut wd = spawn_werkmann("udp_echo", &w_udp.to_string(), o.count, &dir)?;
        let ndir = dir.join("nginx");
        std::fs::create_dir_all(&ndir)?;
        let conf = ndir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&ndir, n_tcp, &n_unix, o.count))?;
        let mut cmd = Command::new(crate::files::which("nginx")?);
        cmd.arg("-p")
            .arg(&ndir)
            .arg("-e")
            .arg(ndir.join("error.log"))
            .arg("-c")
            .arg(&conf);
        let mut ng = Child::spawn("nginx", cmd, &ndir, false)?;
        wt.wait_ports(&[w_tcp], Duration::from_secs(15)).await?;
        wait_unix(&mut wu, &w_unix).await?;
        wait_udp(&mut wd, w_udp).await?;
        ng.wait_ports(&[n_tcp], Duration::from_secs(15)).await?;
        wait_unix(&mut ng, &n_unix).await?;
        let mut py = Command::new("python3");
        py.args(["-c", PY_UDP_ECHO, &n_udp.port().to_string()]);
        let mut pu = Child::spawn("python-udp", py, &dir.join("python"), false)?;
        wait_udp(&mut pu, n_udp).await?;
        // (system, child index, target)
        let cases: Vec<(&str, usize, Target)> = vec![
            ("werkmann", 0, Target::Tcp(w_tcp)),
            ("nginx", 3, Target::Tcp(n_tcp)),
            ("werkmann", 1, Target::Unix(w_unix.clone())),
            ("nginx", 3, Target::Unix(n_unix.clone())),
            ("werkmann", 2, Target::Udp(w_udp)),
            ("python", 4, Target::Udp(n_udp)),
        ];
        let mut children = [wt, wu, wd, ng, pu];
        let mut runs: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); cases.len()];
        for round in 0..o.repeats {
            let mut order: Vec<usize> = (0..cases.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (sys, c, target) = &cases[i];
                children[*c].check_alive()?;
                let (rate, cpu, errors, note) = load(&o, children[*c].pid(), target).await?;
                println!(
                    "  round {}: {sys}, {}: {note}",
                    round + 1,
                    target.transport()
                );
                runs[i].push((rate, cpu, errors));
            }
        }
        for c in &mut children {
            c.stop();
        }
        Ok::<_, anyhow::Error>((cases, runs))
    };
    let result = tokio::select! {
        r = result => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (cases, runs) = result?;
    let med = |i: usize, f: fn(&(f64, f64, u64)) -> f64| median(runs[i].iter().map(f).collect());
    let header = [
        "transport",
        "peer",
        "werkmann answers/s",
        "peer answers/s",
        "÷",
        "werkmann µs CPU/answer",
        "peer µs CPU/answer",
        "÷",
        "errors",
    ];
    let mut cells = Vec::new();
    for pair in (0..cases.len()).step_by(2) {
        let (w, n) = (pair, pair + 1);
        let (wr, nr) = (med(w, |r| r.0), med(n, |r| r.0));
        let (wc, nc) = (med(w, |r| r.1), med(n, |r| r.1));
        let errors: u64 = runs[w].iter().chain(&runs[n]).map(|r| r.2).sum();
        cells.push(vec![
            cases[w].2.transport().to_string(),
            cases[n].0.to_string(),
            format!("{wr:.0}"),
            format!("{nr:.0}"),
            format!("{:.2}", wr / nr),
            format!("{wc:.1}"),
            format!("{nc:.1}"),
            format!("{:.2}", wc / nc),
            errors.to_string(),
        ]);
    }
    println!();
    println!("Medians of {} rounds:", o.repeats);
    println!();
    print!("{}", report::aligned(&header, &cells));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_has_the_listeners() {
        let c = nginx_conf(
            Path::new("/tmp/x"),
            "127.0.0.1:8080".parse().unwrap(),
            Path::new("/tmp/x/n.sock"),
            2,
        );
        for want in [
            "worker_processes 2;",
            "listen 127.0.0.1:8080;",
            "listen unix:/tmp/x/n.sock;",
            "return 200 \"ok\";",
        ] {
            assert!(c.contains(want), "{want} missing:\n{c}");
        }
        let o = parse_options(&[]).unwrap();
        assert_eq!((o.conns, o.senders, o.repeats), (32, 32, 3));
    }
}

//! A real Prometheus server (Debian's `prometheus`, which `scripts/test` installs) scraping
//! the apps' metrics ports, and `promtool check metrics`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{curl, free_addr, temp_dir, wait_listening};

/// A Prometheus server on a free loopback port, scraping `targets` every second; killed when
/// dropped.
pub struct Prometheus {
    child: Child,
    /// Where it answers (its HTTP API).
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Start it, scraping each of `targets` (`IP:PORT` of a metrics port) every second,
    /// with `Authorization: Bearer <bearer>` when given.
    pub fn start(targets: &[SocketAddr], bearer: Option<&str>) -> Prometheus {
        let dir = temp_dir("prometheus");
        let addr = free_addr("127.0.0.1");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let auth = bearer
            .map(|b| format!("    authorization:\n      credentials: '{b}'\n"))
            .unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: werkmann\n{auth}    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (scripts/test installs Debian's prometheus)");
        let p = Prometheus { child, addr, dir };
        assert!(
            wait_listening(addr, Duration::from_secs(30)),
            "prometheus does not listen on {addr}; log:\n{}",
            p.log()
        );
        p
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of the PromQL instant query `expr` (its first sample), `None` when it has
    /// none (yet).
    pub fn query(&self, expr: &str) -> Option<f64> {
        let out = curl(&[
            "-G",
            &format!("http://{}/api/v1/query", self.addr),
            "--data-urlencode",
            &format!("query={expr}"),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        assert_eq!(v["status"], "success", "query {expr}: {v}");
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// The health of the scrape targets, as Prometheus saw them last (`up`, `down`, `unknown`).
    pub fn targets_health(&self) -> Vec<String> {
        let out = curl(&[&format!("http://{}/api/v1/targets", self.addr)]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["data"]["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t["health"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `promtool check metrics` on `text`: its exit status and what it printed.
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// One sample's value in Prometheus text `text`: the line that starts with `series` (a name
/// with its labels as they are printed, e.g. `werkmann_connections{worker="pusher",instance="0"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The sum of the samples of metric `name` whose labels contain every one of `labels`
/// (`worker="pusher"`, …).
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

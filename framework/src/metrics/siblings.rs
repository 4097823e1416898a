//! Workers run as processes (`Worker::processes`): the metrics port is served by one child, and
//! each of the others writes what it counts (its own scrape's text) to a report file once a
//! second; a scrape adds them to the serving process's own, series by series. Counters,
//! histograms and most gauges add up; `process_*` describe the serving process alone, and
//! `werkmann_build_info` is the same everywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// How often a child writes its report, and how old a report may be before it is left out
/// (its child is gone).
const EVERY: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(5);

/// What the children's reports' file names end with: the scrape's text, the totals (JSON).
const SUFFIX: &str = ".prom";
const TOTALS: &str = ".totals";

/// Where the serving child finds its siblings' reports: directories, each with the prefix of
/// the report files' names there.
static SIBLINGS: OnceLock<Vec<(PathBuf, String)>> = OnceLock::new();

/// In the child that serves the metrics port: add the reports named `{prefix}….prom` in each
/// directory (the run directory; a report directory of the user the children run as).
pub(crate) fn read_siblings(dirs: Vec<(PathBuf, String)>) {
    let _ = SIBLINGS.set(dirs);
}

/// In another child: write this process's metrics to `path` once a second, on a thread of its
/// own, for the serving child to add.
pub(crate) fn write_reports(path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("metrics-report".into())
        .spawn(move || {
            let totals = path.with_extension(&TOTALS[1..]);
            loop {
                std::thread::sleep(EVERY);
                let json = serde_json::to_string(&super::totals()).unwrap_or_default();
                for (to, text) in [(&path, super::encode::render()), (&totals, json)] {
                    let tmp = to.with_extension("tmp");
                    let written =
                        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, to));
                    if let Err(e) = written {
                        log::warn!("metrics report {}: {e}", to.display());
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("metrics report thread: {e}");
    }
}

/// A child's metrics report next to its status report `base` (`{base}.prom`).
pub(crate) fn report_file(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// This process's metrics with its siblings' added (what `/metrics` answers).
pub fn render_all() -> String {
    let own = super::encode::render();
    match SIBLINGS.get() {
        Some(dirs) => merge(&own, &reports(dirs, SUFFIX)),
        None => own,
    }
}

/// This process's totals with its siblings' added (what the admin page shows), as JSON.
pub fn totals_all() -> serde_json::Value {
    let mut own = serde_json::to_value(super::totals()).unwrap_or_default();
    if let Some(dirs) = SIBLINGS.get() {
        for text in reports(dirs, TOTALS) {
            match serde_json::from_str(&text) {
                Ok(other) => super::totals::add_json(&mut own, other),
                Err(e) => log::warn!("a child's totals unreadable: {e}"),
            }
        }
    }
    own
}

/// The siblings' fresh reports whose names end with `suffix` (stale ones are removed: their
/// child is gone).
fn reports(dirs: &[(PathBuf, String)], suffix: &str) -> Vec<String> {
    let now = SystemTime::now();
    let mut others = Vec::new();
    for (dir, prefix) in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(prefix.as_str()) && name.ends_with(suffix)) {
                continue;
            }
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age < STALE);
            if !fresh {
                // A child that is gone (its successor writes a file of its own).
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                others.push(text);
            }
        }
    }
    others
}

/// One metric family of the text format: its help and type lines, its series in order.
#[derive(Default)]
struct Family {
    head: Vec<String>,
    series: Vec<(String, f64)>,
    at: HashMap<String, usize>,
}

/// How a family's series from several processes combine.
fn adds_up(family: &str) -> Option<fn(f64, f64) -> f64> {
    if family.starts_with("process_") {
        None
    } else if family == "werkmann_build_info" {
        Some(f64::max)
    } else {
        Some(|a, b| a + b)
    }
}

/// `own` (the serving process's text) with `others` added, series by series.
pub(crate) fn merge(own: &str, others: &[String]) -> String {
    if others.is_empty() {
        return own.to_string();
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for (n, text) in std::iter::once(own)
        .chain(others.iter().map(String::as_str))
        .enumerate()
    {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (kind, name) = (words.next(), words.next());
                if let (Some("HELP" | "TYPE"), Some(name)) = (kind, name) {
                    current = name.to_string();
                    let f = families.entry(current.clone()).or_insert_with(|| {
                        order.push(current.clone());
                        Family::default()
                    });
                    if f.head.len() < 2 && !f.head.iter().any(|h| h == line) {
                        f.head.push(line.to_string());
                    }
                }
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let Some(f) = families.get_mut(&current) else {
                continue;
            };
            let combine = adds_up(&current);
            match (f.at.get(series), combine) {
                (Some(&i), Some(add)) => f.series[i].1 = add(f.series[i].1, value),
                (Some(_), None) => {}
                (None, None) if n > 0 => {}
                (None, _) => {
                    f.at.insert(series.to_string(), f.series.len());
                    f.series.push((series.to_string(), value));
                }
            }
        }
    }
    let mut out = String::with_capacity(own.len() * 2);
    for name in order {
        let f = &families[&name];
        if f.series.is_empty() {
            continue;
        }
        for h in &f.head {
            out.push_str(h);
            out.push('\n');
        }
        for (series, value) in &f.series {
            out.push_str(series);
            out.push(' ');
            out.push_str(&number(*value));
            out.push('\n');
        }
    }
    out
}

/// A sample value as the text format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape's text: each family's help and type lines, then its one sample.
    fn text(families: &[(&str, &str, &str)]) -> String {
        families
            .iter()
            .map(|(name, kind, sample)| {
                format!("# HELP {name} {name}\n# TYPE {name} {kind}\n{sample}\n")
            })
            .collect()
    }

    #[test]
    fn series_add_up_process_figures_stay_the_servers() {
        let (conns, fds, build) = (
            "werkmann_connections",
            "process_open_fds",
            "werkmann_build_info",
        );
        let own = text(&[
            (
                conns,
                "gauge",
                "werkmann_connections{worker=\"w\",instance=\"0\"} 2",
            ),
            (fds, "gauge", "process_open_fds 10"),
            (build, "gauge", "werkmann_build_info{version=\"1\"} 1"),
        ]);
        let other = text(&[
            (
                conns,
                "gauge",
                "werkmann_connections{worker=\"w\",instance=\"1\"} 3",
            ),
            (fds, "gauge", "process_open_fds 7"),
            (build, "gauge", "werkmann_build_info{version=\"1\"} 1"),
            (
                "werkmann_deliveries_total",
                "counter",
                "werkmann_deliveries_total{worker=\"w\"} 5",
            ),
        ]);
        let merged = merge(&own, &[other.clone(), other]);
        assert!(merged.contains("werkmann_connections{worker=\"w\",instance=\"0\"} 2\n"));
        assert!(merged.contains("werkmann_connections{worker=\"w\",instance=\"1\"} 6\n"));
        assert!(merged.contains("process_open_fds 10\n"), "{merged}");
        assert!(merged.contains("werkmann_build_info{version=\"1\"} 1\n"));
        assert!(merged.contains("werkmann_deliveries_total{worker=\"w\"} 10\n"));
        assert_eq!(
            merged.matches("# TYPE werkmann_connections gauge").count(),
            1
        );
        // Each family's lines together, help and type first.
        let at = |s: &str| merged.find(s).unwrap();
        assert!(at("# TYPE werkmann_deliveries_total") < at("werkmann_deliveries_total{"));
    }
}

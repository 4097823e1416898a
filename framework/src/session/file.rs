//! Sessions in files (Workerman's `FileSessionHandler`): one file `session_<id>` per session
//! in a directory, written whole (a temporary file renamed over it), expired by its age.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::message::session::{valid_session_id, SessionFuture, SessionHandler};

const PREFIX: &str = "session_";

/// Sessions as files in one directory. Reads and writes are small and done on the
/// instance's thread, as Workerman does; garbage collection (listing the directory) runs on
/// tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct FileSessionHandler {
    dir: PathBuf,
}

impl FileSessionHandler {
    /// Sessions in `dir`, which must exist and be writable.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("session directory {} is not a directory", dir.display()),
            ));
        }
        Ok(FileSessionHandler { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> std::io::Result<PathBuf> {
        if !valid_session_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "malformed session id",
            ));
        }
        Ok(self.dir.join(format!("{PREFIX}{id}")))
    }
}

/// Whether a file last written at `modified` is older than `lifetime`.
fn expired(modified: SystemTime, lifetime: Duration) -> bool {
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age > lifetime)
}

fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Expiry of a file needs the lifetime, which `read` is not given: the file's first line is
/// the time (Unix seconds) it expires at.
fn parse(data: Vec<u8>) -> Option<Vec<u8>> {
    let nl = data.iter().position(|b| *b == b'\n')?;
    let until: u64 = std::str::from_utf8(&data[..nl]).ok()?.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    (now < until).then(|| data[nl + 1..].to_vec())
}

impl SessionHandler for FileSessionHandler {
    fn read(&self, id: &str) -> SessionFuture<Option<Vec<u8>>> {
        let r = self
            .path(id)
            .and_then(|p| read(&p))
            .map(|found| found.and_then(parse));
        Box::pin(async move { r })
    }

    fn write(&self, id: &str, data: Vec<u8>, lifetime: Duration) -> SessionFuture<()> {
        let r = self.path(id).and_then(|path| {
            let until = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(lifetime)
                .as_secs();
            let mut file = tempfile::Builder::new()
                .prefix(".session-")
                .tempfile_in(&self.dir)?;
            use std::io::Write;
            file.write_all(format!("{until}\n").as_bytes())?;
            file.write_all(&data)?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn destroy(&self, id: &str) -> SessionFuture<()> {
        let r = self.path(id).and_then(|p| match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        });
        Box::pin(async move { r })
    }

    fn gc(&self, lifetime: Duration) -> SessionFuture<()> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || collect(&dir, lifetime))
                .await
                .map_err(std::io::Error::other)?
        })
    }
}

/// Delete the session files in `dir` not written for `lifetime` (and expired by their own
/// time), and temporary files left behind by a crash.
fn collect(dir: &Path, lifetime: Duration) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PREFIX) && !name.starts_with(".session-") {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if expired(modified, lifetime) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::session::{new_session_id, try_now};

    fn now<T>(f: SessionFuture<T>) -> std::io::Result<T> {
        try_now(f).unwrap_or_else(|_| panic!("a file handler finishes at once"))
    }

    #[test]
    fn write_read_expire_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let h = FileSessionHandler::new(dir.path()).unwrap();
        let id = new_session_id();
        assert_eq!(now(h.read(&id)).unwrap(), None);
        now(h.write(&id, b"{\"a\":1}".to_vec(), Duration::from_secs(60))).unwrap();
        assert_eq!(
            now(h.read(&id)).unwrap().as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        now(h.write(&id, b"{}".to_vec(), Duration::ZERO)).unwrap();
        assert_eq!(now(h.read(&id)).unwrap(), None, "expired");
        now(h.destroy(&id)).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(now(h.read("../../../../etc/passwd")).is_err());
        assert!(FileSessionHandler::new(dir.path().join("missing")).is_err());
    }
}

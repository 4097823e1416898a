//! [`StaticFiles`]: an HTTP worker's folder of files served as they are (`GET`/`HEAD`), before
//! `on_message` sees the request; a path that names no file goes on to `on_message`.
//!
//! A request path never leads out of the root: it is percent-decoded once, then read segment by
//! segment; a `..` segment (however it was encoded), a NUL or a backslash is refused with 403,
//! and the file found is resolved (symbolic links followed) and must still lie inside the
//! root (403 otherwise), so a link pointing out of the root serves nothing.
//!
//! Resolving costs one `lstat` per segment below the root (the root itself was resolved once):
//! a path of plain folders and a plain file is its own resolved form, and the last `lstat` says
//! what it is. Only a path with a symbolic link in it is resolved in full (`realpath`, which
//! reads every component of the whole path, the root's included). Nothing is cached: every
//! request sees the folder as it is now.

use std::fs::{self, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::message::{Request, Response};

/// A folder served by an HTTP worker ([`Worker::serve_files`](crate::Worker::serve_files)).
#[derive(Debug, Clone)]
pub struct StaticFiles {
    root: PathBuf,
    index: Vec<String>,
}

/// What a request path names under the root.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// This file.
    File(PathBuf),
    /// A folder asked for without its trailing slash: redirect there.
    Folder,
    /// Nothing here: `on_message`'s request.
    Nothing,
    /// Refused with this status.
    Refused(u16),
}

impl StaticFiles {
    /// Serve the folder `root` (it must exist), with `index.html` as a folder's index.
    pub fn new(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        Ok(StaticFiles {
            root,
            index: vec!["index.html".into()],
        })
    }

    /// The names tried, in order, for a folder's index (`index.html` by default; none: a
    /// folder is never served).
    pub fn index(mut self, names: &[&str]) -> StaticFiles {
        self.index = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The folder served (resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The answer to `req` if it is for a file under the root; `None` for `on_message`.
    pub fn serve(&self, req: &Request) -> Option<Response> {
        if req.method() != "GET" && req.method() != "HEAD" {
            return None;
        }
        match self.find(req.path()) {
            Found::File(path) => Some(Response::file(req, path)),
            Found::Folder => {
                let mut to = format!("{}/", req.path());
                if !req.query_string().is_empty() {
                    to = format!("{to}?{}", req.query_string());
                }
                Some(Response::text(301, "Moved Permanently\n").with_header("Location", to))
            }
            Found::Nothing => None,
            Found::Refused(status) => Some(Response::text(
                status,
                format!("{}\n", crate::protocol::http::reason_phrase(status)),
            )),
        }
    }

    fn find(&self, path: &str) -> Found {
        let Some(rel) = path.strip_prefix('/') else {
            return Found::Refused(400);
        };
        let Some(decoded) = decode_path(rel) else {
            return Found::Refused(400);
        };
        if decoded.contains(['\0', '\\']) {
            return Found::Refused(403);
        }
        let mut candidate = self.root.clone();
        for seg in decoded.split('/') {
            match seg {
                "" | "." => {}
                ".." => return Found::Refused(403),
                s => {
                    // One normal component each (`Path::new("C:")`-like oddities excluded).
                    let mut parts = Path::new(s).components();
                    match (parts.next(), parts.next()) {
                        (Some(Component::Normal(_)), None) => candidate.push(s),
                        _ => return Found::Refused(403),
                    }
                }
            }
        }
        let (resolved, meta) = match self.resolve(candidate) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Found::Refused(403),
            Err(_) => return Found::Nothing,
        };
        if !resolved.starts_with(&self.root) {
            return Found::Refused(403);
        }
        if meta.is_file() {
            return Found::File(resolved);
        }
        if !meta.is_dir() {
            return Found::Nothing;
        }
        if !path.ends_with('/') {
            return Found::Folder;
        }
        for name in &self.index {
            match self.resolve(resolved.join(name)) {
                Ok((p, m)) if p.starts_with(&self.root) && m.is_file() => return Found::File(p),
                Ok((p, _)) if !p.starts_with(&self.root) => return Found::Refused(403),
                _ => {}
            }
        }
        Found::Nothing
    }

    /// `path` (the root, then anything) with symbolic links resolved, and what it is (links
    /// followed). Below the root, one `lstat` per component; a symbolic link or an unusual
    /// component (`..`) hands the whole path to `canonicalize`.
    fn resolve(&self, path: PathBuf) -> io::Result<(PathBuf, Metadata)> {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return full(&path);
        };
        let mut at = self.root.clone();
        let mut meta = None;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return full(&path);
            };
            at.push(name);
            let m = fs::symlink_metadata(&at)?;
            if m.file_type().is_symlink() {
                return full(&path);
            }
            meta = Some(m);
        }
        let meta = match meta {
            Some(m) => m,
            None => fs::metadata(&at)?,
        };
        Ok((at, meta))
    }
}

/// `path` resolved in full (every component, links followed), and what it is.
fn full(path: &Path) -> io::Result<(PathBuf, Metadata)> {
    let p = path.canonicalize()?;
    let m = fs::metadata(&p)?;
    Ok((p, m))
}

/// A path percent-decoded once (UTF-8; `None` for a malformed escape or bytes that are not
/// UTF-8). `+` stays `+`: it means a space only in forms.
fn decode_path(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("werkmann-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www/sub")).unwrap();
        std::fs::write(dir.join("www/a.txt"), "a").unwrap();
        std::fs::write(dir.join("www/sub/index.html"), "i").unwrap();
        std::fs::write(dir.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("www/out.txt")).unwrap();
        std::os::unix::fs::symlink(dir.join("www/a.txt"), dir.join("www/in.txt")).unwrap();
        let s = StaticFiles::new(dir.join("www")).unwrap();
        let root = s.root().to_path_buf();
        assert_eq!(s.find("/a.txt"), Found::File(root.join("a.txt")));
        assert_eq!(s.find("/%61.txt"), Found::File(root.join("a.txt")));
        assert_eq!(s.find("/in.txt"), Found::File(root.join("a.txt")));
        // A link to a folder: followed inside the root, refused out of it.
        std::os::unix::fs::symlink(dir.join("www/sub"), dir.join("www/insub")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("www/up")).unwrap();
        assert_eq!(
            s.find("/insub/index.html"),
            Found::File(root.join("sub/index.html"))
        );
        assert_eq!(s.find("/insub/"), Found::File(root.join("sub/index.html")));
        assert_eq!(s.find("/up/secret.txt"), Found::Refused(403));
        assert_eq!(s.find("/a.txt/x"), Found::Nothing);
        assert_eq!(s.find("/sub/"), Found::File(root.join("sub/index.html")));
        assert_eq!(s.find("/sub"), Found::Folder);
        assert_eq!(s.find("/nope"), Found::Nothing);
        assert_eq!(s.find("/"), Found::Nothing);
        for bad in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/out.txt",
            "/a.txt%00",
            "/..%5csecret.txt",
        ] {
            assert_eq!(s.find(bad), Found::Refused(403), "{bad}");
        }
        assert_eq!(s.find("/%zz"), Found::Refused(400));
        assert_eq!(s.find("x"), Found::Refused(400));
        // An absolute path in the request is read under the root.
        assert_eq!(s.find("//etc/passwd"), Found::Nothing);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

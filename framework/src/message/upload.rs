//! Uploaded files (`multipart/form-data` file parts) as a request carries them, and the limits
//! an `http://` worker applies while it streams them to temporary files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tempfile::TempPath;

/// Where uploads go and how large they may be ([`Worker::uploads`](crate::Worker::uploads)).
///
/// Non-file fields of a `multipart/form-data` body still count against the worker's
/// `max_package_size`; file parts count against these limits instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploads {
    /// Directory for the temporary files (default: the system's, `std::env::temp_dir()`).
    /// It must exist when the worker starts.
    pub dir: PathBuf,
    /// Largest single file in bytes (default 64 MiB); past it the request gets a 413.
    pub max_file_size: u64,
    /// Largest sum of a request's files in bytes (default 256 MiB); past it, a 413.
    pub max_total_size: u64,
    /// Most file parts in one request (default 20, PHP's `max_file_uploads`); past it, a 413.
    pub max_files: usize,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            dir: std::env::temp_dir(),
            max_file_size: 64 << 20,
            max_total_size: 256 << 20,
            max_files: 20,
        }
    }
}

/// A file uploaded with a request (Workerman's `$request->file('name')`): its temporary file
/// is deleted when the last copy of the request is dropped, unless
/// [`UploadedFile::persist`] moved it first.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    pub(crate) field: String,
    pub(crate) file_name: String,
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
    pub(crate) temp: Arc<Mutex<Option<TempPath>>>,
}

impl UploadedFile {
    /// The form field's name (`file` for `-F file=@…`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The file name the client sent (Workerman's `name`); a client may send anything here,
    /// so never use it as a path unchecked.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The part's `Content-Type` as the client sent it (Workerman's `type`), or
    /// `application/octet-stream`.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the temporary file is (Workerman's `tmp_name`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move the file to `to` (renamed, or copied where `to` is on another file system) and
    /// keep it there: it is no longer deleted with the request. Fails if it was moved already.
    pub fn persist(&self, to: impl AsRef<Path>) -> std::io::Result<()> {
        let to = to.as_ref();
        let mut temp = self.temp.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = temp.take() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the uploaded file was moved already",
            ));
        };
        match path.persist(to) {
            Ok(()) => Ok(()),
            Err(e) => {
                // A rename across file systems fails: copy, then let the temporary go.
                let path = e.path;
                match std::fs::copy(&path, to) {
                    Ok(_) => Ok(()),
                    Err(err) => {
                        *temp = Some(path);
                        Err(err)
                    }
                }
            }
        }
    }
}

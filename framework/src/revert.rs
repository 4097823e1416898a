//! A supervisor's reload that fails goes back. The supervisor executes the new binary in its own
//! place (`supervisor::reexec`): if that binary then ends before it supervises — its command
//! line refuses the options, the app's start-up fails, it panics — the children would lose
//! their supervisor and the service would stop. So the supervisor passes the binary it ran as
//! an open descriptor, and the new one, from its first call into the library (`cli::parse`,
//! `Worker::run_all`), arms an exit handler that executes the previous binary again in its
//! place with the same arguments and what the reload passed on; once it supervises, it
//! disarms it and closes the descriptor.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The descriptor of the binary a reload came from.
pub(crate) const PREVIOUS_EXE_ENV: &str = "WERKMANN_PREVIOUS_EXE";

/// What going back needs, made when armed (nothing allocates at exit).
struct Revert {
    fd: i32,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Descriptors to keep across the exec (the listening sockets, the load memory).
    keep: Vec<i32>,
}

static REVERT: OnceLock<Revert> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);

/// In a binary a supervisor's reload started: go back to the previous one if this one ends
/// before it supervises. Does nothing otherwise, or a second time.
pub(crate) fn arm() {
    let Some(fd) = std::env::var(PREVIOUS_EXE_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    if REVERT.get().is_some() {
        return;
    }
    crate::listener::set_cloexec(fd, true);
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != PREVIOUS_EXE_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut keep: Vec<i32> = std::env::var(crate::listener::INHERIT_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.rsplit_once('=')?.1.parse().ok())
        .collect();
    keep.extend(
        std::env::var(crate::balance::FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok()),
    );
    if REVERT
        .set(Revert {
            fd,
            argv,
            envp,
            keep,
        })
        .is_ok()
    {
        ARMED.store(true, Ordering::SeqCst);
        // SAFETY: atexit(3) registers a function with C linkage that takes nothing.
        unsafe { libc::atexit(go_back) };
    }
}

/// The new binary supervises: no going back; the previous binary's descriptor is closed.
pub(crate) fn disarm() {
    if ARMED.swap(false, Ordering::SeqCst) {
        if let Some(r) = REVERT.get() {
            // SAFETY: the descriptor was passed to this process for this alone.
            unsafe { libc::close(r.fd) };
        }
    }
    std::env::remove_var(PREVIOUS_EXE_ENV);
}

extern "C" fn go_back() {
    if !ARMED.swap(false, Ordering::SeqCst) {
        return;
    }
    let Some(r) = REVERT.get() else { return };
    eprintln!("reload: the new binary ended before it supervised; going back to the one before");
    for fd in &r.keep {
        crate::listener::set_cloexec(*fd, false);
    }
    let (argv, envp) = (pointers(&r.argv), pointers(&r.envp));
    // SAFETY: fexecve(3) with an open descriptor of an executable and NULL-terminated arrays
    // of pointers to NUL-terminated strings that live in a static; it returns only on failure.
    unsafe { libc::fexecve(r.fd, argv.as_ptr(), envp.as_ptr()) };
    eprintln!(
        "reload: going back failed: {}",
        std::io::Error::last_os_error()
    );
}

/// `strings` as exec's NULL-terminated array of pointers (valid while `strings` lives).
fn pointers(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

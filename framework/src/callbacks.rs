//! The panic guard every user callback runs under (connection callbacks, timers, the channel
//! client's callbacks, `exec`).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run a user callback; a panic is caught and logged, and the worker goes on.
pub fn guard(name: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::error!("panic in {name} callback: {what}");
    }
}

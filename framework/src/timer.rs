//! [`Timer`]: Workerman's `Timer::add` / `Timer::del` / `Timer::delAll`, on the calling worker
//! instance's thread. The framework's own timers (a channel client's keep-alive pings, a
//! delivery report's deadline) are kept apart: `del_all` leaves them running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::callbacks::guard;

/// Identifies a timer for [`Timer::del`]; `TimerId(0)` is never a live timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

/// Timers running on worker instance threads.
pub struct Timer;

/// A pending timer: how to cancel it, the instance thread it runs on, and whether it is the
/// framework's own.
struct Pending {
    handle: AbortHandle,
    thread: ThreadId,
    internal: bool,
}

fn timers() -> &'static Mutex<HashMap<u64, Pending>> {
    static T: OnceLock<Mutex<HashMap<u64, Pending>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Timer {
    /// Call `f` after `interval`, and again every `interval` when `persistent`.
    ///
    /// Must be called on a worker instance's thread (inside a callback or `on_worker_start`);
    /// elsewhere it logs an error and returns `TimerId(0)`, as Workerman's returns `false`.
    pub fn add(interval: Duration, f: impl FnMut() + 'static, persistent: bool) -> TimerId {
        Timer::spawn(interval, f, persistent, false)
    }

    /// [`Timer::add`] for the framework's own timers, which [`Timer::del_all`] leaves running.
    pub(crate) fn add_internal(
        interval: Duration,
        f: impl FnMut() + 'static,
        persistent: bool,
    ) -> TimerId {
        Timer::spawn(interval, f, persistent, true)
    }

    fn spawn(
        interval: Duration,
        mut f: impl FnMut() + 'static,
        persistent: bool,
        internal: bool,
    ) -> TimerId {
        if actix_rt::Arbiter::try_current().is_none() {
            log::error!("Timer::add called outside a worker thread; timer not added");
            return TimerId(0);
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let interval = interval.max(Duration::from_millis(1));
        let handle = actix_rt::spawn(async move {
            let start = tokio::time::Instant::now() + interval;
            let mut tick = tokio::time::interval_at(start, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                guard("timer", &mut f);
                if !persistent {
                    break;
                }
            }
            timers()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
        timers().lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Pending {
                handle: handle.abort_handle(),
                thread: std::thread::current().id(),
                internal,
            },
        );
        TimerId(id)
    }

    /// Call `f` once after `delay`.
    pub fn once(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
        Timer::spawn(delay, once(f), false, false)
    }

    /// [`Timer::once`] for the framework's own timers.
    pub(crate) fn once_internal(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
        Timer::spawn(delay, once(f), false, true)
    }

    /// Cancel a timer; returns whether it was still pending. Works from any thread.
    pub fn del(id: TimerId) -> bool {
        match timers()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.0)
        {
            Some(p) => {
                p.handle.abort();
                true
            }
            None => false,
        }
    }

    /// Cancel the timers the app added on the calling worker instance (Workerman's
    /// `Timer::delAll` in a worker process); called elsewhere, those of every instance. The
    /// framework's own timers (channel keep-alive pings, …) keep running. Returns how many
    /// were cancelled.
    pub fn del_all() -> usize {
        let here = actix_rt::Arbiter::try_current()
            .is_some()
            .then(|| std::thread::current().id());
        let mut all = timers().lock().unwrap_or_else(|e| e.into_inner());
        let mine: Vec<u64> = all
            .iter()
            .filter(|(_, p)| !p.internal && here.is_none_or(|t| p.thread == t))
            .map(|(id, _)| *id)
            .collect();
        for id in &mine {
            if let Some(p) = all.remove(id) {
                p.handle.abort();
            }
        }
        mine.len()
    }

    /// How many timers are pending in the process.
    pub fn count() -> usize {
        timers().lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many timers are pending on the calling thread's instance (the app's and the
    /// framework's), as `status` shows them.
    pub(crate) fn count_here() -> usize {
        let here = std::thread::current().id();
        let all = timers().lock().unwrap_or_else(|e| e.into_inner());
        all.values().filter(|p| p.thread == here).count()
    }
}

/// A `FnOnce` as the `FnMut` a timer calls (once).
fn once(f: impl FnOnce() + 'static) -> impl FnMut() + 'static {
    let mut f = Some(f);
    move || {
        if let Some(f) = f.take() {
            f()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_all_leaves_the_framework_timers_and_other_instances_alone() {
        actix_rt::System::new().block_on(async {
            let other = actix_rt::Arbiter::new();
            let (tx, rx) = std::sync::mpsc::channel();
            other.spawn(async move {
                let id = Timer::add(Duration::from_secs(60), || {}, true);
                tx.send(id).unwrap();
            });
            let elsewhere = rx.recv().unwrap();
            let app = Timer::add(Duration::from_secs(60), || {}, true);
            let ours = Timer::add_internal(Duration::from_secs(60), || {}, true);
            assert_eq!(Timer::count_here(), 2);
            assert_eq!(Timer::del_all(), 1);
            assert!(!Timer::del(app), "the app's timer is gone");
            assert_eq!(Timer::count_here(), 1);
            assert!(Timer::del(ours), "the framework's keeps running");
            assert!(Timer::del(elsewhere), "another instance's keeps running");
            other.stop();
        });
    }
}

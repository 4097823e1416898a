//! [`Timer`]: Workerman's `Timer::add` / `Timer::del`, on the calling worker instance's thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::callbacks::guard;

/// Identifies a timer for [`Timer::del`]; `TimerId(0)` is never a live timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

/// Timers running on worker instance threads.
pub struct Timer;

fn timers() -> &'static Mutex<HashMap<u64, AbortHandle>> {
    static T: OnceLock<Mutex<HashMap<u64, AbortHandle>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Timer {
    /// Call `f` after `interval`, and again every `interval` when `persistent`.
    ///
    /// Must be called on a worker instance's thread (inside a callback or `on_worker_start`);
    /// elsewhere it logs an error and returns `TimerId(0)`, as Workerman's returns `false`.
    pub fn add(interval: Duration, mut f: impl FnMut() + 'static, persistent: bool) -> TimerId {
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
        timers()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handle.abort_handle());
        TimerId(id)
    }

    /// Call `f` once after `delay`.
    pub fn once(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
        let mut f = Some(f);
        Timer::add(
            delay,
            move || {
                if let Some(f) = f.take() {
                    f()
                }
            },
            false,
        )
    }

    /// Cancel a timer; returns whether it was still pending. Works from any thread.
    pub fn del(id: TimerId) -> bool {
        match timers()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.0)
        {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Cancel every timer of this process.
    pub fn del_all() {
        for (_, h) in timers().lock().unwrap_or_else(|e| e.into_inner()).drain() {
            h.abort();
        }
    }

    /// How many timers are pending.
    pub fn count() -> usize {
        timers().lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

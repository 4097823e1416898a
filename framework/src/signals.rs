//! The signals the command line sends a running process (Workerman's: stop, graceful stop,
//! reload, status, connections), as one stream of [`Sig`]s.
//!
//! A process of its own takes them with tokio's handlers. A supervisor's child cannot: tokio
//! wakes its runtimes through one socket pair per process, made the first time a runtime
//! starts, and a child forked from a process that already ran one (an app's start-up often
//! does) would share that pair with its siblings — a signal to one child could wake another,
//! and be lost. A child therefore reads its signals from a `signalfd(2)` of its own, with them
//! blocked in every thread (the supervisor blocks them before forking, and threads inherit the
//! mask). The supervisor itself, with no runtime, waits for them with `sigtimedwait(2)`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    /// SIGINT, SIGTERM.
    Stop,
    /// SIGQUIT (`stop -g`).
    Graceful,
    /// SIGUSR1 (`reload`).
    Reload,
    /// SIGHUP (`reload -g`).
    GracefulReload,
    /// SIGUSR2 (`status`).
    Status,
    /// SIGIO (`connections`).
    Connections,
}

impl Sig {
    fn of(signo: i32) -> Option<Sig> {
        Some(match signo {
            libc::SIGINT | libc::SIGTERM => Sig::Stop,
            libc::SIGQUIT => Sig::Graceful,
            libc::SIGUSR1 => Sig::Reload,
            libc::SIGHUP => Sig::GracefulReload,
            libc::SIGUSR2 => Sig::Status,
            libc::SIGIO => Sig::Connections,
            _ => return None,
        })
    }
}

/// The command line's signals.
const COMMANDS: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGIO,
    libc::SIGHUP,
];

/// The signals a process receives, by one of two means (see the module's text).
pub(crate) enum Signals {
    Tokio(Box<[tokio::signal::unix::Signal; 7]>),
    Fd(AsyncFd<OwnedFd>),
}

impl Signals {
    /// Tokio's handlers, for a process of its own (inside a runtime).
    pub fn handlers() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = COMMANDS.map(SignalKind::from_raw);
        let [a, b, c, d, e, f, g] = kinds;
        Ok(Signals::Tokio(Box::new([
            signal(a)?,
            signal(b)?,
            signal(c)?,
            signal(d)?,
            signal(e)?,
            signal(f)?,
            signal(g)?,
        ])))
    }

    /// A `signalfd` of this process's own, for a supervisor's child (inside a runtime): the
    /// signals must be blocked in every thread already (see [`block`]).
    pub fn descriptor() -> std::io::Result<Signals> {
        let set = set_of(&COMMANDS);
        // SAFETY: signalfd(2) with -1 makes a new descriptor for the set, which it reads.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd keeps its descriptor open and the same for as long as the
        // AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Signals::Fd(fd))
    }

    /// The next signal.
    pub async fn next(&mut self) -> Sig {
        match self {
            Signals::Tokio(s) => {
                let [int, term, quit, usr1, usr2, io, hup] = &mut **s;
                tokio::select! {
                    _ = int.recv() => Sig::Stop,
                    _ = term.recv() => Sig::Stop,
                    _ = quit.recv() => Sig::Graceful,
                    _ = usr1.recv() => Sig::Reload,
                    _ = usr2.recv() => Sig::Status,
                    _ = io.recv() => Sig::Connections,
                    _ = hup.recv() => Sig::GracefulReload,
                }
            }
            Signals::Fd(fd) => loop {
                let mut ready = match fd.readable().await {
                    Ok(r) => r,
                    Err(e) => {
                        log::error!("signals: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // SAFETY: an all-zero signalfd_siginfo is a valid value of that plain C struct.
                let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                // SAFETY: read(2) writes at most `size` bytes into `info`, which is that large.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        (&mut info as *mut libc::signalfd_siginfo).cast(),
                        size,
                    )
                };
                if n == size as isize {
                    if let Some(sig) = Sig::of(info.ssi_signo as i32) {
                        return sig;
                    }
                } else {
                    ready.clear_ready();
                }
            },
        }
    }
}

/// The supervisor's signals: the command line's and SIGCHLD.
pub(crate) fn supervisor_set() -> libc::sigset_t {
    let mut all = COMMANDS.to_vec();
    all.push(libc::SIGCHLD);
    set_of(&all)
}

/// These signals as a set.
pub(crate) fn set_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block (`how` = `SIG_BLOCK`) or unblock (`SIG_UNBLOCK`) `set` in the calling thread; threads
/// it starts later inherit its mask.
pub(crate) fn mask(how: i32, set: &libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: pthread_sigmask reads the set and writes no old mask (null).
    let rc = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// The next pending signal of `set` (blocked), waiting at most `wait`; for the supervisor,
/// which has no runtime.
pub(crate) fn wait(set: &libc::sigset_t, wait: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and the timeout, and writes no siginfo (null).
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

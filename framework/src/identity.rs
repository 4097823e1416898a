//! Running as another user (Workerman's `$worker->user` and `->group`): names resolved when
//! the process starts (an unknown one is an error then), privileges dropped by each child of
//! the supervisor after the sockets were bound — the supervisor keeps its own, to bind, reload
//! and write the pid file.

use std::ffi::CString;

use crate::error::Error;

/// A user and group to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// `user` (a name or a number) and `group` (its primary group if `None`).
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, Error> {
        let (uid, primary) = lookup_user(user)?;
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => primary,
        };
        Ok(Identity { uid, gid })
    }

    /// Become this user and group, for good: supplementary groups cleared, then the group,
    /// then the user (the order that keeps the right to change each).
    pub fn assume(self) -> std::io::Result<()> {
        let gid = self.gid as libc::gid_t;
        // SAFETY: setgroups(2) reads one gid from a local; setgid(2)/setuid(2) take integers.
        unsafe {
            if libc::setgroups(1, &gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(self.uid as libc::uid_t) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// A user's id and primary group, by name or number.
fn lookup_user(user: &str) -> Result<(u32, u32), Error> {
    let name = CString::new(user).map_err(|_| Error::Config(format!("user {user:?}")))?;
    // SAFETY: getpwnam(3)/getpwuid(3) return a pointer to a static record or null; it is read
    // at once, before any other call could overwrite it.
    unsafe {
        let mut pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            if let Ok(n) = user.parse::<u32>() {
                pw = libc::getpwuid(n);
            }
        }
        if pw.is_null() {
            return Err(Error::Config(format!("no user {user:?} on this system")));
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A group's id, by name or number.
fn lookup_group(group: &str) -> Result<u32, Error> {
    let name = CString::new(group).map_err(|_| Error::Config(format!("group {group:?}")))?;
    // SAFETY: as in `lookup_user`, for getgrnam(3)/getgrgid(3).
    unsafe {
        let mut gr = libc::getgrnam(name.as_ptr());
        if gr.is_null() {
            if let Ok(n) = group.parse::<u32>() {
                gr = libc::getgrgid(n);
            }
        }
        if gr.is_null() {
            return Err(Error::Config(format!("no group {group:?} on this system")));
        }
        Ok((*gr).gr_gid)
    }
}

/// The identity workers ask for together (one process serves them all), given as (name,
/// user, group): none, or the same for each that names one; different ones are an error.
pub(crate) fn of_workers<'a>(
    workers: impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)>,
) -> Result<Option<Identity>, Error> {
    let mut found: Option<(Identity, &str)> = None;
    for (name, user, group) in workers {
        let Some(user) = user else { continue };
        let id = Identity::resolve(user, group)?;
        match found {
            Some((other, first)) if other != id => {
                return Err(Error::Config(format!(
                    "workers {first} and {name} run in one process but name different users \
                     (run them as processes)"
                )))
            }
            _ => found = Some((id, name)),
        }
    }
    Ok(found.map(|(id, _)| id))
}

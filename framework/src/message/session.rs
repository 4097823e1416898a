//! Sessions as Workerman's `$request->session()` holds them: the settings ([`Sessions`]),
//! the store ([`SessionHandler`]), and the per-request handle ([`Session`]) that saves
//! itself once the request is done with.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde_json::{Map, Value};

/// What a [`SessionHandler`] call returns: a future that may finish at once (files) or later
/// (Redis).
pub type SessionFuture<T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send>>;

/// Where sessions are kept (Workerman's `SessionHandlerInterface`): the file handler
/// ([`FileSessionHandler`](crate::FileSessionHandler)), the Redis handler
/// ([`RedisSessionHandler`](crate::RedisSessionHandler)), or one of the application's own.
/// Ids reaching a handler are validated ([`valid_session_id`]).
pub trait SessionHandler: Send + Sync + 'static {
    /// The stored data of session `id`, `None` when there is none (or it expired).
    fn read(&self, id: &str) -> SessionFuture<Option<Vec<u8>>>;
    /// Store `data` as session `id`, kept `lifetime` from now.
    fn write(&self, id: &str, data: Vec<u8>, lifetime: Duration) -> SessionFuture<()>;
    /// Delete session `id`.
    fn destroy(&self, id: &str) -> SessionFuture<()>;
    /// Delete sessions older than `lifetime` (a store that expires keys itself does nothing).
    fn gc(&self, _lifetime: Duration) -> SessionFuture<()> {
        Box::pin(async { Ok(()) })
    }
}

/// A worker's session settings ([`Worker::sessions`](crate::Worker::sessions)); the defaults
/// are Workerman's but for the cookie's name and `SameSite`.
#[derive(Clone)]
pub struct Sessions {
    /// Where sessions are kept.
    pub handler: Arc<dyn SessionHandler>,
    /// The session id cookie's name (Workerman's `PHPSID`; default `WERKMANNSID`).
    pub name: String,
    /// How long a session lives after its last change (default 1440 s, PHP's
    /// `gc_maxlifetime`).
    pub lifetime: Duration,
    /// The cookie's `Max-Age` (default 1440 s); zero makes it a browser-session cookie.
    pub cookie_lifetime: Duration,
    /// The cookie's `Path` (default `/`).
    pub cookie_path: String,
    /// The cookie's `Domain` (default none).
    pub domain: Option<String>,
    /// Send the cookie over HTTPS only (default false).
    pub secure: bool,
    /// Hide the cookie from scripts (default true).
    pub http_only: bool,
    /// The cookie's `SameSite` (default `Lax`; Workerman sends none).
    pub same_site: Option<cookie::SameSite>,
    /// Write a session back after every request that read it, so that it lives `lifetime`
    /// after its last use rather than its last change (Workerman's `autoUpdateTimestamp`;
    /// default false).
    pub auto_update_timestamp: bool,
    /// Garbage collection runs after `numerator` in `denominator` saves (Workerman's
    /// `gcProbability`, default 1 in 20,000); `(0, _)` never.
    pub gc_probability: (u32, u32),
}

impl Sessions {
    /// Sessions kept by `handler`, with the default settings.
    pub fn new(handler: impl SessionHandler) -> Self {
        Sessions {
            handler: Arc::new(handler),
            name: "WERKMANNSID".into(),
            lifetime: Duration::from_secs(1440),
            cookie_lifetime: Duration::from_secs(1440),
            cookie_path: "/".into(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: Some(cookie::SameSite::Lax),
            auto_update_timestamp: false,
            gc_probability: (1, 20_000),
        }
    }

    /// Why these settings cannot work, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if self.name.is_empty() || !self.name.bytes().all(token) {
            return Err(format!(
                "session cookie name {:?} is not a token",
                self.name
            ));
        }
        if self.lifetime.is_zero() {
            return Err("session lifetime is zero".into());
        }
        let (n, d) = self.gc_probability;
        if d == 0 || n > d {
            return Err(format!("gc_probability {n}/{d} is not a probability"));
        }
        Ok(())
    }

    /// The `Set-Cookie` value that hands out `id`.
    fn cookie(&self, id: &str) -> String {
        let mut c = cookie::Cookie::build((self.name.clone(), id.to_string()))
            .path(self.cookie_path.clone())
            .secure(self.secure)
            .http_only(self.http_only);
        if !self.cookie_lifetime.is_zero() {
            let secs = i64::try_from(self.cookie_lifetime.as_secs()).unwrap_or(i64::MAX);
            c = c.max_age(cookie::time::Duration::seconds(secs));
        }
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        if let Some(s) = self.same_site {
            c = c.same_site(s);
        }
        c.build().to_string()
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("name", &self.name)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// A new session id: 192 random bits from the thread's CSPRNG, URL-safe base64 (32 bytes).
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `id` can be a session id: 16 to 128 of `A-Z a-z 0-9 - _` (so never a path, a
/// dot or a separator). A cookie with anything else starts a new session.
pub fn valid_session_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where the codec picks up the `Set-Cookie` a session asks for, for the request's response.
pub(crate) type CookieSlot = Arc<Mutex<Option<String>>>;

/// A request's session (Workerman's `$request->session()`): `get`/`set`/`delete`/`flush`/
/// `all`/`has`, values any `serde` type (kept as JSON). Changes are saved when the last handle
/// to it (and so the request) is dropped, or at [`Session::save`]; a session left empty is
/// deleted. A client without a session cookie gets an id (and the cookie, on the response to
/// this request) only once something is set or [`Session::id`] is asked for.
#[derive(Clone)]
pub struct Session(Arc<Mutex<State>>);

struct State {
    config: Arc<Sessions>,
    cookie: CookieSlot,
    /// `None` until an id is needed.
    id: Option<String>,
    data: Map<String, Value>,
    /// Changed since loaded or saved.
    dirty: bool,
    /// Ids to delete at the next save (regenerated with `delete_old`).
    stale: Vec<String>,
}

impl Session {
    /// The session of id `id` (or a fresh one) with its stored `data`.
    pub(crate) fn open(
        config: Arc<Sessions>,
        cookie: CookieSlot,
        id: Option<String>,
        data: Option<Vec<u8>>,
    ) -> Session {
        let data = data
            .and_then(|d| match serde_json::from_slice::<Map<String, Value>>(&d) {
                Ok(m) => Some(m),
                Err(e) => {
                    log::warn!("session data is not a JSON object ({e}); starting empty");
                    None
                }
            })
            .unwrap_or_default();
        let dirty = config.auto_update_timestamp && id.is_some() && !data.is_empty();
        Session(Arc::new(Mutex::new(State {
            config,
            cookie,
            id,
            data,
            dirty,
            stale: Vec::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session id (Workerman's `$request->sessionId()`), made now if the session had none.
    pub fn id(&self) -> String {
        self.state().id().to_string()
    }

    /// A value, deserialized as `T`; `None` when unset or of another shape.
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let v = self.state().data.get(key).cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Set a value (anything `serde` can write as JSON; a value it cannot is not stored).
    pub fn set(&self, key: impl Into<String>, value: impl serde::Serialize) {
        let Ok(value) = serde_json::to_value(value) else {
            log::warn!("session value cannot be serialized; not stored");
            return;
        };
        let mut s = self.state();
        s.id();
        s.data.insert(key.into(), value);
        s.dirty = true;
    }

    /// Whether `key` is set.
    pub fn has(&self, key: &str) -> bool {
        self.state().data.contains_key(key)
    }

    /// Remove `key`.
    pub fn delete(&self, key: &str) {
        let mut s = self.state();
        if s.data.remove(key).is_some() {
            s.dirty = true;
        }
    }

    /// Remove and return `key`'s value (Workerman's `pull`).
    pub fn pull<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut s = self.state();
        let v = s.data.remove(key)?;
        s.dirty = true;
        serde_json::from_value(v).ok()
    }

    /// Remove everything (the stored session is deleted at the save).
    pub fn flush(&self) {
        let mut s = self.state();
        if !s.data.is_empty() {
            s.data.clear();
            s.dirty = true;
        }
    }

    /// Every value.
    pub fn all(&self) -> Map<String, Value> {
        self.state().data.clone()
    }

    /// Give the session a new id (Workerman's `sessionRegenerateId`), sent in a new cookie,
    /// keeping its data; `delete_old` deletes what was stored under the old one. Returns the
    /// new id.
    pub fn regenerate_id(&self, delete_old: bool) -> String {
        let mut s = self.state();
        let new = new_session_id();
        if let Some(old) = s.id.replace(new.clone()) {
            if delete_old {
                s.stale.push(old);
            }
        }
        let cookie = s.config.cookie(&new);
        *s.cookie.lock().unwrap_or_else(|e| e.into_inner()) = Some(cookie);
        s.dirty = true;
        new
    }

    /// Save now rather than when the request is dropped.
    pub fn save(&self) {
        self.state().save();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Session")
            .field("id", &s.id)
            .field("data", &s.data)
            .finish()
    }
}

impl State {
    /// The id, made (and its cookie set) if there is none yet.
    fn id(&mut self) -> &str {
        if self.id.is_none() {
            let id = new_session_id();
            let cookie = self.config.cookie(&id);
            *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = Some(cookie);
            self.id = Some(id);
        }
        self.id.as_deref().unwrap_or_default()
    }

    /// Write the changes (or delete an emptied session), delete stale ids, maybe collect
    /// garbage.
    fn save(&mut self) {
        let handler = self.config.handler.clone();
        for old in self.stale.drain(..) {
            run(handler.destroy(&old));
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let Some(id) = self.id.clone() else {
            return;
        };
        if self.data.is_empty() {
            run(handler.destroy(&id));
        } else {
            let bytes = serde_json::to_vec(&self.data).unwrap_or_default();
            run(handler.write(&id, bytes, self.config.lifetime));
        }
        let (n, d) = self.config.gc_probability;
        if n > 0 && rand::random_range(1..=d) <= n {
            run(handler.gc(self.config.lifetime));
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.save();
    }
}

/// Run a handler's future: at once as far as it goes (a file handler finishes here, a Redis
/// command is queued in order), the rest on the thread's runtime.
fn run(mut fut: SessionFuture<()>) {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => log::error!("session store: {e}"),
        Poll::Pending => match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = fut.await {
                        log::error!("session store: {e}");
                    }
                });
            }
            Err(_) => log::error!("session store: dropped outside a worker thread; not saved"),
        },
    }
}

/// Poll `fut` once: its output if it finished at once (a file handler), or the future.
pub(crate) fn try_now<T>(
    mut fut: SessionFuture<T>,
) -> Result<std::io::Result<T>, SessionFuture<T>> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => Err(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<std::collections::HashMap<String, Vec<u8>>>);

    impl SessionHandler for Arc<Memory> {
        fn read(&self, id: &str) -> SessionFuture<Option<Vec<u8>>> {
            let v = self.0.lock().unwrap().get(id).cloned();
            Box::pin(async move { Ok(v) })
        }
        fn write(&self, id: &str, data: Vec<u8>, _: Duration) -> SessionFuture<()> {
            self.0.lock().unwrap().insert(id.into(), data);
            Box::pin(async { Ok(()) })
        }
        fn destroy(&self, id: &str) -> SessionFuture<()> {
            self.0.lock().unwrap().remove(id);
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn ids() {
        let id = new_session_id();
        assert_eq!(id.len(), 32);
        assert!(valid_session_id(&id));
        for bad in [
            "../../etc/passwd",
            "short",
            "a/bcdefghijklmnopq",
            "abcdefghijklmnop.",
            "",
        ] {
            assert!(!valid_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn saved_on_drop_deleted_when_empty_and_regenerated() {
        let store = Arc::new(Memory::default());
        let config = Arc::new(Sessions::new(store.clone()));
        let slot = CookieSlot::default();
        let s = Session::open(config.clone(), slot.clone(), None, None);
        assert!(
            !s.has("n") && slot.lock().unwrap().is_none(),
            "no id until needed"
        );
        s.set("n", 1);
        let cookie = slot
            .lock()
            .unwrap()
            .take()
            .expect("a cookie for the new id");
        let id = s.id();
        assert!(
            cookie.starts_with(&format!("WERKMANNSID={id}; ")),
            "{cookie}"
        );
        assert!(cookie.contains("HttpOnly") && cookie.contains("Max-Age=1440"));
        drop(s);
        let stored = store.0.lock().unwrap().get(&id).cloned().expect("saved");
        let s = Session::open(config.clone(), slot.clone(), Some(id.clone()), Some(stored));
        assert_eq!(s.get::<i64>("n"), Some(1));
        let new = s.regenerate_id(true);
        assert_ne!(new, id);
        drop(s);
        assert!(!store.0.lock().unwrap().contains_key(&id));
        let stored = store.0.lock().unwrap().get(&new).cloned().expect("moved");
        let s = Session::open(config, slot.clone(), Some(new.clone()), Some(stored));
        s.flush();
        drop(s);
        assert!(store.0.lock().unwrap().is_empty());
        // Read only: written back only with auto_update_timestamp.
        for auto in [false, true] {
            let mut c = Sessions::new(store.clone());
            c.auto_update_timestamp = auto;
            let s = Session::open(
                Arc::new(c),
                slot.clone(),
                Some(new.clone()),
                Some(b"{\"a\":1}".to_vec()),
            );
            assert!(s.has("a"));
            drop(s);
            assert_eq!(store.0.lock().unwrap().contains_key(&new), auto);
        }
    }
}

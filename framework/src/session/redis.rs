//! Sessions in Redis (Workerman's `RedisSessionHandler`): one string key per session,
//! `werkmann_session_<id>`, expiring with the session's lifetime (so no garbage collection).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::message::session::{SessionFuture, SessionHandler};

/// Sessions in a Redis server (`redis://…`, `rediss://…`). The connection is opened on first
/// use and shared by the worker's instances; every call is asynchronous (the session is read
/// before `on_message` runs, and written after the request, without blocking the thread).
/// Like Workerman's, it takes no lock: two requests of one session at once both write, and
/// the last one wins.
#[derive(Clone)]
pub struct RedisSessionHandler {
    client: redis::Client,
    prefix: String,
    conn: Arc<OnceCell<ConnectionManager>>,
}

impl std::fmt::Debug for RedisSessionHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionHandler")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSessionHandler {
    /// Sessions in the Redis server at `url`, under keys `werkmann_session_<id>`. A malformed
    /// URL is an error now; an unreachable server is an error (a 500) on the requests that
    /// need it, until it is back.
    pub fn new(url: &str) -> Result<Self, crate::Error> {
        let client = redis::Client::open(url)
            .map_err(|e| crate::Error::Config(format!("session Redis URL {url:?}: {e}")))?;
        Ok(RedisSessionHandler {
            client,
            prefix: "werkmann_session_".into(),
            conn: Arc::default(),
        })
    }

    /// Keys `<prefix><id>` instead (Workerman's `prefix` option).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A command on the shared connection, opened if it is not yet.
    fn call<T: redis::FromRedisValue + Send + 'static>(&self, cmd: redis::Cmd) -> SessionFuture<T> {
        let (client, cell) = (self.client.clone(), self.conn.clone());
        Box::pin(async move {
            let conn = cell
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(5)))
                        .set_response_timeout(Some(Duration::from_secs(5)))
                        .set_number_of_retries(1);
                    client.get_connection_manager_with_config(config).await
                })
                .await
                .map_err(std::io::Error::other)?;
            let mut conn = conn.clone();
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(std::io::Error::other)
        })
    }
}

impl SessionHandler for RedisSessionHandler {
    fn read(&self, id: &str) -> SessionFuture<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}{id}", self.prefix));
        self.call(cmd)
    }

    fn write(&self, id: &str, data: Vec<u8>, lifetime: Duration) -> SessionFuture<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{id}", self.prefix))
            .arg(data)
            .arg("EX")
            .arg(lifetime.as_secs().max(1));
        self.call(cmd)
    }

    fn destroy(&self, id: &str) -> SessionFuture<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{id}", self.prefix));
        self.call(cmd)
    }
}

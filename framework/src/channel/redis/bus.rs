//! The connection to Redis: one server (a connection manager, classic pub/sub) or a Redis
//! Cluster (found with `INFO cluster`: sharded pub/sub, commands routed by key), over TLS for
//! `rediss://` with the system's roots or a private CA.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::Value as RValue;

/// The PEM bytes of a private CA for `rediss://`.
pub(super) fn read_ca(ca: &Path) -> redis::RedisResult<Vec<u8>> {
    std::fs::read(ca).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read the Redis CA file",
            format!("{}: {e}", ca.display()),
        ))
    })
}

/// A Redis client for `url`. For `rediss://` the server's certificate is checked against the
/// system's roots, or against the PEM file `ca` (a private CA).
pub fn open_client(url: &str, ca: Option<&Path>) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(ca) if url.starts_with("rediss://") => {
            let pem = read_ca(ca)?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => redis::Client::open(url),
    }
}

/// The connection manager needs RESP3 for subscriptions on a multiplexed connection.
pub(super) fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// The connection to a single Redis server, or to a Redis Cluster (found with `INFO cluster`).
#[derive(Clone)]
pub(super) enum Bus {
    /// One server: classic pub/sub, pipelined commands.
    Single(ConnectionManager),
    /// A cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), commands routed by key.
    Cluster(ClusterConnection),
    /// A single server's connection of the link's own, for commands only (no subscriptions,
    /// no reconnects: it is replaced when it fails): the directory's, tracking the uids'
    /// holders (`uid_cache.rs`), read through a tap (`tap.rs`).
    Direct(MultiplexedConnection),
}

impl Bus {
    /// Whether this is a single server (not a Redis Cluster).
    pub(super) fn is_single(&self) -> bool {
        !matches!(self, Bus::Cluster(_))
    }

    pub(super) async fn subscribe_events(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Bus::Single(m) => m.subscribe(channels).await,
            Bus::Direct(_) => Err(not_for_subscriptions()),
            // One channel per SSUBSCRIBE: channels of one command must share a slot.
            Bus::Cluster(c) => {
                for ch in channels {
                    c.ssubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn unsubscribe_events(
        &mut self,
        channels: &[String],
    ) -> redis::RedisResult<()> {
        match self {
            Bus::Single(m) => m.unsubscribe(channels).await,
            Bus::Direct(_) => Err(not_for_subscriptions()),
            Bus::Cluster(c) => {
                for ch in channels {
                    c.sunsubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    /// Run commands, each given with the key (or channel) that routes it: one pipeline on a
    /// single server; on a cluster one pipeline per key, in order, all keys at once — so the
    /// commands of one event name or queue keep their order.
    pub(super) async fn run(&mut self, cmds: Vec<(String, redis::Cmd)>) -> redis::RedisResult<()> {
        let cmds = cmds.into_iter().map(|(k, c)| (k, c, false)).collect();
        self.run_with_replies(cmds).await.map(|_| ())
    }

    /// [`Bus::run`], returning the replies of the commands marked `true`, in their order.
    pub(super) async fn run_with_replies(
        &mut self,
        cmds: Vec<(String, redis::Cmd, bool)>,
    ) -> redis::RedisResult<Vec<RValue>> {
        self.pipelines(cmds, false).await
    }

    /// Run commands as a pipeline (on a cluster one per key, each command with the key of
    /// its slot); every reply, a command's error as a [`RValue::ServerError`] among them.
    pub(super) async fn run_keyed_each(
        &mut self,
        cmds: &[(String, redis::Cmd)],
    ) -> redis::RedisResult<Vec<RValue>> {
        let cmds = cmds
            .iter()
            .map(|(k, c)| (k.clone(), c.clone(), true))
            .collect();
        self.pipelines(cmds, true).await
    }

    /// One pipeline (on a cluster, one per key): the replies of the commands marked `true`, in
    /// their order; with `errors_as_replies` a command's error is its reply, else the first
    /// one fails the call.
    async fn pipelines(
        &mut self,
        cmds: Vec<(String, redis::Cmd, bool)>,
        errors_as_replies: bool,
    ) -> redis::RedisResult<Vec<RValue>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let new_pipe = || {
            let mut p = redis::pipe();
            if errors_as_replies {
                p.ignore_errors();
            }
            p
        };
        let add = |pipe: &mut redis::Pipeline, cmd: redis::Cmd, want: bool| {
            pipe.add_command(cmd);
            if !want {
                pipe.ignore();
            }
        };
        // One server: every command in one pipeline.
        let one = |cmds: Vec<(String, redis::Cmd, bool)>| {
            let mut pipe = new_pipe();
            for (_, c, want) in cmds {
                add(&mut pipe, c, want);
            }
            pipe
        };
        match self {
            Bus::Single(m) => one(cmds).query_async::<Vec<RValue>>(m).await,
            Bus::Direct(d) => one(cmds).query_async::<Vec<RValue>>(d).await,
            Bus::Cluster(c) => {
                // Per key: its pipeline and the positions of its wanted replies.
                let mut by_key: Vec<(String, redis::Pipeline, Vec<usize>)> = Vec::new();
                let mut wanted = 0;
                for (key, cmd, want) in cmds {
                    let i = match by_key.iter().position(|(k, _, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            by_key.push((key, new_pipe(), Vec::new()));
                            by_key.len() - 1
                        }
                    };
                    let (_, p, at) = &mut by_key[i];
                    add(p, cmd, want);
                    if want {
                        at.push(wanted);
                        wanted += 1;
                    }
                }
                let sends = by_key.into_iter().map(|(_, pipe, at)| {
                    let mut c = c.clone();
                    async move { (pipe.query_async::<Vec<RValue>>(&mut c).await, at) }
                });
                let mut replies = vec![RValue::Nil; wanted];
                for (r, at) in futures_util::future::join_all(sends).await {
                    for (v, i) in r?.into_iter().zip(at) {
                        replies[i] = v;
                    }
                }
                Ok(replies)
            }
        }
    }

    /// Run script calls ([`Bus::run_keyed_each`]); calls refused with `NOSCRIPT` (a Redis that
    /// had not seen the script, or flushed it: a restart) did not run, so `scripts` are loaded
    /// and those calls run again, in order.
    pub(super) async fn run_scripts(
        &mut self,
        calls: &[(String, redis::Cmd)],
        scripts: &[&redis::Script],
    ) -> redis::RedisResult<Vec<RValue>> {
        let mut replies = self.run_keyed_each(calls).await?;
        let again: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, RValue::ServerError(e) if e.code() == "NOSCRIPT"))
            .map(|(i, _)| i)
            .collect();
        if !again.is_empty() {
            for script in scripts {
                self.load_script(script).await?;
            }
            let retry: Vec<(String, redis::Cmd)> =
                again.iter().map(|&i| calls[i].clone()).collect();
            for (i, r) in again.into_iter().zip(self.run_keyed_each(&retry).await?) {
                replies[i] = r;
            }
        }
        Ok(replies)
    }

    /// Load a script (on a cluster, into every primary).
    pub(super) async fn load_script(&mut self, script: &redis::Script) -> redis::RedisResult<()> {
        match self {
            Bus::Single(m) => script.load_async(m).await.map(|_| ()),
            Bus::Direct(d) => script.load_async(d).await.map(|_| ()),
            Bus::Cluster(c) => script.load_async(c).await.map(|_| ()),
        }
    }

    pub(super) fn publish_command(&self) -> &'static str {
        match self.is_single() {
            true => "PUBLISH",
            false => "SPUBLISH",
        }
    }
}

fn not_for_subscriptions() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "the directory's connection takes no subscriptions",
    ))
}

/// Whether the server at `url` is part of a Redis Cluster.
pub(super) async fn is_cluster(url: &str, ca: Option<&Path>) -> redis::RedisResult<bool> {
    let mut c = open_client(url, ca)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut c)
        .await?;
    Ok(info.contains("cluster_enabled:1"))
}

/// A cluster client seeded with `url`, trusting the private CA `ca` for `rediss://`.
pub(super) fn cluster_builder(
    url: &str,
    ca: Option<&Path>,
) -> redis::RedisResult<redis::cluster::ClusterClientBuilder> {
    let mut b = redis::cluster::ClusterClientBuilder::new(vec![url])
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(Duration::from_secs(5));
    if let (true, Some(ca)) = (url.starts_with("rediss://"), ca) {
        let pem = read_ca(ca)?;
        b = b.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
    }
    Ok(b)
}

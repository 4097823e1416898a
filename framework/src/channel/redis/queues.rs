//! Queues on Redis: streams `werkmann:q:{name}` with the consumer group `werkmann`. A watcher
//! reads with `XREADGROUP … >` on a connection of its own (reads block), one item per reserve,
//! and acknowledges (`XACK` + `XDEL`) after its callback; an item whose watcher died first is
//! claimed by another after 30 s (`XAUTOCLAIM`).

use std::path::Path;
use std::rc::Weak;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Value as RValue};

use super::bus::{cluster_builder, is_cluster, open_client};
use super::{queue_key, RedisLink, CLAIM_IDLE_MS, GROUP};
use crate::channel::php_serde::Key;
use crate::channel::wire::{Delivery, DeliveryKind};

/// The blocking connection of a watcher.
enum QueueConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for QueueConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, RValue> {
        match self {
            QueueConn::Single(c) => c.req_packed_command(cmd),
            QueueConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<RValue>> {
        match self {
            QueueConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            QueueConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            QueueConn::Single(c) => c.get_db(),
            QueueConn::Cluster(c) => c.get_db(),
        }
    }
}

async fn queue_conn(url: &str, ca: Option<&Path>) -> redis::RedisResult<QueueConn> {
    if is_cluster(url, ca).await? {
        let client = cluster_builder(url, ca)?
            .response_timeout(Duration::from_secs(10))
            .build()?;
        Ok(QueueConn::Cluster(client.get_async_connection().await?))
    } else {
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let c = open_client(url, ca)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(QueueConn::Single(c))
    }
}

/// Read queue items for reserved watchers, one per reserve, on a blocking connection.
pub(super) async fn run_queues(link: Weak<RedisLink>) {
    let mut conn: Option<QueueConn> = None;
    let mut last_claim = tokio::time::Instant::now();
    loop {
        let Some(l) = link.upgrade() else { return };
        if l.closed.get() {
            return;
        }
        let queues: Vec<Key> = l.queues.borrow().iter().cloned().collect();
        if queues.is_empty() || l.reserved.get() == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), l.wake_queue.notified()).await;
            continue;
        }
        let url = l.url.clone();
        let ca = l.ca.clone();
        let shown = l.shown.clone();
        let id = l.id.clone();
        drop(l);
        if conn.is_none() {
            match queue_conn(&url, ca.as_deref()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    log::warn!("redis {shown} (queues): {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let keys: Vec<String> = queues.iter().map(queue_key).collect();
        // Items whose watcher died before acknowledging come back after a while.
        let mut items: Vec<(String, String, Bytes)> = Vec::new();
        if last_claim.elapsed() > Duration::from_secs(5) {
            last_claim = tokio::time::Instant::now();
            for k in &keys {
                let r: redis::RedisResult<RValue> = redis::cmd("XAUTOCLAIM")
                    .arg(k)
                    .arg(GROUP)
                    .arg(&id)
                    .arg(CLAIM_IDLE_MS)
                    .arg("0")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(c)
                    .await;
                if let Ok(RValue::Array(parts)) = r {
                    if let Some(RValue::Array(entries)) = parts.get(1) {
                        items.extend(entries.iter().filter_map(|e| entry(k, e)));
                    }
                }
            }
        }
        let mut failed = false;
        // A cluster keeps streams on different nodes: read them one at a time, briefly.
        let cluster = matches!(c, QueueConn::Cluster(_));
        let (groups, block): (Vec<&[String]>, u64) = if cluster && keys.len() > 1 {
            (keys.chunks(1).collect(), 200)
        } else {
            (vec![&keys[..]], 2000)
        };
        for group in groups {
            if !items.is_empty() {
                break;
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&id)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(group);
            for _ in group {
                cmd.arg(">");
            }
            match cmd.query_async::<RValue>(c).await {
                Ok(v) => items.extend(stream_entries(&v)),
                Err(e) if e.code() == Some("NOGROUP") => {
                    // A watch whose group creation is still on its way.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    log::warn!("redis {shown} (queues): {e}");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            conn = None;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        for (key, entry_id, data) in items {
            let Some(l) = link.upgrade() else { return };
            let rest = key.strip_prefix("werkmann:q:").unwrap_or(&key);
            let name = super::directory::event_name(rest).to_string();
            l.reserved.set(l.reserved.get().saturating_sub(1));
            if let Some(o) = l.owner() {
                drop(l);
                o.delivery(Delivery {
                    kind: DeliveryKind::Queue,
                    channel: Key::from_str_normalized(&name),
                    data,
                    pos: None,
                });
            }
            let c = conn.as_mut().expect("connected");
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(&entry_id)
                .ignore()
                .cmd("XDEL")
                .arg(&key)
                .arg(&entry_id)
                .ignore()
                .query_async(c)
                .await;
        }
    }
}

fn entry(key: &str, e: &RValue) -> Option<(String, String, Bytes)> {
    let RValue::Array(parts) = e else { return None };
    let id = match parts.first()? {
        RValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        RValue::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let fields = match parts.get(1)? {
        RValue::Array(f) => f,
        RValue::Map(m) => {
            return m.iter().find_map(|(k, v)| match (k, v) {
                (RValue::BulkString(k), RValue::BulkString(v)) if k == b"d" => {
                    Some((key.to_string(), id.clone(), Bytes::copy_from_slice(v)))
                }
                _ => None,
            })
        }
        _ => return None,
    };
    fields.chunks(2).find_map(|kv| match kv {
        [RValue::BulkString(k), RValue::BulkString(v)] if k == b"d" => {
            Some((key.to_string(), id.clone(), Bytes::copy_from_slice(v)))
        }
        _ => None,
    })
}

/// Entries of an `XREADGROUP` reply (RESP2 arrays or a RESP3 map of stream → entries).
fn stream_entries(v: &RValue) -> Vec<(String, String, Bytes)> {
    let mut out = Vec::new();
    let mut per_stream = |k: &RValue, entries: &RValue| {
        let key = match k {
            RValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            RValue::SimpleString(s) => s.clone(),
            _ => return,
        };
        if let RValue::Array(es) = entries {
            out.extend(es.iter().filter_map(|e| entry(&key, e)));
        }
    };
    match v {
        RValue::Map(m) => {
            for (k, e) in m {
                per_stream(k, e);
            }
        }
        RValue::Array(streams) => {
            for s in streams {
                if let RValue::Array(kv) = s {
                    if let (Some(k), Some(e)) = (kv.first(), kv.get(1)) {
                        per_stream(k, e);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

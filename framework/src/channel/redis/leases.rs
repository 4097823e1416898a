//! Worker ids as leases: `SET werkmann:worker_id:{id} {node} NX PX 30000`, renewed every 10 s
//! while the link lives, deleted when the node gives them up (see `channel::worker_ids`) — and
//! with them what those workers registered in the directory (`directory.rs`).

use std::rc::Weak;
use std::time::Duration;

use redis::Value as RValue;

use super::bus::Bus;
use super::directory::release_workers;
use super::RedisLink;
use crate::channel::broker::{ClaimDone, Leases};
use crate::channel::ClaimError;

const LEASE_MS: u64 = 30_000;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

fn lease_key(id: u32) -> String {
    format!("werkmann:worker_id:{id}")
}

/// `SET werkmann:worker_id:{id} {node} NX PX 30000`: whether `node` got the id.
async fn take_lease(bus: &mut Bus, node: &str, id: u32) -> redis::RedisResult<bool> {
    let key = lease_key(id);
    let mut c = redis::cmd("SET");
    c.arg(&key).arg(node).arg("NX").arg("PX").arg(LEASE_MS);
    let r = bus.run_with_replies(vec![(key, c, true)]).await?;
    Ok(matches!(
        r.first(),
        Some(RValue::Okay | RValue::SimpleString(_))
    ))
}

/// Run one script on one lease key; its integer reply.
async fn lease_script(bus: &mut Bus, script: &str, node: &str, id: u32) -> redis::RedisResult<i64> {
    let key = lease_key(id);
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(1).arg(&key).arg(node).arg(LEASE_MS);
    let r = bus.run_with_replies(vec![(key, c, true)]).await?;
    Ok(match r.first() {
        Some(RValue::Int(n)) => *n,
        _ => 0,
    })
}

/// The link's connection once it is up; `None` once the link is gone.
async fn bus_when_up(link: &Weak<RedisLink>) -> Option<Bus> {
    loop {
        let l = link.upgrade()?;
        if l.closed.get() {
            return None;
        }
        if l.up.get() {
            if let Some(b) = l.manager.borrow().clone() {
                return Some(b);
            }
        }
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn claim_leases(
    link: &Weak<RedisLink>,
    node: &str,
    count: usize,
    pinned: Option<Vec<u32>>,
) -> Result<Vec<u32>, ClaimError> {
    let shown = link.upgrade().map(|l| l.shown.clone()).unwrap_or_default();
    let unreachable = |why: String| ClaimError::Unreachable {
        addr: shown.clone(),
        why,
    };
    let Some(mut bus) = bus_when_up(link).await else {
        return Err(unreachable("closed".into()));
    };
    let mut got = Vec::new();
    match pinned {
        Some(p) => {
            let mut clash = Vec::new();
            for &id in &p {
                match take_lease(&mut bus, node, id).await {
                    Ok(true) => got.push(id),
                    Ok(false) => clash.push(id),
                    Err(e) => return Err(unreachable(e.to_string())),
                }
            }
            if !clash.is_empty() {
                for id in got {
                    let _ = lease_script(&mut bus, RELEASE_SCRIPT, node, id).await;
                }
                return Err(ClaimError::Clash(clash));
            }
        }
        None => {
            let mut id = 0u32;
            while got.len() < count {
                match take_lease(&mut bus, node, id).await {
                    Ok(true) => got.push(id),
                    Ok(false) => {}
                    Err(e) => return Err(unreachable(e.to_string())),
                }
                id += 1;
            }
        }
    }
    Ok(got)
}

/// Renew `node`'s leases every 10 s while the link lives — or take back one that expired
/// while Redis was away.
async fn renew_leases(link: Weak<RedisLink>, node: String, ids: Vec<u32>) {
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let Some(mut bus) = bus_when_up(&link).await else {
            return;
        };
        for &id in &ids {
            match lease_script(&mut bus, RENEW_SCRIPT, &node, id).await {
                Ok(1) => {}
                Ok(_) => {
                    if !matches!(take_lease(&mut bus, &node, id).await, Ok(true)) {
                        log::error!("worker id {id} is now held by another node");
                    }
                }
                Err(e) => log::warn!("worker id {id}: lease not renewed: {e}"),
            }
        }
    }
}

impl Leases for RedisLink {
    fn claim(&self, node: &str, count: usize, pinned: Option<Vec<u32>>, done: ClaimDone) {
        // A link that holds worker ids sweeps the directory of nodes that are gone.
        self.sweeps.set(true);
        let (link, node) = (self.me.clone(), node.to_string());
        actix_rt::spawn(async move {
            let result = claim_leases(&link, &node, count, pinned).await;
            if let Ok(ids) = &result {
                actix_rt::spawn(renew_leases(link, node, ids.clone()));
            }
            done(result);
        });
    }

    fn hold(&self, node: &str, ids: Vec<u32>) {
        self.sweeps.set(true);
        actix_rt::spawn(renew_leases(self.me.clone(), node.to_string(), ids));
    }

    fn release(&self, node: &str, ids: Vec<u32>, done: Box<dyn FnOnce()>) {
        let (link, node) = (self.me.clone(), node.to_string());
        actix_rt::spawn(async move {
            let up = tokio::time::timeout(Duration::from_secs(1), bus_when_up(&link)).await;
            if let Ok(Some(mut bus)) = up {
                for &id in &ids {
                    let _ = lease_script(&mut bus, RELEASE_SCRIPT, &node, id).await;
                }
                // What the node's workers registered in the directory goes with their ids.
                if let Err(e) = release_workers(&mut bus, &ids).await {
                    log::warn!(
                        "worker ids {ids:?}: directory clients not removed ({e}); a sweep will"
                    );
                }
            }
            done();
        });
    }
}

//! Channel scenarios of the conformance set (`conformance`): each takes a backend, starts its
//! own `channel_console` processes on it and asserts what their clients receive.

use std::collections::HashSet;
use std::time::Duration;

use crate::conformance::Backend;
use crate::{open_console as open, Console};

/// Fan-out to `subscribers` clients in two processes, `"1"` and `1` as one name but `"01"` as
/// another, per-publisher ordering of `seq` events, and no events after an unsubscribe.
pub async fn fan_out_names_and_ordering(b: &Backend, subscribers: usize, seq: usize) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut subs = Vec::new();
    for n in 0..subscribers {
        let mut c = open(if n % 2 == 0 { &a_addr } else { &b_addr }).await;
        assert_eq!(c.ask("on Broadcast").await, "ok");
        assert_eq!(c.ask("on 1").await, "ok");
        // The subscriptions are in force before anything is published.
        c.sync().await;
        subs.push(c);
    }
    let mut publisher = open(&b_addr).await;

    assert_eq!(
        publisher.ask(r#"pub Broadcast {"content":"hi"}"#).await,
        "ok Sent"
    );
    for s in &mut subs {
        assert_eq!(s.line().await, r#"event Broadcast {"content":"hi"}"#);
    }
    // "1" and 1 are one name; "01" is another.
    assert_eq!(publisher.ask(r#"pub 01 "no""#).await, "ok Sent");
    assert_eq!(publisher.ask(r#"pub 1 "yes""#).await, "ok Sent");
    for s in &mut subs {
        assert_eq!(s.line().await, r#"event 1 "yes""#);
    }
    // Per-publisher ordering.
    assert_eq!(
        publisher.ask(&format!("seq Broadcast {seq}")).await,
        "ok Sent"
    );
    for s in &mut subs {
        for i in 0..seq {
            assert_eq!(s.line().await, format!(r#"event Broadcast {{"i":{i}}}"#));
        }
    }
    // Unsubscribed: no more events for that one.
    assert_eq!(subs[0].ask("unsub Broadcast").await, "ok");
    subs[0].sync().await;
    assert_eq!(publisher.ask(r#"pub Broadcast 2"#).await, "ok Sent");
    for s in &mut subs[1..] {
        assert_eq!(s.line().await, "event Broadcast 2");
    }
    subs[0].nothing_for(200).await;
}

/// `publish_loop`: 30 events over three subscribers, each event to exactly one of them, ten
/// each, in turn.
pub async fn publish_loop_round_robin(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut subs = Vec::new();
    for addr in [&a_addr, &b_addr, &a_addr] {
        let mut c = open(addr).await;
        assert_eq!(c.ask("on work").await, "ok");
        c.sync().await;
        subs.push(c);
    }
    let mut p = open(&b_addr).await;
    for i in 0..30 {
        assert_eq!(p.ask(&format!("publoop work {i}")).await, "ok Sent");
    }
    let mut all = Vec::new();
    for s in &mut subs {
        for _ in 0..10 {
            all.push(s.line().await);
        }
        s.nothing_for(150).await;
    }
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        30,
        "each event to exactly one subscriber, 10 each"
    );
}

/// Queues: items enqueued before anyone watches wait; two auto-reserving watchers in two
/// processes get every item exactly once; a manual watcher gets one item per `reserve`.
pub async fn queues_deliver_exactly_once(b: &Backend) {
    let (_a, a_addr) = b.console();
    let (_b, b_addr) = b.console();
    let mut p = open(&b_addr).await;
    for i in 0..20 {
        assert_eq!(p.ask(&format!("enq jobs {i}")).await, "ok Sent");
    }
    let mut w1 = open(&a_addr).await;
    let mut w2 = open(&b_addr).await;
    assert_eq!(w1.ask("watch jobs").await, "ok");
    assert_eq!(w2.ask("watch jobs").await, "ok");
    // Items wait in the queue until a watcher takes them: nothing to wait for here.
    for i in 20..40 {
        assert_eq!(p.ask(&format!("enq jobs {i}")).await, "ok Sent");
    }
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while items.len() < 40 && tokio::time::Instant::now() < deadline {
        for w in [&mut w1, &mut w2] {
            if let Ok(Ok(Some(l))) =
                tokio::time::timeout(Duration::from_millis(50), w.lines.next_line()).await
            {
                items.push(l);
            }
        }
    }
    let set: HashSet<&String> = items.iter().collect();
    assert_eq!(items.len(), 40, "every item: {items:?}");
    assert_eq!(set.len(), 40, "no duplicates");
    w1.nothing_for(300).await;
    w2.nothing_for(100).await;

    // A manual watcher gets one item per reserve; items wait for it.
    let mut m: Console = open(&a_addr).await;
    assert_eq!(m.ask("watchm slow").await, "ok");
    m.sync().await;
    assert_eq!(p.ask("enq slow 1").await, "ok Sent");
    assert_eq!(p.ask("enq slow 2").await, "ok Sent");
    m.nothing_for(200).await;
    assert_eq!(m.ask("reserve").await, "ok");
    assert_eq!(m.line().await, "queue slow 1");
    m.nothing_for(200).await;
    assert_eq!(m.ask("reserve").await, "ok");
    assert_eq!(m.line().await, "queue slow 2");
}

/// After the channel (server or Redis) came back: both consoles report `channel connected`,
/// in either order.
pub async fn both_reconnect(sub: &mut Console, publisher: &mut Console) {
    let (mut a, mut b) = (None, None);
    for _ in 0..2 {
        tokio::select! {
            l = sub.line(), if a.is_none() => a = Some(l),
            l = publisher.line(), if b.is_none() => b = Some(l),
        }
    }
    assert_eq!(a.as_deref(), Some("channel connected"));
    assert_eq!(b.as_deref(), Some("channel connected"));
}

/// Publish `news 4` until `sub` receives it: a publish that overtakes the subscriber's
/// re-subscription reaches no one (as in Workerman, and Redis keeps nothing for absent
/// subscribers), so delivery is seen to resume only once both are back. Every other line
/// `sub` receives meanwhile goes to `other`. Fails if delivery never resumes.
pub async fn publish_until_delivered(
    publisher: &mut Console,
    sub: &mut Console,
    mut other: impl FnMut(&str),
) {
    for _ in 0..25 {
        assert_eq!(publisher.ask("pub news 4").await, "ok Sent");
        while let Ok(l) = tokio::time::timeout(Duration::from_millis(200), sub.line()).await {
            if l == "event news 4" {
                return;
            }
            other(&l);
        }
    }
    panic!("event delivery did not resume after the restart");
}

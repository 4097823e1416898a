//! One behaviour, tested once: every case of the conformance set (`werkmann_tests::conformance`
//! and `scenarios`) on every backend behind the channel's broker seam — embedded, channel
//! server, Redis, Redis Cluster — and the directory's cases (`werkmann_tests::directory`) on
//! every backend that keeps a directory.

use werkmann_tests::conformance::{self, Backend, Kind};
use werkmann_tests::directory;
use werkmann_tests::scenarios;

macro_rules! on_every_backend {
    ($($case:ident => |$b:ident| $body:expr;)*) => {
        mod embedded { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Embedded); $body; })* }
        mod channel_server { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Server); $body; })* }
        mod redis { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Redis); $body; })* }
        mod redis_cluster { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::RedisCluster); $body; })* }
    };
}

on_every_backend! {
    fan_out_names_ordering_and_unsubscribe => |b| scenarios::fan_out_names_and_ordering(&b, 3, 300).await;
    publish_loop_is_round_robin => |b| scenarios::publish_loop_round_robin(&b).await;
    queues_deliver_exactly_once => |b| scenarios::queues_deliver_exactly_once(&b).await;
    confirmations_count_subscribers => |b| conformance::confirmations_count_subscribers(&b).await;
    worker_id_claims_are_disjoint => |b| conformance::worker_id_claims_are_disjoint(&b).await;
    history_answers_exactly_what_was_missed => |b| conformance::history_answers_exactly_what_was_missed(&b).await;
    history_numbers_a_burst_in_order => |b| conformance::history_numbers_a_burst_in_order(&b).await;
    history_orders_concurrent_publishers => |b| conformance::history_orders_concurrent_publishers(&b).await;
}

/// The directory (GatewayWorker's client ids, uids, groups, sessions) on the backends that keep
/// one.
macro_rules! on_every_directory {
    ($($case:ident => |$b:ident| $body:expr;)*) => {
        mod directory_embedded { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Embedded); $body; })* }
        mod directory_channel_server { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Server); $body; })* }
        mod directory_redis { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::Redis); $body; })* }
        mod directory_redis_cluster { use super::*; $(#[tokio::test] async fn $case() { let $b = Backend::start(Kind::RedisCluster); $body; })* }
    };
}

on_every_directory! {
    registrations_answer_queries => |b| directory::registrations_answer_queries(&b).await;
    a_client_registered_twice_at_once_is_held => |b| directory::a_client_registered_twice_at_once_is_held(&b).await;
    a_presence_group_keeps_its_first_event_and_queue => |b| directory::a_presence_group_keeps_its_first_event_and_queue(&b).await;
    changes_reach_only_the_holding_node => |b| directory::changes_reach_only_the_holding_node(&b).await;
    sends_reach_exactly_their_targets => |b| directory::sends_reach_exactly_their_targets(&b).await;
    a_node_that_goes_leaves_the_directory => |b| directory::a_node_that_goes_leaves_the_directory(&b).await;
    bad_operations_are_refused => |b| directory::bad_operations_are_refused(&b).await;
    presence_groups_announce_their_members => |b| directory::presence_groups_announce_their_members(&b).await;
}

/// A backend lost and back. Not for the embedded hub (it lives and dies with its clients'
/// process) nor a cluster node (failover is the cluster's own).
mod reconnect_resubscribes_and_flushes {
    use super::*;

    #[tokio::test]
    async fn channel_server() {
        let mut b = Backend::start(Kind::Server);
        conformance::reconnect_resubscribes_and_flushes(&mut b).await;
    }

    #[tokio::test]
    async fn redis() {
        let mut b = Backend::start(Kind::Redis);
        conformance::reconnect_resubscribes_and_flushes(&mut b).await;
    }
}

/// What a backend that comes back remembers of history: nothing (a new epoch) or, for a Redis
/// that persists, all of it.
mod history_after_a_restart {
    use super::*;

    #[tokio::test]
    async fn channel_server_forgets() {
        let mut b = Backend::start(Kind::Server);
        conformance::history_after_a_restart(&mut b, false).await;
    }

    #[tokio::test]
    async fn redis_without_persistence_forgets() {
        let mut b = Backend::start(Kind::Redis);
        conformance::history_after_a_restart(&mut b, false).await;
    }

    #[tokio::test]
    async fn redis_with_persistence_recovers() {
        let mut b = Backend::start_persistent_redis();
        conformance::history_after_a_restart(&mut b, true).await;
    }
}

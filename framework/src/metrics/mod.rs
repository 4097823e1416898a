//! Prometheus metrics: what each worker instance, each publishing thread and each channel hub
//! counts, read and encoded when `/metrics` is scraped (see [`crate::admin`]).
//!
//! Counting costs what the `status` figures always cost: each counter has one writer, the
//! thread that owns it, which adds with a plain load and store — no lock, no locked
//! instruction, no cache line two writers share — and a scrape reads them from its own thread.
//! Sums over many are counted once per send, not once per connection.

mod cell;
mod encode;
mod process;
mod reasons;
mod refusals;
mod siblings;
mod sources;
mod totals;

pub use cell::{HistogramValue, LATENCY_BUCKETS};
pub use encode::{render, CONTENT_TYPE};
pub use process::rss_bytes;
pub(crate) use reasons::{Closed, Refused};
pub(crate) use refusals::note as note_refusal;
pub use refusals::{recent as recent_refusals, Refusal};
pub(crate) use siblings::{read_siblings, report_file, write_reports};
pub use siblings::{render_all, totals_all};
pub(crate) use sources::{
    broker_connected, broker_reconnected, delivered_here, directory_named, enable, enabled,
    open_connections, round_trip, set_thread_instance, uid_sends, worker_id_claim, Backend,
    HubMetrics, InstanceMetrics, UidSendVia,
};
pub use sources::{publish_answered, NodeFigures, PublishApi};
pub(crate) use totals::add_json;
pub use totals::{totals, HubTotals, InstanceFigures, Totals};

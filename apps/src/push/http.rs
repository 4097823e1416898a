//! The HTTP publisher, Workerman's `start_http.php`: a push request becomes one channel
//! publish, answered once the channel confirms that the push reached the WebSocket nodes.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use werkmann::channel::report::{Deliveries, NodeReports};
use werkmann::channel::worker_ids::WorkerIds;
use werkmann::channel::{ChannelError, Client};
use werkmann::gateway::Gateway;
use werkmann::gateway::Tokens;
use werkmann::metrics::{self, PublishApi};
use werkmann::pusher;
use werkmann::{cli, Chunk, Connection, Message, Request, Response, ServerSentEvent, Worker};

use super::delivery;
use super::page::demo_page_with_nodes;
use super::params::{Push, Reporting};
use super::report::Reports;
use crate::auth::Auth;

/// The resuming client of the WebSocket nodes (`GET /werkmann.js`; see `stream.rs`).
pub const WERKMANN_JS: &str = include_str!("werkmann.js");

/// The publisher's own options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Publisher {
    /// Pushes must authenticate with this secret (Authorization: Bearer, or an HMAC signature)
    #[arg(long, env = "WERKMANN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The WebSocket nodes the demo page reconnects among: HOST:PORT or ws(s):// URLs,
    /// comma-separated
    #[arg(long, env = "WERKMANN_WS_NODES", value_delimiter = ',')]
    pub ws_nodes: Vec<String>,
    /// Where a send_to_uid marked fallback tells which uids were offline (a signed JSON
    /// POST, http://HOST[:PORT][/PATH]; needs --secret)
    #[arg(long, env = "WERKMANN_FALLBACK_WEBHOOK", value_name = "URL")]
    pub fallback_webhook: Option<String>,
    /// Where the WebSocket nodes' presence events go (a signed JSON POST each; the nodes run
    /// with --presence-events hooks; needs --secret)
    #[arg(long, env = "WERKMANN_PRESENCE_WEBHOOK", value_name = "URL")]
    pub presence_webhook: Option<String>,
    /// The Pusher apps.
    #[command(flatten)]
    pub pusher: super::apps::PusherApps,
}

/// What makes the publisher's event streams clients of the cluster: a `/sse?token=JWT`
/// stream is registered as client `{worker id}-{connection id}` of its instance, bound to the
/// uid and groups its token names, sent to (`send_to_uid`, …) as `event: direct`, and
/// announced in presence events like a WebSocket client.
pub struct Streams {
    /// The publisher instances' cluster worker ids (instance `i` is `ids[i]`).
    pub ids: Arc<WorkerIds>,
    /// The verifier of the streams' tokens.
    pub tokens: Tokens,
    /// Whether their presence is announced.
    pub presence: super::PresenceEvents,
}

/// The HTTP publisher (`publisher`). `ws_port` is what the demo page connects to; with a
/// secret, pushes must authenticate (see [`crate::auth`]); with `streams`, `/sse?token=`
/// streams are the cluster's clients.
pub fn http_worker(
    listen: &str,
    count: usize,
    channel: cli::Channel,
    ws_port: u16,
    options: &Publisher,
    streams: Option<Streams>,
) -> anyhow::Result<Worker> {
    let mut worker = Worker::new(&format!("http://{listen}"))?;
    worker.name = "publisher".into();
    worker.count = count;
    let secret = options.secret.as_deref().filter(|s| !s.is_empty());
    if secret.is_none() && !super::is_loopback(listen) {
        log::warn!(
            "the push API on {listen} accepts pushes from anyone who reaches it: \
             set --secret (WERKMANN_SECRET) or listen on loopback"
        );
    }
    // One replay memory for all instances.
    let auth = secret.map(Auth::new);
    let reports = Reports::new(
        options.fallback_webhook.as_deref(),
        options.presence_webhook.as_deref(),
        secret,
    )?;
    let apps = options.pusher.load()?;
    let hook_apps = apps.clone();
    worker.on_worker_start(move |w| {
        if let Some(a) = &auth {
            w.set_data(a.clone());
        }
        w.set_data(Reach::default());
        w.set_data(reports.clone());
        match channel.connect() {
            Ok(c) => {
                match &streams {
                    Some(s) => {
                        if w.id() == 0 {
                            s.ids.answer();
                        }
                        let gw = Gateway::node_of_registered(&c, w, s.ids.ids()[w.id()], |text| {
                            Chunk::from(ServerSentEvent::data(text).event("direct"))
                                .shared()
                                .into()
                        });
                        if s.presence != super::PresenceEvents::Off {
                            gw.announce_presence(s.presence == super::PresenceEvents::Hooks);
                        }
                        w.set_data(s.tokens.clone());
                    }
                    None => w.set_data(Gateway::api(&c)),
                }
                // `/sse` readers; `Broadcast` stays subscribed once followed, so the reach
                // of broadcasts (see `Reach`) does not drop when the last reader goes.
                let feeds = werkmann::channel::Feeds::new(&c);
                feeds.keep_subscribed(super::BROADCAST);
                // A reported push that reaches this instance's readers reports them.
                let (node, client) = (Rc::new(NodeReports::default()), c.clone());
                feeds.after_delivery(move |_, data, readers| {
                    if let Some(asked) = delivery::asked(data) {
                        node.begin(&client, &asked);
                        node.wrote(&client, &asked, readers as u64);
                    }
                });
                w.set_data(feeds);
                w.set_data(Deliveries::start(&c));
                reports.take_presence_hooks(&c);
                // The Pusher apps' webhooks are sent by the publishers.
                pusher::webhook::Webhooks::start(&c, hook_apps.clone());
                w.set_data(c);
            }
            Err(e) => log::error!("publisher: no channel: {e}"),
        }
    });
    let nodes: Vec<String> = options
        .ws_nodes
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let page = Arc::new(demo_page_with_nodes(ws_port, &nodes));
    worker.on_message(move |conn, msg| {
        if let Message::Request(req) = msg {
            if req.path() == "/werkmann.js" {
                conn.send(
                    Response::new(200)
                        .with_header("Content-Type", "text/javascript; charset=utf-8")
                        .with_header("Cache-Control", "no-cache")
                        .with_body(WERKMANN_JS),
                );
                return;
            }
            if req.path() == "/sse" {
                let feeds = conn
                    .worker()
                    .and_then(|w| w.data::<werkmann::channel::Feeds>());
                super::sse::handle(conn, &req, feeds.as_deref());
                return;
            }
            if pusher::is_api_path(req.path()) {
                // The Pusher HTTP API: signed with the app's secret, not the push API's.
                let client = conn.worker().and_then(|w| w.data::<Client>());
                pusher::handle_api(conn, &req, &apps, client.as_deref());
                return;
            }
            handle(conn, &req, &page);
        }
    });
    worker.on_close(super::sse::closed);
    Ok(worker)
}

fn handle(conn: &Connection, req: &Request, page: &str) {
    let api = req.path().strip_prefix("/api/");
    let push = match api {
        Some(_) => Push::default(),
        None => Push::from_request(req),
    };
    if api.is_none() && push.is_empty() && req.method() == "GET" && req.path() == "/" {
        conn.send(Response::html(page.to_string()));
        return;
    }
    if let Some(auth) = conn.worker().and_then(|w| w.data::<Auth>()) {
        if let Err(denied) = auth.check(req) {
            log::info!("push from {} refused: {denied}", conn.remote_ip());
            conn.send(
                Response::text(401, format!("{denied}\n"))
                    .with_header("WWW-Authenticate", "Bearer realm=\"werkmann\""),
            );
            return;
        }
    }
    if let Some(method) = api {
        let gateway = conn.worker().and_then(|w| Gateway::of(&w));
        let reports = conn.worker().and_then(|w| w.data::<Reports>());
        super::api::handle(conn, req, method, gateway, reports);
        return;
    }
    let Some(client) = conn.worker().and_then(|w| w.data::<Client>()) else {
        conn.send(Response::text(503, "channel client not started\n"));
        return;
    };
    if !client.is_connected() {
        conn.send(Response::text(
            503,
            format!(
                "channel server {} unreachable: push not accepted\n",
                client.addr()
            ),
        ));
        return;
    }
    let reporting = match push.reporting() {
        Ok(r) => r,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    if reporting.wanted {
        reported(conn, &push, reporting);
        return;
    }
    let (event, data) = match push.event() {
        Ok(e) => e,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    // Answer once the channel confirms delivery: `ok` means the push reached the nodes.
    let reply_to = conn.clone();
    let started = Instant::now();
    if let Some(channel) = push.channel {
        // A named channel: its readers (`/sse`) may all be away; what it keeps waits for them.
        let kept = client.history_rule(event.clone()).is_some();
        client.publish_raw_confirmed(event, data, move |result| {
            metrics::publish_answered(PublishApi::Push, started);
            reply_to.send(match result {
                Ok(Some(0)) if !kept => Response::text(
                    404,
                    format!("no reader of channel {channel} and it keeps no history: push reached no one\n"),
                )
                .into(),
                Ok(_) => Message::from("ok"),
                Err(e) => Response::text(503, format!("push not delivered: {e}\n")).into(),
            });
        });
        return;
    }
    let targeted = push.to_worker_id;
    let reach = conn.worker().and_then(|w| w.data::<Reach>());
    client.publish_raw_confirmed(event, data, move |result| {
        metrics::publish_answered(PublishApi::Push, started);
        reply_to.send(answer(result, targeted, reach.as_deref()));
    });
}

/// A push that asked what it reached (`delivery.rs`): the report as the answer (JSON), or
/// 202 and the report POSTed to its `callback_url`.
fn reported(conn: &Connection, push: &Push, reporting: Reporting) {
    let (event, content, to) = match push.target() {
        Ok(t) => t,
        Err(resp) => {
            conn.send(resp);
            return;
        }
    };
    let Some(deliveries) = conn.worker().and_then(|w| w.data::<Rc<Deliveries>>()) else {
        conn.send(Response::text(503, "channel client not started\n"));
        return;
    };
    let reports = conn
        .worker()
        .and_then(|w| w.data::<Reports>())
        .unwrap_or_default();
    let reply_to = match reporting.callback {
        Some(_) => {
            conn.send(Response::json(
                202,
                &serde_json::json!({ "accepted": true }),
            ));
            None
        }
        None => Some(conn.clone()),
    };
    let callback = reporting.callback;
    let started = Instant::now();
    delivery::push(
        &deliveries,
        event,
        content,
        to,
        reporting.ack,
        move |outcome| {
            metrics::publish_answered(PublishApi::Push, started);
            let report = match &outcome {
                Ok(summary) => summary.json(),
                Err(e) => serde_json::json!({ "error": format!("push not delivered: {e}") }),
            };
            if let Some(to) = callback {
                reports.push_report(to, report.clone());
            }
            if let Some(c) = reply_to {
                let status = if outcome.is_ok() { 200 } else { 503 };
                c.send(Response::json(status, &report));
            }
        },
    );
}

/// The answer to a confirmed push: `ok`, or why it did not reach whom it should have.
fn answer(
    result: Result<Option<usize>, ChannelError>,
    targeted: Option<String>,
    reach: Option<&Reach>,
) -> Message {
    let short = match (&result, &targeted, reach) {
        (Ok(Some(n)), None, Some(reach)) => reach.observe(*n),
        _ => None,
    };
    let response = match (result, targeted, short) {
        (Ok(Some(0)), Some(w), _) => Response::text(
            404,
            format!("worker {w} is not connected to the channel: push reached no one\n"),
        ),
        (Ok(Some(n)), None, Some(want)) => Response::text(
            503,
            format!("push reached {n} of the {want} WebSocket instances subscribed lately\n"),
        ),
        (Ok(Some(0)), None, None) => Response::text(
            503,
            "no WebSocket node is subscribed: push reached no one\n",
        ),
        (Ok(_), _, _) => return Message::from("ok"),
        (Err(e), _, _) => Response::text(503, format!("push not delivered: {e}\n")),
    };
    response.into()
}

/// How many WebSocket instances broadcasts reached lately: a broadcast that reaches fewer
/// (instances still re-subscribing after a channel restart) is reported, not answered `ok`.
/// The mark is forgotten after [`Reach::MEMORY`] without a confirmation at that level, so a
/// node that left for good stops counting.
#[derive(Default)]
pub struct Reach {
    mark: Cell<(usize, Option<Instant>)>,
}

impl Reach {
    /// How long the high-water mark is remembered.
    pub const MEMORY: Duration = Duration::from_secs(15);

    /// Record a broadcast that reached `n` subscribers; `Some(expected)` if that is short.
    pub fn observe(&self, n: usize) -> Option<usize> {
        let now = Instant::now();
        let (mark, seen) = self.mark.get();
        let fresh = seen.is_some_and(|t| now.duration_since(t) < Reach::MEMORY);
        if n >= mark || !fresh {
            self.mark.set((n, Some(now)));
            return None;
        }
        Some(mark)
    }
}

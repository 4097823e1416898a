//! Streaming HTTP: `sse_clock start --listen 127.0.0.1:9025`, then open http://127.0.0.1:9025/.
//!
//! - `GET /clock`: Server-Sent Events, one `tick` a second (`--every-ms`) with the UTC time;
//!   event ids count up, and a browser that reconnects sends the last one back
//!   (`Last-Event-ID`), so the count goes on where it stopped. `?count=N` ends the stream after
//!   N events (the browser reconnects after the `retry:` the stream announced).
//! - `GET /chunked?n=N`: a `text/plain` body of N lines sent one chunk a tick, then its end.
//! - `GET /`: a page that shows the clock through the browser's `EventSource`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use werkmann::{cli, Chunk, Connection, Message, Response, ServerSentEvent, Timer, TimerId};
use werkmann_apps::serve::Serve;

/// The clock's options.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where, how many, limits, TLS.
    #[command(flatten)]
    serve: Serve,
    /// Milliseconds between two ticks (events, or chunks)
    #[arg(long, env = "WERKMANN_EVERY_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    every_ms: u64,
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>werkmann SSE clock</title>
<h1 id="time">…</h1>
<p>event <span id="id">–</span>, <span id="state">connecting</span></p>
<ol id="log"></ol>
<script>
const es = new EventSource('/clock' + location.search);
window.ticks = [];
es.addEventListener('tick', e => {
  window.ticks.push(e.lastEventId);
  document.getElementById('time').textContent = e.data;
  document.getElementById('id').textContent = e.lastEventId;
  document.getElementById('state').textContent = 'open';
});
es.addEventListener('hello', e => {
  const li = document.createElement('li');
  li.textContent = e.data;
  document.getElementById('log').appendChild(li);
});
es.onerror = () => document.getElementById('state').textContent = 'reconnecting';
</script>
"#;

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9025")]);
    werkmann_apps::init_logging();
    let o = &app.options;
    let mut worker = o.serve.worker("http", "sse_clock")?;
    let every = Duration::from_millis(o.every_ms);
    worker.on_message(move |conn, msg| {
        let Message::Request(req) = msg else { return };
        let count = match req.get("count").or_else(|| req.get("n")).map(|n| n.parse()) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                conn.send(Response::text(400, "count and n must be whole numbers\n"));
                return;
            }
        };
        match req.path() {
            "/" => {
                conn.send(Response::html(PAGE));
            }
            "/clock" => {
                let first = match req.last_event_id().map(str::parse::<u64>) {
                    None => 1,
                    Some(Ok(last)) => last + 1,
                    Some(Err(_)) => {
                        conn.send(Response::text(400, "Last-Event-ID must be a number\n"));
                        return;
                    }
                };
                conn.send(Response::event_stream());
                let hello = match req.last_event_id() {
                    Some(last) => format!("resumed after event {last}"),
                    None => "connected".to_string(),
                };
                conn.send(
                    ServerSentEvent::data(hello)
                        .event("hello")
                        .retry(Duration::from_millis(500)),
                );
                tick(conn, every, count, move |i| {
                    let id = first + i;
                    ServerSentEvent::data(utc_now())
                        .event("tick")
                        .id(id.to_string())
                        .into()
                });
            }
            "/chunked" => {
                conn.send(
                    Response::new(200)
                        .with_header("Content-Type", "text/plain; charset=utf-8")
                        .streaming(),
                );
                let n = count.unwrap_or(5);
                tick(conn, every, Some(n), |i| {
                    Chunk::new(format!("{}\n", i + 1)).into()
                });
            }
            _ => {
                conn.send(Response::text(404, "not found\n"));
            }
        }
    });
    // A closed connection's ticks stop.
    worker.on_close(|conn| {
        if let Some(id) = conn.with_data(|t: &mut TimerId| *t) {
            Timer::del(id);
        }
    });
    app.command.run(app.common.with([worker], None)?)
}

/// Send `piece(i)` to `conn` every `every` (i = 0, 1, …), and after `count` of them the end.
fn tick(
    conn: &Connection,
    every: Duration,
    count: Option<u64>,
    piece: impl Fn(u64) -> Message + 'static,
) {
    let c = conn.clone();
    let mut sent = 0;
    let id = Timer::add(
        every,
        move || {
            if count.is_some_and(|n| sent >= n) {
                c.send(Chunk::end());
                if let Some(id) = c.with_data(|t: &mut TimerId| *t) {
                    Timer::del(id);
                }
                return;
            }
            c.send(piece(sent));
            sent += 1;
        },
        true,
    );
    conn.set_data(id);
}

/// The time of day, UTC: `HH:MM:SS`.
fn utc_now() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02} UTC", s / 3600 % 24, s / 60 % 60, s % 60)
}

//! The admin port's HTTP server (actix-web on its own thread): routes and handlers.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use super::auth::{require_secret, Secret};
use super::series::Series;
use super::Admin;
use crate::metrics;

/// What the handlers share.
struct State {
    series: Arc<Series>,
    started: Instant,
}

/// Serve the admin port on `listener` until the process ends.
pub(super) fn run(listener: TcpListener, admin: Arc<Admin>) {
    metrics::enable();
    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        let series = Arc::new(Series::default());
        let sampler = series.clone();
        actix_web::rt::spawn(async move { sampler.run().await });
        let secret = web::Data::new(Secret(admin.secret.clone()));
        let state = web::Data::new(State {
            series,
            started: Instant::now(),
        });
        log::info!("admin port: /metrics and /admin on {}", admin.listen);
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(secret.clone())
                .wrap(from_fn(require_secret))
                .route("/metrics", web::get().to(scrape))
                .route("/", web::get().to(to_page))
                .route("/admin", web::get().to(page))
                .route("/admin/api/summary", web::get().to(summary))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run()
        .await
    });
    if let Err(e) = result {
        log::error!("admin port stopped: {e}");
    }
}

async fn scrape() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render_all())
}

async fn to_page() -> HttpResponse {
    HttpResponse::Found()
        .insert_header(("Location", "/admin"))
        .finish()
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("page.html"))
}

async fn summary(state: web::Data<State>) -> HttpResponse {
    // With processes: every child's (`metrics::siblings`).
    let totals = metrics::totals_all();
    HttpResponse::Ok().json(json!({
        "node": {
            "program": std::env::args().next().and_then(|p| {
                std::path::Path::new(&p).file_name().and_then(|f| f.to_str()).map(str::to_string)
            }),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": state.started.elapsed().as_secs(),
        },
        "totals": totals,
        "series": state.series.samples(),
        "refusals": metrics::recent_refusals(),
    }))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().body("not found: /metrics, /admin, /admin/api/summary\n")
}

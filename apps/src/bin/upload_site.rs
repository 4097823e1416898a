//! Uploads, cookies and sessions: `upload_site start --listen 127.0.0.1:9035 --store-dir DIR`,
//! then open http://127.0.0.1:9035/.
//!
//! Without `--store-dir`, uploads are kept in `werkmann-uploads` in the system's temporary
//! directory.
//!
//! - `GET /`: a page with a visit counter kept in the session, a login form and an upload form.
//! - `POST /login` (`name`): keeps the name in the session under a new session id;
//!   `POST /logout` empties the session. Both redirect to `/`.
//! - `POST /upload` (`multipart/form-data`): every file is moved into `--store-dir`; the answer
//!   is JSON (`files`: field, name, type, size, stored as; `fields`: the other fields, PHP
//!   arrays and all), or a redirect to `/uploads` for a browser.
//! - `GET /uploads`: the stored files (JSON); `GET /uploads/{stored name}` one of them (as a
//!   static file server sends it: type from the extension, 304s, ranges).
//! - `--public DIR`: the folder's files at their paths (`/style.css`, …), ahead of the routes.
//! - `GET /session`: counts the visit and answers the session as JSON (`id`, `visits`, `user`).
//! - `GET|POST /params`: the query and body fields as PHP reads them (JSON).
//! - `GET /cookies`: the request's cookies, decoded (JSON); `/cookies/set?name=N&value=V` sets
//!   one with every attribute.
//! - `GET /status?code=N[&reason=R]`: an empty response with that status (and reason).
//!
//! Sessions are kept in files (`--session-store DIR`, default a directory in the system's
//! temporary one) or in Redis (`--session-store redis://HOST:PORT`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use werkmann::cookie::time::Duration as CookieDuration;
use werkmann::{
    cli, Connection, Cookie, FileSessionHandler, Message, RedisSessionHandler, Request, Response,
    SameSite, Sessions, Uploads,
};

/// The site's options.
#[derive(Debug, clap::Args)]
struct Options {
    /// Where and how many.
    #[command(flatten)]
    listen: cli::Listen,
    /// The limits.
    #[command(flatten)]
    limits: cli::Limits,
    /// A folder of static files served at their paths ahead of the site's routes
    #[arg(long, env = "WERKMANN_PUBLIC")]
    public: Option<PathBuf>,
    /// Where uploaded files are kept (default: werkmann-uploads in the system's temporary
    /// directory, made if missing)
    #[arg(long, env = "WERKMANN_STORE_DIR")]
    store_dir: Option<PathBuf>,
    /// Where uploads are streamed while they arrive (default: the system's temporary directory)
    #[arg(long, env = "WERKMANN_UPLOAD_DIR")]
    upload_dir: Option<PathBuf>,
    /// Largest uploaded file, in bytes
    #[arg(long, env = "WERKMANN_MAX_FILE_SIZE", default_value_t = 64 << 20)]
    max_file_size: u64,
    /// Largest sum of one request's files, in bytes
    #[arg(long, env = "WERKMANN_MAX_TOTAL_SIZE", default_value_t = 256 << 20)]
    max_total_size: u64,
    /// Most files in one request
    #[arg(long, env = "WERKMANN_MAX_FILES", default_value_t = 20)]
    max_files: usize,
    /// Largest request body without its files, in bytes
    #[arg(long, env = "WERKMANN_MAX_PACKAGE_SIZE", default_value_t = 1 << 20)]
    max_package_size: usize,
    /// Where sessions are kept: a directory, or a `redis://` URL
    #[arg(long, env = "WERKMANN_SESSION_STORE")]
    session_store: Option<String>,
    /// Seconds a session lives after its last change
    #[arg(long, env = "WERKMANN_SESSION_LIFETIME", default_value_t = 1440,
          value_parser = clap::value_parser!(u64).range(1..))]
    session_lifetime: u64,
    /// Collect expired sessions after N in D saves, as `N/D`
    #[arg(long, env = "WERKMANN_SESSION_GC", default_value = "1/20000", value_parser = fraction)]
    session_gc: (u32, u32),
}

fn fraction(s: &str) -> Result<(u32, u32), String> {
    let (n, d) = s.split_once('/').ok_or("expected N/D")?;
    let n: u32 = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
    let d: u32 = d.parse().map_err(|e| format!("{d:?}: {e}"))?;
    if d == 0 || n > d {
        return Err(format!("{s} is not a probability"));
    }
    Ok((n, d))
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>werkmann upload site</title>
<h1>Hello, {user}</h1>
<p>Visits in this session: {visits}</p>
<form method="post" action="/login"><input name="name" placeholder="your name">
<button>Log in</button></form>
<form method="post" action="/logout"><button>Log out</button></form>
<h2>Upload</h2>
<form method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="files[]" multiple> <input name="note" placeholder="note">
<button>Upload</button></form>
<p><a href="/uploads" id="uploads">Uploaded files</a></p>
"#;

fn main() -> anyhow::Result<()> {
    let app: cli::App<Options> = cli::parse(&[("listen", "127.0.0.1:9035")]);
    werkmann_apps::init_logging();
    let o = &app.options;
    let mut worker = werkmann::Worker::new(&format!("http://{}", o.listen.listen))
        .context("the --listen address")?;
    worker.name = "upload_site".into();
    o.listen.apply(&mut worker);
    o.limits.apply(&mut worker);
    worker.max_package_size = o.max_package_size;
    worker.uploads = Uploads {
        dir: o.upload_dir.clone().unwrap_or_else(std::env::temp_dir),
        max_file_size: o.max_file_size,
        max_total_size: o.max_total_size,
        max_files: o.max_files,
    };
    let store = match &o.store_dir {
        Some(dir) => dir.clone(),
        None => {
            let dir = std::env::temp_dir().join("werkmann-uploads");
            std::fs::create_dir_all(&dir).context("the store directory")?;
            dir
        }
    };
    anyhow::ensure!(
        store.is_dir(),
        "--store-dir {} is not a directory",
        store.display()
    );
    let mut sessions = match o.session_store.as_deref() {
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Sessions::new(RedisSessionHandler::new(url)?)
        }
        Some(dir) => Sessions::new(FileSessionHandler::new(dir).context("--session-store")?),
        None => {
            let dir = std::env::temp_dir().join("werkmann-sessions");
            std::fs::create_dir_all(&dir).context("the session directory")?;
            Sessions::new(FileSessionHandler::new(dir)?)
        }
    };
    sessions.lifetime = Duration::from_secs(o.session_lifetime);
    sessions.cookie_lifetime = sessions.lifetime;
    sessions.gc_probability = o.session_gc;
    worker.sessions = Some(sessions);
    if let Some(public) = &o.public {
        let files = werkmann::StaticFiles::new(public)
            .with_context(|| format!("--public {}", public.display()))?;
        worker.serve_files(files)?;
    }
    worker.on_message(move |conn, msg| {
        let Message::Request(req) = msg else { return };
        route(conn, &req, &store);
    });
    app.command.run(app.common.with([worker], None)?)
}

fn route(conn: &Connection, req: &Request, store: &Path) {
    let resp = match (req.method(), req.path()) {
        ("GET", "/") => page(req),
        ("POST", "/login") => {
            let name = req.post("name").unwrap_or_default();
            if let Some(s) = req.session() {
                // A new id on login, the old one's data deleted (session fixation).
                s.regenerate_id(true);
                s.set("user", name.trim());
            }
            redirect("/")
        }
        ("POST", "/logout") => {
            if let Some(s) = req.session() {
                s.flush();
            }
            redirect("/")
        }
        ("POST", "/upload") => upload(req, store),
        ("GET", "/uploads") => Response::json(200, &list(store)),
        ("GET" | "HEAD", p) if p.starts_with("/uploads/") => {
            // Only a name this site gave (never a path).
            let name = &p["/uploads/".len()..];
            if name.is_empty() || safe_name(name) != name {
                Response::text(404, "no such upload\n")
            } else {
                Response::file(req, store.join(name))
            }
        }
        ("GET", "/session") => match req.session() {
            None => Response::text(500, "no sessions\n"),
            Some(s) => {
                let visits = s.get::<u64>("visits").unwrap_or(0) + 1;
                s.set("visits", visits);
                let user = s.get::<String>("user");
                Response::json(
                    200,
                    &serde_json::json!({"id": s.id(), "visits": visits, "user": user}),
                )
            }
        },
        (_, "/params") => Response::json(
            200,
            &serde_json::json!({
                "get": werkmann::Param::Array(req.query_params()),
                "post": werkmann::Param::Array(req.post_params()),
            }),
        ),
        ("GET", "/cookies") => Response::json(200, &req.cookies()),
        ("GET", "/cookies/set") => {
            let name = req.get("name").unwrap_or_else(|| "c".into());
            let value = req.get("value").unwrap_or_default();
            Response::text(200, "set\n").with_cookie(
                Cookie::build((name, value))
                    .max_age(CookieDuration::seconds(600))
                    .path("/")
                    .domain("127.0.0.1")
                    .secure(false)
                    .http_only(true)
                    .same_site(SameSite::Strict),
            )
        }
        ("GET", "/status") => {
            let code = req
                .get("code")
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..=599).contains(c))
                .unwrap_or(400);
            match req.get("reason") {
                Some(r) => Response::new(code).with_reason(r),
                None => Response::new(code),
            }
        }
        _ => Response::text(404, "not found\n"),
    };
    conn.send(resp);
}

fn page(req: &Request) -> Response {
    let (visits, user) = match req.session() {
        Some(s) => {
            let visits = s.get::<u64>("visits").unwrap_or(0) + 1;
            s.set("visits", visits);
            (visits, s.get::<String>("user"))
        }
        None => (0, None),
    };
    let user = html_escape(user.as_deref().unwrap_or("stranger"));
    Response::html(
        PAGE.replace("{user}", &user)
            .replace("{visits}", &visits.to_string()),
    )
}

fn redirect(to: &str) -> Response {
    Response::new(303).with_header("Location", to)
}

/// Move every uploaded file into `store` under a name of its own.
fn upload(req: &Request, store: &Path) -> Response {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut files = Vec::new();
    for f in req.files() {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stored = format!("{}-{n}-{}", std::process::id(), safe_name(f.file_name()));
        if let Err(e) = f.persist(store.join(&stored)) {
            log::error!("keeping {}: {e}", f.file_name());
            return Response::text(500, "cannot keep the upload\n");
        }
        files.push(serde_json::json!({
            "field": f.field(),
            "name": f.file_name(),
            "type": f.content_type(),
            "size": f.size(),
            "stored": stored,
        }));
    }
    if req
        .header("accept")
        .is_some_and(|a| a.contains("text/html"))
    {
        return redirect("/uploads");
    }
    Response::json(
        200,
        &serde_json::json!({"files": files, "fields": werkmann::Param::Array(req.post_params())}),
    )
}

/// The stored files: name and size.
fn list(store: &Path) -> serde_json::Value {
    let mut out: Vec<serde_json::Value> = std::fs::read_dir(store)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    serde_json::json!({"name": e.file_name().to_string_lossy(), "size": size})
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    serde_json::Value::Array(out)
}

/// A client's file name reduced to `A-Za-z0-9._-` (at most 64), never a path.
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    s.trim_start_matches('.').to_string()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

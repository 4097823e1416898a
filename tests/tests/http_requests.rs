//! Requests and sessions (issue 16, items 3 and 4) against the `upload_site` example in a real
//! process on loopback, with curl: `multipart/form-data` uploads streamed to temporary files
//! (and their limits, and a client gone mid-upload), PHP's arrays in query and form fields,
//! cookies decoded and set with every attribute, reason phrases, and sessions kept in files and
//! in a real Redis across requests through curl's cookie jar.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use werkmann_tests::{free_port, temp_dir, wait_until, App, RedisServer};

/// A running `upload_site` and its directories.
struct Site {
    _app: App,
    url: String,
    store: PathBuf,
    uploads: PathBuf,
    sessions: PathBuf,
}

/// `upload_site` on a free port with its own directories and `extra` options.
fn site(extra: &[&str]) -> Site {
    let port = free_port();
    let dir = temp_dir("upload_site");
    let (store, uploads, sessions) = (dir.join("store"), dir.join("up"), dir.join("sess"));
    for d in [&store, &uploads, &sessions] {
        std::fs::create_dir_all(d).unwrap();
    }
    let listen = format!("127.0.0.1:{port}");
    let (s, u, se) = (
        store.display().to_string(),
        uploads.display().to_string(),
        sessions.display().to_string(),
    );
    let mut args = vec!["--listen", &listen, "--store-dir", &s, "--upload-dir", &u];
    if !extra.contains(&"--session-store") {
        args.extend(["--session-store", &se]);
    }
    args.extend_from_slice(extra);
    Site {
        _app: App::start("upload_site", &args, &[port]),
        url: format!("http://127.0.0.1:{port}"),
        store,
        uploads,
        sessions,
    }
}

/// Run curl with `args`; its standard output (a failed transfer fails the test).
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file of `n` pseudo-random bytes.
fn data_file(dir: &Path, name: &str, n: usize) -> PathBuf {
    let mut x: u32 = 2_463_534_242;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn curl_uploads_stream_to_files_and_the_fields_read_as_php() {
    let s = site(&["--max-package-size", "4096"]);
    let src = temp_dir("upload-src");
    let big = data_file(&src, "big.bin", 3 << 20);
    let small = data_file(&src, "small.txt", 10);
    let out = curl(&[
        "-F",
        &format!("file=@{};type=application/x-test", big.display()),
        "-F",
        &format!("more[]=@{}", small.display()),
        "-F",
        &format!("more[]=@{}", small.display()),
        "-F",
        "a[]=1",
        "-F",
        "a[]=2",
        "-F",
        "m[x]=y",
        "-F",
        "note=hällo",
        &format!("{}/upload", s.url),
    ]);
    let v = json(&out);
    assert_eq!(
        v["fields"],
        json(r#"{"a":["1","2"],"m":{"x":"y"},"note":"hällo"}"#)
    );
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{v}");
    assert_eq!(files[0]["field"], "file");
    assert_eq!(files[0]["name"], "big.bin");
    assert_eq!(files[0]["type"], "application/x-test");
    assert_eq!(files[0]["size"], 3 << 20);
    assert_eq!(files[1]["field"], "more[]");
    assert_eq!(files[2]["size"], 10);
    // Moved into the store byte for byte; nothing left in the upload directory.
    let stored = s.store.join(files[0]["stored"].as_str().unwrap());
    assert!(std::fs::read(stored).unwrap() == std::fs::read(&big).unwrap());
    assert_eq!(entries(&s.uploads), Vec::<String>::new());
    // Chunked request bodies stream the same way.
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-F",
        &format!("file=@{}", big.display()),
        &format!("{}/upload", s.url),
    ]);
    assert_eq!(json(&out)["files"][0]["size"], 3 << 20);
    // A file not kept by the worker is deleted once the request is answered.
    let out = curl(&[
        "-F",
        &format!("file=@{}", small.display()),
        &format!("{}/params", s.url),
    ]);
    assert_eq!(json(&out)["post"], json("[]"));
    // Deleted as the request ends, which may be just after its answer went out.
    werkmann_tests::wait_until(werkmann_tests::WAIT, "the unkept upload deleted", || {
        entries(&s.uploads).is_empty()
    });
    // The listing sees the stored files.
    let list = json(&curl(&[&format!("{}/uploads", s.url)]));
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
}

/// curl's status code and whether it could send everything (a server closing early makes
/// curl report a send error after reading the answer, or not).
fn status_of(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn uploads_past_a_limit_get_413_and_leave_no_file() {
    let s = site(&[
        "--max-file-size",
        "100000",
        "--max-total-size",
        "150000",
        "--max-files",
        "2",
        "--max-package-size",
        "2000",
    ]);
    let src = temp_dir("upload-limits");
    let f80 = data_file(&src, "80k", 80_000);
    let f120 = data_file(&src, "120k", 120_000);
    let small = data_file(&src, "small", 10);
    let url = format!("{}/upload", s.url);
    let cases: Vec<Vec<String>> = vec![
        // One file over the per-file limit.
        vec!["-F".into(), format!("f=@{}", f120.display())],
        // Two files over the total.
        vec![
            "-F".into(),
            format!("f=@{}", f80.display()),
            "-F".into(),
            format!("g=@{}", f80.display()),
        ],
        // Three files.
        vec![
            "-F".into(),
            format!("f=@{}", small.display()),
            "-F".into(),
            format!("g=@{}", small.display()),
            "-F".into(),
            format!("h=@{}", small.display()),
        ],
        // Fields over the package limit.
        vec!["-F".into(), format!("v={}", "x".repeat(3000))],
    ];
    for case in cases {
        let mut args: Vec<&str> = case.iter().map(String::as_str).collect();
        args.push(&url);
        assert_eq!(status_of(&args), "413", "{case:?}");
        wait_until(Duration::from_secs(5), "no upload file left", || {
            entries(&s.uploads).is_empty()
        });
    }
    assert_eq!(entries(&s.store), Vec::<String>::new());
    // Within the limits: accepted.
    let args = [
        "-F".to_string(),
        format!("f=@{}", f80.display()),
        url.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(status_of(&args), "200");
    // A malformed body: 400, nothing left.
    let body = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\nabc";
    let out = curl(&[
        "-i",
        "-H",
        "Content-Type: multipart/form-data; boundary=b",
        "--data-binary",
        body,
        &url,
    ]);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("closing delimiter"), "{out}");
    assert!(entries(&s.uploads).is_empty());
}

#[test]
fn a_client_gone_mid_upload_leaves_no_file() {
    let s = site(&[]);
    let port: u16 = s.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XX\r\nContent-Length: 10000000\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n";
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(&vec![b'a'; 200_000]).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the upload's temporary file",
        || entries(&s.uploads).len() == 1,
    );
    let name = entries(&s.uploads).remove(0);
    assert!(name.starts_with("werkmann-upload-"), "{name}");
    drop(sock);
    wait_until(
        Duration::from_secs(10),
        "the temporary file deleted after the disconnect",
        || entries(&s.uploads).is_empty(),
    );
    // The worker goes on serving.
    assert_eq!(status_of(&[&format!("{}/uploads", s.url)]), "200");
}

#[test]
fn query_and_form_fields_read_as_php_reads_them() {
    let s = site(&[]);
    let out = curl(&[
        "-g",
        &format!(
            "{}/params?a[]=1&a[]=2&b=1&b=2&c[x]=y&c[]=z&d[x][]=1&e.f=g&h%5B%5D=%C3%A4",
            s.url
        ),
        "-d",
        "p[]=1&p[k]=2&q=a+b&q=c%26d",
    ]);
    let v = json(&out);
    assert_eq!(
        v["get"],
        json(
            r#"{"a":["1","2"],"b":"2","c":{"x":"y","0":"z"},"d":{"x":["1"]},"e_f":"g","h":["ä"]}"#
        )
    );
    assert_eq!(v["post"], json(r#"{"p":{"0":"1","k":"2"},"q":"c&d"}"#));
}

#[test]
fn cookies_are_decoded_and_set_with_every_attribute() {
    let s = site(&[]);
    let v = json(&curl(&[
        "-b",
        "x=hello%20w%C3%B6rld+z; y=1; x=second",
        &format!("{}/cookies", s.url),
    ]));
    assert_eq!(v, json(r#"{"x":"hello wörld z","y":"1"}"#));
    let jar = temp_dir("cookie-jar").join("jar");
    let jar = jar.display().to_string();
    let out = curl(&[
        "-i",
        "-c",
        &jar,
        &format!("{}/cookies/set?name=k&value=a%20b%3Bc", s.url),
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("Set-Cookie:"))
        .unwrap_or_else(|| panic!("{out}"));
    for part in [
        "k=a%20b%3Bc",
        "Max-Age=600",
        "Path=/",
        "Domain=127.0.0.1",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // curl keeps it and sends it back, and the worker decodes it.
    let v = json(&curl(&["-b", &jar, &format!("{}/cookies", s.url)]));
    assert_eq!(v["k"], "a b;c");
}

#[test]
fn reason_phrases_registered_and_custom() {
    let s = site(&[]);
    for (query, line) in [
        ("code=451", "HTTP/1.1 451 Unavailable For Legal Reasons"),
        ("code=308", "HTTP/1.1 308 Permanent Redirect"),
        ("code=422", "HTTP/1.1 422 Unprocessable Content"),
        ("code=599", "HTTP/1.1 599 Unknown"),
        ("code=299&reason=Quite%20fine", "HTTP/1.1 299 Quite fine"),
        (
            "code=200&reason=a%0D%0AX-Evil:%201",
            "HTTP/1.1 200 a  X-Evil: 1",
        ),
    ] {
        let out = curl(&["-i", &format!("{}/status?{query}", s.url)]);
        assert_eq!(out.lines().next().unwrap().trim_end(), line);
        assert!(!out.contains("\nX-Evil"), "{out}");
    }
}

/// GET `/session` with curl's cookie jar `jar`.
fn visit(url: &str, jar: &str) -> Value {
    json(&curl(&["-c", jar, "-b", jar, &format!("{url}/session")]))
}

/// Visits, a login (a new id, the old session deleted), a forged id and expiry, on `s`.
fn sessions_across_requests(s: &Site, stored: impl Fn(&str) -> bool) {
    let jar = temp_dir("session-jar").join("jar").display().to_string();
    let first = visit(&s.url, &jar);
    assert_eq!(first["visits"], 1);
    let id = first["id"].as_str().unwrap().to_string();
    // Saved once the request is done with (Redis: just after the response).
    wait_until(Duration::from_secs(5), "the session stored", || stored(&id));
    for n in 2..=3 {
        let v = visit(&s.url, &jar);
        assert_eq!(
            (v["visits"].as_u64(), v["id"].as_str()),
            (Some(n), Some(&*id))
        );
    }
    // Login regenerates the id and deletes the old session.
    let out = curl(&[
        "-i",
        "-c",
        &jar,
        "-b",
        &jar,
        "-d",
        "name=bob",
        &format!("{}/login", s.url),
    ]);
    assert!(out.starts_with("HTTP/1.1 303"), "{out}");
    let cookie = out
        .lines()
        .find(|l| l.starts_with("Set-Cookie: WERKMANNSID="))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let v = visit(&s.url, &jar);
    assert_eq!(v["user"], "bob");
    assert_eq!(v["visits"], 4);
    let new = v["id"].as_str().unwrap().to_string();
    assert_ne!(new, id);
    wait_until(Duration::from_secs(5), "the old id deleted", || {
        !stored(&id) && stored(&new)
    });
    // Ids that are not ours start a new session (never a path into the store).
    for forged in ["../../../../etc/passwd", "AAAAAAAAAAAAAAAAAAAAAAAA"] {
        let out = curl(&[
            "-i",
            "-b",
            &format!("WERKMANNSID={forged}"),
            &format!("{}/session", s.url),
        ]);
        assert!(out.contains("\"visits\":1"), "{out}");
        assert!(!out.contains(forged), "{out}");
    }
    // Logout empties the session: it is deleted.
    curl(&[
        "-c",
        &jar,
        "-b",
        &jar,
        "-X",
        "POST",
        &format!("{}/logout", s.url),
    ]);
    wait_until(
        Duration::from_secs(5),
        "the emptied session deleted",
        || !stored(&new),
    );
}

#[test]
fn file_sessions_across_requests_expire_and_are_collected() {
    let s = site(&[]);
    let dir = s.sessions.clone();
    sessions_across_requests(&s, |id| dir.join(format!("session_{id}")).exists());
    // A short lifetime: the session is gone after it (read as expired), and garbage
    // collection, run at every save here, deletes the files of expired sessions.
    let s = site(&["--session-lifetime", "1", "--session-gc", "1/1"]);
    let jar = temp_dir("session-jar").join("jar").display().to_string();
    let id = visit(&s.url, &jar)["id"].as_str().unwrap().to_string();
    let file = s.sessions.join(format!("session_{id}"));
    // Saved once the request is done with: just after the response.
    wait_until(Duration::from_secs(5), "the session file", || file.exists());
    wait_until(Duration::from_secs(10), "the session to expire", || {
        visit(&s.url, &jar)["visits"] == 1
    });
    wait_until(
        Duration::from_secs(10),
        "the expired file collected",
        || {
            // Each visit saves a session, which collects garbage.
            visit(&s.url, &jar);
            !file.exists()
        },
    );
}

#[test]
fn redis_sessions_across_requests() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = site(&["--session-store", &url]);
    sessions_across_requests(&s, |id| {
        redis.cli(&["EXISTS", &format!("werkmann_session_{id}")]) == "1"
    });
    let jar = temp_dir("session-jar").join("jar").display().to_string();
    let id = visit(&s.url, &jar)["id"].as_str().unwrap().to_string();
    let ttl: u64 = redis
        .cli(&["TTL", &format!("werkmann_session_{id}")])
        .parse()
        .unwrap();
    assert!((1..=1440).contains(&ttl), "{ttl}");
    assert_eq!(visit(&s.url, &jar)["visits"], 2);
    // Redis gone: a request with a session answers 500 (not a hang), one without is served.
    let mut redis = redis;
    redis.kill();
    let session = ["-b", jar.as_str(), &format!("{}/session", s.url)].map(String::from);
    let session: Vec<&str> = session.iter().map(String::as_str).collect();
    assert_eq!(status_of(&session), "500");
    assert_eq!(status_of(&[&format!("{}/status?code=204", s.url)]), "204");
    // Back (empty: no persistence): the old id is unknown, so a new session starts.
    redis.restart();
    wait_until(Duration::from_secs(15), "sessions served again", || {
        status_of(&session) == "200"
    });
    assert_eq!(visit(&s.url, &jar)["visits"], 1);
    assert_eq!(visit(&s.url, &jar)["visits"], 2);
}

#[test]
fn a_body_split_across_many_writes_is_read_once() {
    // A raw request sent a few bytes at a time, then a pipelined second request: both are
    // answered once, in order.
    let s = site(&[]);
    let port: u16 = s.url.rsplit(':').next().unwrap().parse().unwrap();
    let body = "--b\r\nContent-Disposition: form-data; name=\"a[]\"\r\n\r\n1\r\n--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.txt\"\r\n\r\nhello\r\n--b--\r\n";
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n{body}GET /uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_nodelay(true).unwrap();
    for piece in req.as_bytes().chunks(7) {
        sock.write_all(piece).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains(r#""fields":{"a":["1"]}"#), "{out}");
    assert!(out.contains(r#""size":5"#), "{out}");
}

#[test]
fn mistyped_upload_and_session_options_are_errors() {
    let bin = werkmann_tests::bin("upload_site");
    let run_dir = temp_dir("upload_site-bad");
    let listen = format!("127.0.0.1:{}", free_port());
    for (args, said) in [
        (
            vec!["--upload-dir", "/nonexistent/uploads"],
            "upload directory",
        ),
        (
            vec!["--session-store", "/nonexistent/sessions"],
            "session directory",
        ),
        (
            vec!["--session-store", "redis://:x:y@"],
            "session Redis URL",
        ),
        (vec!["--session-gc", "2/1"], "not a probability"),
    ] {
        let out = Command::new(&bin)
            .args(["start", "--listen", &listen])
            .args(&args)
            .env("WERKMANN_RUN_DIR", &run_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(said), "{args:?}: {err}");
    }
}

//! File responses and static serving (issue 16, item 2) against the `file_server` example in a
//! real process on loopback, read with curl and raw sockets: whole files, `HEAD`, ranges (206,
//! 416), conditional requests (304), types from extensions, folders and their index, every way
//! out of the root refused, and a large file sent without being read into memory.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use werkmann_tests::certs::TestCerts;
use werkmann_tests::{curl_ok, free_port, temp_dir, App, WAIT};

/// A folder to serve: `www/` with an index, a binary file of `big` bytes, a stylesheet, a
/// sub-folder, a link inside and a link out; `secret.txt` next to `www/`.
fn site(tag: &str, big: usize) -> (PathBuf, Vec<u8>) {
    let dir = temp_dir(tag);
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::write(www.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(www.join("sub/index.html"), "<h1>sub</h1>\n").unwrap();
    std::fs::write(www.join("style.css"), "h1 { color: red }\n").unwrap();
    let data: Vec<u8> = (0..big).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(www.join("big.bin"), &data).unwrap();
    std::fs::write(dir.join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), www.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(www.join("style.css"), www.join("in.css")).unwrap();
    (dir, data)
}

fn serve(root: &Path) -> (App, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let root = root.to_str().unwrap();
    (
        App::start(
            "file_server",
            &["--listen", &listen, "--root", root],
            &[port],
        ),
        port,
    )
}

/// curl with `args`: (head, body bytes) of the last response.
fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let dir = temp_dir("http_files_curl");
    let (heads, body) = (dir.join("heads"), dir.join("body"));
    let (h, b) = (heads.to_str().unwrap(), body.to_str().unwrap());
    let mut all = vec!["-D", h, "-o", b];
    all.extend_from_slice(args);
    curl_ok(&all);
    let heads = std::fs::read_to_string(&heads).unwrap();
    // After redirects, the last response's head.
    let last = heads.rfind("HTTP/1.1 ").expect("a response head");
    (
        heads[last..].to_string(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(head: &str) -> u16 {
    head[9..12].parse().unwrap()
}

#[test]
fn files_ranges_and_conditional_requests_with_curl() {
    let (dir, data) = site("http_files", 300_000);
    let (_app, port) = serve(&dir.join("www"));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let (head, body) = curl(&[&url("/big.bin")]);
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, data);
    assert_eq!(header(&head, "content-length"), Some("300000"));
    assert_eq!(
        header(&head, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    let etag = header(&head, "etag").expect("an ETag").to_string();
    let modified = header(&head, "last-modified")
        .expect("Last-Modified")
        .to_string();

    let (head, body) = curl(&[&url("/style.css")]);
    assert_eq!(
        header(&head, "content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(body, b"h1 { color: red }\n");
    // HEAD: the head alone (curl writes it where the body would go).
    let (head, body) = curl(&["-I", &url("/big.bin")]);
    assert_eq!(header(&head, "content-length"), Some("300000"), "{head}");
    assert_eq!(body, head.as_bytes());

    // Ranges.
    let (head, body) = curl(&["-r", "100-199", &url("/big.bin")]);
    assert_eq!(status(&head), 206, "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 100-199/300000"));
    assert_eq!(body, &data[100..200]);
    let (head, body) = curl(&["-H", "Range: bytes=-10", &url("/big.bin")]);
    assert_eq!(status(&head), 206);
    assert_eq!(body, &data[data.len() - 10..]);
    let (head, body) = curl(&["-r", "299990-", &url("/big.bin")]);
    assert_eq!(
        header(&head, "content-range"),
        Some("bytes 299990-299999/300000")
    );
    assert_eq!(body, &data[299_990..]);
    let (head, _) = curl(&["-r", "300000-", &url("/big.bin")]);
    assert_eq!(status(&head), 416, "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes */300000"));
    // Several ranges, or a stale If-Range: the whole file.
    let (head, body) = curl(&["-r", "0-1,5-6", &url("/big.bin")]);
    assert_eq!((status(&head), body.len()), (200, data.len()));
    let (head, body) = curl(&["-r", "0-1", "-H", "If-Range: \"old\"", &url("/big.bin")]);
    assert_eq!((status(&head), body.len()), (200, data.len()));
    let (head, _) = curl(&[
        "-r",
        "0-1",
        "-H",
        &format!("If-Range: {etag}"),
        &url("/big.bin"),
    ]);
    assert_eq!(status(&head), 206);

    // Conditional requests.
    let (head, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &url("/big.bin")]);
    assert_eq!(status(&head), 304, "{head}");
    assert!(body.is_empty());
    assert_eq!(header(&head, "content-length"), None, "{head}");
    let (head, _) = curl(&[
        "-H",
        &format!("If-Modified-Since: {modified}"),
        &url("/big.bin"),
    ]);
    assert_eq!(status(&head), 304);
    let (head, _) = curl(&[
        "-H",
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT",
        &url("/big.bin"),
    ]);
    assert_eq!(status(&head), 200);
    let (head, _) = curl(&["-H", "If-None-Match: \"other\"", &url("/big.bin")]);
    assert_eq!(status(&head), 200);

    // Folders.
    let (head, body) = curl(&[&url("/")]);
    assert_eq!(
        (status(&head), body.as_slice()),
        (200, &b"<h1>home</h1>\n"[..])
    );
    let (head, _) = curl(&[&url("/sub")]);
    assert_eq!(status(&head), 301);
    assert_eq!(header(&head, "location"), Some("/sub/"));
    let (_, body) = curl(&["-L", &url("/sub")]);
    assert_eq!(body, b"<h1>sub</h1>\n");
    let (head, _) = curl(&[&url("/missing.txt")]);
    assert_eq!(status(&head), 404);
    let (_, body) = curl(&[&url("/in.css")]);
    assert_eq!(body, b"h1 { color: red }\n");
}

#[test]
fn no_way_out_of_the_root() {
    let (dir, _) = site("http_files_root", 10);
    let (_app, port) = serve(&dir.join("www"));
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/out.txt",
        "/index.html%00.txt",
        "/..%5csecret.txt",
    ] {
        let (head, body) = curl(&["--path-as-is", &format!("http://127.0.0.1:{port}{path}")]);
        assert_eq!(status(&head), 403, "{path}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("secret"), "{path}");
    }
    // An absolute path is read under the root.
    let (head, _) = curl(&[
        "--path-as-is",
        &format!("http://127.0.0.1:{port}//etc/passwd"),
    ]);
    assert_eq!(status(&head), 404);
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_large_file_is_read_as_the_client_takes_it_and_keep_alive_holds() {
    const BIG: usize = 64 << 20;
    let (dir, data) = site("http_files_big", BIG);
    let (app, port) = serve(&dir.join("www"));
    let pid = app.child.id();
    let before = rss_kib(pid);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /style.css HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    // The first mebibyte: the transfer runs; a server that read the whole file at once would
    // hold all 64 MiB by now.
    let mut got = vec![0u8; 1 << 20];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("the first MiB")
        .unwrap();
    let during = rss_kib(pid);
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} KiB to {during} KiB while sending a 64 MiB file"
    );
    // The rest, then the pipelined request's answer on the same connection.
    let mut rest = Vec::new();
    let want = b"h1 { color: red }\n";
    tokio::time::timeout(WAIT * 4, async {
        let mut buf = vec![0u8; 1 << 16];
        while !rest.ends_with(want) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early after {} bytes", got.len() + rest.len());
            rest.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the whole file and the second response");
    got.extend_from_slice(&rest);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &got[head_end..head_end + BIG];
    assert!(body == data.as_slice(), "the file arrived intact");
    let second = String::from_utf8_lossy(&got[head_end + BIG..]);
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
}

#[test]
fn files_over_tls() {
    let (dir, data) = site("http_files_tls", 3 << 20);
    let certs = TestCerts::make("http_files_tls");
    let port = free_port();
    let _app = App::start(
        "file_server",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--root",
            dir.join("www").to_str().unwrap(),
            "--cert",
            certs.cert().to_str().unwrap(),
            "--key",
            certs.key().to_str().unwrap(),
        ],
        &[port],
    );
    let ca = certs.ca();
    let url = format!("https://127.0.0.1:{port}/big.bin");
    let (head, body) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert_eq!(status(&head), 200, "{head}");
    assert!(body == data, "the file arrived intact over TLS");
    let (head, body) = curl(&["--cacert", ca.to_str().unwrap(), "-r", "1000-1999", &url]);
    assert_eq!(status(&head), 206);
    assert_eq!(body, &data[1000..2000]);
}

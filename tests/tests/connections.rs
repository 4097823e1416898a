//! Connections (issue 16, item 7) in real processes on loopback: `pipe()` and per-connection
//! callbacks through the `tcp_proxy` example (curl downloading through it at a limited rate, so
//! that the proxy's send buffer fills and reading from the server must pause, and the file
//! still arrives intact), either side closing the other, and the local address.

use werkmann_tests::{curl, free_port, temp_dir, wait_listening, App, WAIT};

#[test]
fn a_proxy_of_pipes_passes_a_large_file_to_a_slow_client_intact() {
    let dir = temp_dir("connections_proxy");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let data: Vec<u8> = (0..(24usize << 20))
        .map(|i| (i * 13 + i / 509) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &data).unwrap();
    std::fs::write(www.join("index.html"), "<h1>behind</h1>\n").unwrap();
    let (web, proxy) = (free_port(), free_port());
    let _server = App::start(
        "file_server",
        &[
            "--listen",
            &format!("127.0.0.1:{web}"),
            "--root",
            www.to_str().unwrap(),
        ],
        &[web],
    );
    let _proxy = App::start(
        "tcp_proxy",
        &[
            "--listen",
            &format!("127.0.0.1:{proxy}"),
            "--to",
            &format!("127.0.0.1:{web}"),
        ],
        &[proxy],
    );
    let out = curl(&[&format!("http://127.0.0.1:{proxy}/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<h1>behind</h1>\n");
    // 8 MiB read at 4 MiB/s: the server sends far faster, so the proxy's 1 MiB send buffer
    // to the client fills again and again; without back-pressure it would drop data.
    let file = dir.join("got.bin");
    let out = curl(&[
        "--limit-rate",
        "4M",
        "-o",
        file.to_str().unwrap(),
        &format!("http://127.0.0.1:{proxy}/big.bin"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the file arrived intact through the proxy");
}

#[test]
fn a_proxy_closes_its_client_when_the_server_is_gone() {
    let (gone, proxy) = (free_port(), free_port());
    let _proxy = App::start(
        "tcp_proxy",
        &[
            "--listen",
            &format!("127.0.0.1:{proxy}"),
            "--to",
            &format!("127.0.0.1:{gone}"),
        ],
        &[proxy],
    );
    let t0 = std::time::Instant::now();
    let out = curl(&[&format!("http://127.0.0.1:{proxy}/")]);
    // curl: "Empty reply from server" (52) or a reset (56), at once.
    assert!(matches!(out.status.code(), Some(52 | 56)), "{out:?}");
    assert!(t0.elapsed() < WAIT);
    // The proxy goes on.
    assert!(wait_listening(([127, 0, 0, 1], proxy).into(), WAIT));
}

#[test]
fn the_local_address_is_the_listening_one() {
    let port = free_port();
    let _echo = App::start(
        "http_echo",
        &["--listen", &format!("127.0.0.1:{port}")],
        &[port],
    );
    let out = curl(&[&format!("http://127.0.0.1:{port}/x")]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["local"], format!("127.0.0.1:{port}"));
    assert!(v["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
}

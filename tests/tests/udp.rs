//! `udp://` workers and `AsyncUdpConnection` with a real client (Python's socket module):
//! echo per datagram (raw and line-framed, threads and processes), and an outgoing UDP
//! connection to a Python UDP server.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use werkmann_tests::{free_addr, App};

/// Send `datagrams` to `to` from Python and print each answer's bytes (repr), one a line.
fn python_client(to: std::net::SocketAddr, datagrams: &[&str], answers: usize) -> Vec<String> {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(10)\n\
         for d in {datagrams:?}:\n\
         \x20   s.sendto(d.encode(), ({:?}, {}))\n\
         for _ in range({answers}):\n\
         \x20   data, peer = s.recvfrom(65536)\n\
         \x20   assert peer == ({:?}, {}), peer\n\
         \x20   print(repr(data.decode()))\n",
        to.ip().to_string(),
        to.port(),
        to.ip().to_string(),
        to.port()
    );
    werkmann_tests::python(&script)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A UDP port nothing uses right now.
fn free_udp(ip: &str) -> std::net::SocketAddr {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// Wait until the UDP worker on `addr` answers a datagram.
fn wait_answering(addr: std::net::SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..100 {
        s.send_to(b"probe\n", addr).unwrap();
        if s.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("{addr} does not answer");
}

#[test]
fn udp_echo_raw_and_by_line_on_threads_and_processes() {
    let raw = free_udp("127.0.6.1");
    let app = App::start_at(
        "udp_echo",
        &["--listen", &raw.to_string(), "--count", "2"],
        &[],
    );
    wait_answering(raw);
    let got = python_client(raw, &["eins", "zwei drei", "\u{e4}\u{f6}\u{fc}"], 3);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["'eins'", "'zwei drei'", "'äöü'"], "{got:?}");
    // `status` counts the datagrams.
    let out = app.command(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let messages: u64 = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["messages_in"].as_u64().unwrap())
        .sum();
    assert!(messages >= 3, "{s}");

    // Lines: one datagram carrying two lines is two messages, two answers.
    let text = free_udp("127.0.6.2");
    let _text = App::start_at(
        "udp_echo",
        &[
            "--listen",
            &text.to_string(),
            "--protocol",
            "text",
            "--count",
            "2",
            "--processes",
        ],
        &[],
    );
    wait_answering(text);
    let got = python_client(text, &["a\nb\n"], 2);
    assert_eq!(got, ["'a\\n'", "'b\\n'"]);
}

#[test]
fn an_outgoing_udp_connection_talks_to_a_python_server() {
    // A Python UDP server that answers "got: DATA".
    let server = free_udp("127.0.6.3");
    let mut py = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import socket, sys\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(({:?}, {}))\n\
             print('ready', flush=True)\n\
             while True:\n\
             \x20   data, peer = s.recvfrom(65536)\n\
             \x20   s.sendto(b'got: ' + data, peer)\n",
            server.ip().to_string(),
            server.port()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(py.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let udp = free_udp("127.0.6.4");
    let console = free_addr("127.0.6.4");
    let _app = App::start_at(
        "udp_echo",
        &[
            "--listen",
            &udp.to_string(),
            "--console",
            &console.to_string(),
        ],
        &[console],
    );
    let mut c = TcpStream::connect(console).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    // To the Python server, and to the app's own UDP worker.
    c.write_all(format!("{server} hallo python\n").as_bytes())
        .unwrap();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, format!("{server}> got: hallo python\n"));
    line.clear();
    c.write_all(format!("{udp} hallo selbst\n").as_bytes())
        .unwrap();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, format!("{udp}> hallo selbst\n"));
    let _ = py.kill();
    let _ = py.wait();
}

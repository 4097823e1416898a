//! UDP, as in Workerman's `udp://` examples: `udp_echo start --listen 127.0.0.1:9292` answers
//! every datagram with its bytes (`--protocol text` reads and answers lines instead);
//! `--console IP:PORT` adds a text worker where a line `HOST:PORT TEXT` sends `TEXT` over UDP
//! with an `AsyncUdpConnection` and writes back `HOST:PORT> ANSWER` for each answer.

use std::rc::Rc;

use werkmann::{cli, AsyncUdpConnection, Worker};

/// A UDP echo server.
#[derive(Debug, clap::Args)]
struct Options {
    #[command(flatten)]
    listen: cli::Listen,
    /// How datagrams are framed: raw (one message each) or text (one per line)
    #[arg(long, env = "WERKMANN_UDP_PROTOCOL", value_enum, default_value_t = Framing::Raw)]
    protocol: Framing,
    /// Also serve a text console on IP:PORT that sends datagrams and shows the answers
    #[arg(long, env = "WERKMANN_CONSOLE")]
    console: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Framing {
    Raw,
    Text,
}

fn main() -> anyhow::Result<()> {
    let cli::App {
        command,
        options,
        common,
    } = cli::parse::<cli::App<Options>>(&[("listen", "127.0.0.1:9292")]);
    werkmann_apps::init_logging();
    let scheme = match options.protocol {
        Framing::Raw => "udp",
        Framing::Text => "text+udp",
    };
    let mut udp = Worker::new(&format!("{scheme}://{}", options.listen.listen))?;
    udp.name = "udp_echo".into();
    options.listen.apply(&mut udp);
    udp.on_datagram(|conn, msg| {
        conn.send(msg);
    });
    let mut workers = vec![udp];
    if let Some(addr) = &options.console {
        let mut console = Worker::new(&format!("text://{addr}"))?;
        console.name = "udp_console".into();
        console.on_message(|conn, msg| {
            let line = msg.as_text().unwrap_or_default().to_string();
            let Some((to, text)) = line.split_once(' ') else {
                conn.send("usage: HOST:PORT TEXT");
                return;
            };
            let udp = match AsyncUdpConnection::new(&format!("udp://{to}")) {
                Ok(u) => u,
                Err(e) => {
                    conn.send(format!("error: {e}"));
                    return;
                }
            };
            let (reply_to, peer) = (conn.clone(), to.to_string());
            udp.on_message(move |_, answer| {
                reply_to.send(format!("{peer}> {}", answer.to_text_lossy()));
            });
            let text = text.to_string();
            udp.on_connect(move |u| {
                if !u.send(text.clone()) {
                    log::warn!("udp: datagram not sent");
                }
            });
            if let Err(e) = udp.connect() {
                conn.send(format!("error: {e}"));
                return;
            }
            // The console connection holds the UDP one for as long as it is open.
            let held = Rc::new(udp);
            conn.on_close(move |_| held.close());
        });
        workers.push(console);
    }
    command.run(common.with(workers, None)?)
}

//! workerman-chat on werkmann: log in with a name, chat in rooms, see who is online, whisper
//! to one person — across any number of WebSocket nodes sharing one channel, the cluster
//! directory keeping who is where (`werkmann::gateway`, GatewayWorker's vocabulary).
//!
//! | workerman-chat | werkmann | what |
//! |---|---|---|
//! | `start_gateway.php` + `start_businessworker.php` | [`node::ws_worker`] | WebSocket node: its instances are gateway nodes and run the chat's events |
//! | `Applications/Chat/Events.php` | [`node`], [`protocol`] | login, say, logout; the JSON messages |
//! | `start_web.php`, `Web/index.html` | [`page::web_worker`], [`page::page`] | the browser page |
//! | `start_register.php` | the channel (`embedded`, `start_channel`, Redis) | where nodes find each other |
//!
//! `start_chat` assembles them (see its `--help`).

pub mod node;
pub mod page;
pub mod protocol;

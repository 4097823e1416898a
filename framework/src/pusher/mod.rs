//! The Pusher Channels protocol (version 7), the parts that do not depend on where connections
//! live: apps and their credentials ([`App`], [`Apps`]), the signatures that authorize private
//! and presence subscriptions and sign HTTP API requests ([`sign`]), channel and event names
//! ([`ChannelKind`]), socket ids ([`SocketId`]) and the JSON envelope of every WebSocket
//! message ([`Frame`]). The nodes and the publisher speak it with these
//! (docs/pusher.md).

mod api;
mod app;
mod channel;
mod frame;
mod node;
mod query;
pub mod sign;
mod socket_id;
pub mod webhook;

pub use api::{handle_api, is_api_path, API_PREFIX};
pub use app::{App, AppError, Apps, Webhook, WEBHOOK_EVENTS};
pub use channel::{check_channel_name, check_event_name, ChannelKind, NameError};
pub use frame::{connection_established, encode, encode_object, error, pong, Frame, FrameError};
pub use node::{channel_event, event_payload, PusherNode, ACTIVITY_TIMEOUT_SECS};
pub use socket_id::SocketId;

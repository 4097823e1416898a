//! Why connections were refused and why they closed: the label values of
//! `werkmann_connections_refused_total` and `werkmann_connections_closed_total`.

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The instance held `max_connections` already.
    MaxConnections,
    /// The peer's address held `max_connections_per_ip` already.
    MaxConnectionsPerIp,
    /// A WebSocket upgrade from an Origin not on the list.
    Origin,
    /// A WebSocket upgrade `on_websocket_connect` refused (a bad token, …).
    Handshake,
}

impl Refused {
    /// Every reason, in label order.
    pub const ALL: [Refused; 4] = [
        Refused::MaxConnections,
        Refused::MaxConnectionsPerIp,
        Refused::Origin,
        Refused::Handshake,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
            Refused::Origin => "origin",
            Refused::Handshake => "handshake",
        }
    }
}

/// Why a connection closed (the first cause seen wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Closed {
    /// The peer closed it, or finished (end of stream, a close frame, `Connection: close`).
    #[default]
    Peer,
    /// The app closed it (`close`, `destroy`, a refused handshake).
    Server,
    /// `idle_timeout` or `head_timeout`.
    Idle,
    /// It did not read: dropped by `on_buffer_full`, or its last bytes were not taken.
    Slow,
    /// A read or write failed, or the peer broke the protocol.
    Error,
    /// The worker stopped.
    Stop,
}

impl Closed {
    /// Every reason, in label order.
    pub const ALL: [Closed; 6] = [
        Closed::Peer,
        Closed::Server,
        Closed::Idle,
        Closed::Slow,
        Closed::Error,
        Closed::Stop,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Peer => "peer",
            Closed::Server => "server",
            Closed::Idle => "idle",
            Closed::Slow => "slow",
            Closed::Error => "error",
            Closed::Stop => "stop",
        }
    }
}

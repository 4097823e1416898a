//! The library's error type.

/// Errors from configuring or starting workers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket name that is not `scheme://host:port`.
    #[error("bad socket name {0:?}: {1}")]
    BadSocketName(String, &'static str),
    /// A scheme with no built-in or registered protocol.
    #[error("unknown protocol {0:?} (built in: tcp, text, frame, websocket, http)")]
    UnknownProtocol(String),
    /// Binding or listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A TLS certificate, key or session problem.
    #[error("TLS: {0}")]
    Tls(String),
    /// A command-line problem.
    #[error("{0}")]
    Cli(String),
    /// A worker option that cannot work as set.
    #[error("{0}")]
    Config(String),
}

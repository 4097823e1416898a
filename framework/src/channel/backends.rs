//! Which broker serves an [`Endpoint`]: the one place that knows every backend (see
//! `channel::broker`).

use std::rc::{Rc, Weak};

use super::broker::{Broker, BrokerEvents, Endpoint, Options};
use super::ChannelError;

/// Start the broker for `endpoint`; it reports to `events`.
pub(crate) fn open(
    endpoint: &Endpoint,
    options: &Options,
    events: Weak<dyn BrokerEvents>,
) -> Result<Rc<dyn Broker>, ChannelError> {
    Ok(match endpoint {
        Endpoint::Local(name) => super::local::LocalBroker::start(name, events),
        Endpoint::Tcp { addr, tls } => super::tcp::TcpBroker::start(addr, *tls, options, events)?,
        Endpoint::Redis(url) => super::redis::RedisLink::start(url, options, events)
            .map_err(ChannelError::BadAddress)?,
    })
}

//! Channel and event names: which kind of channel a name is (its prefix decides), and what a
//! name may be (Pusher's rules: letters, digits and `_-=@,.;`, at most
//! [`MAX_NAME_BYTES`] bytes; and a signed-in user's own channel, `#server-to-user-{user id}`).

/// Longest channel or event name accepted.
pub const MAX_NAME_BYTES: usize = 200;

/// The prefix of a user's own channel (send-to-user: `#server-to-user-{user id}`).
pub const SERVER_TO_USER: &str = "#server-to-user-";

/// A name that may not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// What a channel's name makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-…`: a subscription needs a signature from the app's auth endpoint.
    Private,
    /// `private-encrypted-…`: as private; the payloads are end-to-end encrypted by the clients
    /// and the server passes them through.
    PrivateEncrypted,
    /// `presence-…`: as private, with the members (user id and info) known to all of them.
    Presence,
    /// `#server-to-user-{user id}`: only the sockets signed in as that user.
    ServerToUser,
}

impl ChannelKind {
    /// The kind of the channel named `name`.
    pub fn of(name: &str) -> ChannelKind {
        if name.starts_with(SERVER_TO_USER) {
            ChannelKind::ServerToUser
        } else if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether subscribing takes a signature.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// Whether clients may send `client-` events on it (with the app's permission).
    pub fn allows_client_events(self) -> bool {
        matches!(self, ChannelKind::Private | ChannelKind::Presence)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError(format!("the {what} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError(format!(
            "the {what} is {} bytes long, more than {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if let Some(c) = name.bytes().find(|&b| !ok(b)) {
        return Err(NameError(format!(
            "the {what} {name:?} has {:?}: only letters, digits and _-=@,.; are allowed",
            c as char
        )));
    }
    Ok(())
}

/// A channel name a client may subscribe to or a publisher publish on. `#`-names (the server's
/// own, e.g. a user's `#server-to-user-…`) are refused here.
pub fn check_channel_name(name: &str) -> Result<(), NameError> {
    match name.strip_prefix(SERVER_TO_USER) {
        Some(user) => check_user_id(user),
        None => check_name("channel name", name),
    }
}

/// Check a user id (`pusher:signin`'s `user_data.id`): as a channel name's characters, at most
/// [`MAX_NAME_BYTES`] less [`SERVER_TO_USER`] bytes long (its channel must be a name).
pub fn check_user_id(id: &str) -> Result<(), NameError> {
    check_name("user id", id)?;
    let most = MAX_NAME_BYTES - SERVER_TO_USER.len();
    if id.len() > most {
        return Err(NameError(format!(
            "the user id is {} bytes long, more than {most}",
            id.len()
        )));
    }
    Ok(())
}

/// An event name: at most [`MAX_NAME_BYTES`] bytes and not empty. Events are not held to the
/// channel alphabet (Pusher's own are `pusher:…`, `pusher_internal:…`).
pub fn check_event_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError("the event name is empty".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError(format!(
            "the event name is {} bytes long, more than {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_prefix() {
        assert_eq!(ChannelKind::of("news"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-a"), ChannelKind::Private);
        assert_eq!(
            ChannelKind::of("private-encrypted-a"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("presence-room"), ChannelKind::Presence);
        assert_eq!(ChannelKind::of("privateer"), ChannelKind::Public);
        assert_eq!(
            ChannelKind::of("#server-to-user-7"),
            ChannelKind::ServerToUser
        );
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events());
        assert!(ChannelKind::Presence.needs_auth() && !ChannelKind::Public.needs_auth());
    }

    #[test]
    fn names() {
        for good in [
            "a",
            "private-chat.1",
            "presence-room_7",
            "A-Z=@,.;",
            &"x".repeat(200),
            "#server-to-user-1",
            &format!("#server-to-user-{}", "x".repeat(184)),
        ] {
            assert!(check_channel_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b",
            "ä",
            "#server-to-user-",
            "#server-to-user-a b",
            "#server-to-usr-1",
            &format!("#server-to-user-{}", "x".repeat(185)),
            "a/b",
            "a:b",
            &"x".repeat(201),
        ] {
            assert!(check_channel_name(bad).is_err(), "{bad}");
        }
        assert!(check_event_name("pusher:subscribe").is_ok());
        assert!(check_event_name("").is_err());
    }
}

//! [`App`]s: the credentials a Pusher client (its key) and a publisher (id, key, secret) use,
//! and each app's own settings; [`Apps`], the set a server serves, found by id or key.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

/// An app of the Pusher protocol.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The id publishers name in `/apps/{id}/…`.
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The secret that signs subscriptions and API requests.
    pub secret: String,
    /// Whether clients may send `client-` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Most connections the app may hold on one node (`0`: no limit of its own).
    #[serde(default)]
    pub max_connections: usize,
    /// Most members (users) of one presence channel, cluster-wide (Pusher's and Soketi's 100
    /// by default).
    #[serde(default = "default_presence_members")]
    pub max_presence_members: usize,
    /// Where the app's webhooks go, each with the events it wants.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Whether the cluster counts each channel's subscribers (in the directory: one operation
    /// per subscription, answered before `subscription_succeeded`), which `GET channels`,
    /// `subscription_count` and the occupancy webhooks read (on by default; the occupancy
    /// webhooks turn it on).
    #[serde(default = "yes")]
    pub channel_counts: bool,
}

fn yes() -> bool {
    true
}

/// A webhook: Pusher's events of an app (`channel_occupied`, `channel_vacated`,
/// `member_added`, `member_removed`, `client_event`) POSTed to `url`, signed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://HOST[:PORT][/PATH]`.
    pub url: String,
    /// The events it gets.
    pub event_types: Vec<String>,
}

/// The events a webhook may ask for.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

impl App {
    /// Whether the cluster counts the app's channels' subscribers.
    pub fn counts_channels(&self) -> bool {
        self.channel_counts || self.wants("channel_occupied") || self.wants("channel_vacated")
    }

    /// Whether a webhook of the app wants `event` (one of [`WEBHOOK_EVENTS`]).
    pub fn wants(&self, event: &str) -> bool {
        self.webhooks
            .iter()
            .any(|w| w.event_types.iter().any(|e| e == event))
    }
}

fn default_presence_members() -> usize {
    DEFAULT_PRESENCE_MEMBERS
}

/// Most members of a presence channel unless the app says otherwise.
pub const DEFAULT_PRESENCE_MEMBERS: usize = 100;

/// Why an app's definition is refused.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `ID:KEY:SECRET` is malformed.
    #[error("app {0:?}: {1}")]
    Spec(String, &'static str),
    /// A webhook is malformed.
    #[error("webhook {0:?}: {1}")]
    Webhook(String, String),
    /// Two apps share an id or a key.
    #[error("two apps have the {0} {1:?}")]
    Duplicate(&'static str, String),
    /// The configuration file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not what it should be.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// Letters, digits, `_`, `-`, `.`: what an id or a key may be made of.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl App {
    fn check(&self) -> Result<(), AppError> {
        let spec = || format!("{}:{}:…", self.id, self.key);
        if !plain(&self.id) {
            return Err(AppError::Spec(
                spec(),
                "the id must be letters, digits, _ - . (at most 128)",
            ));
        }
        if !plain(&self.key) {
            return Err(AppError::Spec(
                spec(),
                "the key must be letters, digits, _ - . (at most 128)",
            ));
        }
        if self.secret.is_empty() || self.secret.chars().any(char::is_control) {
            return Err(AppError::Spec(
                spec(),
                "the secret must be given, without control characters",
            ));
        }
        if self.max_presence_members == 0 {
            return Err(AppError::Spec(
                spec(),
                "max_presence_members must be at least 1",
            ));
        }
        for w in &self.webhooks {
            if let Err(why) = super::webhook::Target::parse(&w.url) {
                return Err(AppError::Webhook(w.url.clone(), why));
            }
            if w.event_types.is_empty() {
                return Err(AppError::Webhook(w.url.clone(), "no event_types".into()));
            }
            let known = |e: &&String| WEBHOOK_EVENTS.contains(&e.as_str());
            if let Some(e) = w.event_types.iter().find(|e| !known(e)) {
                let why = format!(
                    "unknown event type {e:?} (known: {})",
                    WEBHOOK_EVENTS.join(", ")
                );
                return Err(AppError::Webhook(w.url.clone(), why));
            }
        }
        Ok(())
    }
}

impl FromStr for App {
    type Err = AppError;

    /// `ID:KEY:SECRET` (the secret may contain `:`), client events off, no connection limit.
    fn from_str(s: &str) -> Result<App, AppError> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AppError::Spec(s.to_string(), "expected ID:KEY:SECRET"));
        };
        let app = App {
            id: id.to_string(),
            key: key.to_string(),
            secret: secret.to_string(),
            client_events: false,
            max_connections: 0,
            max_presence_members: DEFAULT_PRESENCE_MEMBERS,
            webhooks: Vec::new(),
            channel_counts: true,
        };
        app.check()?;
        Ok(app)
    }
}

/// The apps a server serves (none: the Pusher endpoints answer 404).
#[derive(Debug, Clone, Default)]
pub struct Apps(Vec<Arc<App>>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    apps: Vec<App>,
}

impl Apps {
    /// These apps; ids and keys must be unique.
    pub fn new(apps: Vec<App>) -> Result<Apps, AppError> {
        for (i, a) in apps.iter().enumerate() {
            a.check()?;
            if apps[..i].iter().any(|b| b.id == a.id) {
                return Err(AppError::Duplicate("id", a.id.clone()));
            }
            if apps[..i].iter().any(|b| b.key == a.key) {
                return Err(AppError::Duplicate("key", a.key.clone()));
            }
        }
        Ok(Apps(apps.into_iter().map(Arc::new).collect()))
    }

    /// The apps of a JSON file `{"apps": [{"id", "key", "secret", "client_events",
    /// "max_connections", "max_presence_members"}, …]}` (an unknown field is an error), then
    /// `more`.
    pub fn load(path: &Path, more: Vec<App>) -> Result<Apps, AppError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AppError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: File = serde_json::from_str(&text).map_err(|source| AppError::Parse {
            path: shown,
            source,
        })?;
        let mut apps = file.apps;
        apps.extend(more);
        Apps::new(apps)
    }

    /// Whether there is no app.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.0.iter().find(|a| a.id == id)
    }

    /// The app with this key.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.0.iter().find(|a| a.key == key)
    }

    /// Every app.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let a: App = "app-1:key1:sec:ret".parse().unwrap();
        assert_eq!(
            (a.id.as_str(), a.key.as_str(), a.secret.as_str()),
            ("app-1", "key1", "sec:ret")
        );
        assert!(!a.client_events);
        for bad in [
            "",
            "a",
            "a:b",
            "a:b:",
            ":b:c",
            "a::c",
            "a b:k:s",
            "a:k/y:s",
            "a:k:s\u{7}",
        ] {
            assert!(bad.parse::<App>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sets_and_files() {
        let a: App = "1:k1:s".parse().unwrap();
        let b: App = "2:k2:s".parse().unwrap();
        let apps = Apps::new(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(apps.by_id("2").unwrap().key, "k2");
        assert_eq!(apps.by_key("k1").unwrap().id, "1");
        assert!(apps.by_key("k3").is_none());
        assert!(Apps::new(vec![a.clone(), "1:k9:s".parse().unwrap()]).is_err());
        assert!(Apps::new(vec![a.clone(), "9:k1:s".parse().unwrap()]).is_err());

        let dir = std::env::temp_dir().join(format!("werkmann-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("apps.json");
        std::fs::write(
            &f,
            r#"{"apps":[{"id":"7","key":"k7","secret":"s","client_events":true,"max_connections":10}]}"#,
        )
        .unwrap();
        let apps = Apps::load(&f, vec![b]).unwrap();
        let seven = apps.by_id("7").unwrap();
        assert!(seven.client_events);
        assert_eq!(seven.max_connections, 10);
        assert!(apps.by_id("2").is_some());
        std::fs::write(
            &f,
            r#"{"apps":[{"id":"7","key":"k7","secret":"s","clientevents":true}]}"#,
        )
        .unwrap();
        let err = Apps::load(&f, vec![]).unwrap_err().to_string();
        assert!(err.contains("clientevents"), "{err}");
        // Webhooks: checked when loaded.
        let hooks = |h: &str| {
            std::fs::write(
                &f,
                format!(r#"{{"apps":[{{"id":"7","key":"k7","secret":"s","webhooks":[{h}]}}]}}"#),
            )
            .unwrap();
            Apps::load(&f, vec![])
        };
        let ok = hooks(r#"{"url":"http://127.0.0.1:9/h","event_types":["member_added"]}"#);
        let seven = ok.unwrap();
        let seven = seven.by_id("7").unwrap();
        assert!(seven.wants("member_added") && !seven.wants("client_event"));
        for (bad, says) in [
            (
                r#"{"url":"https://x/h","event_types":["member_added"]}"#,
                "http://",
            ),
            (
                r#"{"url":"http://x/h","event_types":["member_joined"]}"#,
                "unknown event type",
            ),
            (r#"{"url":"http://x/h","event_types":[]}"#, "no event_types"),
            (
                r#"{"url":"http://x/h","events":["client_event"]}"#,
                "unknown field",
            ),
        ] {
            let err = hooks(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The Pusher apps a node or a publisher serves (`werkmann::pusher`): `--app ID:KEY:SECRET`
//! (repeatable; `WERKMANN_APPS`, comma-separated) and a JSON file for per-app options.

use std::path::PathBuf;
use std::sync::Arc;

use werkmann::pusher::{App, Apps};

/// The Pusher apps' options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PusherApps {
    /// Serve the Pusher protocol for this app, ID:KEY:SECRET (repeatable; none: the Pusher
    /// endpoints answer 404)
    #[arg(
        long = "app",
        env = "WERKMANN_APPS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub apps: Vec<App>,
    /// A JSON file of Pusher apps with their options: {"apps": [{"id", "key", "secret",
    /// "client_events", "max_connections"}]}
    #[arg(long, env = "WERKMANN_APPS_FILE", value_name = "JSON")]
    pub apps_file: Option<PathBuf>,
}

impl PusherApps {
    /// The apps, checked (unique ids and keys; the file read now).
    pub fn load(&self) -> anyhow::Result<Arc<Apps>> {
        let apps = match &self.apps_file {
            Some(f) => Apps::load(f, self.apps.clone())?,
            None => Apps::new(self.apps.clone())?,
        };
        Ok(Arc::new(apps))
    }
}

//! What every example server takes on its command line: where to listen and how many
//! instances serve it, the limits, and TLS.

use werkmann::{cli, Worker};

/// An example server's common options.
#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Where and how many.
    #[command(flatten)]
    pub listen: cli::Listen,
    /// The limits.
    #[command(flatten)]
    pub limits: cli::Limits,
    /// Serve TLS.
    #[command(flatten)]
    pub tls: cli::Tls,
}

impl Serve {
    /// A worker on `{scheme}://{--listen}` named `name`, with `--count` instances, the limits
    /// and TLS (with a certificate, the socket is TLS whatever the protocol).
    pub fn worker(&self, scheme: &str, name: &str) -> anyhow::Result<Worker> {
        let mut worker = Worker::new(&format!("{scheme}://{}", self.listen.listen))?;
        worker.name = name.into();
        self.listen.apply(&mut worker);
        self.limits.apply(&mut worker);
        worker.tls = self.tls.load()?;
        Ok(worker)
    }
}

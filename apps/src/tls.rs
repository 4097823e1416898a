//! TLS options shared by the push cluster's binaries: `--cert PEM --key PEM`
//! (`WERKMANN_TLS_CERT`, `WERKMANN_TLS_KEY`) serve a node over TLS — `wss://` for WebSocket
//! nodes, `https://` for publishers, TLS for the channel server — and `--tls-ca PEM`
//! (`WERKMANN_TLS_CA`) adds a private CA that `tls://` channel clients trust.

use anyhow::{bail, Context};
use werkmann::cli::option;
use werkmann::ServerTls;

/// The certificate and key given with `--cert` and `--key`, if any (both or neither).
pub fn server_tls_option() -> anyhow::Result<Option<ServerTls>> {
    let cert = option("--cert", "WERKMANN_TLS_CERT", "");
    let key = option("--key", "WERKMANN_TLS_KEY", "");
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => ServerTls::from_pem_files(&cert, &key)
            .map(Some)
            .with_context(|| format!("--cert {cert} --key {key}")),
        _ => bail!("--cert and --key go together (or WERKMANN_TLS_CERT and WERKMANN_TLS_KEY)"),
    }
}

/// Take `--tls-ca PEM` (or `WERKMANN_TLS_CA`) for every TLS client of this process. Call
/// before any thread starts.
pub fn client_ca_option() {
    let ca = option("--tls-ca", werkmann::tls::CA_ENV, "");
    if !ca.is_empty() {
        std::env::set_var(werkmann::tls::CA_ENV, ca);
    }
}

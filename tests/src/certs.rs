//! Throw-away certificates for the TLS tests: a fresh CA and a server certificate it signed,
//! valid for 127.0.0.1, the loopback addresses the cluster tests use (127.0.1.1–127.0.1.9)
//! and `localhost`. Made with `openssl` (installed by `scripts/test`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::temp_dir;

/// A CA (`ca.pem`) and a server certificate and key (`server.pem`, `server.key`) in a
/// directory of their own.
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Make a new CA and server certificate.
    pub fn make(tag: &str) -> TestCerts {
        let dir = temp_dir(tag);
        let sh = |args: &str| {
            let st = Command::new("sh")
                .arg("-c")
                .arg(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("sh");
            assert!(st.success(), "openssl failed: {args}");
        };
        let mut san = String::from("subjectAltName=IP:127.0.0.1,DNS:localhost");
        for i in 1..10 {
            san.push_str(&format!(",IP:127.0.1.{i}"));
        }
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=werkmann-test-ca");
        sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
        sh(&format!("printf '{san}\\n' > ext.cnf && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf"));
        TestCerts { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

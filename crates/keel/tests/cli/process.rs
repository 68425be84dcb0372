//! `keel serve` as a child process: spawned on a free port, waited for
//! until ready, killed (as `kill -9` does) when dropped or asked.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `keel serve` process, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, without `/v1`.
    pub base: String,
}

impl Server {
    /// Starts `keel serve --config config` on a free port, with `envs`.
    pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KEEL_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in envs {
            command.env(name, value);
        }
        Server {
            child: command.spawn().expect("keel serve starts"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/readyz` answers 200. Generous: on a loaded two-core
    /// machine, loading a model and migrating can take a while; this bounds
    /// a hang, it times nothing.
    pub async fn ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..1200 {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keel at {} never became ready", self.base);
    }

    /// Kills the process at once (SIGKILL: no shutdown, no flush).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

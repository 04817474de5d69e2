//! `qstore serve` as a real child process, configured like the in-process test servers
//! (`QSTORE_TEST_CONFIG`, `QSTORE__*`): for what threads cannot show, such as several replicas
//! sharing a store and catalog, a `kill -9`, the process's own memory and log lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use qstore::config::{Config, Overrides};

use crate::server::Endpoint;

/// The suite's backend configuration for a server whose local state is `data_dir`, plus `env`
/// (`QSTORE__*` pairs) on top, exactly as the child process will load it.
pub fn test_config(data_dir: &Path, env: &[(&str, &str)]) -> Config {
    let file = std::env::var_os("QSTORE_TEST_CONFIG").map(PathBuf::from);
    let vars = std::env::vars().chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(
        file.as_deref(),
        vars,
        &Overrides {
            listen: None,
            data_dir: Some(data_dir.to_path_buf()),
        },
    )
    .unwrap()
}

/// `qstore <subcommand>` with the suite's configuration file, if any.
pub fn qstore(subcommand: &str, data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qstore"));
    cmd.arg(subcommand).arg("--data-dir").arg(data_dir);
    if let Some(file) = std::env::var_os("QSTORE_TEST_CONFIG") {
        cmd.arg("--config").arg(file);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// A running `qstore serve`; killed (SIGKILL) when dropped unless stopped first.
pub struct ServerProcess {
    child: Option<Child>,
    pub url: String,
    /// stdout and stderr (the log) go to a file, so a chatty server never blocks on a pipe.
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// Starts a server on a free loopback port and waits until it answers `/readyz`.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        for _attempt in 0..3 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = qstore("serve", data_dir, env)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap();
            let mut server = ServerProcess {
                child: Some(child),
                url: format!("http://127.0.0.1:{port}"),
                log,
            };
            if server.ready().await {
                return server;
            }
            server.stop();
            eprintln!("server did not start: {}", server.log());
        }
        panic!("qstore serve did not come up in three attempts");
    }

    async fn ready(&mut self) -> bool {
        let client = crate::server::client();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.at("/readyz")).send().await {
                return r.status().is_success();
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if exited {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// SIGKILL: no cleanup of any kind runs in the server.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().unwrap()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl crate::server::Endpoint for ServerProcess {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago (start retries if another process takes it first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

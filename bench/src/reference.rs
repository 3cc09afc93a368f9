//! The reference server (`bench/reference/`, `--reference`): the seed plan's messaging in one
//! Node process, which the bench starts, loads like Parley over Socket.IO, measures by pid
//! (`node`) and stops, so Parley's figures have a point to be compared with in the same run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long the server may take to apply its schema and listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to close its sockets and pool after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// What the server prints on stdout once it accepts connections.
const LISTENING: &str = "listening on ";

/// The reference server, running.
pub struct Reference {
    child: Child,
    pub addr: SocketAddr,
    /// The server's database, for the rows it stored.
    db: PgPool,
}

impl Reference {
    /// Starts `node server.mjs` in `dir` on a free port (PORT=0) with the database in
    /// `database_url` and the bench's `secret`, and waits until it listens. Its output goes to
    /// `reference.log` in `logs`.
    pub async fn start(
        dir: &Path,
        logs: &Path,
        database_url: &str,
        secret: &str,
    ) -> anyhow::Result<Reference> {
        let server = dir.join("server.mjs");
        if !server.is_file() {
            bail!(
                "{} has no server.mjs: give --reference the bench/reference folder",
                dir.display()
            );
        }
        if !dir.join("node_modules").is_dir() {
            bail!(
                "{} has no node_modules: run `npm ci` there first (./dev bench --reference does)",
                dir.display()
            );
        }
        std::fs::create_dir_all(logs)?;
        let log_path = logs.join("reference.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(dir)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATABASE_URL", database_url)
            .env("AUTH_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .kill_on_drop(true)
            .spawn()
            .context("start node (the reference server needs Node 20 or newer on PATH)")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let waited = tokio::time::timeout(READY_TIMEOUT, listening(stdout, log_path.clone())).await;
        let addr = match waited {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let status = child.wait().await?;
                bail!(
                    "the reference server did not start ({status}): {e:#}; see {}",
                    log_path.display()
                );
            }
            Err(_) => bail!(
                "the reference server did not listen within {READY_TIMEOUT:?}; see {}",
                log_path.display()
            ),
        };
        let db = PgPoolOptions::new()
            .max_connections(1)
            .connect(database_url)
            .await
            .context("connect to the reference server's database")?;
        Ok(Reference { child, addr, db })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Messages the server has stored so far (its rows in "Message").
    pub async fn persisted(&self) -> f64 {
        sqlx::query_scalar::<_, i64>(r#"select count(*) from "Message""#)
            .fetch_one(&self.db)
            .await
            .map_or(0.0, |n| n as f64)
    }

    /// SIGTERM, and a wait for the server to close its sockets and pool (a kill after
    /// [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.db.close().await;
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
            bail!("the reference server did not stop within {STOP_TIMEOUT:?} of SIGTERM");
        }
        Ok(())
    }
}

/// Reads the server's stdout up to its `listening on` line, and copies the rest of it to the
/// log in the background (so the pipe never fills).
async fn listening(stdout: ChildStdout, log: PathBuf) -> anyhow::Result<SocketAddr> {
    let mut lines = BufReader::new(stdout).lines();
    let mut out = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .await?;
    loop {
        let line = lines
            .next_line()
            .await?
            .context("it exited before it listened")?;
        out.write_all(format!("{line}\n").as_bytes()).await?;
        if let Some(addr) = parse_listening(&line) {
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = out.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
            return Ok(addr);
        }
    }
}

/// The address in `listening on <host>:<port>`; an unspecified host (`0.0.0.0`, `::`) is
/// reached on 127.0.0.1.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (host, port) = line.trim().strip_prefix(LISTENING)?.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let ip = if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address_to_connect_to() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:41327"),
            Some("127.0.0.1:41327".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on 0.0.0.0:3000\n"),
            Some("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on :::3000"),
            Some("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(parse_listening("listening on localhost:x"), None);
        assert_eq!(parse_listening("starting"), None);
    }
}

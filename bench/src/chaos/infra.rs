//! Everything the chaos run kills, started by the run itself: a private nats-server, a private
//! Postgres cluster and each Parley role as its own process, so each can be killed -9 and
//! started again on the same port (and, for NATS, the same store). Logs go to the output folder.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::system::{free_port, wait_ready};

/// How long a server may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Appends to `path` (a role started again writes on under the same log).
fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// kill -9, then reap it.
async fn kill9(child: &mut Child) -> anyhow::Result<()> {
    child.start_kill().context("kill -9")?;
    child.wait().await?;
    Ok(())
}

/// A line in a role's log saying what the run did, so the roles' own lines can be read against
/// the faults.
pub fn mark(log: &Path, what: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = log_file(log) {
        let _ = writeln!(f, "==== parley-bench chaos, {}: {what}", chrono::Utc::now());
    }
}

// ---------------------------------------------------------------------------------------------

/// A private nats-server with JetStream on a fixed loopback port, its store in the output folder.
pub struct Nats {
    bin: PathBuf,
    pub port: u16,
    store: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Nats {
    pub async fn start(bin: &Path, out: &Path) -> anyhow::Result<Nats> {
        let store = out.join("nats-store");
        std::fs::create_dir_all(&store)?;
        let mut nats = Nats {
            bin: bin.to_owned(),
            port: free_port()?,
            store,
            log: out.join("nats.log"),
            child: None,
        };
        nats.spawn().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it greets a client with JetStream on.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = log_file(&self.log)?;
        let mut child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.greets().await {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited at start ({status}); see {}",
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("nats-server did not answer within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// True once the server's `INFO` greeting says JetStream is on.
    async fn greets(&self) -> bool {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut line = String::new();
        let mut reader = BufReader::new(tcp);
        let read = reader.read_line(&mut line);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), read).await,
            Ok(Ok(_))
        ) && line.starts_with("INFO")
            && line.contains("\"jetstream\":true")
    }

    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// A private Postgres cluster (trust auth, superuser `postgres`) in the output folder. Postgres
/// refuses to run as root, so as root every tool runs as the `postgres` user (`runuser`).
pub struct Postgres {
    bindir: PathBuf,
    dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Postgres {
    pub async fn start(bindir: &Path, out: &Path) -> anyhow::Result<Postgres> {
        let dir = out.join("pg");
        let pg = Postgres {
            bindir: bindir.to_owned(),
            port: free_port()?,
            log: dir.join("postgres.log"),
            dir,
        };
        if is_root()? {
            run(Command::new("install")
                .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "0700"])
                .arg(&pg.dir))
            .await
            .context("make the Postgres folder (is there a `postgres` user?)")?;
        } else {
            std::fs::create_dir_all(&pg.dir)?;
        }
        run(pg.tool("initdb")?.arg("-D").arg(pg.dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]))
        .await
        .context("initdb")?;
        pg.up().await?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `bindir/<name>`, run as the `postgres` user when this process is root.
    fn tool(&self, name: &str) -> anyhow::Result<Command> {
        let path = self.bindir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: --pg-bindir must name Postgres's bin folder (e.g. /usr/lib/postgresql/15/bin)",
                path.display()
            );
        }
        Ok(if is_root()? {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        })
    }

    /// Starts the server (pg_ctl -w: it returns once connections are accepted).
    pub async fn up(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c max_connections=200",
            self.port,
            self.dir.display()
        );
        run(self
            .tool("pg_ctl")?
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &options, "start"]))
        .await
        .with_context(|| format!("pg_ctl start (see {})", self.log.display()))
    }

    /// Stops the server, `fast`: open sessions are ended, not waited for.
    pub async fn down(&self) -> anyhow::Result<()> {
        run(self
            .tool("pg_ctl")?
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]))
        .await
        .context("pg_ctl stop")
    }
}

/// Runs a command to its end; an error with its output when it fails.
async fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.as_std().get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// True when this process runs as root (`/proc/self` belongs to the effective user).
fn is_root() -> anyhow::Result<bool> {
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

// ---------------------------------------------------------------------------------------------

/// One Parley role as a process of the `parley` binary, with its own admin port (and, for a
/// gateway, its own public port), started again on the same ports after a kill.
pub struct Role {
    pub name: String,
    role: &'static str,
    bin: PathBuf,
    env: Vec<(String, String)>,
    pub admin: u16,
    /// The public port of a gateway.
    pub port: Option<u16>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Role {
    /// `role` is `gateway`, `persistence` or `auth`; `name` names it in the figures and its
    /// log (`gateway-b`).
    pub fn new(
        bin: &Path,
        role: &'static str,
        name: &str,
        env: Vec<(String, String)>,
        out: &Path,
    ) -> anyhow::Result<Role> {
        Ok(Role {
            name: name.to_owned(),
            role,
            bin: bin.to_owned(),
            env,
            admin: free_port()?,
            port: if role == "gateway" {
                Some(free_port()?)
            } else {
                None
            },
            log: out.join(format!("{name}.log")),
            child: None,
        })
    }

    /// Starts it without waiting.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = log_file(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(self.role)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_PORT", self.admin.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(port) = self.port {
            cmd.env("PORT", port.to_string()).env("HOST", "127.0.0.1");
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("start {} {}", self.bin.display(), self.role))?,
        );
        Ok(())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        wait_ready(self.admin, self.child.as_mut())
            .await
            .with_context(|| format!("{} (log: {})", self.name, self.log.display()))
    }

    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child).await?;
        }
        Ok(())
    }

    /// SIGTERM and wait: the graceful stop at the end of the run.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").arg(pid.to_string()).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = kill9(&mut child).await;
            }
        }
    }
}

/// `parley migrate` against the private Postgres, to its end.
pub async fn migrate(bin: &Path, env: &[(String, String)], out: &Path) -> anyhow::Result<()> {
    let log = log_file(&out.join("migrate.log"))?;
    let status = Command::new(bin)
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await?;
    if !status.success() {
        bail!("parley migrate failed ({status}); see migrate.log");
    }
    Ok(())
}

//! The system under test: a gateway and a persistence process the bench starts from the
//! `parley` binary (so it can measure their memory and restart the gateway), and the readings
//! it takes of them from `/proc`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How long a role may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway and a persistence, started from one binary with the bench's environment.
pub struct System {
    bin: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    pub gateway_addr: SocketAddr,
    gateway_admin: u16,
    persistence_admin: u16,
    gateway: Option<Child>,
    persistence: Option<Child>,
    starts: u32,
}

impl System {
    /// Starts persistence, then a gateway on a free port, and waits until both are ready.
    /// Every variable of the bench's environment is passed on; `env` adds to it (limits a
    /// benchmark must lift, such as the per-user send rate).
    pub async fn start(
        bin: &Path,
        logs: &Path,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<System> {
        std::fs::create_dir_all(logs)?;
        let mut system = System {
            bin: bin.to_owned(),
            logs: logs.to_owned(),
            env,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            gateway_admin: free_port()?,
            persistence_admin: free_port()?,
            gateway: None,
            persistence: None,
            starts: 0,
        };
        let persistence = system.spawn("persistence", system.persistence_admin)?;
        system.persistence = Some(persistence);
        wait_ready(system.persistence_admin, system.persistence.as_mut()).await?;
        system.start_gateway().await?;
        Ok(system)
    }

    fn spawn(&mut self, role: &str, admin: u16) -> anyhow::Result<Child> {
        self.starts += 1;
        let log = self.logs.join(format!("{role}-{}.log", self.starts));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&self.bin)
            .arg(role)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_PORT", admin.to_string())
            .env("PORT", self.gateway_addr.port().to_string())
            .env("HOST", self.gateway_addr.ip().to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} {role}", self.bin.display()))?;
        Ok(child)
    }

    /// Starts a gateway on the system's address and waits until it is ready.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        let gateway = self.spawn("gateway", self.gateway_admin)?;
        self.gateway = Some(gateway);
        wait_ready(self.gateway_admin, self.gateway.as_mut()).await
    }

    /// Stops the gateway with `signal` (`TERM`: it drains, telling clients to come back;
    /// `KILL`: a crash) and waits for it to exit.
    pub async fn stop_gateway(&mut self, signal: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.gateway.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .await?;
            if !status.success() {
                bail!("kill -{signal} {pid} failed");
            }
        }
        child.wait().await?;
        Ok(())
    }

    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().and_then(Child::id)
    }

    pub fn persistence_pid(&self) -> Option<u32> {
        self.persistence.as_ref().and_then(Child::id)
    }

    /// The mean of each pipeline stage so far, from the roles' own latency histograms
    /// (`/metrics`): where a message's time goes.
    pub async fn stage_means(&self) -> Vec<(&'static str, f64)> {
        let gateway = http_get(self.gateway_admin, "/metrics")
            .await
            .unwrap_or_default();
        let persistence = http_get(self.persistence_admin, "/metrics")
            .await
            .unwrap_or_default();
        let mut out = Vec::new();
        for (label, text, name) in [
            (
                "stage: read → broker ack",
                &gateway,
                "parley_publish_latency_seconds",
            ),
            (
                "stage: accepted → committed",
                &persistence,
                "parley_persist_latency_seconds",
            ),
            (
                "stage: committed → socket",
                &gateway,
                "parley_deliver_latency_seconds",
            ),
        ] {
            if let Some(mean) = histogram_mean(text, name) {
                out.push((label, mean * 1000.0));
            }
        }
        if let Some(mean) = histogram_mean(&persistence, "parley_persist_batch_size") {
            out.push(("persist batch (mean)", mean));
        }
        out
    }

    /// Stops both roles (SIGTERM, so they flush and ack what they hold) and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_gateway("TERM").await?;
        if let Some(mut child) = self.persistence.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").arg(pid.to_string()).status().await;
            }
            child.wait().await?;
        }
        Ok(())
    }
}

/// A port free on every address, below the ephemeral range: the bench's own client sockets
/// take ephemeral ports on 127.0.0.x by the thousand (and linger in TIME_WAIT), so a port the
/// kernel picks there may be taken again before a role binds it.
fn free_port() -> anyhow::Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {LOW} and {}", LOW + SPAN)
}

/// Polls `/readyz` on the admin port until it answers 200; fails early if the process exits.
async fn wait_ready(admin: u16, child: Option<&mut Child>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut child = child;
    loop {
        if let Some(child) = child.as_deref_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("a role exited at start ({status}); see its log under the output folder");
        }
        if readyz(admin).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no ready answer on admin port {admin} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /readyz`: true on a 200.
async fn readyz(port: u16) -> bool {
    http_get(port, "/readyz").await.is_some()
}

/// The body of a `GET` on a local admin port over bare HTTP/1.0, when it answers 200.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// `<name>_sum / <name>_count` from a Prometheus text exposition.
fn histogram_mean(text: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| -> Option<f64> {
        let key = format!("{name}_{suffix}");
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(key.as_str()))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    let count = value("count")?;
    (count > 0.0).then(|| value("sum").unwrap_or(0.0) / count)
}

/// A process's resident memory in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

/// CPU used by each part of the system, to say what bounds a figure: the gateway and
/// persistence by pid, NATS and Postgres by process name (all of Postgres's backends), and the
/// bench itself.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    at: Option<Instant>,
    seconds: BTreeMap<&'static str, f64>,
}

impl CpuSample {
    pub fn take(gateway: Option<u32>, persistence: Option<u32>) -> CpuSample {
        let mut seconds = BTreeMap::new();
        let mut add = |name: &'static str, s: Option<f64>| {
            *seconds.entry(name).or_insert(0.0) += s.unwrap_or(0.0);
        };
        add("gateway", gateway.and_then(cpu_seconds));
        add("persistence", persistence.and_then(cpu_seconds));
        add("bench", cpu_seconds(std::process::id()));
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for pid in dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
            {
                match comm(pid).as_deref() {
                    Some("nats-server") => add("nats", cpu_seconds(pid)),
                    Some(c) if c.starts_with("postgres") => add("postgres", cpu_seconds(pid)),
                    _ => {}
                }
            }
        }
        CpuSample {
            at: Some(Instant::now()),
            seconds,
        }
    }

    /// Cores used by each part between `earlier` and this sample (1.0 = one core busy).
    /// Postgres backends that ended in between are not counted.
    pub fn cores_since(&self, earlier: &CpuSample) -> BTreeMap<&'static str, f64> {
        let (Some(now), Some(then)) = (self.at, earlier.at) else {
            return BTreeMap::new();
        };
        let wall = now.duration_since(then).as_secs_f64().max(1e-3);
        self.seconds
            .iter()
            .map(|(k, v)| {
                let before = earlier.seconds.get(k).copied().unwrap_or(0.0);
                (*k, ((v - before) / wall * 100.0).round() / 100.0)
            })
            .collect()
    }
}

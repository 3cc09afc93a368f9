//! The system under test: a gateway and one or more persistence replicas the bench starts from
//! the `parley` binary (so it can measure their memory and restart the gateway), and the
//! readings it takes of them from `/proc` and their `/metrics`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a role may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the replicas may take to share the partitions out (a heartbeat is 1 s, a dead
/// replica's partitions move after 4 s).
const SHARE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the partitions' lag is read while the load runs (persistence samples it every 5 s).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// A gateway and persistence replicas, started from one binary with the bench's environment.
pub struct System {
    bin: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    pub gateway_addr: SocketAddr,
    gateway_admin: u16,
    gateway: Option<Child>,
    /// In start order: `persistence 1`, `persistence 2` ... in the figures.
    persistence: Vec<Replica>,
    starts: u32,
}

struct Replica {
    admin: u16,
    child: Child,
}

impl System {
    /// Starts `replicas` persistence replicas, waits until they are ready and have shared the
    /// partitions out evenly, then starts a gateway on a free port and waits until it is ready,
    /// so the load meets a settled system. Every variable of the bench's environment is passed
    /// on; `env` adds to it (limits a benchmark must lift, such as the per-user send rate).
    pub async fn start(
        bin: &Path,
        logs: &Path,
        env: Vec<(String, String)>,
        replicas: usize,
    ) -> anyhow::Result<System> {
        std::fs::create_dir_all(logs)?;
        let mut system = System {
            bin: bin.to_owned(),
            logs: logs.to_owned(),
            env,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            gateway_admin: free_port()?,
            gateway: None,
            persistence: Vec::new(),
            starts: 0,
        };
        for _ in 0..replicas {
            let admin = free_port()?;
            let child = system.spawn("persistence", admin)?;
            system.persistence.push(Replica { admin, child });
        }
        for r in &mut system.persistence {
            wait_ready(r.admin, Some(&mut r.child)).await?;
        }
        system.wait_shared().await?;
        system.start_gateway().await?;
        Ok(system)
    }

    /// Waits until every partition has exactly one owner and no replica owns more than one
    /// partition over another's share.
    async fn wait_shared(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SHARE_TIMEOUT;
        loop {
            let partitions = self.partitions().await;
            let owned = self.partitions_owned().await;
            let (least, most) = (owned.iter().min(), owned.iter().max());
            if partitions > 0
                && owned.iter().sum::<usize>() == partitions
                && least.zip(most).is_some_and(|(l, m)| m - l <= 1)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the persistence replicas did not share the {partitions} partitions out \
                     within {SHARE_TIMEOUT:?} (each owns {owned:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many partitions PARLEY_IN has: those any replica reports a lag for.
    async fn partitions(&self) -> usize {
        let mut all = std::collections::BTreeSet::new();
        for text in self.persistence_metrics().await {
            all.extend(per_partition(&text, "parley_persist_partition_lag").into_keys());
        }
        all.len()
    }

    /// How many partitions each replica writes now, in start order.
    pub async fn partitions_owned(&self) -> Vec<usize> {
        self.persistence_metrics()
            .await
            .iter()
            .map(|text| {
                per_partition(text, "parley_persist_partition_owned")
                    .values()
                    .filter(|v| **v >= 1.0)
                    .count()
            })
            .collect()
    }

    /// Each replica's `/metrics` (empty when it does not answer), in start order.
    async fn persistence_metrics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.persistence {
            out.push(http_get(r.admin, "/metrics").await.unwrap_or_default());
        }
        out
    }

    /// Messages the replicas have stored so far, together.
    pub async fn persisted(&self) -> f64 {
        let text = self.persistence_metrics().await.concat();
        text.lines()
            .filter_map(|l| l.strip_prefix("parley_messages_persisted_total "))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Starts reading the partitions' lag every second, until [`LagWatch::finish`].
    pub fn watch_lag(&self) -> LagWatch {
        let ports: Vec<u16> = self.persistence.iter().map(|r| r.admin).collect();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut worst = Lag::default();
            loop {
                for &port in &ports {
                    let text = http_get(port, "/metrics").await.unwrap_or_default();
                    let lag = per_partition(&text, "parley_persist_partition_lag");
                    let partition = lag.values().fold(0.0, |a: f64, b| a.max(*b));
                    worst.partition = worst.partition.max(partition as u64);
                    worst.total = worst.total.max(lag.values().sum::<f64>() as u64);
                }
                tokio::select! {
                    () = token.cancelled() => return worst,
                    () = tokio::time::sleep(LAG_EVERY) => {}
                }
            }
        });
        LagWatch { stop, task }
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

    /// The replicas' pids, in start order.
    pub fn persistence_pids(&self) -> Vec<u32> {
        self.persistence
            .iter()
            .filter_map(|r| r.child.id())
            .collect()
    }

    /// The mean of each pipeline stage so far, from the roles' own latency histograms
    /// (`/metrics`): where a message's time goes.
    pub async fn stage_means(&self) -> Vec<(&'static str, f64)> {
        let gateway = http_get(self.gateway_admin, "/metrics")
            .await
            .unwrap_or_default();
        // The replicas' histograms added together: one histogram of all their batches.
        let persistence = self.persistence_metrics().await.concat();
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

    /// Stops every role (SIGTERM, so they flush and ack what they hold) and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_gateway("TERM").await?;
        for pid in self.persistence_pids() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        for r in &mut self.persistence {
            r.child.wait().await?;
        }
        Ok(())
    }
}

/// The worst partition lag seen while the load ran: commands of PARLEY_IN written by no
/// replica yet, or not yet acknowledged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lag {
    /// The most any one partition held.
    pub partition: u64,
    /// The most all partitions held together.
    pub total: u64,
}

/// Reads of the partitions' lag, in the background while the load runs.
pub struct LagWatch {
    stop: CancellationToken,
    task: JoinHandle<Lag>,
}

impl LagWatch {
    /// Stops reading; the worst lag seen.
    pub async fn finish(self) -> Lag {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The values of a gauge labelled by `partition` in a Prometheus text exposition, by
/// partition: `<name>{partition="3"} 17`.
fn per_partition(text: &str, name: &str) -> BTreeMap<u16, f64> {
    text.lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.split_once("} ")?;
            let partition = labels
                .split(',')
                .find_map(|l| l.strip_prefix("partition=\""))?
                .trim_end_matches('"');
            Some((partition.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// A port free on every address, below the ephemeral range: the bench's own client sockets
/// take ephemeral ports on 127.0.0.x by the thousand (and linger in TIME_WAIT), so a port the
/// kernel picks there may be taken again before a role binds it. Each bench process starts at
/// a random point of the range (not at its pid: benches started together have neighbouring
/// pids, and two of them would test and hand out the same ports before either role bound one).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static START: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = *START.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        (random % u64::from(SPAN)) as u16
    });
    for _ in 0..SPAN {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {LOW} and {}", LOW + SPAN)
}

/// Polls `/readyz` on the admin port until it answers 200; fails early if the process exits.
pub(crate) async fn wait_ready(admin: u16, child: Option<&mut Child>) -> anyhow::Result<()> {
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

/// `<name>_sum / <name>_count` from a Prometheus text exposition, or from several
/// concatenated (each line of the name counts).
fn histogram_mean(text: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| -> f64 {
        let key = format!("{name}_{suffix}");
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(key.as_str()))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = value("count");
    (count > 0.0).then(|| value("sum") / count)
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

/// The process the clients connect to, named as in the figures.
#[derive(Clone, Copy, Debug)]
pub enum Front {
    /// Parley's gateway (its pid, when the bench knows it). NATS is part of that system.
    Gateway(Option<u32>),
    /// The reference server's one Node process (`--reference`), which uses no NATS.
    Node(Option<u32>),
}

impl Front {
    pub fn name(self) -> &'static str {
        match self {
            Front::Gateway(_) => "gateway",
            Front::Node(_) => "node",
        }
    }

    pub fn pid(self) -> Option<u32> {
        match self {
            Front::Gateway(pid) | Front::Node(pid) => pid,
        }
    }
}

/// CPU used by each part of the system, to say what bounds a figure: the gateway (or the
/// reference's `node`) and persistence by pid, NATS (for Parley) and Postgres by process name
/// (all of Postgres's backends), and the bench itself.
/// With several persistence replicas, `persistence` is their sum and `persistence 1`,
/// `persistence 2` ... each one's.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    at: Option<Instant>,
    seconds: BTreeMap<String, f64>,
}

impl CpuSample {
    pub fn take(front: Front, persistence: &[u32]) -> CpuSample {
        let mut seconds = BTreeMap::new();
        let mut add = |name: &str, s: Option<f64>| {
            *seconds.entry(name.to_owned()).or_insert(0.0) += s.unwrap_or(0.0);
        };
        add(front.name(), front.pid().and_then(cpu_seconds));
        let nats = matches!(front, Front::Gateway(_));
        for (n, &pid) in persistence.iter().enumerate() {
            let s = cpu_seconds(pid);
            add("persistence", s);
            if persistence.len() > 1 {
                add(&format!("persistence {}", n + 1), s);
            }
        }
        add("bench", cpu_seconds(std::process::id()));
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for pid in dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
            {
                match comm(pid).as_deref() {
                    Some("nats-server") if nats => add("nats", cpu_seconds(pid)),
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

    /// CPU seconds each part used between `earlier` and this sample.
    pub fn seconds_since(&self, earlier: &CpuSample) -> BTreeMap<String, f64> {
        self.seconds
            .iter()
            .map(|(k, v)| {
                let before = earlier.seconds.get(k).copied().unwrap_or(0.0);
                (k.clone(), (v - before).max(0.0))
            })
            .collect()
    }

    /// Cores used by each part between `earlier` and this sample (1.0 = one core busy).
    /// Postgres backends that ended in between are not counted.
    pub fn cores_since(&self, earlier: &CpuSample) -> BTreeMap<String, f64> {
        let (Some(now), Some(then)) = (self.at, earlier.at) else {
            return BTreeMap::new();
        };
        let wall = now.duration_since(then).as_secs_f64().max(1e-3);
        self.seconds
            .iter()
            .map(|(k, v)| {
                let before = earlier.seconds.get(k).copied().unwrap_or(0.0);
                (k.clone(), ((v - before) / wall * 100.0).round() / 100.0)
            })
            .collect()
    }
}

/// CPU microseconds per message of each part, from the CPU seconds each used while
/// `messages` went through, and their sum over the system under test as `total` (the bench's
/// own CPU, the load generator's, is shown but not counted in it). Empty for no messages.
pub fn micros_per_message(seconds: &BTreeMap<String, f64>, messages: u64) -> BTreeMap<String, f64> {
    if messages == 0 {
        return BTreeMap::new();
    }
    let per = |s: f64| (s * 1e6 / messages as f64 * 10.0).round() / 10.0;
    let mut out: BTreeMap<String, f64> = seconds
        .iter()
        // `persistence 1`, `persistence 2`, ... are parts of `persistence`.
        .map(|(k, s)| (k.clone(), per(*s)))
        .collect();
    let total: f64 = seconds
        .iter()
        .filter(|(k, _)| *k != "bench" && !k.starts_with("persistence "))
        .map(|(_, s)| *s)
        .sum();
    out.insert("total".into(), per(total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_per_message_divide_each_parts_cpu_and_total_the_system_under_test() {
        let seconds = BTreeMap::from([
            ("gateway".to_owned(), 0.27),
            ("persistence".to_owned(), 0.2),
            ("persistence 1".to_owned(), 0.12),
            ("persistence 2".to_owned(), 0.08),
            ("nats".to_owned(), 0.25),
            ("postgres".to_owned(), 0.28),
            ("bench".to_owned(), 0.5),
        ]);
        let per = micros_per_message(&seconds, 2_000);
        assert_eq!(per["gateway"], 135.0);
        assert_eq!(per["persistence 1"], 60.0);
        assert_eq!(per["bench"], 250.0);
        // gateway + persistence + nats + postgres; not the bench, not the replicas twice.
        assert_eq!(per["total"], 500.0);
        assert!(micros_per_message(&seconds, 0).is_empty());
    }

    #[test]
    fn per_partition_reads_each_partitions_value_of_one_gauge() {
        let text = "# TYPE parley_persist_partition_lag gauge\n\
                    parley_persist_partition_lag{partition=\"0\"} 12\n\
                    parley_persist_partition_lag{partition=\"15\"} 0\n\
                    parley_persist_partition_owned{partition=\"0\"} 1\n";
        let lag = per_partition(text, "parley_persist_partition_lag");
        assert_eq!(lag, BTreeMap::from([(0, 12.0), (15, 0.0)]));
        assert_eq!(
            per_partition(text, "parley_persist_partition_owned").len(),
            1
        );
    }

    #[test]
    fn histogram_mean_adds_up_the_replicas_histograms() {
        let one = "parley_persist_batch_size_sum 300\nparley_persist_batch_size_count 3\n";
        let two = "parley_persist_batch_size_sum 100\nparley_persist_batch_size_count 1\n";
        let both = [one, two].concat();
        assert_eq!(
            histogram_mean(&both, "parley_persist_batch_size"),
            Some(100.0)
        );
        assert_eq!(histogram_mean("", "parley_persist_batch_size"), None);
    }
}

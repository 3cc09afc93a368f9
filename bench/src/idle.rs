//! `idle`: hold N authenticated connections, each its own user, and measure what they cost the
//! gateway: its resident memory before any connects and after all of them, per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Incoming};
use crate::ctx::Ctx;
use crate::report::Report;
use crate::system;

/// Time for the gateway to settle after the last connect, before memory is read.
const SETTLE: Duration = Duration::from_secs(3);

pub async fn run(
    ctx: &Ctx,
    connections: usize,
    per_user: usize,
    hold: Duration,
) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "idle",
        json!({
            "transport": ctx.target.transport,
            "connections": connections,
            "connectionsPerUser": per_user,
            "holdSeconds": hold.as_secs_f64(),
        }),
    );
    let front = ctx.front();
    let pid = front.pid();
    if pid.is_none() {
        report.problem("the gateway's pid is unknown (start it with --parley, or pass --gateway-pid): no memory figures");
    }
    let rss = || pid.and_then(system::rss_bytes).unwrap_or(0) as f64;
    let before = rss();

    let users: Vec<String> = (0..connections)
        .map(|n| ctx.user("idle", n / per_user.max(1)))
        .collect();
    eprintln!(
        "idle: connecting {connections} clients over {:?}",
        ctx.target.transport
    );
    let cpu_before = ctx.cpu();
    let (clients, connect_time) = ctx.connect_all(&users).await?;
    report.cpu_cores = ctx.cpu().cores_since(&cpu_before);
    report.figure("connections", connections as f64, "");
    report.figure("connect time", connect_time.as_secs_f64(), "s");
    report.figure(
        "connects/s",
        connections as f64 / connect_time.as_secs_f64().max(1e-6),
        "conn/s",
    );

    // Each client only keeps its connection alive (pongs), and notes if it ends.
    let ended = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let holders: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (ended, stop) = (ended.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let frame = tokio::select! {
                        () = stop.cancelled() => break,
                        f = c.reader.next() => f,
                    };
                    match frame {
                        Some(Ok(Message::Text(t))) => {
                            if matches!(client::parse(c.transport, &t), Incoming::Ping)
                                && client::pong(&c.writer).await.is_err()
                            {
                                ended.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            ended.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                let _ = c.writer.lock().await.close().await;
            })
        })
        .collect();

    tokio::time::sleep(SETTLE).await;
    let after = rss();
    eprintln!("idle: holding for {hold:?}");
    tokio::time::sleep(hold).await;
    let held = rss();
    let lost = ended.load(Ordering::Relaxed);
    if lost > 0 {
        report.problem(format!("{lost} connections ended while idle"));
    }
    report.figure("still connected", (connections as u64 - lost) as f64, "");
    if pid.is_some() {
        let mib = (1 << 20) as f64;
        let name = front.name();
        report.figure(format!("{name} RSS before"), before / mib, "MiB");
        report.figure(format!("{name} RSS connected"), after / mib, "MiB");
        report.figure(format!("{name} RSS after hold"), held / mib, "MiB");
        report.figure(
            format!("{name} memory per connection"),
            (held.max(after) - before) / connections.max(1) as f64 / 1024.0,
            "KiB",
        );
    }
    stop.cancel();
    for h in holders {
        let _ = h.await;
    }
    Ok(report)
}

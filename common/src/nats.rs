//! Connecting to NATS and declaring the JetStream streams every role relies on.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsConfig;
use crate::subjects::Subjects;

/// The broker's dedupe window for `Nats-Msg-Id` (DESIGN §3: at least two minutes).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// The largest command accepted into `PARLEY_IN`: a frame is at most 64 KiB by default.
pub const MAX_COMMAND_BYTES: i32 = 256 * 1024;

/// How long a dead-lettered command is kept for an operator to look at.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Connects, trying again every [`reconnect_delay`] for up to `cfg.connect_wait` while the server
/// does not answer (it may be starting beside us), and refusing a server older than NATS 2.11
/// ([`crate::nats_version`]); once connected the client reconnects for ever, quickly
/// ([`reconnect_delay`]), and callers see `unavailable` meanwhile.
/// `role` labels the reconnect counter.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    role: &'static str,
) -> Result<async_nats::Client, SetupError> {
    let reconnects = crate::metrics::nats_reconnects(role);
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + cfg.connect_wait;
    let mut attempt = 0;
    let client = loop {
        let (reconnects, lost) = (reconnects.clone(), lost.clone());
        let connected = crate::nats_auth::apply(async_nats::ConnectOptions::new(), cfg)
            .name(name)
            .event_callback(move |event| {
                let (reconnects, lost) = (reconnects.clone(), lost.clone());
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::Disconnected => {
                            lost.store(true, Ordering::Relaxed);
                            tracing::warn!("NATS connection lost, reconnecting");
                        }
                        async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
                            reconnects.inc();
                            tracing::info!("NATS connection re-established");
                        }
                        _ => {}
                    }
                }
            })
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(crate::rpc::REQUEST_TIMEOUT))
            .reconnect_delay_callback(reconnect_delay)
            .max_reconnects(None)
            .connect(cfg.servers.clone())
            .await;
        match connected {
            Ok(client) => break client,
            Err(e) if tokio::time::Instant::now() < deadline && retryable(&e) => {
                if attempt == 0 {
                    tracing::info!(url = %cfg.url, error = %e, "NATS does not answer yet; waiting for it (NATS_CONNECT_WAIT_SECONDS)");
                }
                attempt += 1;
                tokio::time::sleep(reconnect_delay(attempt + 1)).await;
            }
            Err(e) => {
                return Err(SetupError(format!(
                    "cannot connect to NATS at {}: {e}",
                    cfg.url
                )));
            }
        }
    };
    crate::nats_version::check(&client.server_info().version)
        .map_err(|e| SetupError(e.to_string()))?;
    Ok(client)
}

/// Whether a failed first connection may succeed later (the server is not up yet), rather than
/// being a mistake to report at once (bad credentials, a malformed URL).
fn retryable(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as K;
    matches!(e.kind(), K::Io | K::TimedOut | K::Dns)
}

/// The wait before reconnect attempt `attempts` (1-based): at once, then 50 ms doubling to
/// 500 ms. A role's NATS is on the same network; after a restart of the server every role
/// should be back within half a second of it (async-nats's default grows to 4 s, which alone
/// used most of the 3 s recovery budget, docs/operations.md).
pub fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis((25u64 << (n - 1).min(5)).min(500)),
    }
}

/// Asks the server at `cfg.url` which version it runs, and refuses one older than Parley
/// supports with the typed [`NatsTooOld`](crate::nats_version::NatsTooOld), which the binary
/// turns into exit 64. A server that does not answer passes: the role's own connect reports
/// that, with its own message.
pub async fn require_supported_server(
    cfg: &NatsConfig,
) -> Result<(), crate::nats_version::NatsTooOld> {
    let Ok(client) = crate::nats_auth::apply(async_nats::ConnectOptions::new(), cfg)
        .name("parley-version-check")
        .connection_timeout(Duration::from_secs(5))
        .connect(cfg.servers.clone())
        .await
    else {
        return Ok(());
    };
    let checked = crate::nats_version::check(&client.server_info().version);
    drop(client);
    checked
}

/// NATS could not be reached or a stream could not be declared; the message says which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// Stream settings operators may change (`PARLEY_STREAM_REPLICAS`, `PARLEY_PARTITIONS`).
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// 1 on a single server; 3 on a production JetStream cluster.
    pub replicas: usize,
    /// How many partitions `PARLEY_IN` is split into: fixed for the stream's life (changing it
    /// is a migration, docs/durability.md).
    pub partitions: u16,
}

/// The default `PARLEY_PARTITIONS`.
pub const DEFAULT_PARTITIONS: u16 = 16;

/// The most partitions a stream may have.
pub const MAX_PARTITIONS: u16 = 1024;

/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

impl StreamSettings {
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let partitions: u16 = env.parse_or("PARLEY_PARTITIONS", DEFAULT_PARTITIONS)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(crate::config::ConfigError::Invalid {
                name: "PARLEY_PARTITIONS",
                reason: format!("{partitions}: expected 1 to {MAX_PARTITIONS}"),
            });
        }
        let replicas: usize = env.parse_or("PARLEY_STREAM_REPLICAS", 1)?;
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(crate::config::ConfigError::Invalid {
                name: "PARLEY_STREAM_REPLICAS",
                reason: format!(
                    "{replicas}: expected 1 to {MAX_REPLICAS} (JetStream's limit; 3 on a \
                     three-node cluster, 1 on a single server)"
                ),
            });
        }
        Ok(Self {
            replicas,
            partitions,
        })
    }
}

/// The configuration of `PARLEY_IN`: work-queue retention (a command is gone once persistence
/// acks it), file storage, and a dedupe window so a client's retry is dropped by the broker.
/// `discard: new` makes a full stream refuse new sends (the client sees `unavailable`) rather than
/// silently dropping accepted ones. The subject transform stores each command under its
/// conversation's partition (`{p}.part.<n>.…`), which one persistence replica at a time writes.
pub fn stream_in_config(subjects: &Subjects, settings: StreamSettings) -> stream::Config {
    let (source, destination) = subjects.partition_transform(settings.partitions);
    stream::Config {
        name: subjects.stream_in(),
        description: Some("Parley commands waiting to be persisted".into()),
        subjects: vec![subjects.in_all()],
        subject_transform: Some(stream::SubjectTransform {
            source,
            destination,
        }),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: DEDUPE_WINDOW,
        max_message_size: MAX_COMMAND_BYTES,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// How many partitions an existing `PARLEY_IN` has: `None` for a stream from before partitions.
pub fn partitions_of(config: &stream::Config) -> Option<u16> {
    let dest = &config.subject_transform.as_ref()?.destination;
    let start = dest.find("{{partition(")? + "{{partition(".len();
    let end = start + dest[start..].find(',')?;
    dest[start..end].trim().parse().ok()
}

/// Whether `PARLEY_IN` as found may be brought to `wanted`: a stream's partition count (or its
/// lack of partitions) changes only while it is empty, so no stored command is stranded under
/// a subject no consumer reads.
fn check_partitions(
    found: &stream::Config,
    messages: u64,
    wanted: StreamSettings,
) -> Result<(), SetupError> {
    let had = partitions_of(found);
    if had == Some(wanted.partitions) || messages == 0 {
        return Ok(());
    }
    let had = had.map_or_else(|| "no partitions".to_owned(), |n| format!("{n} partitions"));
    Err(SetupError(format!(
        "stream {} has {had} and holds {} commands, but PARLEY_PARTITIONS is {}: the partition \
         count changes only on an empty stream (stop the gateways, let persistence drain the \
         stream, then restart every role with the new count; see docs/durability.md)",
        found.name, messages, wanted.partitions
    )))
}
/// The configuration of `PARLEY_DLQ`: commands that can never succeed, kept for two weeks.
pub fn stream_dlq_config(subjects: &Subjects, settings: StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects.stream_dlq(),
        description: Some("Parley commands that can never succeed, with the reason".into()),
        subjects: vec![subjects.dlq()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: DLQ_MAX_AGE,
        max_bytes: 1 << 30,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// The stream behind the presence key-value bucket, declared by hand: the KV create call of
/// async-nats 0.51 does not parse NATS 2.9's answer, while `get_key_value` on a stream shaped
/// like this works. One value per key, no expiry (records hold `lastSeenAt`; liveness is in
/// their heartbeat times), file storage so `lastSeenAt` survives a broker restart.
pub fn presence_bucket_config(subjects: &Subjects, settings: StreamSettings) -> stream::Config {
    let bucket = subjects.presence_bucket();
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("Parley presence: who is connected where, and when last seen".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        max_message_size: 64 * 1024,
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// Declares the presence bucket and opens it.
pub async fn ensure_presence_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: StreamSettings,
) -> Result<jetstream::kv::Store, SetupError> {
    declare(js, presence_bucket_config(subjects, settings)).await?;
    js.get_key_value(subjects.presence_bucket())
        .await
        .map_err(|e| SetupError(format!("cannot open the presence bucket: {e}")))
}

/// Creates `PARLEY_IN` and `PARLEY_DLQ`, or brings an existing one to this configuration.
/// Safe to call from every replica of every role at every start.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: StreamSettings,
) -> Result<(), SetupError> {
    match js.get_stream(subjects.stream_in()).await {
        Ok(found) => {
            let info = found.cached_info();
            check_partitions(&info.config, info.state.messages, settings)?;
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
        Err(e) => {
            return Err(SetupError(format!(
                "cannot read stream {}: {e}",
                subjects.stream_in()
            )));
        }
    }
    for config in [
        stream_in_config(subjects, settings),
        stream_dlq_config(subjects, settings),
    ] {
        declare(js, config).await?;
    }
    Ok(())
}

/// Creates a stream, or brings an existing one to `config`. A stream kept on another number of
/// replicas than `PARLEY_STREAM_REPLICAS` is scaled to it (JetStream copies the data to the new
/// replicas, or drops the extra ones); when the server refuses (more replicas than it has
/// servers, or a single server asked for more than one) the error names both counts.
async fn declare(js: &jetstream::Context, config: stream::Config) -> Result<(), SetupError> {
    let name = config.name.clone();
    let wanted = config.num_replicas;
    let had = match js.get_stream(&name).await {
        Ok(found) => Some(found.cached_info().config.num_replicas),
        Err(_) => None,
    };
    if let Some(had) = had.filter(|&had| had != wanted) {
        tracing::info!(stream = %name, from = had, to = wanted, "changing the stream's replica count (PARLEY_STREAM_REPLICAS)");
    }
    // A stream whose replicas are changing (another role scaling it at the same start) may not
    // answer within the request timeout: ask again a few times before giving up.
    let mut attempt = 1;
    loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut
                    && attempt < DECLARE_ATTEMPTS =>
            {
                tracing::warn!(stream = %name, attempt, "the stream did not answer in time, asking again");
                attempt += 1;
            }
            Err(e) => {
                return Err(SetupError(replicas_refused(
                    &name,
                    had,
                    wanted,
                    &e.to_string(),
                )));
            }
        }
    }
}

/// How many times a stream is asked to take its configuration before a role gives up.
const DECLARE_ATTEMPTS: u32 = 4;

/// The message for a stream the server would not declare: with the replica counts and what to
/// do when they are the cause.
fn replicas_refused(name: &str, had: Option<usize>, wanted: usize, error: &str) -> String {
    let about_replicas = error.contains("replicas") || error.contains("insufficient resources");
    match had {
        Some(had) if had != wanted => format!(
            "cannot change stream {name} from {had} to {wanted} replicas \
             (PARLEY_STREAM_REPLICAS={wanted}): {error}; every role that declares the streams \
             (gateway, persistence) must use the same count, and a count above 1 needs a \
             JetStream cluster with at least that many servers"
        ),
        _ if about_replicas && wanted > 1 => format!(
            "cannot declare stream {name} with {wanted} replicas (PARLEY_STREAM_REPLICAS={wanted}): \
             {error}; a count above 1 needs a JetStream cluster with at least that many servers \
             (set PARLEY_STREAM_REPLICAS=1 on a single server)"
        ),
        _ => format!("cannot declare stream {name}: {error}"),
    }
}

/// Waits until the server has processed everything `client` sent before (subscriptions above
/// all): a message to a fresh inbox comes back only after the server handled the commands ahead
/// of it. `flush` alone only empties the local buffer.
pub async fn round_trip(client: &async_nats::Client) -> Result<(), SetupError> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| SetupError(e.to_string()))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| SetupError(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(5), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(SetupError("the NATS server did not echo in time".into())),
    }
}

/// Publishes one delivery event (a server → client frame) to each of `users` on
/// `{p}.out.user.<user>`, with `headers` (trace context). Delivery events are at most once, so a
/// failed publish is logged and the rest still go: clients close gaps with `sync`.
pub async fn deliver(
    client: &async_nats::Client,
    subjects: &Subjects,
    users: impl IntoIterator<Item = &str>,
    headers: &async_nats::HeaderMap,
    event: &bytes::Bytes,
) {
    for user in users {
        if let Err(e) = client
            .publish_with_headers(subjects.out_user(user), headers.clone(), event.clone())
            .await
        {
            tracing::warn!(error = %e, "cannot publish a delivery event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(partitions: u16) -> StreamSettings {
        StreamSettings {
            replicas: 1,
            partitions,
        }
    }

    #[test]
    fn the_partition_count_is_read_back_from_the_stream_config() {
        let subjects = Subjects::new("parley").unwrap();
        for p in [1, 16, 1024] {
            assert_eq!(
                partitions_of(&stream_in_config(&subjects, settings(p))),
                Some(p)
            );
        }
        assert_eq!(partitions_of(&stream::Config::default()), None);
    }

    #[test]
    fn the_partition_count_changes_only_on_an_empty_stream() {
        let subjects = Subjects::new("parley").unwrap();
        let sixteen = stream_in_config(&subjects, settings(16));
        assert!(check_partitions(&sixteen, 500, settings(16)).is_ok());
        assert!(check_partitions(&sixteen, 0, settings(8)).is_ok());
        let refused = check_partitions(&sixteen, 500, settings(8)).unwrap_err().0;
        assert!(
            refused.contains("16 partitions")
                && refused.contains("500 commands")
                && refused.contains("PARLEY_PARTITIONS is 8")
                && refused.contains("docs/durability.md"),
            "{refused}"
        );
        let before = stream::Config {
            name: "PARLEY_IN".into(),
            ..Default::default()
        };
        assert!(check_partitions(&before, 0, settings(16)).is_ok());
        let refused = check_partitions(&before, 3, settings(16)).unwrap_err().0;
        assert!(refused.contains("has no partitions"), "{refused}");
    }

    #[test]
    fn replicas_from_the_environment_are_checked() {
        use crate::config::Env;
        let read =
            |v: &str| StreamSettings::from_env(&Env::from_pairs([("PARLEY_STREAM_REPLICAS", v)]));
        assert_eq!(read("3").unwrap().replicas, 3);
        assert_eq!(
            StreamSettings::from_env(&Env::default()).unwrap().replicas,
            1
        );
        for bad in ["0", "6", "-1", "three"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("PARLEY_STREAM_REPLICAS"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_stream_takes_the_replica_count() {
        let subjects = Subjects::new("parley").unwrap();
        let three = StreamSettings {
            replicas: 3,
            partitions: 16,
        };
        for config in [
            stream_in_config(&subjects, three),
            stream_dlq_config(&subjects, three),
            presence_bucket_config(&subjects, three),
        ] {
            assert_eq!(config.num_replicas, 3, "{}", config.name);
        }
    }

    #[test]
    fn a_refused_replica_count_is_explained() {
        let changed = replicas_refused("P_IN", Some(1), 3, "insufficient resources");
        assert!(
            changed.contains("from 1 to 3 replicas")
                && changed.contains("PARLEY_STREAM_REPLICAS=3"),
            "{changed}"
        );
        let single = replicas_refused(
            "P_IN",
            None,
            3,
            "replicas > 1 not supported in non-clustered mode",
        );
        assert!(
            single.contains("with 3 replicas") && single.contains("PARLEY_STREAM_REPLICAS=1"),
            "{single}"
        );
        let other = replicas_refused("P_IN", Some(3), 3, "boom");
        assert_eq!(other, "cannot declare stream P_IN: boom");
    }

    #[test]
    fn partitions_from_the_environment_are_checked() {
        use crate::config::Env;
        let read = |v: &str| StreamSettings::from_env(&Env::from_pairs([("PARLEY_PARTITIONS", v)]));
        assert_eq!(read("8").unwrap().partitions, 8);
        assert_eq!(
            StreamSettings::from_env(&Env::default())
                .unwrap()
                .partitions,
            16
        );
        for bad in ["0", "1025", "-1", "many"] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reconnects_start_at_once_and_never_wait_more_than_half_a_second() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3), Duration::from_millis(100));
        let later: Vec<_> = (6..200).map(reconnect_delay).collect();
        assert!(
            later.iter().all(|d| *d == Duration::from_millis(500)),
            "{later:?}"
        );
    }
}

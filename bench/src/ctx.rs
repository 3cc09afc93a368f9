//! What every scenario shares: where the gateway (or the reference server) is, how to mint tokens, the run's unique
//! user names, and connecting many clients at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::client::{Client, Target};
use crate::reference::Reference;
use crate::system::{CpuSample, Front, System};

pub struct Ctx {
    pub target: Target,
    /// `AUTH_SECRET`, for HS256 tokens.
    pub secret: String,
    /// Unique to this run, so user names (and so DMs) never collide with an earlier run's.
    pub run: String,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// The gateway and persistence replicas, when the bench started them.
    pub system: Option<System>,
    /// The reference server, when the bench started it instead (`--reference`).
    pub reference: Option<Reference>,
    /// The gateway's pid when it runs elsewhere (for its memory).
    pub gateway_pid: Option<u32>,
    /// The zero of the timestamps messages carry.
    pub epoch: Instant,
}

impl Ctx {
    /// A user id for this run: `<run>-<scenario>-<n>`.
    pub fn user(&self, scenario: &str, n: usize) -> String {
        format!("{}-{scenario}-{n}", self.run)
    }

    /// An HS256 token for `user`, valid for four hours.
    pub fn token(&self, user: &str) -> String {
        token(&self.secret, user)
    }

    /// Connects every user, `connect_concurrency` at a time, each from the next source address.
    /// Returns the clients in the order of `users`, and how long it took.
    pub async fn connect_all(&self, users: &[String]) -> anyhow::Result<(Vec<Client>, Duration)> {
        let started = Instant::now();
        let clients = futures::stream::iter(users.iter().enumerate())
            .map(|(i, user)| {
                let token = self.token(user);
                let source = self.target.source(i);
                async move {
                    Client::connect_as_told(&self.target, source, &token, i as u64)
                        .await
                        .with_context(|| format!("connect {user} from {source}"))
                }
            })
            .buffered(self.connect_concurrency)
            .try_collect()
            .await?;
        Ok((clients, started.elapsed()))
    }

    pub fn gateway_pid(&self) -> Option<u32> {
        self.system
            .as_ref()
            .and_then(System::gateway_pid)
            .or(self.gateway_pid)
    }

    /// The process the clients connect to: the reference's node, or Parley's gateway.
    pub fn front(&self) -> Front {
        match &self.reference {
            Some(reference) => Front::Node(reference.pid()),
            None => Front::Gateway(self.gateway_pid()),
        }
    }

    /// The CPU each part of the system under test has used so far.
    pub fn cpu(&self) -> CpuSample {
        CpuSample::take(self.front(), &self.persistence_pids())
    }

    /// Messages stored so far, when the bench can read it: from the persistence replicas'
    /// metrics, or the reference server's table.
    pub async fn persisted(&self) -> Option<f64> {
        if let Some(system) = &self.system {
            return Some(system.persisted().await);
        }
        match &self.reference {
            Some(reference) => Some(reference.persisted().await),
            None => None,
        }
    }

    /// The persistence replicas' pids, in start order (none when the bench did not start them).
    pub fn persistence_pids(&self) -> Vec<u32> {
        self.system
            .as_ref()
            .map(System::persistence_pids)
            .unwrap_or_default()
    }

    /// Microseconds since the epoch, the timestamp a message carries.
    pub fn micros(&self) -> u64 {
        micros_since(self.epoch)
    }
}

/// An HS256 token for `user` signed with `secret`, valid for four hours.
pub fn token(secret: &str, user: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 4 * 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

/// Microseconds since `epoch`: the bench's one clock for send stamps and arrival times.
pub fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

//! Signing out ends a session everywhere: the auth role announces an ended session on
//! `{p}.ctl.user.<user>`, and every gateway closes the sockets that authenticated with it and
//! remembers the session in [`RevokedSessions`], so its access tokens (which verify on their own
//! until they expire) open no new socket, pass no `auth:refresh` and make no REST call.
//!
//! A gateway that starts after the sign-out asks the auth role for the sessions revoked within
//! the access-token lifetime ([`AuthOp::Revoked`]): the database is the record, and older
//! sessions' tokens have expired anyway. Announcements are subscribed to before that load, so
//! none falls between the two. If the auth role does not answer at start (e.g. `parley all`,
//! where it starts beside the gateway), the load is retried in the background until it succeeds;
//! until then only the announcements seen since start are refused, which is logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use parley_auth::api::{AuthOp, RevokedReply, RevokedRequest, SessionRevoked};
use parley_common::domain::UserId;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state::AppState;

/// How long a revocation is kept until the auth role says otherwise: the default 15 minute
/// access-token lifetime and a minute of clock skew.
const DEFAULT_KEEP: Duration = Duration::from_secs(15 * 60 + 60);

/// The most pages one load reads (5,000 sessions each): the set's bound ends it sooner.
const MAX_PAGES: usize = 1_000;

/// Sessions signed out recently enough that their access tokens may still verify. Each entry
/// is kept until `revoked_at + keep` (then every token of the session has expired), and the set
/// holds at most `max` entries: past it the entry closest to its own expiry goes first (logged),
/// so memory stays bounded under a flood of sign-outs.
pub struct RevokedSessions {
    inner: Mutex<Inner>,
    max: usize,
}

struct Inner {
    /// Session → the Unix second its entry expires.
    until: HashMap<Uuid, i64>,
    /// The same entries in expiry order, for pruning and eviction.
    by_expiry: BTreeSet<(i64, Uuid)>,
    keep: Duration,
    evicted: u64,
}

impl RevokedSessions {
    /// `PARLEY_REVOKED_SESSIONS_MAX` entries at most.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                until: HashMap::new(),
                by_expiry: BTreeSet::new(),
                keep: DEFAULT_KEEP,
                evicted: 0,
            }),
            max: max.max(1),
        }
    }

    /// Whether `session` was signed out (and its tokens may still be live).
    pub fn contains(&self, session: &str, now: i64) -> bool {
        let Ok(id) = Uuid::parse_str(session) else {
            // Not a session the auth role issued: nothing to have revoked.
            return false;
        };
        let inner = self.inner.lock().expect("revoked lock");
        inner.until.get(&id).is_some_and(|&until| until > now)
    }

    /// Records `session` as revoked at `revoked_at` (Unix seconds).
    pub fn insert(&self, session: Uuid, revoked_at: i64, now: i64) {
        let mut inner = self.inner.lock().expect("revoked lock");
        let until = revoked_at.saturating_add(inner.keep.as_secs() as i64);
        if until <= now {
            return;
        }
        inner.prune(now);
        if let Some(old) = inner.until.insert(session, until) {
            inner.by_expiry.remove(&(old, session));
        }
        inner.by_expiry.insert((until, session));
        while inner.until.len() > self.max {
            let Some((_, first)) = inner.by_expiry.pop_first() else {
                break;
            };
            inner.until.remove(&first);
            inner.evicted += 1;
            if inner.evicted.is_power_of_two() {
                tracing::warn!(
                    evicted = inner.evicted,
                    max = self.max,
                    "revoked-session set full: forgot the oldest revocations (raise PARLEY_REVOKED_SESSIONS_MAX)"
                );
            }
        }
    }

    /// How long a revocation is kept, as the auth role reports it.
    fn set_keep(&self, keep: Duration) {
        self.inner.lock().expect("revoked lock").keep = keep;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("revoked lock").until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn prune(&mut self, now: i64) {
        while let Some(&(until, id)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.until.remove(&id);
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Subscribes to the announcements (before returning, so none after start-up is missed), loads
/// the sessions revoked before start (once before returning; then, if the auth role did not
/// answer, again in the background, quickly while it is starting),
/// and handles announcements until the returned task is aborted.
pub async fn watch(state: AppState) -> Result<tokio::task::JoinHandle<()>> {
    let nats = state.js.client();
    let mut sub = nats
        .subscribe(state.subjects.ctl_user_all())
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    parley_common::nats::round_trip(&nats)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    // The first attempt before serving, so a gateway whose auth role answers never takes a
    // signed-out token; if it does not answer yet, the rest in the background.
    let first = load(&state).await;
    let loader = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut retry = crate::startup::DependencyRetry::default();
            let mut attempt = Some(first);
            loop {
                let result = match attempt.take() {
                    Some(result) => result,
                    None => load(&state).await,
                };
                match result {
                    Ok(n) => {
                        tracing::info!(sessions = n, "loaded the recently revoked sessions");
                        return;
                    }
                    Err(e) => retry.note(&e, "cannot load the revoked sessions yet; until then only sign-outs announced since start are refused"),
                }
                if !retry.wait(&state.draining).await {
                    return;
                }
            }
        })
    };
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(event) = serde_json::from_slice::<SessionRevoked>(&msg.payload) else {
                tracing::warn!("ignoring a malformed control event");
                continue;
            };
            let Ok(user) = UserId::parse(&event.user_id) else {
                continue;
            };
            if let Ok(id) = Uuid::parse_str(&event.session_id) {
                let now = now();
                state.jwks.revoked().insert(id, now, now);
            }
            let closed = state.fanout.revoke_session(&user, &event.session_id);
            if closed > 0 {
                tracing::info!(user = %user, closed, "closed the sockets of an ended session");
            }
        }
        loader.abort();
    }))
}

/// Reads every page of [`AuthOp::Revoked`] into the set; returns how many sessions it named.
async fn load(state: &AppState) -> std::result::Result<usize, String> {
    let nats = state.js.client();
    let revoked = state.jwks.revoked();
    let mut after = None;
    let mut total = 0;
    for _ in 0..MAX_PAGES {
        let payload = serde_json::to_vec(&RevokedRequest { after }).expect("serialises");
        let reply = nats
            .request(
                state.subjects.rpc_auth(AuthOp::Revoked.as_str()),
                payload.into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let page: RevokedReply =
            parley_common::rpc::decode(&reply.payload).map_err(|e| e.message)?;
        revoked.set_keep(Duration::from_secs(page.keep_seconds));
        let now = now();
        total += page.sessions.len();
        for s in &page.sessions {
            revoked.insert(s.id, s.revoked_at, now);
        }
        after = page.sessions.last().map(|s| s.id);
        if !page.more || after.is_none() || revoked.len() >= revoked.max {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_session_is_refused_until_its_tokens_have_expired() {
        let set = RevokedSessions::new(10);
        let id = Uuid::now_v7();
        set.insert(id, 1_000, 1_000);
        assert!(set.contains(&id.to_string(), 1_000));
        let keep = DEFAULT_KEEP.as_secs() as i64;
        assert!(set.contains(&id.to_string(), 1_000 + keep - 1));
        assert!(!set.contains(&id.to_string(), 1_000 + keep));
        assert!(!set.contains("not-a-uuid", 1_000));
        assert!(!set.contains(&Uuid::now_v7().to_string(), 1_000));
    }

    #[test]
    fn a_revocation_older_than_the_token_lifetime_is_not_kept() {
        let set = RevokedSessions::new(10);
        set.insert(Uuid::now_v7(), 0, DEFAULT_KEEP.as_secs() as i64 + 1);
        assert!(set.is_empty());
    }

    #[test]
    fn the_set_is_bounded_and_forgets_what_expires_first() {
        let set = RevokedSessions::new(3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for (i, id) in ids.iter().enumerate() {
            set.insert(*id, 100 + i as i64, 100);
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains(&ids[0].to_string(), 100));
        assert!(!set.contains(&ids[1].to_string(), 100));
        assert!(set.contains(&ids[4].to_string(), 100));
    }

    #[test]
    fn expired_entries_are_pruned_as_new_ones_arrive() {
        let set = RevokedSessions::new(10);
        set.insert(Uuid::now_v7(), 0, 0);
        let keep = DEFAULT_KEEP.as_secs() as i64;
        set.insert(Uuid::now_v7(), keep, keep);
        assert_eq!(set.len(), 1);
    }
}

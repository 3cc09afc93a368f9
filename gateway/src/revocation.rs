//! Signing out closes live sockets: the auth role announces an ended session on
//! `{p}.ctl.user.<user>`, and every gateway closes the sockets that authenticated with it.

use futures::StreamExt;
use parley_auth::api::SessionRevoked;
use parley_common::domain::UserId;

use crate::error::{Error, Result};
use crate::state::AppState;

/// Subscribes (before returning, so no announcement after start-up is missed) and handles
/// announcements until the returned task is aborted.
pub async fn watch(state: AppState) -> Result<tokio::task::JoinHandle<()>> {
    let nats = state.js.client();
    let mut sub = nats
        .subscribe(state.subjects.ctl_user_all())
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    parley_common::nats::round_trip(&nats)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(event) = serde_json::from_slice::<SessionRevoked>(&msg.payload) else {
                tracing::warn!("ignoring a malformed control event");
                continue;
            };
            let Ok(user) = UserId::parse(&event.user_id) else {
                continue;
            };
            let closed = state.fanout.revoke_session(&user, &event.session_id);
            if closed > 0 {
                tracing::info!(user = %user, closed, "closed the sockets of an ended session");
            }
        }
    }))
}

//! The gateway's side of the `parley-persistence` service, and the membership cache that lets
//! a send be checked without a round trip (persistence checks again: it is the authority).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parley_common::domain::UserId;
use parley_common::rpc::{self, MembersReply, MembersRequest, OpenReply, OpenRequest};
use parley_common::subjects::{ChatOp, Subjects};
use parley_common::wire::{ApiError, Conversation};
use serde::Serialize;
use uuid::Uuid;

/// How long a conversation's member list is trusted.
const MEMBERS_TTL: Duration = Duration::from_secs(30);
/// Conversations whose members are kept.
const MEMBERS_CAPACITY: u64 = 100_000;

pub struct ChatClient {
    nats: async_nats::Client,
    subjects: Subjects,
    members: moka::future::Cache<Uuid, Arc<[String]>>,
}

impl ChatClient {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            nats,
            subjects,
            members: moka::future::Cache::builder()
                .max_capacity(MEMBERS_CAPACITY)
                .time_to_live(MEMBERS_TTL)
                .build(),
        }
    }

    /// Calls an operation; returns the reply envelope as it came when it says `ok`, so it can go
    /// to the client unchanged.
    pub async fn call<T: Serialize>(&self, op: ChatOp, req: &T) -> Result<Bytes, ApiError> {
        let payload = serde_json::to_vec(req).expect("requests always serialise");
        let mut headers = parley_common::trace::headers();
        let deadline = rpc::deadline_ms(chrono::Utc::now().timestamp_millis());
        headers.insert(rpc::DEADLINE_HEADER, deadline.to_string().as_str());
        let reply = self
            .nats
            .request_with_headers(self.subjects.rpc_chat(op), headers, payload.into())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, op = op.as_str(), "chat service did not answer");
                ApiError::unavailable()
            })?;
        #[derive(serde::Deserialize)]
        struct Head {
            ok: bool,
        }
        match serde_json::from_slice::<Head>(&reply.payload) {
            Ok(Head { ok: true }) => Ok(reply.payload),
            _ => Err(rpc::decode::<serde_json::Value>(&reply.payload)
                .err()
                .unwrap_or_else(ApiError::unavailable)),
        }
    }

    /// Opens (or finds) a conversation and remembers its members.
    pub async fn open(&self, req: &OpenRequest) -> Result<Conversation, ApiError> {
        let raw = self.call(ChatOp::Open, req).await?;
        let reply: OpenReply = rpc::decode(&raw)?;
        self.members
            .insert(
                reply.conversation.id,
                reply.conversation.participant_ids.clone().into(),
            )
            .await;
        Ok(reply.conversation)
    }

    /// Forgets what is cached of a conversation whose members changed.
    pub async fn forget(&self, conversation: Uuid) {
        self.members.invalidate(&conversation).await;
    }

    /// The members of `conversation` when `user` is one of them; `forbidden` otherwise.
    pub async fn members_for(
        &self,
        conversation: Uuid,
        user: &UserId,
    ) -> Result<Arc<[String]>, ApiError> {
        if let Some(members) = self.members.get(&conversation).await
            && members.iter().any(|m| m == user.as_str())
        {
            return Ok(members);
        }
        // Not cached, or cached without this user (who may have just joined): ask.
        self.members_fresh(conversation, user).await
    }

    /// The members of `conversation` when `user` is one of them, asked of persistence (the
    /// authority) whatever is cached; `forbidden` otherwise.
    pub async fn members_fresh(
        &self,
        conversation: Uuid,
        user: &UserId,
    ) -> Result<Arc<[String]>, ApiError> {
        let raw = self
            .call(
                ChatOp::Members,
                &MembersRequest {
                    user_id: user.clone(),
                    conversation_id: conversation,
                },
            )
            .await?;
        let reply: MembersReply = rpc::decode(&raw)?;
        let members: Arc<[String]> = reply.participant_ids.into();
        self.members.insert(conversation, members.clone()).await;
        Ok(members)
    }
}

/// Drops cached members when persistence announces a membership change on
/// `{p}.ctl.conversation.<id>`, so a removed member stops hearing of a conversation on every
/// gateway at once. Subscribed before this returns.
pub async fn watch_changes(
    state: crate::state::AppState,
) -> crate::error::Result<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    let nats = state.js.client();
    let nats_error = |e: &dyn std::fmt::Display| crate::error::Error::Nats(e.to_string());
    let mut sub = nats
        .subscribe(state.subjects.ctl_conversation_all())
        .await
        .map_err(|e| nats_error(&e))?;
    parley_common::nats::round_trip(&nats)
        .await
        .map_err(|e| nats_error(&e))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            match state.subjects.parse_ctl_conversation(msg.subject.as_str()) {
                Ok(id) => state.chat.forget(id).await,
                Err(e) => tracing::warn!(error = %e, "ignoring a control event"),
            }
        }
    }))
}

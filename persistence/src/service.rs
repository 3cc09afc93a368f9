//! The `parley-persistence` NATS service: one endpoint per [`ChatOp`] under `{p}.rpc.chat`, in
//! the service API's queue group, so replicas share the load and `$SRV` discovery and stats work.

use bytes::Bytes;
use parley_common::service::{NatsService, answer};
use parley_common::subjects::ChatOp;
use tokio_util::sync::CancellationToken;

use crate::chat::{self, ChatContext};
use crate::error::{Error, Result};

/// Requests handled at once by one replica; more wait in NATS.
const MAX_CONCURRENT_REQUESTS: usize = 256;

pub const SERVICE_NAME: &str = parley_common::nats_auth::BrokerRole::Persistence.service_name();

/// The service with its endpoints subscribed, ready to [`ChatService::run`].
pub struct ChatService {
    ctx: ChatContext,
    inner: NatsService<ChatOp>,
}

impl ChatService {
    /// Registers the service; once this returns, requests find a responder.
    pub async fn start(ctx: ChatContext) -> Result<Self> {
        let inner = NatsService::start(
            &ctx.nats,
            SERVICE_NAME,
            "Parley chat: conversations, members, history, sync, edits and deletes",
            ctx.subjects.rpc_chat_group(),
            ChatOp::ALL.map(|op| (op, op.as_str())),
        )
        .await
        .map_err(Error::nats)?;
        Ok(Self { ctx, inner })
    }

    /// Serves the chat queries until `shutdown` is cancelled, then stops taking requests and
    /// lets those in hand finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let ctx = self.ctx;
        self.inner
            .run(MAX_CONCURRENT_REQUESTS, shutdown, move |op, payload| {
                let ctx = ctx.clone();
                async move { handle(&ctx, op, &payload).await }
            })
            .await;
        Ok(())
    }
}

async fn handle(ctx: &ChatContext, op: ChatOp, payload: &[u8]) -> Bytes {
    match op {
        ChatOp::Open => answer(payload, |r| chat::open(ctx, r)).await,
        ChatOp::History => answer(payload, |r| chat::history(ctx, r)).await,
        ChatOp::Sync => answer(payload, |r| chat::sync(ctx, r)).await,
        ChatOp::Members => answer(payload, |r| chat::members(ctx, r)).await,
        ChatOp::List => answer(payload, |r| chat::list(ctx, r)).await,
        ChatOp::Edit => answer(payload, |r| chat::edit(ctx, r)).await,
        ChatOp::Delete => answer(payload, |r| chat::delete(ctx, r)).await,
        ChatOp::MemberAdd => answer(payload, |r| chat::member_add(ctx, r)).await,
        ChatOp::MemberRemove => answer(payload, |r| chat::member_remove(ctx, r)).await,
        ChatOp::Contacts => answer(payload, |r| chat::contacts(ctx, r)).await,
    }
}

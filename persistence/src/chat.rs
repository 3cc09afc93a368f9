//! The chat queries behind the `parley-persistence` service, as plain functions of a
//! [`ChatContext`] and a request. Each checks membership itself: no user ever sees a
//! conversation they are not in, and "not a member" and "no such conversation" read the same.

use std::collections::BTreeSet;

use parley_common::domain::UserId;
use parley_common::rpc::{
    HistoryRequest, MembersReply, MembersRequest, MessagesReply, OpenReply, OpenRequest, SyncReply,
    SyncRequest,
};
use parley_common::subjects::Subjects;
use parley_common::wire::{ApiError, Conversation, ServerEvent};
use sqlx::PgPool;

use crate::error::Error;
use crate::store::{conversations, messages};

/// The most members a conversation opened in one call may have.
pub const MAX_PARTICIPANTS: usize = 1_000;
/// The longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 200;
pub const SYNC_DEFAULT_LIMIT: u32 = 200;
pub const SYNC_MAX_LIMIT: u32 = 1_000;
/// The most conversations one `sync` may name.
pub const SYNC_MAX_CONVERSATIONS: usize = 1_000;

/// What the queries need.
#[derive(Clone)]
pub struct ChatContext {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
}

/// `conversation:open`: the caller is a member whether listed or not; two members and no title
/// is a direct conversation, the same one every time for the same pair; anything else is a new
/// group. Every member is told `conversation:new` when one is created.
#[tracing::instrument(skip_all, fields(user = %req.user_id))]
pub async fn open(ctx: &ChatContext, req: OpenRequest) -> Result<OpenReply, ApiError> {
    let mut members: BTreeSet<&str> = req.participant_ids.iter().map(UserId::as_str).collect();
    members.insert(req.user_id.as_str());
    if members.len() < 2 {
        return Err(ApiError::invalid(
            "a conversation needs at least one participant besides you",
        ));
    }
    if members.len() > MAX_PARTICIPANTS {
        return Err(ApiError::invalid(format!(
            "a conversation may have at most {MAX_PARTICIPANTS} participants"
        )));
    }
    let title = req
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(ApiError::invalid(format!(
            "title is longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    let members: Vec<String> = members.into_iter().map(str::to_owned).collect();

    let mut tx = ctx.pool.begin().await.map_err(Error::from)?;
    let (conversation, created) = if members.len() == 2 && title.is_none() {
        conversations::open_direct(&mut tx, [&members[0], &members[1]])
            .await
            .map_err(Error::from)?
    } else {
        let c = conversations::create_group(&mut tx, title, &members)
            .await
            .map_err(Error::from)?;
        (c, true)
    };
    tx.commit().await.map_err(Error::from)?;

    if created {
        announce_conversation(ctx, &conversation).await;
    }
    Ok(OpenReply { conversation })
}

async fn announce_conversation(ctx: &ChatContext, conversation: &Conversation) {
    let event = ServerEvent::ConversationNew(conversation.clone()).to_json();
    for user in &conversation.participant_ids {
        if let Err(e) = ctx
            .nats
            .publish(ctx.subjects.out_user(user), event.clone())
            .await
        {
            // Delivery events are at most once; clients learn of it by listing conversations.
            tracing::warn!(error = %e, "cannot announce a new conversation");
        }
    }
}

/// `message:history`: a page of messages before `beforeSeq` (the newest when absent), in seq
/// order.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversation = %req.conversation_id))]
pub async fn history(ctx: &ChatContext, req: HistoryRequest) -> Result<MessagesReply, ApiError> {
    let limit = req
        .limit
        .unwrap_or(HISTORY_DEFAULT_LIMIT)
        .clamp(1, HISTORY_MAX_LIMIT);
    let before = req.before_seq.unwrap_or(i64::MAX);
    if before < 1 {
        return Err(ApiError::invalid("beforeSeq must be at least 1"));
    }
    require_member(ctx, req.conversation_id, &req.user_id).await?;
    let mut page = messages::before(&ctx.pool, req.conversation_id, before, i64::from(limit))
        .await
        .map_err(Error::from)?;
    page.reverse();
    Ok(MessagesReply { messages: page })
}

/// `sync`: everything after each given position, in seq order per conversation, paged with
/// `hasMore`. Straight from Postgres, so there is no window after which recovery gives up.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversations = req.conversations.len()))]
pub async fn sync(ctx: &ChatContext, req: SyncRequest) -> Result<SyncReply, ApiError> {
    if req.conversations.len() > SYNC_MAX_CONVERSATIONS {
        return Err(ApiError::invalid(format!(
            "sync may name at most {SYNC_MAX_CONVERSATIONS} conversations"
        )));
    }
    let limit = req
        .limit
        .unwrap_or(SYNC_DEFAULT_LIMIT)
        .clamp(1, SYNC_MAX_LIMIT);
    let mut ids = Vec::with_capacity(req.conversations.len());
    let mut afters = Vec::with_capacity(req.conversations.len());
    for p in &req.conversations {
        if p.after_seq < 0 {
            return Err(ApiError::invalid("afterSeq must not be negative"));
        }
        if !ids.contains(&p.conversation_id) {
            ids.push(p.conversation_id);
            afters.push(p.after_seq);
        }
    }
    if ids.is_empty() {
        return Ok(SyncReply {
            messages: Vec::new(),
            has_more: false,
        });
    }
    let member_of = conversations::memberships(&ctx.pool, req.user_id.as_str(), &ids)
        .await
        .map_err(Error::from)?;
    if member_of.len() != ids.len() {
        return Err(ApiError::forbidden());
    }
    let mut found = messages::after(&ctx.pool, &ids, &afters, i64::from(limit) + 1)
        .await
        .map_err(Error::from)?;
    let has_more = found.len() > limit as usize;
    found.truncate(limit as usize);
    Ok(SyncReply {
        messages: found,
        has_more,
    })
}

/// Who is in a conversation, for a member.
pub async fn members(ctx: &ChatContext, req: MembersRequest) -> Result<MembersReply, ApiError> {
    let participant_ids =
        conversations::participants_if_member(&ctx.pool, req.conversation_id, req.user_id.as_str())
            .await
            .map_err(Error::from)?
            .ok_or_else(ApiError::forbidden)?;
    Ok(MembersReply { participant_ids })
}

async fn require_member(
    ctx: &ChatContext,
    conversation: uuid::Uuid,
    user: &UserId,
) -> Result<(), ApiError> {
    let found = conversations::memberships(&ctx.pool, user.as_str(), &[conversation])
        .await
        .map_err(Error::from)?;
    if found.is_empty() {
        Err(ApiError::forbidden())
    } else {
        Ok(())
    }
}

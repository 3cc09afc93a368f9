//! The chat queries behind the `parley-persistence` service, as plain functions of a
//! [`ChatContext`] and a request. Each checks membership itself: no user ever sees a
//! conversation they are not in, and "not a member" and "no such conversation" read the same.

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parley_common::domain::{Content, UserId};
use parley_common::rpc::{
    self, ContactsReply, ContactsRequest, DeleteRequest, EditRequest, Empty, HistoryRequest,
    ListReply, ListRequest, MemberRequest, MembersReply, MembersRequest, MessageReply,
    MessagesReply, OpenReply, OpenRequest, SyncReply, SyncRequest,
};
use parley_common::subjects::Subjects;
use parley_common::wire::{
    ApiError, Conversation, ConversationKind, ErrorCode, ListedConversation, ServerEvent,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Error;
use crate::store::{conversations, messages};

/// The most members a conversation may have unless configured otherwise (`PARLEY_MAX_MEMBERS`):
/// every member is written a row and told of every event, so one call must not fan out to
/// thousands.
pub const DEFAULT_MAX_MEMBERS: usize = 256;
/// The highest `PARLEY_MAX_MEMBERS` accepted: it keeps a conversation, members and all, far
/// below the reply size bound (`rpc::reply_budget`).
pub const MAX_MEMBERS_LIMIT: usize = 1_000;
/// The longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 200;
pub const SYNC_DEFAULT_LIMIT: u32 = 200;
pub const SYNC_MAX_LIMIT: u32 = 1_000;
/// The most conversations one `sync` may name.
pub const SYNC_MAX_CONVERSATIONS: usize = 1_000;
pub const LIST_DEFAULT_LIMIT: u32 = 50;
pub const LIST_MAX_LIMIT: u32 = 200;
/// The most contacts told of one user's presence.
pub const MAX_CONTACTS: i64 = 10_000;
/// The largest content stored, whatever a gateway let through: gateways enforce the configured
/// limit; this is the backstop that keeps a rogue publisher from bloating rows.
pub const HARD_MAX_CONTENT_CHARS: usize = 64 * 1024;

/// What the queries need.
#[derive(Clone)]
pub struct ChatContext {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    /// The most members a conversation may have (`PARLEY_MAX_MEMBERS`).
    pub max_members: usize,
}

impl ChatContext {
    /// The bytes of JSON a page may take so that its reply fits the server's `max_payload`.
    fn reply_budget(&self) -> usize {
        rpc::reply_budget(self.nats.max_payload())
    }
}

fn too_many_members(max: usize) -> ApiError {
    ApiError::invalid(format!(
        "a conversation may have at most {max} members, the caller included"
    ))
}

/// What `conversation:open` asks for, checked: every member (the caller included), sorted and
/// each once, and the title trimmed (none when blank). Pure.
fn open_plan(
    req: &OpenRequest,
    max_members: usize,
) -> Result<(Vec<String>, Option<&str>), ApiError> {
    // Checked before the ids are even collected: a list far over the cap costs nothing more.
    if req.participant_ids.len() > max_members {
        return Err(too_many_members(max_members));
    }
    let mut members: BTreeSet<&str> = req.participant_ids.iter().map(UserId::as_str).collect();
    members.insert(req.user_id.as_str());
    if members.len() < 2 {
        return Err(ApiError::invalid(
            "a conversation needs at least one participant besides you",
        ));
    }
    if members.len() > max_members {
        return Err(too_many_members(max_members));
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
    Ok((members.into_iter().map(str::to_owned).collect(), title))
}

/// What `sync` asks for, checked: each conversation once (its first position), and the page
/// size within its bounds. Pure.
fn sync_plan(req: &SyncRequest) -> Result<(Vec<Uuid>, Vec<i64>, u32), ApiError> {
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
    let mut seen = std::collections::HashSet::with_capacity(req.conversations.len());
    for p in &req.conversations {
        if p.after_seq < 0 {
            return Err(ApiError::invalid("afterSeq must not be negative"));
        }
        if seen.insert(p.conversation_id) {
            ids.push(p.conversation_id);
            afters.push(p.after_seq);
        }
    }
    Ok((ids, afters, limit))
}

/// `conversation:open`: the caller is a member whether listed or not; two members and no title
/// is a direct conversation, the same one every time for the same pair; anything else is a new
/// group. Every member is told `conversation:new` when one is created.
#[tracing::instrument(skip_all, fields(user = %req.user_id))]
pub async fn open(ctx: &ChatContext, req: OpenRequest) -> Result<OpenReply, ApiError> {
    let (members, title) = open_plan(&req, ctx.max_members)?;

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
    announce(ctx, &conversation.participant_ids, event).await;
}

/// Publishes a delivery event to each of `users`, in the current trace.
async fn announce(ctx: &ChatContext, users: &[String], event: Bytes) {
    let headers = parley_common::trace::headers();
    parley_common::nats::deliver(
        &ctx.nats,
        &ctx.subjects,
        users.iter().map(String::as_str),
        &headers,
        &event,
    )
    .await;
}

/// `message:history`: a page of messages before `beforeSeq` (the newest when absent), in seq
/// order, with `hasMore` when older ones exist. The page keeps the newest messages that fit the
/// reply size bound, at least one.
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
    // One more than asked, to know whether older ones exist.
    let mut page = messages::before(&ctx.pool, req.conversation_id, before, i64::from(limit) + 1)
        .await
        .map_err(Error::from)?;
    // Newest first here: what fits is the newest end of the page.
    let keep = rpc::fitting(&page[..page.len().min(limit as usize)], ctx.reply_budget());
    let has_more = page.len() > keep;
    page.truncate(keep);
    page.reverse();
    Ok(MessagesReply {
        messages: page,
        has_more,
    })
}

/// `sync`: everything after each given position, in seq order per conversation, paged with
/// `hasMore` (at `limit`, or earlier at the reply size bound, at least one message). Straight
/// from Postgres, so there is no window after which recovery gives up.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversations = req.conversations.len()))]
pub async fn sync(ctx: &ChatContext, req: SyncRequest) -> Result<SyncReply, ApiError> {
    let (ids, afters, limit) = sync_plan(&req)?;
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
    // A prefix of the (conversation, seq) order, so each conversation's part stays contiguous
    // and the next page starts from the last seq received in each.
    let keep = rpc::fitting(
        &found[..found.len().min(limit as usize)],
        ctx.reply_budget(),
    );
    let has_more = found.len() > keep;
    found.truncate(keep);
    Ok(SyncReply {
        messages: found,
        has_more,
    })
}

/// Who is in a conversation, for a member.
pub async fn members(ctx: &ChatContext, req: MembersRequest) -> Result<MembersReply, ApiError> {
    let participant_ids = members_of(ctx, req.conversation_id, &req.user_id).await?;
    Ok(MembersReply { participant_ids })
}

/// `conversation:list`: the caller's conversations, the most recently active first, each with
/// its last message and the caller's unread count; paged by the opaque `nextBefore` cursor (and
/// `hasMore`), stopping at `limit` or earlier at the reply size bound, at least one.
#[tracing::instrument(skip_all, fields(user = %req.user_id))]
pub async fn list(ctx: &ChatContext, req: ListRequest) -> Result<ListReply, ApiError> {
    let limit = req
        .limit
        .unwrap_or(LIST_DEFAULT_LIMIT)
        .clamp(1, LIST_MAX_LIMIT);
    let before = req.before.as_deref().map(parse_cursor).transpose()?;
    let mut rows = conversations::list(
        &ctx.pool,
        req.user_id.as_str(),
        before,
        i64::from(limit) + 1,
    )
    .await
    .map_err(Error::from)?;
    let fetched = rows.len();
    rows.truncate(limit as usize);
    let listed: Vec<(Conversation, i64)> = rows
        .iter()
        .map(|r| (r.conversation(), r.unread_count))
        .collect();
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = listed
        .iter()
        .filter(|(c, _)| c.last_seq > 0)
        .map(|(c, _)| (c.id, c.last_seq))
        .unzip();
    let mut last = messages::at(&ctx.pool, &ids, &seqs)
        .await
        .map_err(Error::from)?;
    let mut conversations: Vec<ListedConversation> = listed
        .into_iter()
        .map(|(conversation, unread_count)| {
            let last_message = last
                .iter()
                .position(|m| m.conversation_id == conversation.id)
                .map(|i| last.swap_remove(i));
            ListedConversation {
                conversation,
                last_message,
                unread_count,
            }
        })
        .collect();
    let keep = rpc::fitting(&conversations, ctx.reply_budget());
    conversations.truncate(keep);
    let next_before = if fetched > keep {
        keep.checked_sub(1)
            .and_then(|last| rows.get(last))
            .map(|r| cursor(r.active_at, r.conversation().id))
    } else {
        None
    };
    Ok(ListReply {
        has_more: next_before.is_some(),
        conversations,
        next_before,
    })
}

/// The list cursor: the activity time in microseconds and the id of the last conversation of a
/// page.
fn cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", at.timestamp_micros(), id.simple())
}

fn parse_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::invalid("before is not a cursor this server gave out");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok((at, id))
}

/// `message:edit`: the sender replaces the content of a message that is not deleted. Every
/// member is told `message:updated`.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversation = %req.conversation_id))]
pub async fn edit(ctx: &ChatContext, req: EditRequest) -> Result<MessageReply, ApiError> {
    let content = Content::parse(req.content, HARD_MAX_CONTENT_CHARS)?;
    let members = members_of(ctx, req.conversation_id, &req.user_id).await?;
    let edited = messages::edit(
        &ctx.pool,
        req.conversation_id,
        req.seq,
        req.user_id.as_str(),
        content.as_str(),
        now_micros(),
    )
    .await
    .map_err(Error::from)?;
    let Some(message) = edited else {
        return Err(
            why_unchanged(ctx, &req.user_id, req.conversation_id, req.seq, "edit")
                .await?
                .unwrap_or_else(|| ApiError::new(ErrorCode::NotFound, "the message was deleted")),
        );
    };
    announce(
        ctx,
        &members,
        ServerEvent::MessageUpdated(message.clone()).to_json(),
    )
    .await;
    Ok(MessageReply { message })
}

/// `message:delete`: the sender's message loses its content; its row and seq stay, so nobody's
/// sequence breaks. Deleting it again is a no-op. Every member is told `message:updated`.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversation = %req.conversation_id))]
pub async fn delete(ctx: &ChatContext, req: DeleteRequest) -> Result<Empty, ApiError> {
    let members = members_of(ctx, req.conversation_id, &req.user_id).await?;
    let deleted = messages::delete(
        &ctx.pool,
        req.conversation_id,
        req.seq,
        req.user_id.as_str(),
        now_micros(),
    )
    .await
    .map_err(Error::from)?;
    match deleted {
        Some(message) => {
            announce(
                ctx,
                &members,
                ServerEvent::MessageUpdated(message).to_json(),
            )
            .await;
            Ok(Empty {})
        }
        None => {
            match why_unchanged(ctx, &req.user_id, req.conversation_id, req.seq, "delete").await? {
                Some(refusal) => Err(refusal),
                // Already deleted by its sender.
                None => Ok(Empty {}),
            }
        }
    }
}

/// Why an edit or delete of the message at `seq` changed nothing: there is no such message, or
/// it is someone else's. `None` when it is the caller's own, already deleted message.
async fn why_unchanged(
    ctx: &ChatContext,
    user: &UserId,
    conversation: Uuid,
    seq: i64,
    verb: &str,
) -> Result<Option<ApiError>, ApiError> {
    let found = messages::author(&ctx.pool, conversation, seq)
        .await
        .map_err(Error::from)?;
    Ok(match found {
        None => Some(ApiError::new(
            ErrorCode::NotFound,
            "no message with that seq",
        )),
        Some((sender, _)) if sender != user.as_str() => Some(ApiError::new(
            ErrorCode::Forbidden,
            format!("you can {verb} only your own messages"),
        )),
        Some(_) => None,
    })
}

/// `member:add`: a member of a group adds someone. The newcomer is told `conversation:new` and
/// starts with nothing unread; everyone else is told `conversation:updated`. Adding a member
/// again changes nothing.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversation = %req.conversation_id))]
pub async fn member_add(ctx: &ChatContext, req: MemberRequest) -> Result<OpenReply, ApiError> {
    change_members(ctx, req, true).await
}

/// `member:remove`: a member of a group removes someone (themselves: leaving). From then on the
/// removed user gets nothing of the conversation and may read none of it; they and the others
/// are told `conversation:updated`.
#[tracing::instrument(skip_all, fields(user = %req.user_id, conversation = %req.conversation_id))]
pub async fn member_remove(ctx: &ChatContext, req: MemberRequest) -> Result<OpenReply, ApiError> {
    change_members(ctx, req, false).await
}

async fn change_members(
    ctx: &ChatContext,
    req: MemberRequest,
    add: bool,
) -> Result<OpenReply, ApiError> {
    let member = req.member_id.as_str();
    let mut tx = ctx.pool.begin().await.map_err(Error::from)?;
    // Locked, so a membership change and the writes that check membership take turns.
    let locked = conversations::lock_one(&mut tx, req.conversation_id)
        .await
        .map_err(Error::from)?
        .filter(|c| c.participant_ids.iter().any(|p| p == req.user_id.as_str()))
        .ok_or_else(ApiError::forbidden)?;
    if locked.kind != ConversationKind::Group.as_str() {
        return Err(ApiError::invalid(
            "members can be added or removed only in a group",
        ));
    }
    let before = locked.participant_ids;
    let present = before.iter().any(|p| p == member);
    let mut after = before.clone();
    let conversation = if add {
        if !present {
            // Under the conversation's lock, so concurrent adds cannot pass the cap together.
            if after.len() >= ctx.max_members {
                return Err(too_many_members(ctx.max_members));
            }
            after.push(member.to_owned());
            after.sort();
        }
        conversations::add_member(
            &mut tx,
            req.conversation_id,
            member,
            &after,
            locked.last_seq,
        )
        .await
    } else {
        if !present {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "that user is not a member of this conversation",
            ));
        }
        after.retain(|p| p != member);
        conversations::remove_member(&mut tx, req.conversation_id, member, &after).await
    }
    .map_err(Error::from)?;
    tx.commit().await.map_err(Error::from)?;

    if before != after {
        // Gateways forget the members they cached, so the change holds on every gateway at once.
        if let Err(e) = ctx
            .nats
            .publish(ctx.subjects.ctl_conversation(conversation.id), Bytes::new())
            .await
        {
            tracing::warn!(error = %e, "cannot announce a membership change to gateways");
        }
        let updated = ServerEvent::ConversationUpdated(conversation.clone()).to_json();
        if add {
            announce(ctx, &before, updated).await;
            let new = ServerEvent::ConversationNew(conversation.clone()).to_json();
            announce(ctx, &[member.to_owned()], new).await;
        } else {
            announce(ctx, &before, updated).await;
        }
    }
    Ok(OpenReply { conversation })
}

/// Who shares a conversation with the user: whom their presence concerns. At most
/// `MAX_CONTACTS`, and no more than fit the reply size bound (10,000 ids of 128 characters
/// would not).
pub async fn contacts(ctx: &ChatContext, req: ContactsRequest) -> Result<ContactsReply, ApiError> {
    let mut user_ids = conversations::contacts(&ctx.pool, req.user_id.as_str(), MAX_CONTACTS)
        .await
        .map_err(Error::from)?;
    let keep = rpc::fitting(&user_ids, ctx.reply_budget());
    if keep < user_ids.len() {
        tracing::warn!(
            contacts = user_ids.len(),
            kept = keep,
            "contacts cut to the reply size bound"
        );
        user_ids.truncate(keep);
    }
    Ok(ContactsReply { user_ids })
}

/// The members of a conversation, if `user` is one; `forbidden` otherwise.
async fn members_of(
    ctx: &ChatContext,
    conversation: Uuid,
    user: &UserId,
) -> Result<Vec<String>, ApiError> {
    conversations::participants_if_member(&ctx.pool, conversation, user.as_str())
        .await
        .map_err(Error::from)?
        .ok_or_else(ApiError::forbidden)
}

/// Now, at the precision Postgres stores, so an announced value equals the stored one.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
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

#[cfg(test)]
mod tests {
    use super::*;
    use parley_common::wire::Message;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn open_req(caller: &str, others: &[&str], title: Option<&str>) -> OpenRequest {
        OpenRequest {
            user_id: user(caller),
            participant_ids: others.iter().map(|u| user(u)).collect(),
            title: title.map(str::to_owned),
        }
    }

    #[test]
    fn open_counts_the_caller_once_sorts_members_and_trims_the_title() {
        let req = open_req(
            "carol",
            &["bob", "carol", "alice", "bob"],
            Some("  plans  "),
        );
        let (members, title) = open_plan(&req, 256).unwrap();
        assert_eq!(members, ["alice", "bob", "carol"]);
        assert_eq!(title, Some("plans"));
        let req = open_req("alice", &["bob"], Some("   "));
        assert_eq!(
            open_plan(&req, 256).unwrap(),
            (vec!["alice".into(), "bob".into()], None)
        );
    }

    #[test]
    fn open_refuses_no_one_else_too_many_members_and_a_long_title() {
        let alone = open_req("alice", &["alice"], None);
        assert_eq!(open_plan(&alone, 256).unwrap_err().code, ErrorCode::Invalid);
        // The cap counts the caller: three others and the caller are four.
        let four = open_req("alice", &["b", "c", "d"], None);
        assert!(open_plan(&four, 4).is_ok());
        let err = open_plan(&four, 3).unwrap_err();
        assert!(err.message.contains("at most 3 members"), "{}", err.message);
        // A list far over the cap is refused before it is looked at.
        let many: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            open_plan(&open_req("alice", &many, None), 256)
                .unwrap_err()
                .code,
            ErrorCode::Invalid
        );
        let at_limit = "t".repeat(MAX_TITLE_CHARS);
        assert!(open_plan(&open_req("a", &["b"], Some(&at_limit)), 256).is_ok());
        let over = "é".repeat(MAX_TITLE_CHARS + 1);
        let err = open_plan(&open_req("a", &["b"], Some(&over)), 256).unwrap_err();
        assert!(err.message.contains("title"), "{}", err.message);
    }

    fn sync_req(positions: &[(u128, i64)], limit: Option<u32>) -> SyncRequest {
        SyncRequest {
            user_id: user("alice"),
            conversations: positions
                .iter()
                .map(|&(id, after_seq)| parley_common::rpc::SyncPosition {
                    conversation_id: Uuid::from_u128(id),
                    after_seq,
                })
                .collect(),
            limit,
        }
    }

    #[test]
    fn sync_takes_each_conversation_once_at_its_first_position_and_bounds_the_page() {
        let (ids, afters, limit) = sync_plan(&sync_req(&[(1, 5), (2, 0), (1, 9)], None)).unwrap();
        assert_eq!(ids, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!(afters, [5, 0]);
        assert_eq!(limit, SYNC_DEFAULT_LIMIT);
        assert_eq!(sync_plan(&sync_req(&[(1, 0)], Some(0))).unwrap().2, 1);
        assert_eq!(
            sync_plan(&sync_req(&[(1, 0)], Some(u32::MAX))).unwrap().2,
            SYNC_MAX_LIMIT
        );
        assert!(sync_plan(&sync_req(&[], None)).unwrap().0.is_empty());
    }

    #[test]
    fn sync_refuses_a_negative_position_and_too_many_conversations() {
        let err = sync_plan(&sync_req(&[(1, 0), (2, -1)], None)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        let at_cap: Vec<(u128, i64)> = (0..SYNC_MAX_CONVERSATIONS as u128)
            .map(|i| (i, 0))
            .collect();
        assert_eq!(
            sync_plan(&sync_req(&at_cap, None)).unwrap().0.len(),
            SYNC_MAX_CONVERSATIONS
        );
        let over: Vec<(u128, i64)> = (0..=SYNC_MAX_CONVERSATIONS as u128)
            .map(|i| (i, 0))
            .collect();
        let err = sync_plan(&sync_req(&over, None)).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
    }

    /// The largest message a gateway lets through at the default content limit, as JSON: every
    /// character one that JSON escapes to six bytes (`\u0001`; refused now, but stored before
    /// the rule or forged behind a gateway's back), ids at their longest.
    fn worst_message() -> Message {
        Message {
            id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            seq: i64::MAX,
            sender_id: "u".repeat(UserId::MAX_LEN),
            client_msg_id: "\\".repeat(parley_common::domain::ClientMsgId::MAX_LEN),
            content: "\u{1}".repeat(Content::DEFAULT_MAX_CHARS),
            read_at: Some(Utc::now()),
            created_at: Utc::now(),
            edited_at: Some(Utc::now()),
            deleted_at: Some(Utc::now()),
        }
    }

    #[test]
    fn the_largest_single_item_fits_the_reply_bound() {
        let budget = rpc::reply_budget(1024 * 1024);
        let message = worst_message();
        let listed = ListedConversation {
            conversation: Conversation {
                id: Uuid::nil(),
                kind: ConversationKind::Group,
                title: Some("\u{1}".repeat(MAX_TITLE_CHARS)),
                participant_ids: vec!["u".repeat(UserId::MAX_LEN); MAX_MEMBERS_LIMIT],
                last_seq: i64::MAX,
                last_message_at: Some(Utc::now()),
                created_at: Utc::now(),
            },
            last_message: Some(message.clone()),
            unread_count: i64::MAX,
        };
        // `[item]` is the page; the envelope around it is what the margin is for.
        for len in [rpc::json_len(&[&message]), rpc::json_len(&[&listed])] {
            assert!(len < budget, "{len} bytes > budget {budget}");
        }
        // Not vacuous: 4,000 six-byte characters, and 1,000 ids of 128.
        assert!(rpc::json_len(&message) > 6 * Content::DEFAULT_MAX_CHARS);
        assert!(rpc::json_len(&listed) > 6 * Content::DEFAULT_MAX_CHARS + 128 * 1_000);
    }

    #[test]
    fn a_page_of_maximal_messages_is_cut_below_the_bound() {
        let budget = rpc::reply_budget(1024 * 1024);
        let page = vec![worst_message(); 50];
        let keep = rpc::fitting(&page, budget);
        assert!((1..50).contains(&keep), "{keep}");
        assert!(rpc::json_len(&page[..keep]) <= budget);
        assert!(rpc::json_len(&page[..keep + 1]) > budget);
    }

    #[test]
    fn list_cursors_read_back() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&cursor(at, id)).unwrap(), (at, id));
        assert!(parse_cursor("nope").is_err());
    }
}

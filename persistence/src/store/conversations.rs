//! `conversations` and `conversation_members`.

use chrono::{DateTime, Utc};
use parley_common::wire::{Conversation, ConversationKind};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    kind: String,
    title: Option<String>,
    participant_ids: Vec<String>,
    last_seq: i64,
    last_message_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<Row> for Conversation {
    fn from(r: Row) -> Self {
        Conversation {
            id: r.id,
            kind: if r.kind == "direct" {
                ConversationKind::Direct
            } else {
                ConversationKind::Group
            },
            title: r.title,
            participant_ids: r.participant_ids,
            last_seq: r.last_seq,
            last_message_at: r.last_message_at,
            created_at: r.created_at,
        }
    }
}

/// The key that makes a direct conversation unique: the sorted pair.
pub fn direct_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}:{b}")
    } else {
        format!("{b}:{a}")
    }
}

/// Creates the direct conversation of a sorted pair, or finds the one that exists.
/// Returns it and whether this call created it.
pub async fn open_direct(
    conn: &mut PgConnection,
    pair: [&str; 2],
) -> sqlx::Result<(Conversation, bool)> {
    let key = direct_key(pair[0], pair[1]);
    let mut participants = vec![pair[0].to_owned(), pair[1].to_owned()];
    participants.sort();
    let created: Option<Row> = sqlx::query_as(
        "insert into conversations (id, kind, participant_ids, direct_key)
         values ($1, 'direct', $2, $3)
         on conflict (direct_key) do nothing
         returning id, kind, title, participant_ids, last_seq, last_message_at, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&participants)
    .bind(&key)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = created {
        add_members(&mut *conn, row.id, &participants).await?;
        return Ok((row.into(), true));
    }
    let row: Row = sqlx::query_as(
        "select id, kind, title, participant_ids, last_seq, last_message_at, created_at
         from conversations where direct_key = $1",
    )
    .bind(&key)
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.into(), false))
}

/// Creates a group conversation with sorted `participants`.
pub async fn create_group(
    conn: &mut PgConnection,
    title: Option<&str>,
    participants: &[String],
) -> sqlx::Result<Conversation> {
    let row: Row = sqlx::query_as(
        "insert into conversations (id, kind, title, participant_ids)
         values ($1, 'group', $2, $3)
         returning id, kind, title, participant_ids, last_seq, last_message_at, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(title)
    .bind(participants)
    .fetch_one(&mut *conn)
    .await?;
    add_members(&mut *conn, row.id, participants).await?;
    Ok(row.into())
}

async fn add_members(
    conn: &mut PgConnection,
    conversation: Uuid,
    users: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into conversation_members (conversation_id, user_id)
         select $1, u from unnest($2::text[]) as u
         on conflict do nothing",
    )
    .bind(conversation)
    .bind(users)
    .execute(conn)
    .await?;
    Ok(())
}

/// A conversation locked for the rest of the transaction, so sequence numbers are handed out
/// by one writer at a time.
#[derive(Debug, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub kind: String,
    pub participant_ids: Vec<String>,
    pub last_seq: i64,
}

/// Locks `ids` (`for update`, in id order so concurrent writers never deadlock) and returns
/// those that exist.
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Locked>> {
    sqlx::query_as(
        "select id, kind, participant_ids, last_seq from conversations
         where id = any($1) order by id for update",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Moves each conversation's `last_seq` and `last_message_at` forward.
pub async fn advance(
    conn: &mut PgConnection,
    ids: &[Uuid],
    last_seqs: &[i64],
    at: &[DateTime<Utc>],
) -> sqlx::Result<()> {
    sqlx::query(
        "update conversations c
         set last_seq = u.last_seq, last_message_at = u.at
         from unnest($1::uuid[], $2::int8[], $3::timestamptz[]) as u(id, last_seq, at)
         where c.id = u.id",
    )
    .bind(ids)
    .bind(last_seqs)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The members of a conversation, if `user` is one of them; `None` both when the user is not a
/// member and when there is no such conversation.
pub async fn participants_if_member(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
    user: &str,
) -> sqlx::Result<Option<Vec<String>>> {
    sqlx::query_scalar(
        "select participant_ids from conversations where id = $1 and $2 = any(participant_ids)",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// Which of `ids` `user` is a member of.
pub async fn memberships(
    db: impl PgExecutor<'_>,
    user: &str,
    ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select conversation_id from conversation_members
         where user_id = $1 and conversation_id = any($2)",
    )
    .bind(user)
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A conversation of a user's list, with what the list adds.
#[derive(sqlx::FromRow)]
pub struct ListedRow {
    #[sqlx(flatten)]
    row: Row,
    /// `coalesce(last_message_at, created_at)`: what the list is ordered by.
    pub active_at: DateTime<Utc>,
    pub unread_count: i64,
}

impl ListedRow {
    pub fn conversation(&self) -> Conversation {
        self.row.clone().into()
    }
}

/// A page of `user`'s conversations, the most recently active first, strictly after the
/// position `before` (activity time, id) in that order. The unread count is the messages after
/// the user's read position that others sent and nobody deleted.
pub async fn list(
    db: impl PgExecutor<'_>,
    user: &str,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<ListedRow>> {
    let (before_at, before_id) = before.unzip();
    sqlx::query_as(
        "select c.id, c.kind, c.title, c.participant_ids, c.last_seq, c.last_message_at,
                c.created_at,
                coalesce(c.last_message_at, c.created_at) as active_at,
                (select count(*) from messages x
                 where x.conversation_id = c.id and x.seq > m.last_read_seq
                   and x.sender_id <> $1 and x.deleted_at is null) as unread_count
         from conversation_members m
         join conversations c on c.id = m.conversation_id
         where m.user_id = $1
           and ($2::timestamptz is null
                or (coalesce(c.last_message_at, c.created_at), c.id) < ($2, $3::uuid))
         order by coalesce(c.last_message_at, c.created_at) desc, c.id desc
         limit $4",
    )
    .bind(user)
    .bind(before_at)
    .bind(before_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A conversation locked for a membership change.
#[derive(Debug, sqlx::FromRow)]
pub struct ForChange {
    pub kind: String,
    pub participant_ids: Vec<String>,
    pub last_seq: i64,
}

/// Locks one conversation for the rest of the transaction, if it exists.
pub async fn lock_one(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<ForChange>> {
    sqlx::query_as(
        "select kind, participant_ids, last_seq from conversations where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Adds `user` to a locked conversation, its read position at `read_to` (a newcomer has
/// nothing unread), and stores the new sorted member list. Returns the conversation.
pub async fn add_member(
    conn: &mut PgConnection,
    id: Uuid,
    user: &str,
    participants: &[String],
    read_to: i64,
) -> sqlx::Result<Conversation> {
    sqlx::query(
        "insert into conversation_members (conversation_id, user_id, last_read_seq)
         values ($1, $2, $3) on conflict do nothing",
    )
    .bind(id)
    .bind(user)
    .bind(read_to)
    .execute(&mut *conn)
    .await?;
    set_participants(conn, id, participants).await
}

/// Removes `user` from a locked conversation and stores the new sorted member list.
pub async fn remove_member(
    conn: &mut PgConnection,
    id: Uuid,
    user: &str,
    participants: &[String],
) -> sqlx::Result<Conversation> {
    sqlx::query("delete from conversation_members where conversation_id = $1 and user_id = $2")
        .bind(id)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    set_participants(conn, id, participants).await
}

async fn set_participants(
    conn: &mut PgConnection,
    id: Uuid,
    participants: &[String],
) -> sqlx::Result<Conversation> {
    let row: Row = sqlx::query_as(
        "update conversations set participant_ids = $2 where id = $1
         returning id, kind, title, participant_ids, last_seq, last_message_at, created_at",
    )
    .bind(id)
    .bind(participants)
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

/// Moves `user`'s read position in a conversation forward to `seq`. Returns the position it
/// had, or `None` when it was already there or further (or the user is not a member).
pub async fn mark_read(
    conn: &mut PgConnection,
    id: Uuid,
    user: &str,
    seq: i64,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "update conversation_members m set last_read_seq = $3
         from conversation_members old
         where m.conversation_id = $1 and m.user_id = $2 and m.last_read_seq < $3
           and old.conversation_id = m.conversation_id and old.user_id = m.user_id
         returning old.last_read_seq",
    )
    .bind(id)
    .bind(user)
    .bind(seq)
    .fetch_optional(conn)
    .await
}

/// Everyone who shares a conversation with `user`, at most `limit` of them.
pub async fn contacts(
    db: impl PgExecutor<'_>,
    user: &str,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select distinct p from conversation_members m
         join conversations c on c.id = m.conversation_id
         cross join lateral unnest(c.participant_ids) as p
         where m.user_id = $1 and p <> $1
         limit $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(db)
    .await
}

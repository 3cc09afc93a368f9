//! `conversations` and `conversation_members`.

use chrono::{DateTime, Utc};
use parley_common::wire::{Conversation, ConversationKind};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
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
    pub participant_ids: Vec<String>,
    pub last_seq: i64,
}

/// Locks `ids` (`for update`, in id order so concurrent writers never deadlock) and returns
/// those that exist.
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Locked>> {
    sqlx::query_as(
        "select id, participant_ids, last_seq from conversations
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

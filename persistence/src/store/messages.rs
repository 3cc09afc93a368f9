//! `messages`.

use chrono::{DateTime, Utc};
use parley_common::wire::Message;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    conversation_id: Uuid,
    seq: i64,
    sender_id: String,
    client_msg_id: String,
    content: String,
    read_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
}

impl From<Row> for Message {
    fn from(r: Row) -> Self {
        Message {
            id: r.id,
            conversation_id: r.conversation_id,
            seq: r.seq,
            sender_id: r.sender_id,
            client_msg_id: r.client_msg_id,
            content: r.content,
            read_at: r.read_at,
            created_at: r.created_at,
            edited_at: r.edited_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// The stored messages among `(senders[i], client_msg_ids[i])`: what a batch would duplicate.
///
/// One index probe per key, whatever the statistics say: written as a join, the plan the
/// prepared statement cached while `messages` was small (a fresh database) hashed the keys and
/// scanned the whole table on every batch until the next analyze, and Postgres's CPU per
/// message grew with the table (issue 17). The `limit 1` keeps the planner from flattening
/// the lateral subquery back into that join; the key is unique, so it drops nothing.
pub async fn find_by_client_ids(
    conn: &mut PgConnection,
    senders: &[&str],
    client_msg_ids: &[&str],
) -> sqlx::Result<Vec<Message>> {
    let rows: Vec<Row> = sqlx::query_as(
        "select m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.content,
                m.read_at, m.created_at, m.edited_at, m.deleted_at
         from unnest($1::text[], $2::text[]) as k(sender_id, client_msg_id)
         cross join lateral (
             select * from messages x
             where x.sender_id = k.sender_id and x.client_msg_id = k.client_msg_id
             limit 1
         ) m",
    )
    .bind(senders)
    .bind(client_msg_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Inserts new messages in one statement, however many there are.
pub async fn insert_batch(conn: &mut PgConnection, batch: &[Message]) -> sqlx::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut conversations = Vec::with_capacity(batch.len());
    let mut seqs = Vec::with_capacity(batch.len());
    let mut senders = Vec::with_capacity(batch.len());
    let mut client_ids = Vec::with_capacity(batch.len());
    let mut contents = Vec::with_capacity(batch.len());
    let mut created = Vec::with_capacity(batch.len());
    for m in batch {
        ids.push(m.id);
        conversations.push(m.conversation_id);
        seqs.push(m.seq);
        senders.push(m.sender_id.as_str());
        client_ids.push(m.client_msg_id.as_str());
        contents.push(m.content.as_str());
        created.push(m.created_at);
    }
    sqlx::query(
        "insert into messages (id, conversation_id, seq, sender_id, client_msg_id, content, created_at)
         select * from unnest($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[],
                              $6::text[], $7::timestamptz[])",
    )
    .bind(&ids)
    .bind(&conversations)
    .bind(&seqs)
    .bind(&senders)
    .bind(&client_ids)
    .bind(&contents)
    .bind(&created)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` messages of a conversation before `before_seq`, newest first.
pub async fn before(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
    before_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    let rows: Vec<Row> = sqlx::query_as(
        "select id, conversation_id, seq, sender_id, client_msg_id, content,
                read_at, created_at, edited_at, deleted_at
         from messages
         where conversation_id = $1 and seq < $2
         order by seq desc
         limit $3",
    )
    .bind(conversation)
    .bind(before_seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Messages after a position in each conversation, ordered by conversation then seq, at most
/// `limit`. Each conversation is read through its `(conversation_id, seq)` index, at most
/// `limit` rows deep, so a long conversation is never scanned whole.
pub async fn after(
    db: impl PgExecutor<'_>,
    conversations: &[Uuid],
    after_seqs: &[i64],
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    let rows: Vec<Row> = sqlx::query_as(
        "select m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.content,
                m.read_at, m.created_at, m.edited_at, m.deleted_at
         from unnest($1::uuid[], $2::int8[]) as p(conversation_id, after_seq)
         cross join lateral (
             select * from messages x
             where x.conversation_id = p.conversation_id and x.seq > p.after_seq
             order by x.seq
             limit $3
         ) m
         order by m.conversation_id, m.seq
         limit $3",
    )
    .bind(conversations)
    .bind(after_seqs)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// The messages at `(conversations[i], seqs[i])`, for the last message of each listed
/// conversation.
pub async fn at(
    db: impl PgExecutor<'_>,
    conversations: &[Uuid],
    seqs: &[i64],
) -> sqlx::Result<Vec<Message>> {
    let rows: Vec<Row> = sqlx::query_as(
        "select m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.content,
                m.read_at, m.created_at, m.edited_at, m.deleted_at
         from unnest($1::uuid[], $2::int8[]) as k(conversation_id, seq)
         join messages m on m.conversation_id = k.conversation_id and m.seq = k.seq",
    )
    .bind(conversations)
    .bind(seqs)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Who sent the message at `seq` and whether it is deleted, to explain why a change was refused.
pub async fn author(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
    seq: i64,
) -> sqlx::Result<Option<(String, Option<DateTime<Utc>>)>> {
    sqlx::query_as(
        "select sender_id, deleted_at from messages where conversation_id = $1 and seq = $2",
    )
    .bind(conversation)
    .bind(seq)
    .fetch_optional(db)
    .await
}

/// Replaces the content of `sender`'s message at `seq`, unless it is deleted.
pub async fn edit(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
    seq: i64,
    sender: &str,
    content: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<Message>> {
    let row: Option<Row> = sqlx::query_as(
        "update messages set content = $4, edited_at = $5
         where conversation_id = $1 and seq = $2 and sender_id = $3 and deleted_at is null
         returning id, conversation_id, seq, sender_id, client_msg_id, content,
                   read_at, created_at, edited_at, deleted_at",
    )
    .bind(conversation)
    .bind(seq)
    .bind(sender)
    .bind(content)
    .bind(at)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// Soft-deletes `sender`'s message at `seq`: the content goes, the row and its seq stay.
/// `None` when there is no such live message of theirs.
pub async fn delete(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
    seq: i64,
    sender: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<Message>> {
    let row: Option<Row> = sqlx::query_as(
        "update messages set content = '', deleted_at = $4
         where conversation_id = $1 and seq = $2 and sender_id = $3 and deleted_at is null
         returning id, conversation_id, seq, sender_id, client_msg_id, content,
                   read_at, created_at, edited_at, deleted_at",
    )
    .bind(conversation)
    .bind(seq)
    .bind(sender)
    .bind(at)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// Marks the messages others sent in a conversation in `(from, to]` read at `at` (direct
/// conversations: the sender sees when the other read them).
pub async fn mark_read(
    conn: &mut PgConnection,
    conversation: Uuid,
    reader: &str,
    (from, to): (i64, i64),
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update messages set read_at = $5
         where conversation_id = $1 and seq > $3 and seq <= $4 and sender_id <> $2
           and read_at is null",
    )
    .bind(conversation)
    .bind(reader)
    .bind(from)
    .bind(to)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

//! Show 2 of issue 5: every operation on a conversation the caller is not a member of is
//! refused, by socket and by HTTP, and the answer for a real conversation is the same as for
//! one that does not exist: ids reveal nothing. One test per operation.

use serde_json::{Value, json};

use crate::helpers::{Process, TestEnv, WsClient};

/// A conversation between alice and bob with one message, and an outsider.
struct World {
    env: TestEnv,
    _persistence: Process,
    gateway: Process,
    alice: WsClient,
    bob: WsClient,
    conversation: String,
}

async fn world() -> World {
    let env = TestEnv::new().await;
    let persistence = env.spawn_persistence().await;
    let gateway = env.spawn_gateway().await;
    let mut alice = env.connect(&gateway, "alice").await;
    let mut bob = env.connect(&gateway, "bob").await;
    let conversation = alice.open_dm("bob").await;
    alice.send_message(&conversation, "m1", "private").await;
    bob.messages(&conversation, 1).await;
    alice.messages(&conversation, 1).await;
    World {
        env,
        _persistence: persistence,
        gateway,
        alice,
        bob,
        conversation,
    }
}

/// `event` with `data(conversation)` from mallory, for the real conversation and for an id
/// that names none: both `forbidden`, word for word; and alice and bob hear nothing of it.
async fn refused_by_socket(event: &str, data: impl Fn(&str) -> Value) {
    let mut w = world().await;
    let mut mallory = w.env.connect(&w.gateway, "mallory").await;
    let real = mallory.request(event, data(&w.conversation)).await;
    let unknown = mallory
        .request(event, data(&uuid::Uuid::now_v7().to_string()))
        .await;
    assert_eq!(real["ok"], false, "{event}: {real}");
    assert_eq!(real["error"]["code"], "forbidden", "{event}: {real}");
    assert_eq!(real, unknown, "{event}: the answers differ");
    // Nothing changed for the members: a message of theirs is still the next thing they get.
    w.alice
        .send_message(&w.conversation, "m2", "still ours")
        .await;
    for c in [&mut w.alice, &mut w.bob] {
        let next = c.wait_for(|f| f["type"] == "message:new").await;
        assert_eq!(next["data"]["seq"], 2, "{event}: {next}");
        for leak in [
            "message:updated",
            "message:read",
            "typing",
            "conversation:updated",
        ] {
            assert_eq!(c.buffered_count(leak), 0, "{event}: a member got {leak}");
        }
    }
    let stored = w.env.stored(&w.conversation).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|(_, sender, _, _)| sender == "alice"));
    let read: i64 = sqlx::query_scalar(
        "select coalesce(sum(last_read_seq), 0)::int8 from conversation_members",
    )
    .fetch_one(&w.env.pool)
    .await
    .unwrap();
    assert_eq!(read, 0, "{event}: a read position moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_send_to_a_strangers_conversation_is_refused() {
    refused_by_socket(
        "message:send",
        |c| json!({"conversationId": c, "clientMsgId": "x1", "content": "let me in"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_read_of_a_strangers_conversation_is_refused() {
    refused_by_socket("message:read", |c| json!({"conversationId": c, "seq": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_a_strangers_conversation_is_refused() {
    refused_by_socket("typing", |c| json!({"conversationId": c, "isTyping": true})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_of_a_strangers_conversation_is_refused() {
    refused_by_socket(
        "sync",
        |c| json!({"conversations": [{"conversationId": c, "afterSeq": 0}]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_strangers_conversation_is_refused() {
    refused_by_socket("message:history", |c| json!({"conversationId": c})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_in_a_strangers_conversation_is_refused() {
    refused_by_socket(
        "message:edit",
        |c| json!({"conversationId": c, "seq": 1, "content": "mine"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_in_a_strangers_conversation_is_refused() {
    refused_by_socket("message:delete", |c| json!({"conversationId": c, "seq": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_to_a_strangers_conversation_is_refused() {
    refused_by_socket(
        "member:add",
        |c| json!({"conversationId": c, "userId": "mallory"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_of_a_strangers_conversation_is_refused() {
    refused_by_socket(
        "member:remove",
        |c| json!({"conversationId": c, "userId": "bob"}),
    )
    .await;
}

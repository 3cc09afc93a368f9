//! The harness itself: a test leaves nothing behind in the shared Postgres and NATS (DESIGN §3:
//! each test its own database and subject prefix, so tests run in parallel against one server).

use futures::TryStreamExt;
use sqlx::Connection;

use crate::helpers::{TestEnv, nats_servers, nats_url, server_url};

#[tokio::test]
async fn a_test_leaves_no_database_and_no_stream_behind() {
    let (db, prefix) = {
        let env = TestEnv::new().await;
        let persistence = env.spawn_persistence().await;
        let gw = env.spawn_gateway().await;
        // A user online: the gateway writes the presence bucket.
        let mut alice = env.connect(&gw, "alice").await;
        let mut bob = env.connect(&gw, "bob").await;
        let dm = alice.open_dm("bob").await;
        let ack = alice.send_message(&dm, "c1", "hello").await;
        assert_eq!(ack["ok"], true, "{ack}");
        bob.wait_for(|f| f["type"] == "message:new").await;
        drop((alice, bob, gw, persistence));
        (env.db_name.clone(), env.prefix.clone())
    };

    let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&db)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "database {db} left behind");

    let js = async_nats::jetstream::new(
        async_nats::connect(nats_servers(&nats_url()))
            .await
            .unwrap(),
    );
    let subjects = parley_common::subjects::Subjects::new(&prefix).unwrap();
    let ours = subjects.name_stem();
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let left: Vec<&String> = streams.iter().filter(|s| s.contains(ours)).collect();
    assert!(
        left.is_empty(),
        "streams of prefix {prefix} left behind: {left:?}"
    );
}

//! Sign-up against a real Postgres (`PARLEY_TEST_DATABASE_URL`) and NATS
//! (`PARLEY_TEST_NATS_URL`), with the hashing slots in the test's hands: what is refused is
//! refused before any password is hashed.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use parley_auth::accounts::{self, AuthContext};
use parley_auth::api::RegisterRequest;
use parley_auth::limiter::{LoginLimiter, LoginLimits, RegisterLimiter};
use parley_auth::password::Hasher;
use parley_auth::{AuthConfig, db};
use parley_common::config::Env;
use parley_common::wire::ErrorCode;
use sqlx::Connection;

fn server_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database; dropped by [`Db::drop_now`].
struct Db {
    name: String,
    url: String,
}

impl Db {
    async fn new() -> Db {
        let name = format!("parley_auth_test_{}", &uuid_hex()[..16]);
        let server = server_url();
        let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
            .execute(&mut admin)
            .await
            .unwrap();
        let slash = server.rfind('/').unwrap();
        let url = format!("{}/{name}", &server[..slash]);
        Db { name, url }
    }

    async fn drop_now(self) {
        let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"drop database if exists "{}" with (force)"#,
            self.name
        )))
        .execute(&mut admin)
        .await;
    }
}

fn uuid_hex() -> String {
    parley_auth::verify::new_account_id()
        .chars()
        .rev()
        .collect()
}

async fn context(db: &Db) -> Arc<AuthContext> {
    let nats =
        std::env::var("PARLEY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let env = Env::from_pairs([
        ("DATABASE_URL", db.url.as_str()),
        ("NATS_URL", nats.as_str()),
        ("PARLEY_NATS_PREFIX", &format!("ta{}", &uuid_hex()[..12])),
    ]);
    let config = AuthConfig::from_env(&env).unwrap();
    let pool = db::connect(&config).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let keys = AuthContext::load_keys(&pool, &config).await.unwrap();
    Arc::new(AuthContext {
        pool,
        nats: async_nats::connect(&config.nats.url).await.unwrap(),
        subjects: config.nats.prefix.clone(),
        keys: RwLock::new(Arc::new(keys)),
        limiter: LoginLimiter::new(LoginLimits::default()),
        register_limiter: RegisterLimiter::new(100),
        // One slot, and hardly any patience: the test holds the slot to see what waits for it.
        hasher: Hasher::new(1, Duration::from_millis(20)),
        dummy_hash: String::new(),
        config,
    })
}

fn request(username: &str, email: &str) -> RegisterRequest {
    RegisterRequest {
        username: username.into(),
        email: email.into(),
        password: "correct horse battery".into(),
        display_name: None,
        client_addr: Some("192.0.2.1".into()),
    }
}

#[tokio::test]
async fn a_taken_username_or_email_is_refused_before_the_password_is_hashed() {
    let db = Db::new().await;
    let ctx = context(&db).await;
    accounts::register(&ctx, request("taken", "taken@example.com"))
        .await
        .unwrap();

    // Every hashing slot is taken: a request that got as far as hashing would be "busy".
    let slot = ctx.hasher.slot().await.unwrap();
    let e = accounts::register(&ctx, request("TAKEN", "other@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::Invalid, "username is taken")
    );
    let e = accounts::register(&ctx, request("fresh", "Taken@Example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::Invalid, "email is already registered")
    );
    // A name that is free does reach the hasher, and is told to try again.
    let e = accounts::register(&ctx, request("fresh", "fresh@example.com"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("try again"), "{}", e.message);
    drop(slot);
    accounts::register(&ctx, request("fresh", "fresh@example.com"))
        .await
        .unwrap();
    drop(ctx);
    db.drop_now().await;
}

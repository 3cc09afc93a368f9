//! `auth.signing_keys`.

use sqlx::PgPool;

use crate::signing::{self, StoredKey};

/// Keys still published (unretired, or retired less than `keep_secs` ago), newest first.
pub async fn published(pool: &PgPool, keep_secs: i64) -> sqlx::Result<Vec<StoredKey>> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>, bool)> = sqlx::query_as(
        "select kid, seed, public_key, retired_at is not null
         from auth.signing_keys
         where retired_at is null or retired_at > now() - make_interval(secs => $1)
         order by created_at desc",
    )
    .bind(keep_secs as f64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kid, seed, public_key, retired)| StoredKey {
            kid,
            seed,
            public_key,
            retired,
        })
        .collect())
}

/// Makes sure a signing key exists; the first replica to start creates it.
pub async fn ensure_active(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    // One creator at a time, across replicas.
    sqlx::query("select pg_advisory_xact_lock(hashtext('parley.auth.signing_keys'))")
        .execute(&mut *tx)
        .await?;
    let active: Option<String> =
        sqlx::query_scalar("select kid from auth.signing_keys where retired_at is null limit 1")
            .fetch_optional(&mut *tx)
            .await?;
    if active.is_none() {
        insert(&mut tx, &signing::generate()).await?;
    }
    tx.commit().await
}

/// Rotation: a new key signs from now on; the old ones stay published until their tokens
/// expire. Returns the new key's `kid`.
pub async fn rotate(pool: &PgPool) -> sqlx::Result<String> {
    let mut tx = pool.begin().await?;
    sqlx::query("update auth.signing_keys set retired_at = now() where retired_at is null")
        .execute(&mut *tx)
        .await?;
    let key = signing::generate();
    insert(&mut tx, &key).await?;
    tx.commit().await?;
    Ok(key.kid)
}

async fn insert(conn: &mut sqlx::PgConnection, key: &StoredKey) -> sqlx::Result<()> {
    sqlx::query("insert into auth.signing_keys (kid, seed, public_key) values ($1, $2, $3)")
        .bind(&key.kid)
        .bind(&key.seed)
        .bind(&key.public_key)
        .execute(conn)
        .await?;
    Ok(())
}

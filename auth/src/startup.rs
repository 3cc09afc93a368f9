//! Building and running the auth role.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use parley_common::admin::Readiness;
use parley_common::nats;
use tokio_util::sync::CancellationToken;

use crate::accounts::AuthContext;
use crate::config::AuthConfig;
use crate::error::{Error, Result};
use crate::limiter::{LoginLimiter, RegisterLimiter};
use crate::service::AuthService;
use crate::{db, password};

/// How often a replica reloads the signing keys (to pick up a rotation made elsewhere).
const KEY_RELOAD: Duration = Duration::from_secs(60);

pub struct Application {
    ctx: Arc<AuthContext>,
    service: AuthService,
}

impl Application {
    pub async fn build(config: AuthConfig) -> Result<Self> {
        let pool = db::connect(&config).await?;
        db::migrate(&pool).await?;
        let keys = AuthContext::load_keys(&pool, &config).await?;
        let nats = nats::connect(&config.nats, "parley-auth", "auth")
            .await
            .map_err(Error::nats)?;
        let ctx = Arc::new(AuthContext {
            subjects: config.nats.prefix.clone(),
            limiter: LoginLimiter::new(config.login_limits),
            register_limiter: RegisterLimiter::new(config.register_per_address_per_hour),
            hasher: password::Hasher::new(config.hash_concurrency, config.hash_wait),
            dummy_hash: password::dummy_hash().await,
            keys: RwLock::new(Arc::new(keys)),
            pool,
            nats,
            config,
        });
        let service = AuthService::start(ctx.clone()).await?;
        Ok(Self { ctx, service })
    }

    pub fn readiness(&self) -> Readiness {
        let mut r = Readiness::default();
        r.add_nats(self.ctx.nats.clone());
        let pool = self.ctx.pool.clone();
        r.add("postgres", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("select 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        });
        r
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let token = CancellationToken::new();
        let ctx = self.ctx.clone();
        let reload = {
            let token = token.clone();
            async move {
                loop {
                    parley_common::metrics::sample_pool(
                        "auth",
                        ctx.pool.size(),
                        ctx.pool.num_idle(),
                    );
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(KEY_RELOAD) => {
                            if let Err(e) = ctx.reload_keys().await {
                                tracing::warn!(error = %e, "cannot reload signing keys");
                            }
                        }
                    }
                }
            }
        };
        let service = async {
            let r = self.service.run(token.clone()).await;
            token.cancel();
            r
        };
        let stop = async {
            tokio::select! {
                () = shutdown => token.cancel(),
                () = token.cancelled() => {}
            }
        };
        let ((), (), served) = tokio::join!(stop, reload, service);
        let _ = self.ctx.nats.flush().await;
        served
    }
}

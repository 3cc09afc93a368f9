//! The web chat app (`web/`, built by Vite) served at `/` from `PARLEY_WEB_DIR`. The hashed
//! files under `/assets/` never change, so they are cached for a year; everything else
//! (`index.html` above all) is revalidated on each load, so a new version shows at once. A path
//! that is not a file gets `index.html`, for the app's own routes. Without a built app, `/`
//! says so.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The app's routes, merged last: the API and the sockets take precedence.
pub fn routes(dir: Option<&Path>) -> Router<AppState> {
    let Some(dir) = dir.filter(|d| d.join("index.html").is_file()) else {
        if let Some(d) = dir {
            tracing::warn!(dir = %d.display(), "PARLEY_WEB_DIR has no index.html; / serves a notice");
        }
        return Router::new().route("/", get(not_built));
    };
    let index = dir.join("index.html");
    let assets = Router::new()
        .nest_service("/assets", ServeDir::new(dir.join("assets")))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static(IMMUTABLE),
        ));
    let rest = Router::new()
        .fallback_service(ServeDir::new(PathBuf::from(dir)).fallback(ServeFile::new(index)))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static(REVALIDATE),
        ));
    assets.merge(rest)
}

async fn not_built() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "The web app is not built: run `npm ci && npm run build` in web/ (./dev up does), \
         and set PARLEY_WEB_DIR to web/dist.\n",
    )
}

//! The OpenAPI 3.1 document of the HTTP API, built from the routes' own `#[utoipa::path]`
//! attributes and the types they take and return, served at `/api/openapi.json`.

use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::SESSION_COOKIE;
use crate::state::AppState;
use crate::{http, rest};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Parley HTTP API",
        description = "Accounts, conversations and messages. Live events go over the \
            WebSocket at /ws or Socket.IO at /socket.io/ (docs/asyncapi.yaml). Errors are \
            {\"error\": {\"code\", \"message\"}}; `forbidden` means not a member, and also \
            that there is no such conversation."
    ),
    paths(
        http::register,
        http::login,
        http::token,
        http::refresh,
        http::logout,
        http::users,
        http::jwks,
        rest::list_conversations,
        rest::open_conversation,
        rest::list_messages,
        rest::send_message,
    ),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "users", description = "Finding people"),
        (name = "conversations", description = "Direct conversations and groups"),
        (name = "messages", description = "History and server-side sends"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/api/openapi.json",
        get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                document(),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/api/auth/register",
            "/api/auth/login",
            "/api/auth/token",
            "/api/auth/refresh",
            "/api/auth/logout",
            "/api/users",
            "/.well-known/jwks.json",
            "/api/conversations",
            "/api/conversations/{id}/messages",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["Message"].is_object());
    }
}

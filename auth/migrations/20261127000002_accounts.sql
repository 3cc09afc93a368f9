-- Parley accounts (DESIGN §4, §5): users, signing keys, sessions and refresh tokens, in the
-- schema `auth`, migrated by the auth role with its own migrations table (auth._sqlx_migrations).

create table auth.users (
    id             text primary key,
    username       text not null,
    email          text not null,
    display_name   text not null,
    password_hash  text not null,
    created_at     timestamptz not null default now()
);
create unique index users_username_lower on auth.users (lower(username));
create unique index users_email_lower on auth.users (lower(email));
create index users_display_name_lower on auth.users (lower(display_name) text_pattern_ops);
create index users_username_prefix on auth.users (lower(username) text_pattern_ops);

-- Ed25519 signing keys. The newest unretired key signs; retired keys stay in the JWKS until the
-- tokens they signed have expired.
create table auth.signing_keys (
    kid          text primary key,
    seed         bytea not null check (length(seed) = 32),
    public_key   bytea not null check (length(public_key) = 32),
    created_at   timestamptz not null default now(),
    retired_at   timestamptz
);

-- A sign-in: the session cookie (stored hashed) and the family of refresh tokens it issued.
create table auth.sessions (
    id           uuid primary key,
    user_id      text not null references auth.users (id) on delete cascade,
    secret_hash  bytea not null unique,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null,
    revoked_at   timestamptz
);
create index sessions_user_id on auth.sessions (user_id);

-- Refresh tokens, stored hashed; rotated on every use. Using one that was already used revokes
-- the whole session (reuse means it was stolen).
create table auth.refresh_tokens (
    token_hash   bytea primary key,
    session_id   uuid not null references auth.sessions (id) on delete cascade,
    created_at   timestamptz not null default now(),
    used_at      timestamptz
);
create index refresh_tokens_session_id on auth.refresh_tokens (session_id);

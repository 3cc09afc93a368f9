-- Gateways load the sessions revoked within the access-token lifetime at start (so a token
-- signed out before the gateway started is refused too): an index over the few revoked rows.
create index sessions_revoked_at on auth.sessions (revoked_at) where revoked_at is not null;

//! End-to-end tests of the Parley pipeline against a real NATS and a real Postgres:
//! client → gateway → JetStream → persistence → Postgres → delivery → gateway → client.

mod accounts;
mod bench;
mod binary;
mod broker_auth;
mod chat;
mod cluster;
mod deploy;
mod faults;
mod helpers;
mod hostile_auth;
mod hostile_chat;
mod hostile_edge;
mod hostile_sockets;
mod hygiene;
mod jsclient;
mod observability;
mod old_nats;
mod openapi;
mod pipeline;
mod protocol;
mod refused;
mod scaleout;
mod security;
mod socketio;
mod web;

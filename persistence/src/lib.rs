//! The one writer of chat state. Persistence consumes the commands gateways put on the JetStream
//! stream `PARLEY_IN`, writes them to Postgres in batches, announces the result to every
//! participant over core NATS, and only then acks the broker (DESIGN §2). It also answers the
//! chat queries (open a conversation, history, sync, members) as the NATS service
//! `parley-persistence`. Run as many replicas as the write load needs: they share the stream's
//! partitions (one writer per partition at a time) and one queue group.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`error`]: the error type and how a database error is classified (transient or not).
//! - [`db`]: the connection pool and migrations (`persistence/migrations/`).
//! - [`store`]: all SQL, one module per aggregate.
//! - [`metrics`]: the role's Prometheus metrics.
//! - [`plan`]: what a batch of commands writes, decided without I/O.
//! - [`ownership`]: which partitions of `PARLEY_IN` each replica writes.
//! - [`consumer`]: the partitioned batch consumer of `PARLEY_IN`.
//! - [`chat`]: the queries behind the service, as plain functions.
//! - [`service`]: the NATS request/reply endpoints that call [`chat`].
//! - [`startup`]: [`startup::Application`], which builds and runs the role.

pub mod chat;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod service;
pub mod startup;
pub mod store;

pub use config::PersistenceConfig;
pub use startup::Application;

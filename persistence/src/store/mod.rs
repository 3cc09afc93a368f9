//! All SQL. Lowercase, parameters always bound; functions take an executor or a transaction so
//! callers decide what runs in one transaction.

pub mod conversations;
pub mod messages;

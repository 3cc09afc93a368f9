//! One authenticated user's connection and commands, whatever transport carries them.
//! [`connection`] is a connection's whole life (limits, expiry, drain, sign-out, close reasons);
//! [`Session`] runs the commands it lets through, for sockets and REST alike. `/ws` and
//! Socket.IO only translate frames (`crate::transport`).

pub mod connection;
pub mod gate;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use chrono::Utc;
use futures::future::BoxFuture;
use parley_common::domain::UserId;
use parley_common::rpc::{
    self, ContactsReply, ContactsRequest, DeleteRequest, EditRequest, Empty, HistoryRequest,
    ListRequest, MemberRequest, OpenReply, OpenRequest, SyncRequest,
};
use parley_common::subjects::ChatOp;
use parley_common::wire::{ApiError, ErrorCode, ReadCommand, SendCommand};
use serde::Serialize;

use crate::protocol::{Command, MemberData, PresenceData, ReadData, SendData, Target, TypingData};
use crate::state::AppState;

/// A command's answer: the `{"ok": true, ...}` envelope, or what went wrong.
pub type Answer = Result<Bytes, ApiError>;

/// How a command is answered.
pub enum Dispatch {
    /// Already answered.
    Now(Answer),
    /// Answered when this resolves; the transport runs it without holding up the next frame.
    Later(BoxFuture<'static, Answer>),
}

/// The reply to an accepted send.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    client_msg_id: &'a str,
    conversation_id: uuid::Uuid,
    status: &'static str,
}

/// The reply to an accepted `auth:refresh`.
#[derive(Serialize)]
struct RefreshReply {
    exp: i64,
}

/// An accepted `auth:refresh`: the connection now lives until `exp`.
#[derive(Debug)]
pub struct Refreshed {
    /// The new token's expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// The Parley session the new token belongs to: signing out of it ends the connection.
    pub session_id: Option<String>,
    /// `{"ok": true, "exp": ...}`.
    pub reply: Bytes,
}

pub struct Session {
    pub state: AppState,
    pub user: UserId,
}

impl Session {
    pub fn new(state: AppState, user: UserId) -> Self {
        Self { state, user }
    }

    /// Handles one command. Sends are published here, in the order they arrive, so one client's
    /// messages keep their order; the broker's acknowledgement and every query are awaited
    /// in the returned future.
    pub async fn dispatch(&self, command: Command) -> Dispatch {
        match command {
            Command::Send(data) => {
                let started = std::time::Instant::now();
                let metrics = self.state.metrics.clone();
                match self.publish(data).await {
                    Ok(later) => Dispatch::Later(Box::pin(async move {
                        let answer = later.await;
                        match &answer {
                            Ok(_) => metrics.published(started.elapsed()),
                            Err(e) => metrics.rejected(e.code),
                        }
                        answer
                    })),
                    Err(e) => {
                        metrics.rejected(e.code);
                        Dispatch::Now(Err(e))
                    }
                }
            }
            Command::Open(data) => {
                let req = OpenRequest {
                    user_id: self.user.clone(),
                    participant_ids: data.participant_ids,
                    title: data.title,
                };
                let state = self.state.clone();
                Dispatch::Later(Box::pin(async move {
                    let conversation = state.chat.open(&req).await?;
                    Ok(rpc::encode_ok(&OpenReply { conversation }))
                }))
            }
            Command::History(data) => self.query(
                ChatOp::History,
                HistoryRequest {
                    user_id: self.user.clone(),
                    conversation_id: data.conversation_id,
                    before_seq: data.before_seq,
                    limit: data.limit,
                },
            ),
            Command::Sync(data) => self.query(
                ChatOp::Sync,
                SyncRequest {
                    user_id: self.user.clone(),
                    conversations: data.conversations,
                    limit: data.limit,
                },
            ),
            Command::List(data) => self.query(
                ChatOp::List,
                ListRequest {
                    user_id: self.user.clone(),
                    before: data.before,
                    limit: data.limit,
                },
            ),
            Command::Edit(data) => self.query(
                ChatOp::Edit,
                EditRequest {
                    user_id: self.user.clone(),
                    conversation_id: data.conversation_id,
                    seq: data.seq,
                    content: data.content.into_string(),
                },
            ),
            Command::Delete(data) => self.query(
                ChatOp::Delete,
                DeleteRequest {
                    user_id: self.user.clone(),
                    conversation_id: data.conversation_id,
                    seq: data.seq,
                },
            ),
            Command::MemberAdd(data) => self.change_members(ChatOp::MemberAdd, data),
            Command::MemberRemove(data) => self.change_members(ChatOp::MemberRemove, data),
            Command::Read(data) => match self.publish_read(data).await {
                Ok(later) => Dispatch::Later(later),
                Err(e) => Dispatch::Now(Err(e)),
            },
            // Handled before the next frame is read, so a client's typing frames take effect in
            // the order sent.
            Command::Typing(data) => Dispatch::Now(self.typing(data).await),
            Command::PresenceGet(data) => {
                let state = self.state.clone();
                let user = self.user.clone();
                Dispatch::Later(Box::pin(presence_of(state, user, data)))
            }
            // Only a connection can move its expiry (`connection`); the check itself is
            // [`Session::refresh`]. REST has no connection to refresh.
            Command::AuthRefresh { .. } => {
                tracing::error!("auth:refresh reached dispatch; the connection must answer it");
                Dispatch::Now(Err(ApiError::invalid(
                    "auth:refresh is not supported on this transport",
                )))
            }
        }
    }

    /// Checks the token of an `auth:refresh`: it must verify, still be unexpired, and speak for
    /// this session's user. The connection then moves the connection's expiry to the new `exp`,
    /// earlier or later than the old one: the newest token the client presented is the one that
    /// counts. Why a token was refused goes to the log, never the token itself.
    #[tracing::instrument(skip_all, fields(user = %self.user))]
    pub async fn refresh(&self, token: &str) -> Result<Refreshed, ApiError> {
        let refused = || ApiError::new(ErrorCode::Unauthenticated, "token refused");
        // Through the JWKS cache, so a token signed with a just-rotated key is accepted.
        let verified = self
            .state
            .jwks
            .verify(&self.state.verifier, token)
            .await
            .map_err(|reason| {
                tracing::info!(%reason, "refused a refresh token");
                refused()
            })?;
        if verified.user_id != self.user {
            tracing::info!(other = %verified.user_id, "refused a refresh token for another user");
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "token is for another user",
            ));
        }
        // The verifier forgives some clock skew on `exp`; a live connection ends at `exp`
        // itself, so a token already past it would close the socket as soon as it was applied.
        if verified.exp <= Utc::now().timestamp() {
            tracing::info!(
                exp = verified.exp,
                "refused a refresh token already past its exp"
            );
            return Err(refused());
        }
        let exp = verified.exp;
        Ok(Refreshed {
            exp,
            session_id: verified.session_id,
            reply: rpc::encode_ok(&RefreshReply { exp }),
        })
    }

    /// `typing`. Membership is asked of persistence when this user is not typing here already,
    /// so a member removed while a gateway still caches them cannot start; the throttle bounds
    /// how often.
    async fn typing(&self, data: TypingData) -> Answer {
        let state = &self.state;
        let conversation = data.conversation_id;
        let members = if state.typing.is_active(&self.user, conversation) {
            state.chat.members_for(conversation, &self.user).await?
        } else {
            state.chat.members_fresh(conversation, &self.user).await?
        };
        state
            .typing
            .set(&self.user, conversation, members, data.is_typing)
            .await;
        Ok(rpc::encode_ok(&Empty {}))
    }

    /// `member:add` / `member:remove`; this gateway forgets the members it cached at once (the
    /// others when persistence announces the change).
    fn change_members(&self, op: ChatOp, data: MemberData) -> Dispatch {
        let state = self.state.clone();
        let req = MemberRequest {
            user_id: self.user.clone(),
            conversation_id: data.conversation_id,
            member_id: data.user_id,
        };
        Dispatch::Later(Box::pin(async move {
            let reply = state.chat.call(op, &req).await;
            state.chat.forget(req.conversation_id).await;
            reply
        }))
    }

    /// Checks membership and hands a read receipt to JetStream, behind the sends before it.
    #[tracing::instrument(skip_all, fields(user = %self.user))]
    async fn publish_read(&self, data: ReadData) -> Result<BoxFuture<'static, Answer>, ApiError> {
        self.state
            .chat
            .members_for(data.conversation_id, &self.user)
            .await?;
        let command = ReadCommand {
            conversation_id: data.conversation_id,
            user_id: self.user.clone(),
            seq: data.seq,
            at: Utc::now(),
        };
        let ack = self
            .publish_command(
                self.state.subjects.in_read(data.conversation_id),
                &command,
                command.dedupe_id(),
            )
            .await?;
        Ok(Box::pin(async move {
            match ack.await {
                Ok(_) => Ok(rpc::encode_ok(&Empty {})),
                Err(e) => {
                    tracing::warn!(error = %e, "broker did not acknowledge a read receipt");
                    Err(ApiError::unavailable())
                }
            }
        }))
    }

    /// Hands a command to JetStream with the current trace context and its dedupe id; the
    /// returned future is the broker's acknowledgement.
    async fn publish_command<T: Serialize>(
        &self,
        subject: String,
        command: &T,
        dedupe_id: String,
    ) -> Result<PublishAckFuture, ApiError> {
        // While the broker is away the client would buffer the command and the sender would
        // wait out the ack timeout: say `unavailable` at once, and the client retries.
        if self.state.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::unavailable());
        }
        let payload: Bytes = serde_json::to_vec(command)
            .expect("commands always serialise")
            .into();
        self.state
            .js
            .send_publish(
                subject,
                // Headers before the message id, which is a header too.
                PublishMessage::build()
                    .payload(payload)
                    .headers(parley_common::trace::headers())
                    .message_id(dedupe_id),
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot publish a command");
                ApiError::unavailable()
            })
    }

    fn query<T: Serialize + Send + Sync + 'static>(&self, op: ChatOp, req: T) -> Dispatch {
        let state = self.state.clone();
        Dispatch::Later(Box::pin(async move { state.chat.call(op, &req).await }))
    }

    /// Checks membership and hands the send to JetStream; the returned future waits for the
    /// broker's acknowledgement.
    #[tracing::instrument(skip_all, fields(user = %self.user))]
    async fn publish(&self, data: SendData) -> Result<BoxFuture<'static, Answer>, ApiError> {
        let conversation_id = match &data.target {
            Target::Conversation(id) => {
                self.state.chat.members_for(*id, &self.user).await?;
                *id
            }
            Target::User(to) => {
                self.state
                    .chat
                    .open(&OpenRequest {
                        user_id: self.user.clone(),
                        participant_ids: vec![to.clone()],
                        title: None,
                    })
                    .await?
                    .id
            }
        };
        let command = SendCommand {
            conversation_id,
            sender_id: self.user.clone(),
            client_msg_id: data.client_msg_id,
            content: data.content.into_string(),
            accepted_at: Utc::now(),
        };
        let ack = self
            .publish_command(
                self.state.subjects.in_msg(conversation_id),
                &command,
                command.dedupe_id(),
            )
            .await?;
        let client_msg_id = command.client_msg_id;
        Ok(Box::pin(async move {
            match ack.await {
                // A duplicate inside the dedupe window is the same send, already accepted.
                Ok(_ack) => Ok(rpc::encode_ok(&Accepted {
                    client_msg_id: client_msg_id.as_str(),
                    conversation_id,
                    status: "accepted",
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "broker did not acknowledge a send");
                    Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the message was not accepted, retry with the same clientMsgId",
                    ))
                }
            }
        }))
    }
}

/// `presence:get`: the presence of users who share a conversation with the caller (and the
/// caller's own). Anyone else reads as offline and never seen, so presence reveals nothing about
/// strangers.
async fn presence_of(state: AppState, user: UserId, data: PresenceData) -> Answer {
    #[derive(Serialize)]
    struct Reply {
        presence: Vec<parley_common::wire::Presence>,
    }
    let raw = state
        .chat
        .call(
            ChatOp::Contacts,
            &ContactsRequest {
                user_id: user.clone(),
            },
        )
        .await?;
    let contacts: ContactsReply = rpc::decode(&raw)?;
    let visible: Vec<UserId> = data
        .user_ids
        .iter()
        .filter(|u| **u == user || contacts.user_ids.iter().any(|c| c == u.as_str()))
        .cloned()
        .collect();
    let known = state.presence.get(&visible).await?;
    let presence = data
        .user_ids
        .iter()
        .map(|u| {
            known
                .iter()
                .find(|p| p.user_id == u.as_str())
                .cloned()
                .unwrap_or_else(|| parley_common::wire::Presence {
                    user_id: u.as_str().to_owned(),
                    online: false,
                    last_seen_at: None,
                })
        })
        .collect();
    Ok(rpc::encode_ok(&Reply { presence }))
}

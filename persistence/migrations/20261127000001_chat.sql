-- Conversations, members and messages (DESIGN §4).

create table conversations (
    id               uuid primary key,
    kind             text not null check (kind in ('direct', 'group')),
    title            text,
    -- sorted, so a conversation's members read the same everywhere
    participant_ids  text[] not null,
    -- the sorted pair 'a:b' for a direct conversation, so a DM between two users exists once
    direct_key       text unique,
    last_seq         bigint not null default 0,
    last_message_at  timestamptz,
    created_at       timestamptz not null default now(),
    check ((kind = 'direct') = (direct_key is not null))
);
create index conversations_last_message_at on conversations (last_message_at desc nulls last);
create index conversations_participant_ids on conversations using gin (participant_ids);

create table conversation_members (
    conversation_id  uuid not null references conversations (id) on delete cascade,
    user_id          text not null,
    last_read_seq    bigint not null default 0,
    joined_at        timestamptz not null default now(),
    primary key (conversation_id, user_id)
);
create index conversation_members_user_id on conversation_members (user_id);

create table messages (
    id               uuid primary key,
    conversation_id  uuid not null references conversations (id) on delete cascade,
    seq              bigint not null check (seq > 0),
    sender_id        text not null,
    client_msg_id    text not null,
    content          text not null,
    created_at       timestamptz not null default now(),
    read_at          timestamptz,
    edited_at        timestamptz,
    deleted_at       timestamptz,
    constraint messages_conversation_seq unique (conversation_id, seq),
    constraint messages_sender_client_msg_id unique (sender_id, client_msg_id)
);
create index messages_sender_id on messages (sender_id);
create index messages_created_at on messages (created_at);

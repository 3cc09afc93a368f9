-- The write path's cost (issue 17): every stored message paid for indexes no query reads, and
-- every batch's `last_seq` bump rewrote every index of its conversation. See
-- docs/design-notes.md ("Indexes on the write path").

-- Covered by the unique (sender_id, client_msg_id), whose leading column is sender_id.
drop index if exists messages_sender_id;
-- No query reads messages by time (history and sync go by (conversation_id, seq)).
drop index if exists messages_created_at;
-- The list orders by coalesce(last_message_at, created_at), which this index cannot serve.
-- Without it no index covers a column the send path updates, so the bump of last_seq and
-- last_message_at is a HOT update: no index entry (the GIN on participant_ids included) is
-- written, given room on the page.
drop index if exists conversations_last_message_at;
alter table conversations set (fillfactor = 70);

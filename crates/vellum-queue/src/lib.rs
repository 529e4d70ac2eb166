//! # vellum-queue
//!
//! The scale-out queue (SPEC §1, shape "scale-out"): stateless API nodes enqueue accepted
//! events into Redis Streams; workers, one per partition at a time, read them, commit them to
//! the store, acknowledge them and send receipts back. Nothing of value lives only in a
//! process: an API node or a worker can die at any moment and another takes over.
//!
//! ## Layout in Redis
//!
//! For a queue `name` (default `audit`) with `partitions` partitions (default 16):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{name}:p{N}:high`, `{name}:p{N}:normal` | stream | the two priority lanes of partition N; field `p` = payload |
//! | group `{name}-writers` | consumer group | on every lane stream, created at id `0` with `MKSTREAM` |
//! | `{name}:dlq` | stream | dead letters: payload, reason, source stream/partition/lane/id, deliveries, time, consumer |
//! | `{name}:idem:{key}` | string with TTL | cross-node idempotency reservations |
//! | `{name}:receipts:{node}` | pub/sub channel | commit receipts for API node `node` |
//!
//! ## Policies
//!
//! * **Nothing is trimmed.** Every stream entry is an accepted audit event that has not been
//!   written yet, so `MAXLEN` trimming would be silent data loss. Instead an acknowledged entry
//!   is deleted (`XACK` + `XDEL` in one transaction): a stream holds exactly the unfinished
//!   work, and its length is the backlog. Memory is bounded by refusing new batches
//!   ([`QueueError::Full`], an HTTP 503) once a stream holds [`QueueConfig::max_stream_len`]
//!   entries, and by Redis `maxmemory` with `noeviction` (also reported as `Full`).
//! * **At least once.** An entry is re-delivered until acknowledged; a worker acknowledges after
//!   its commit, and its commit must tolerate a repeat (a crash between the two).
//! * **Priority.** A consumer returns its own re-deliveries first, then drains the high lane,
//!   and only then reads (and blocks on) the normal lane.
//! * **Poison messages.** Every message carries its delivery count; past
//!   [`QueueConfig::max_deliveries`] the worker moves it to the dead-letter stream
//!   ([`Consumer::dead_letter`]), whence an operator retries or discards it ([`DeadLetters`]).
//! * **Take-over.** A worker claims entries a dead worker left pending
//!   ([`Consumer::claim_abandoned`], or [`Consumer::claim_abandoned_now`] right after acquiring
//!   the partition's lock).
//! * **Single Redis (or Sentinel-managed primary).** Dead-lettering and retries touch two keys
//!   in one transaction, which Redis Cluster would reject across hash slots.
//!
//! Requires Redis 7.0 or later (`SET … NX GET`, `XAUTOCLAIM`, the `lag` of `XINFO GROUPS`).
//! Errors never carry the Redis URL or its password ([`QueueError`]).

mod config;
mod conn;
mod consumer;
mod dlq;
mod error;
mod producer;
mod receipts;
mod reply;
mod stats;

pub use config::{
    DEFAULT_QUEUE_NAME, ENV_QUEUE_NAME, Lane, MAX_PARTITIONS, QueueConfig, partition_of,
};
pub use consumer::{Consumer, MAX_READ_BATCH, Message};
pub use dlq::{DeadLetter, DeadLetters, Selection};
pub use error::{QueueError, redact_url};
pub use producer::{MAX_ENQUEUE_BATCH, Producer};
pub use receipts::{
    Receipt, ReceiptBus, ReceiptListener, Registration, decode_receipt, encode_receipt,
};
pub use stats::{LaneStats, QueueStats};

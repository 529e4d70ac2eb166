//! The worker's side: read batches of one partition, acknowledge, dead-letter, take over.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::config::{Lane, QueueConfig};
use crate::conn;
use crate::error::{QueueError, server_code};
use crate::reply::{self, RawEntry};

/// Most messages one [`Consumer::next_batch`] returns, whatever `max` asks for.
pub const MAX_READ_BATCH: usize = 10_000;

/// Entries claimed per `XAUTOCLAIM` round trip.
const CLAIM_PAGE: usize = 256;

/// Deletes consumer ARGV[2] of group ARGV[1] on stream KEYS[1] only if it holds no pending entry
/// (returns -1 otherwise), atomically.
const DELETE_IDLE_CONSUMER_LUA: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
";

/// Longest dead-letter reason kept (bytes); longer reasons are cut at a character boundary.
const MAX_REASON_BYTES: usize = 4096;

/// One queued payload handed to a worker.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The lane it was read from.
    pub lane: Lane,
    /// Its stream entry id (`<ms>-<seq>`, assigned by Redis at enqueue; unique within its
    /// stream only). A re-delivery carries the same id; a dead letter retried by an operator
    /// gets a new one.
    pub entry_id: String,
    /// The bytes the producer enqueued.
    pub payload: Vec<u8>,
    /// How many times it has been delivered to a consumer, this delivery included (1 on first
    /// delivery). A message that keeps failing, or keeps crashing its worker, climbs until
    /// [`Consumer::over_delivery_limit`] says to dead-letter it.
    pub deliveries: u64,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads are audit events, possibly large and full of personal data: show their size.
        f.debug_struct("Message")
            .field("lane", &self.lane)
            .field("entry_id", &self.entry_id)
            .field("payload_len", &self.payload.len())
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

/// Reads one partition through the consumer group, for the worker that owns that partition.
///
/// **Delivery is at least once.** A batch is re-delivered until it is acknowledged, so the
/// worker must acknowledge only after its commit, and its commit must tolerate seeing an event
/// again (a crash between commit and [`ack`](Self::ack) re-delivers it).
///
/// **One batch in flight.** [`next_batch`](Self::next_batch) returns this consumer's own
/// unacknowledged entries before anything new, so the caller must acknowledge (or
/// dead-letter) a batch before asking for the next, or it gets the same batch back. That is
/// what makes a failed commit simply retry: don't acknowledge, ask again.
///
/// Each consumer has its own connection (a blocking read would otherwise stall every other
/// user of a shared one), configured to wait `response_timeout + max_block` per round trip.
/// The connection reconnects by itself after a failure.
pub struct Consumer {
    conn: ConnectionManager,
    config: QueueConfig,
    partition: u32,
    name: String,
    group: String,
    /// Entries returned and not yet acknowledged or dead-lettered.
    outstanding: HashSet<(Lane, String)>,
    /// Own pending entries may exist that `outstanding` does not know about (after start, a
    /// claim, a read that failed or was cancelled midway, or a re-delivered batch).
    recheck_pending: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.config.name)
            .field("partition", &self.partition)
            .field("name", &self.name)
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Connects to Redis at `url` and creates the consumer group on both lanes of `partition`
    /// (with their streams) if needed.
    ///
    /// `consumer_name` must be unique per worker *process instance* (e.g. host, pid and a
    /// random suffix): entries pending under a name belong to that instance, and a restarted
    /// worker takes over its predecessor's entries with
    /// [`claim_abandoned_now`](Self::claim_abandoned_now).
    pub async fn new(
        url: &str,
        config: QueueConfig,
        partition: u32,
        consumer_name: impl Into<String>,
    ) -> Result<Self, QueueError> {
        config.validate()?;
        config.check_partition(partition)?;
        let name = consumer_name.into();
        if name.is_empty() {
            return Err(QueueError::Config("consumer name must not be empty".into()));
        }
        let mut conn = conn::manager(url, &config, config.max_block).await?;
        conn::ensure_groups(&mut conn, &config, partition).await?;
        Ok(Consumer {
            conn,
            group: config.group(),
            config,
            partition,
            name,
            outstanding: HashSet::new(),
            recheck_pending: true,
        })
    }

    /// The partition this consumer reads.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration this consumer was created with.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Whether `msg` has been delivered more than [`QueueConfig::max_deliveries`] times and
    /// should be dead-lettered instead of processed again.
    pub fn over_delivery_limit(&self, msg: &Message) -> bool {
        msg.deliveries > self.config.max_deliveries
    }

    /// Takes over entries that other consumers of this partition's group have held unacknowledged
    /// for at least [`QueueConfig::claim_min_idle`] (a worker that died holding a batch).
    ///
    /// Covers both lanes, paging until Redis has scanned the whole pending list. Claimed entries
    /// become this consumer's own pending entries and come out of the next
    /// [`next_batch`](Self::next_batch) calls, ahead of new ones. Returns how many were claimed
    /// (this consumer's own entries idle that long are counted too). Claiming does not count as
    /// a delivery; the read that hands the entry over does.
    pub async fn claim_abandoned(&mut self) -> Result<usize, QueueError> {
        let min_idle = self.config.claim_min_idle;
        self.claim(min_idle).await
    }

    /// Like [`claim_abandoned`](Self::claim_abandoned) but regardless of idle time: for right
    /// after this worker acquired the partition (its lock) and so knows the previous owner is
    /// gone, when waiting `claim_min_idle` would only delay recovery.
    pub async fn claim_abandoned_now(&mut self) -> Result<usize, QueueError> {
        self.claim(Duration::ZERO).await
    }

    async fn claim(&mut self, min_idle: Duration) -> Result<usize, QueueError> {
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut claimed = 0;
        for lane in Lane::ALL {
            let key = self.config.stream_key(self.partition, lane);
            let mut cursor = "0-0".to_owned();
            loop {
                let value = self
                    .query_with_groups(
                        redis::cmd("XAUTOCLAIM")
                            .arg(&key)
                            .arg(&self.group)
                            .arg(&self.name)
                            .arg(min_idle_ms)
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(CLAIM_PAGE)
                            .arg("JUSTID"),
                    )
                    .await?;
                let parts =
                    reply::array(&value).ok_or_else(|| reply::protocol("XAUTOCLAIM", &value))?;
                let next = parts
                    .first()
                    .and_then(reply::text)
                    .ok_or_else(|| reply::protocol("XAUTOCLAIM cursor", &value))?;
                let ids = parts
                    .get(1)
                    .and_then(reply::array)
                    .ok_or_else(|| reply::protocol("XAUTOCLAIM ids", &value))?;
                claimed += ids.len();
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
        }
        if claimed > 0 {
            self.recheck_pending = true;
            tracing::info!(
                queue = %self.config.name,
                partition = self.partition,
                consumer = %self.name,
                claimed,
                "claimed abandoned queue entries"
            );
        }
        Ok(claimed)
    }

    /// The next batch of at most `max` messages (1 ≤ `max` ≤ [`MAX_READ_BATCH`]).
    ///
    /// In order of precedence:
    /// 1. this consumer's own unacknowledged entries (a batch whose commit failed, or entries
    ///    just claimed), high lane first — re-deliveries, with their delivery counts;
    /// 2. new entries of the high lane (never blocks);
    /// 3. new entries of the normal lane, to fill the batch; only when the high lane had
    ///    nothing does this wait, up to `block` (capped at [`QueueConfig::max_block`]; zero
    ///    means don't wait).
    ///
    /// The high lane is always drained first. An empty result means nothing arrived within
    /// `block`. Entries found without their data (deleted behind the queue's back) are
    /// acknowledged and skipped; entries without a payload field are dead-lettered.
    pub async fn next_batch(
        &mut self,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let max = max.clamp(1, MAX_READ_BATCH);
        if self.recheck_pending || !self.outstanding.is_empty() {
            let msgs = self.read_own_pending(max).await?;
            if !msgs.is_empty() {
                self.recheck_pending = true;
                self.remember(&msgs);
                return Ok(msgs);
            }
            self.outstanding.clear();
            self.recheck_pending = false;
        }

        // Until the reads below complete, entries may have been handed to this consumer that
        // the caller never sees (an error or a cancelled future): look at our pending list next
        // time if so.
        self.recheck_pending = true;
        let mut msgs = self.read_new(Lane::High, max, None).await?;
        if msgs.len() < max {
            let wait = if msgs.is_empty() {
                Some(block.min(self.config.max_block))
            } else {
                None
            };
            let more = self.read_new(Lane::Normal, max - msgs.len(), wait).await?;
            msgs.extend(more);
        }
        self.recheck_pending = false;
        self.remember(&msgs);
        Ok(msgs)
    }

    fn remember(&mut self, msgs: &[Message]) {
        self.outstanding
            .extend(msgs.iter().map(|m| (m.lane, m.entry_id.clone())));
    }

    /// `XREADGROUP … >` on one lane.
    async fn read_new(
        &mut self,
        lane: Lane,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Message>, QueueError> {
        let key = self.config.stream_key(self.partition, lane);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block.filter(|b| !b.is_zero()) {
            // BLOCK 0 would wait forever; round sub-millisecond waits up to 1 ms.
            let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&key).arg(">");
        let value = self.query_with_groups(&cmd).await?;
        let mut raw = Vec::new();
        for (stream, entries) in reply::read_reply(&value)? {
            if stream == key {
                raw.extend(entries.into_iter().map(|e| (lane, e)));
            }
        }
        self.collect_messages(raw, |_, _| 1).await
    }

    /// `XREADGROUP … 0 0` on both lanes: this consumer's pending entries, with delivery counts.
    async fn read_own_pending(&mut self, max: usize) -> Result<Vec<Message>, QueueError> {
        let high = self.config.stream_key(self.partition, Lane::High);
        let normal = self.config.stream_key(self.partition, Lane::Normal);
        let value = self
            .query_with_groups(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(max)
                    .arg("STREAMS")
                    .arg(&high)
                    .arg(&normal)
                    .arg("0")
                    .arg("0"),
            )
            .await?;
        let mut raw: Vec<(Lane, RawEntry)> = Vec::new();
        for (stream, entries) in reply::read_reply(&value)? {
            let lane = if stream == high {
                Lane::High
            } else if stream == normal {
                Lane::Normal
            } else {
                continue;
            };
            raw.extend(entries.into_iter().map(|e| (lane, e)));
        }
        // Priority holds for re-deliveries too; ids ascend within each lane already.
        raw.sort_by_key(|(lane, _)| *lane);
        raw.truncate(max);
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.delivery_counts(&raw).await?;
        self.collect_messages(raw, |lane, id| {
            counts.get(&(lane, id.to_owned())).copied().unwrap_or(1)
        })
        .await
    }

    /// Times delivered, from `XPENDING` (extended form) over the id range of each lane.
    async fn delivery_counts(
        &mut self,
        raw: &[(Lane, RawEntry)],
    ) -> Result<HashMap<(Lane, String), u64>, QueueError> {
        let mut pipe = redis::pipe();
        let mut lanes = Vec::new();
        for lane in Lane::ALL {
            let ids: Vec<&str> = raw
                .iter()
                .filter(|(l, _)| *l == lane)
                .map(|(_, e)| e.id.as_str())
                .collect();
            let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
                continue;
            };
            pipe.cmd("XPENDING")
                .arg(self.config.stream_key(self.partition, lane))
                .arg(&self.group)
                .arg(*first)
                .arg(*last)
                .arg(ids.len())
                .arg(&self.name);
            lanes.push(lane);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        let mut counts = HashMap::new();
        for (lane, value) in lanes.into_iter().zip(replies) {
            for item in reply::array(&value).unwrap_or_default() {
                let Some(parts) = reply::array(item) else {
                    continue;
                };
                if let (Some(id), Some(n)) = (
                    parts.first().and_then(reply::text),
                    parts.get(3).and_then(reply::uint),
                ) {
                    counts.insert((lane, id), n);
                }
            }
        }
        Ok(counts)
    }

    /// Turns raw entries into messages; acknowledges entries whose data is gone and
    /// dead-letters entries without a payload.
    async fn collect_messages(
        &mut self,
        raw: Vec<(Lane, RawEntry)>,
        deliveries: impl Fn(Lane, &str) -> u64,
    ) -> Result<Vec<Message>, QueueError> {
        let mut msgs = Vec::with_capacity(raw.len());
        for (lane, entry) in raw {
            let n = deliveries(lane, &entry.id);
            if entry.fields.is_none() {
                tracing::warn!(
                    queue = %self.config.name,
                    partition = self.partition,
                    lane = %lane,
                    entry = %entry.id,
                    "pending queue entry has no data (deleted outside Vellum); acknowledging it"
                );
                // Nothing to deliver: acknowledge the entry id alone.
                let emptied = Message {
                    lane,
                    entry_id: entry.id,
                    payload: Vec::new(),
                    deliveries: n,
                };
                self.ack(&[&emptied]).await?;
                continue;
            }
            match entry.field(b"p") {
                Some(payload) => msgs.push(Message {
                    lane,
                    payload: payload.to_vec(),
                    entry_id: entry.id,
                    deliveries: n,
                }),
                None => {
                    // Set aside under its id, with an empty payload, and the reason.
                    let malformed = Message {
                        lane,
                        entry_id: entry.id,
                        payload: Vec::new(),
                        deliveries: n,
                    };
                    self.dead_letter(&malformed, "malformed queue entry: no payload field `p`")
                        .await?;
                }
            }
        }
        Ok(msgs)
    }

    /// Acknowledges and deletes `msgs` (after their commit), one transaction for all lanes.
    ///
    /// `XACK` removes them from the pending list and `XDEL` from the stream, together, so a
    /// stream only ever holds unfinished work and its length is the real backlog. Returns how
    /// many were still pending (fewer than given if another consumer had claimed some).
    pub async fn ack(&mut self, msgs: &[&Message]) -> Result<u64, QueueError> {
        if msgs.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut acks = 0;
        for lane in Lane::ALL {
            let ids: Vec<&str> = msgs
                .iter()
                .filter(|m| m.lane == lane)
                .map(|m| m.entry_id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = self.config.stream_key(self.partition, lane);
            pipe.cmd("XACK").arg(&key).arg(&self.group).arg(&ids);
            pipe.cmd("XDEL").arg(&key).arg(&ids);
            acks += 1;
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        let acked = replies
            .iter()
            .step_by(2)
            .take(acks)
            .filter_map(reply::uint)
            .sum();
        for m in msgs {
            self.outstanding.remove(&(m.lane, m.entry_id.clone()));
        }
        Ok(acked)
    }

    /// Moves `msg` to the dead-letter stream `{name}:dlq`, atomically with its acknowledgement.
    ///
    /// The dead letter keeps the payload, `reason` (cut to 4 KiB), the source stream, partition
    /// and lane, the original entry id, the delivery count, the time (ms since the epoch) and
    /// this consumer's name, so an operator can inspect it and `vellum dlq retry` can put it
    /// back where it came from. Dead letters are never trimmed.
    pub async fn dead_letter(&mut self, msg: &Message, reason: &str) -> Result<(), QueueError> {
        let key = self.config.stream_key(self.partition, msg.lane);
        let reason = truncate(reason, MAX_REASON_BYTES);
        tracing::warn!(
            queue = %self.config.name,
            partition = self.partition,
            lane = %msg.lane,
            entry = %msg.entry_id,
            deliveries = msg.deliveries,
            reason,
            "dead-lettering queue entry"
        );
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(self.config.dlq_key())
            .arg("*")
            .arg("payload")
            .arg(msg.payload.as_slice())
            .arg("reason")
            .arg(reason)
            .arg("stream")
            .arg(&key)
            .arg("partition")
            .arg(self.partition)
            .arg("lane")
            .arg(msg.lane.as_str())
            .arg("entry")
            .arg(&msg.entry_id)
            .arg("deliveries")
            .arg(msg.deliveries)
            .arg("at")
            .arg(conn::unix_millis())
            .arg("consumer")
            .arg(&self.name)
            .ignore();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(&self.group)
            .arg(&msg.entry_id)
            .ignore();
        pipe.cmd("XDEL").arg(&key).arg(&msg.entry_id).ignore();
        let _: Value = pipe.query_async(&mut self.conn).await?;
        self.outstanding.remove(&(msg.lane, msg.entry_id.clone()));
        Ok(())
    }

    /// Removes other consumers of this partition's group that hold nothing and have been idle
    /// for at least `min_idle`, so the group's consumer list does not grow with every worker
    /// restart. Returns how many were removed.
    pub async fn remove_idle_consumers(&mut self, min_idle: Duration) -> Result<usize, QueueError> {
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut removed = 0;
        for lane in Lane::ALL {
            let key = self.config.stream_key(self.partition, lane);
            let value = self
                .query_with_groups(
                    redis::cmd("XINFO")
                        .arg("CONSUMERS")
                        .arg(&key)
                        .arg(&self.group),
                )
                .await?;
            let mut idle_names = Vec::new();
            for c in reply::array(&value).unwrap_or_default() {
                let name = reply::lookup(c, "name").and_then(reply::text);
                let pending = reply::lookup(c, "pending").and_then(reply::uint);
                let idle = reply::lookup(c, "idle").and_then(reply::uint);
                if let (Some(name), Some(0), Some(idle)) = (name, pending, idle)
                    && name != self.name
                    && idle >= min_idle_ms
                {
                    idle_names.push(name);
                }
            }
            for name in idle_names {
                // Checked again inside the script: a consumer that read something since XINFO
                // must keep its pending entries (deleting it would orphan them for good).
                let deleted: Value = redis::cmd("EVAL")
                    .arg(DELETE_IDLE_CONSUMER_LUA)
                    .arg(1)
                    .arg(&key)
                    .arg(&self.group)
                    .arg(&name)
                    .query_async(&mut self.conn)
                    .await?;
                if reply::int(&deleted).is_some_and(|n| n >= 0) {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Runs `cmd`; if the group is missing (the stream was deleted, or Redis restarted without
    /// persistence) recreates it and runs `cmd` once more.
    async fn query_with_groups(&mut self, cmd: &redis::Cmd) -> Result<Value, QueueError> {
        match cmd.query_async::<Value>(&mut self.conn).await {
            Ok(v) => Ok(v),
            Err(e) if server_code(&e) == Some("NOGROUP") => {
                tracing::warn!(
                    queue = %self.config.name,
                    partition = self.partition,
                    "consumer group missing; recreating it"
                );
                conn::ensure_groups(&mut self.conn, &self.config, self.partition).await?;
                Ok(cmd.query_async::<Value>(&mut self.conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn message_debug_hides_the_payload() {
        let m = Message {
            lane: Lane::High,
            entry_id: "1-0".into(),
            payload: b"patient 123".to_vec(),
            deliveries: 1,
        };
        let shown = format!("{m:?}");
        assert!(shown.contains("payload_len: 11"));
        assert!(!shown.contains("patient"));
    }
}

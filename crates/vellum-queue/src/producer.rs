//! The API node's side: enqueue events, reserve idempotency keys, read queue statistics.

use std::fmt;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::config::{Lane, QueueConfig};
use crate::conn;
use crate::dlq::DeadLetters;
use crate::error::QueueError;
use crate::reply;
use crate::stats::{self, QueueStats};

/// Most payloads one [`Producer::enqueue`] call accepts.
///
/// A batch is added by one server-side script, atomically; Redis runs nothing else meanwhile,
/// so an unbounded batch would stall every other client. Larger inputs must be split by the
/// caller (who then also decides what a partial failure means for its HTTP answer).
pub const MAX_ENQUEUE_BATCH: usize = 10_000;

/// Adds a batch to one stream, or refuses it if the stream is at its length limit.
///
/// KEYS[1] = stream; ARGV[1] = limit (0 = none); ARGV[2..] = payloads. All or nothing: the
/// length check and every XADD run as one script, so a batch is never half enqueued and the
/// limit is never raced by another API node.
const ENQUEUE_LUA: &str = r"
local limit = tonumber(ARGV[1])
if limit > 0 then
  local len = redis.call('XLEN', KEYS[1])
  if len >= limit then
    return redis.error_reply('VELLUMFULL ' .. KEYS[1] .. ' holds ' .. len .. ' entries')
  end
end
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i])
end
return ids
";

/// Deletes KEYS[1] only if it still holds ARGV[1] (releasing one's own reservation without
/// ever deleting another node's).
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Enqueues events from an API node.
///
/// Holds one multiplexed, self-reconnecting connection ([`ConnectionManager`]): cheap to clone
/// and safe to share between all request tasks. After a connection loss the call that noticed
/// it fails with [`QueueError::Unavailable`] and later calls use a fresh connection.
///
/// Writes are never retried internally: a lost reply does not say whether the write happened,
/// and retrying an `XADD` could enqueue an event twice. The HTTP client retries with its
/// idempotency key instead.
#[derive(Clone)]
pub struct Producer {
    conn: ConnectionManager,
    config: QueueConfig,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("queue", &self.config.name)
            .field("partitions", &self.config.partitions)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Connects to Redis at `url` (`redis://[:password@]host[:port][/db]`).
    ///
    /// Fails fast with [`QueueError::Unavailable`] if Redis cannot be reached now, so a
    /// misconfigured node does not report ready. The URL never appears in errors.
    pub async fn connect(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let conn = conn::manager(url, &config, Duration::ZERO).await?;
        Ok(Producer { conn, config })
    }

    /// The configuration this producer was created with.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Appends `payloads` to one lane of one partition, in order, in one round trip.
    ///
    /// Returns the stream entry ids, one per payload, in the same order. Payloads are opaque
    /// bytes (binary-safe). The batch is all-or-nothing. Fails with [`QueueError::Full`] when
    /// the stream already holds [`QueueConfig::max_stream_len`] entries (or Redis is out of
    /// memory) — the caller answers 503 with `Retry-After`.
    pub async fn enqueue(
        &self,
        partition: u32,
        lane: Lane,
        payloads: &[Vec<u8>],
    ) -> Result<Vec<String>, QueueError> {
        self.config.check_partition(partition)?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        if payloads.len() > MAX_ENQUEUE_BATCH {
            return Err(QueueError::Config(format!(
                "batch of {} payloads exceeds the limit of {MAX_ENQUEUE_BATCH}",
                payloads.len()
            )));
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ENQUEUE_LUA)
            .arg(1)
            .arg(self.config.stream_key(partition, lane))
            .arg(self.config.max_stream_len.unwrap_or(0));
        for payload in payloads {
            cmd.arg(payload.as_slice());
        }
        let mut conn = self.conn.clone();
        let value: Value = cmd.query_async(&mut conn).await?;
        let ids = reply::array(&value)
            .ok_or_else(|| reply::protocol("enqueue reply", &value))?
            .iter()
            .map(|v| reply::text(v).ok_or_else(|| reply::protocol("entry id", v)))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != payloads.len() {
            return Err(QueueError::Protocol(format!(
                "enqueued {} payloads but got {} ids",
                payloads.len(),
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Checks that Redis answers (for `/readyz`).
    ///
    /// Reads are safe to repeat, so a failure caused by a connection that had silently died is
    /// retried once on the reconnected connection before it is reported.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let first: redis::RedisResult<Value> = redis::cmd("PING").query_async(&mut conn).await;
        match first {
            Ok(_) => Ok(()),
            Err(e) if QueueError::from(e.clone()).is_transient() => {
                let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reserves idempotency key `key` for `value` for `ttl`, unless another request (on any API
    /// node) holds it already.
    ///
    /// `SET {name}:idem:{key} value NX PX ttl GET` semantics: returns `None` when this call made
    /// the reservation, or `Some(existing)` with the value stored by whoever reserved it first
    /// (who may still be in flight, or may have replaced it with a final receipt through
    /// [`set_idempotency`](Self::set_idempotency)). Atomic across nodes.
    pub async fn reserve_idempotency(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, QueueError> {
        let ttl_ms = ttl_millis(ttl)?;
        let mut conn = self.conn.clone();
        let existing: Value = redis::cmd("SET")
            .arg(self.config.idempotency_key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        match existing {
            Value::Nil => Ok(None),
            other => reply::text(&other)
                .map(Some)
                .ok_or_else(|| reply::protocol("SET … GET reply", &other)),
        }
    }

    /// Replaces the value of idempotency key `key` (e.g. a reservation by its final receipt),
    /// with a fresh `ttl`.
    pub async fn set_idempotency(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let ttl_ms = ttl_millis(ttl)?;
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("SET")
            .arg(self.config.idempotency_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Releases a reservation made with `value` (after the enqueue it guarded failed, so the
    /// client's retry is not answered with a receipt that will never exist). Returns whether it
    /// was deleted; a key that now holds another value is left alone.
    pub async fn release_idempotency(&self, key: &str, value: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let deleted: Value = redis::cmd("EVAL")
            .arg(RELEASE_LUA)
            .arg(1)
            .arg(self.config.idempotency_key(key))
            .arg(value)
            .query_async(&mut conn)
            .await?;
        Ok(reply::int(&deleted).unwrap_or(0) > 0)
    }

    /// Depth, pending, lag and dead-letter counts of the whole queue (for `/metrics` and
    /// `/readyz`). One round trip; see [`QueueStats`].
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut conn = self.conn.clone();
        stats::collect(&mut conn, &self.config).await
    }

    /// Dead-letter administration over this producer's connection (for an API node's admin
    /// routes; the `vellum dlq` command uses [`DeadLetters::connect`]).
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::with_connection(self.conn.clone(), self.config.clone())
    }

    /// The Redis client id of the producer's current connection (`CLIENT ID`), so an operator
    /// (or a test) can find it in `CLIENT LIST` or kill it. Changes after a reconnect.
    pub async fn client_id(&self) -> Result<i64, QueueError> {
        let mut conn = self.conn.clone();
        let id: Value = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        reply::int(&id).ok_or_else(|| reply::protocol("CLIENT ID reply", &id))
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis refuses 0).
fn ttl_millis(ttl: Duration) -> Result<u64, QueueError> {
    if ttl.is_zero() {
        return Err(QueueError::Config(
            "idempotency TTL must be positive".into(),
        ));
    }
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_positive_milliseconds() {
        assert!(ttl_millis(Duration::ZERO).is_err());
        assert_eq!(ttl_millis(Duration::from_micros(10)).ok(), Some(1));
        assert_eq!(
            ttl_millis(Duration::from_secs(86_400)).ok(),
            Some(86_400_000)
        );
    }
}

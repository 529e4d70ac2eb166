//! The API node's side: enqueue events, reserve idempotency keys, read queue statistics.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

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

/// The SHA-1 of [`ENQUEUE_LUA`] as Redis reported it (`SCRIPT LOAD`), to run it by hash
/// (`EVALSHA`): Redis then neither receives nor hashes the script text on every call.
static ENQUEUE_SCRIPT_SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

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
///
/// Concurrent enqueues to one stream share round trips: while one script runs for a stream,
/// later calls for it wait, and go together in the next one (see [`Coalescer`]).
#[derive(Clone)]
pub struct Producer {
    conn: ConnectionManager,
    config: QueueConfig,
    coalescer: Arc<Coalescer>,
}

/// Group commit for the queue: enqueue calls that arrive while a stream's script is in flight
/// wait, then go as one script call (up to [`MAX_ENQUEUE_BATCH`] payloads), each getting its
/// own ids or the shared error.
///
/// Why: an API node answering one event per request ran one script per event, and Redis
/// spent ~6 µs per call entering Lua on top of the `XADD` itself, most of its CPU per event
/// in the scale-out benchmark, plus the network round trip's system calls on both sides. A
/// call never waits for a timer, only for the round trip already in flight, so an idle
/// stream's latency is unchanged. Each call stays all or nothing: a combined batch is added
/// or refused whole.
#[derive(Default)]
struct Coalescer {
    streams: parking_lot::Mutex<HashMap<String, StreamQueue>>,
    /// Script calls made (each one round trip), for [`Producer::enqueue_round_trips`].
    round_trips: std::sync::atomic::AtomicU64,
}

/// A stream with a script call in flight, and the calls waiting for the next one.
#[derive(Default)]
struct StreamQueue {
    waiting: VecDeque<Waiting>,
}

/// One enqueue call waiting for a round trip.
struct Waiting {
    payloads: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Vec<String>, QueueError>>,
}

/// Ends a stream's turn when the call that holds it finishes or is dropped mid-way (a client
/// that went away must not leave the stream's waiters stranded).
struct Turn {
    producer: Producer,
    key: Option<String>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.producer.next_turn(key);
        }
    }
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
        Ok(Producer {
            conn,
            config,
            coalescer: Arc::default(),
        })
    }

    /// How many enqueue script calls this producer (and its clones) made: with concurrent
    /// callers, fewer than [`enqueue`](Self::enqueue) calls.
    pub fn enqueue_round_trips(&self) -> u64 {
        self.coalescer
            .round_trips
            .load(std::sync::atomic::Ordering::Relaxed)
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
        let key = self.config.stream_key(partition, lane);
        // Join the round trip in flight for this stream, or take the stream's turn.
        let waiting = {
            let mut streams = self.coalescer.streams.lock();
            match streams.get_mut(&key) {
                Some(queue) => {
                    let (reply, answer) = oneshot::channel();
                    queue.waiting.push_back(Waiting {
                        payloads: payloads.to_vec(),
                        reply,
                    });
                    Some(answer)
                }
                None => {
                    streams.insert(key.clone(), StreamQueue::default());
                    None
                }
            }
        };
        if let Some(answer) = waiting {
            return answer.await.unwrap_or_else(|_| {
                Err(QueueError::Unavailable(
                    "the enqueue this call waited on was abandoned".into(),
                ))
            });
        }
        let turn = Turn {
            producer: self.clone(),
            key: Some(key.clone()),
        };
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let result = self.add(&key, &refs).await;
        drop(turn);
        result
    }

    /// Passes the stream's turn on: to a task that sends what waited meanwhile (up to
    /// [`MAX_ENQUEUE_BATCH`] payloads) as one call, or, with nothing waiting, frees the stream.
    fn next_turn(&self, key: String) {
        let batch: Vec<Waiting> = {
            let mut streams = self.coalescer.streams.lock();
            let Some(queue) = streams.get_mut(&key) else {
                return;
            };
            if queue.waiting.is_empty() {
                streams.remove(&key);
                return;
            }
            let mut batch = Vec::new();
            let mut count = 0;
            while let Some(next) = queue.waiting.front() {
                if !batch.is_empty() && count + next.payloads.len() > MAX_ENQUEUE_BATCH {
                    break;
                }
                count += next.payloads.len();
                batch.extend(queue.waiting.pop_front());
            }
            batch
        };
        let producer = self.clone();
        let stream = key.clone();
        let send = async move {
            let turn = Turn {
                producer: producer.clone(),
                key: Some(stream.clone()),
            };
            let refs: Vec<&[u8]> = batch
                .iter()
                .flat_map(|w| w.payloads.iter().map(Vec::as_slice))
                .collect();
            let result = producer.add(&stream, &refs).await;
            drop(turn);
            let mut ids = result.map(Vec::into_iter);
            for waiting in batch {
                let answer = match &mut ids {
                    Ok(ids) => Ok(ids.by_ref().take(waiting.payloads.len()).collect()),
                    Err(e) => Err(e.clone()),
                };
                // A caller that went away still had its events queued, as when it sends
                // the call itself and drops it in flight.
                let _ = waiting.reply.send(answer);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send);
            }
            Err(_) => {
                // No runtime (dropped during shutdown): nothing can be sent; the waiters get
                // errors through their dropped senders, and the stream is freed.
                self.coalescer.streams.lock().remove(&key);
            }
        }
    }

    /// Loads [`ENQUEUE_LUA`] into the server's script cache; returns (and remembers) its hash.
    async fn load_enqueue_script(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<String, QueueError> {
        let loaded: Value = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(ENQUEUE_LUA)
            .query_async(conn)
            .await?;
        let sha =
            reply::text(&loaded).ok_or_else(|| reply::protocol("SCRIPT LOAD reply", &loaded))?;
        Ok(ENQUEUE_SCRIPT_SHA.get_or_init(|| sha.clone()).clone())
    }

    /// One script call adding `payloads` to stream `key`, all or nothing.
    async fn add(&self, key: &str, payloads: &[&[u8]]) -> Result<Vec<String>, QueueError> {
        self.coalescer
            .round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let sha = match ENQUEUE_SCRIPT_SHA.get() {
            Some(sha) => sha.clone(),
            None => self.load_enqueue_script(&mut conn).await?,
        };
        let command = |sha: &str| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha)
                .arg(1)
                .arg(key)
                .arg(self.config.max_stream_len.unwrap_or(0));
            for payload in payloads {
                cmd.arg(*payload);
            }
            cmd
        };
        let value: Value = match command(&sha).query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A server that does not know it (restarted, failed over, SCRIPT FLUSH):
                // load it, then run it by hash. The refused call added nothing.
                let sha = self.load_enqueue_script(&mut conn).await?;
                command(&sha).query_async(&mut conn).await?
            }
            other => other?,
        };
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

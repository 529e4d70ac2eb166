//! Dead-letter administration (`vellum dlq list|retry|drop`).

use std::fmt;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::config::{Lane, QueueConfig};
use crate::conn;
use crate::error::QueueError;
use crate::reply::{self, RawEntry};

/// Dead letters read per round trip by the "all" operations.
const PAGE: usize = 100;

/// Moves one dead letter back to its source stream, atomically.
///
/// KEYS[1] = dead-letter stream, KEYS[2] = source stream (checked against the entry's own
/// `stream` field); ARGV[1] = dead-letter id. Returns the new entry id, or nil if the dead
/// letter is gone (another operator retried or dropped it): two concurrent retries can never
/// enqueue it twice.
const RETRY_LUA: &str = r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local payload, src
for i = 1, #f, 2 do
  if f[i] == 'payload' then payload = f[i + 1] elseif f[i] == 'stream' then src = f[i + 1] end
end
if payload == nil or src ~= KEYS[2] then
  return redis.error_reply('VELLUMMALFORMED dead letter ' .. ARGV[1] .. ' changed')
end
local id = redis.call('XADD', KEYS[2], '*', 'p', payload)
redis.call('XDEL', KEYS[1], ARGV[1])
return id
";

/// One dead letter: a queued payload a worker gave up on, and why.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what `retry`/`discard` take).
    pub id: String,
    /// The payload exactly as it was enqueued.
    pub payload: Vec<u8>,
    /// Why the worker gave up.
    pub reason: String,
    /// The stream it came from (`{name}:p{N}:{lane}`), where a retry puts it back.
    pub stream: String,
    /// The partition it came from.
    pub partition: u32,
    /// The lane it came from.
    pub lane: Lane,
    /// Its entry id in the source stream.
    pub entry_id: String,
    /// How many times it had been delivered.
    pub deliveries: u64,
    /// When it was dead-lettered, in milliseconds since the Unix epoch (the worker's clock).
    pub dead_at_ms: u64,
    /// The consumer that dead-lettered it.
    pub consumer: String,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .field("reason", &self.reason)
            .field("stream", &self.stream)
            .field("entry_id", &self.entry_id)
            .field("deliveries", &self.deliveries)
            .field("dead_at_ms", &self.dead_at_ms)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    fn from_entry(entry: &RawEntry, config: &QueueConfig) -> Result<Self, QueueError> {
        if entry.fields.is_none() {
            return Err(entry.malformed("dead letter has no data".into()));
        }
        let stream = entry.text_field("stream")?;
        let partition = u32::try_from(entry.u64_field("partition")?)
            .map_err(|_| entry.malformed("partition out of range".into()))?;
        let lane: Lane = entry
            .text_field("lane")?
            .parse()
            .map_err(|_| entry.malformed("unknown lane".into()))?;
        if config.parse_stream_key(&stream) != Some((partition, lane)) {
            return Err(entry.malformed(format!(
                "source stream {stream:?} is not partition {partition} lane {lane} of queue {:?}",
                config.name
            )));
        }
        Ok(DeadLetter {
            id: entry.id.clone(),
            payload: entry
                .field(b"payload")
                .ok_or_else(|| entry.malformed("no field \"payload\"".into()))?
                .to_vec(),
            reason: entry.text_field("reason")?,
            stream,
            partition,
            lane,
            entry_id: entry.text_field("entry")?,
            deliveries: entry.u64_field("deliveries")?,
            dead_at_ms: entry.u64_field("at")?,
            consumer: entry.text_field("consumer")?,
        })
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The dead letter with this id.
    One(String),
    /// Every dead letter present when the operation starts (ones added meanwhile are left for
    /// the next run, so `retry all` cannot chase messages that fail again forever).
    All,
}

/// Administration of the dead-letter stream `{name}:dlq`.
#[derive(Clone)]
pub struct DeadLetters {
    conn: ConnectionManager,
    config: QueueConfig,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("queue", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Connects to Redis at `url` (for the `vellum dlq` command).
    pub async fn connect(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let conn = conn::manager(url, &config, std::time::Duration::ZERO).await?;
        Ok(DeadLetters { conn, config })
    }

    /// Administration over an existing connection (e.g. a [`crate::Producer`]'s, for admin
    /// routes of an API node).
    pub(crate) fn with_connection(conn: ConnectionManager, config: QueueConfig) -> Self {
        DeadLetters { conn, config }
    }

    /// Number of dead letters.
    pub async fn count(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let n: Value = redis::cmd("XLEN")
            .arg(self.config.dlq_key())
            .query_async(&mut conn)
            .await?;
        Ok(reply::uint(&n).unwrap_or(0))
    }

    /// The oldest `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.list_after(None, limit).await
    }

    /// Up to `limit` dead letters with ids greater than `after` (paging), oldest first.
    ///
    /// Entries that are not valid dead letters (written by something else) fail the call with
    /// [`QueueError::Malformed`] naming them, so they can be discarded by id.
    pub async fn list_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_owned(),
        };
        let entries = self.range(&start, "+", limit).await?;
        entries
            .iter()
            .map(|e| DeadLetter::from_entry(e, &self.config))
            .collect()
    }

    /// One dead letter by id.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let entries = self.range(id, id, 1).await?;
        entries
            .first()
            .map(|e| DeadLetter::from_entry(e, &self.config))
            .transpose()
    }

    /// Puts dead letters back at the end of the stream they came from (as new entries, with a
    /// fresh delivery count) and removes them from the dead-letter stream, atomically per
    /// entry. Returns how many were moved.
    ///
    /// With [`Selection::All`], entries that are not valid dead letters are skipped (and
    /// logged); with [`Selection::One`] such an entry is an error. An id that does not exist
    /// moves nothing.
    pub async fn retry(&self, which: &Selection) -> Result<u64, QueueError> {
        match which {
            Selection::One(id) => match self.range(id, id, 1).await?.first() {
                Some(entry) => {
                    let dl = DeadLetter::from_entry(entry, &self.config)?;
                    Ok(u64::from(self.retry_one(&dl).await?))
                }
                None => Ok(0),
            },
            Selection::All => {
                let Some(last) = self.last_id().await? else {
                    return Ok(0);
                };
                let mut moved = 0;
                let mut start = "-".to_owned();
                loop {
                    let page = self.range(&start, &last, PAGE).await?;
                    let Some(tail) = page.last() else { break };
                    start = format!("({}", tail.id);
                    for entry in &page {
                        match DeadLetter::from_entry(entry, &self.config) {
                            Ok(dl) => moved += u64::from(self.retry_one(&dl).await?),
                            Err(e) => tracing::warn!(
                                queue = %self.config.name,
                                error = %e,
                                "skipping dead letter that cannot be retried"
                            ),
                        }
                    }
                    if page.len() < PAGE {
                        break;
                    }
                }
                Ok(moved)
            }
        }
    }

    async fn retry_one(&self, dl: &DeadLetter) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let id: Value = redis::cmd("EVAL")
            .arg(RETRY_LUA)
            .arg(2)
            .arg(self.config.dlq_key())
            .arg(&dl.stream)
            .arg(&dl.id)
            .query_async(&mut conn)
            .await?;
        Ok(!matches!(id, Value::Nil))
    }

    /// Deletes dead letters for good (`vellum dlq drop`). Returns how many were deleted.
    ///
    /// Named `discard` rather than `drop` so it cannot be confused with [`Drop`]. These are
    /// accepted audit events that were never written to the log; callers should record the
    /// decision (who discarded what) in the log itself before calling this.
    pub async fn discard(&self, which: &Selection) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let key = self.config.dlq_key();
        let n: Value = match which {
            Selection::One(id) => {
                redis::cmd("XDEL")
                    .arg(&key)
                    .arg(id)
                    .query_async(&mut conn)
                    .await?
            }
            Selection::All => {
                let Some(last) = self.last_id().await? else {
                    return Ok(0);
                };
                let min_id = reply::next_id(&last).ok_or_else(|| {
                    QueueError::Protocol(format!("dead-letter id {last:?} is not a stream id"))
                })?;
                // Exact trim of everything up to and including `last`, atomically; entries
                // dead-lettered after the snapshot survive.
                redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg("=")
                    .arg(min_id)
                    .query_async(&mut conn)
                    .await?
            }
        };
        Ok(reply::uint(&n).unwrap_or(0))
    }

    async fn last_id(&self) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        let v: Value = redis::cmd("XREVRANGE")
            .arg(self.config.dlq_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply::entries(&v)?.into_iter().next().map(|e| e.id))
    }

    async fn range(
        &self,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<RawEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(self.config.dlq_key())
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        reply::entries(&v)
    }
}

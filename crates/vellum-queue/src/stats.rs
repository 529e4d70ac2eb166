//! Queue statistics for `/metrics` and `/readyz`.

use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::config::{Lane, QueueConfig};
use crate::error::QueueError;
use crate::reply;

/// The numbers of one lane of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStats {
    /// The partition.
    pub partition: u32,
    /// The lane.
    pub lane: Lane,
    /// Entries in the stream (`XLEN`). Acknowledged entries are deleted, so this is exactly the
    /// unfinished work: waiting to be read plus read but not yet acknowledged.
    pub depth: u64,
    /// Entries read by a worker and not yet acknowledged (`XPENDING` summary count).
    pub pending: u64,
    /// Entries not yet read by any worker, as Redis reports it (`XINFO GROUPS` `lag`). `None`
    /// when Redis cannot tell (no consumer group yet, or deletions confuse its estimate); then
    /// [`waiting`](Self::waiting) is the better number.
    pub lag: Option<u64>,
    /// How long ago the oldest unacknowledged entry was *enqueued* (from its id's time part and
    /// the Redis server clock, so API node clocks do not matter). `None` when nothing is
    /// pending.
    pub oldest_pending_age: Option<Duration>,
}

impl LaneStats {
    /// Entries waiting to be read: `depth - pending` (exact, since acknowledged entries are
    /// deleted and the queue has a single consumer group).
    pub fn waiting(&self) -> u64 {
        self.depth.saturating_sub(self.pending)
    }
}

/// A snapshot of the whole queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// One entry per partition and lane, partition-major, high lane first.
    pub lanes: Vec<LaneStats>,
    /// Entries in the dead-letter stream: events that need an operator (`vellum dlq`).
    pub dlq_len: u64,
}

impl QueueStats {
    /// Total depth of one lane over all partitions.
    pub fn depth(&self, lane: Lane) -> u64 {
        self.lanes
            .iter()
            .filter(|l| l.lane == lane)
            .map(|l| l.depth)
            .sum()
    }

    /// Total pending entries of one lane over all partitions.
    pub fn pending(&self, lane: Lane) -> u64 {
        self.lanes
            .iter()
            .filter(|l| l.lane == lane)
            .map(|l| l.pending)
            .sum()
    }

    /// Total entries of one lane not yet read by any worker (see [`LaneStats::waiting`]).
    pub fn waiting(&self, lane: Lane) -> u64 {
        self.lanes
            .iter()
            .filter(|l| l.lane == lane)
            .map(LaneStats::waiting)
            .sum()
    }

    /// Sum of the lags Redis could report for one lane (`None` if it could report none).
    pub fn lag(&self, lane: Lane) -> Option<u64> {
        self.lanes
            .iter()
            .filter(|l| l.lane == lane)
            .filter_map(|l| l.lag)
            .reduce(|a, b| a + b)
    }

    /// The age of the oldest unacknowledged entry anywhere in the queue: the number to alert
    /// on when workers are stuck.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.lanes.iter().filter_map(|l| l.oldest_pending_age).max()
    }
}

/// Collects the statistics in one pipelined round trip.
pub(crate) async fn collect(
    conn: &mut ConnectionManager,
    config: &QueueConfig,
) -> Result<QueueStats, QueueError> {
    let group = config.group();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("TIME");
    pipe.cmd("XLEN").arg(config.dlq_key());
    let mut keys = Vec::with_capacity(config.partitions as usize * 2);
    for partition in 0..config.partitions {
        for lane in Lane::ALL {
            let key = config.stream_key(partition, lane);
            pipe.cmd("XLEN").arg(&key);
            pipe.cmd("XPENDING").arg(&key).arg(&group);
            pipe.cmd("XINFO").arg("GROUPS").arg(&key);
            keys.push((partition, lane));
        }
    }
    let results: Vec<redis::RedisResult<Value>> = pipe.query_async(conn).await?;
    let mut it = results.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| QueueError::Protocol("stats pipeline reply too short".into()))
    };

    let time = next()??;
    let now_ms = redis_time_ms(&time).ok_or_else(|| reply::protocol("TIME reply", &time))?;
    let dlq_len = next()?.map(|v| reply::uint(&v).unwrap_or(0))?;

    let mut lanes = Vec::with_capacity(keys.len());
    for (partition, lane) in keys {
        let depth = reply::uint(&next()??).unwrap_or(0);
        // A stream or group that does not exist yet answers NOGROUP / "no such key": zero.
        let (pending, oldest) = match next()? {
            Ok(summary) => pending_summary(&summary),
            Err(_) => (0, None),
        };
        let lag = match next()? {
            Ok(groups) => group_lag(&groups, &group),
            Err(_) => None,
        };
        lanes.push(LaneStats {
            partition,
            lane,
            depth,
            pending,
            lag,
            oldest_pending_age: oldest.map(|ms| Duration::from_millis(now_ms.saturating_sub(ms))),
        });
    }
    Ok(QueueStats { lanes, dlq_len })
}

/// `TIME` → milliseconds since the epoch.
fn redis_time_ms(v: &Value) -> Option<u64> {
    let parts = reply::array(v)?;
    let secs = reply::uint(parts.first()?)?;
    let micros = reply::uint(parts.get(1)?)?;
    Some(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

/// `XPENDING key group` → (count, time part of the smallest pending id).
fn pending_summary(v: &Value) -> (u64, Option<u64>) {
    let Some(parts) = reply::array(v) else {
        return (0, None);
    };
    let count = parts.first().and_then(reply::uint).unwrap_or(0);
    let oldest = parts
        .get(1)
        .and_then(reply::text)
        .and_then(|id| reply::parse_id(&id))
        .map(|(ms, _)| ms);
    (count, if count > 0 { oldest } else { None })
}

/// The `lag` of `group` in an `XINFO GROUPS` reply (nil when Redis cannot compute it).
fn group_lag(v: &Value, group: &str) -> Option<u64> {
    reply::array(v)?
        .iter()
        .find(|g| reply::lookup(g, "name").and_then(reply::text).as_deref() == Some(group))
        .and_then(|g| reply::lookup(g, "lag"))
        .and_then(reply::uint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_time_and_pending() {
        let t = Value::Array(vec![bulk("1700000000"), bulk("123456")]);
        assert_eq!(redis_time_ms(&t), Some(1_700_000_000_123));
        let s = Value::Array(vec![
            Value::Int(2),
            bulk("1699999999000-0"),
            bulk("1699999999500-3"),
            Value::Nil,
        ]);
        assert_eq!(pending_summary(&s), (2, Some(1_699_999_999_000)));
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(pending_summary(&empty), (0, None));
    }

    #[test]
    fn finds_the_lag_of_our_group() {
        let g =
            |name: &str, lag: Value| Value::Array(vec![bulk("name"), bulk(name), bulk("lag"), lag]);
        let v = Value::Array(vec![
            g("other", Value::Int(9)),
            g("q-writers", Value::Int(3)),
        ]);
        assert_eq!(group_lag(&v, "q-writers"), Some(3));
        let v = Value::Array(vec![g("q-writers", Value::Nil)]);
        assert_eq!(group_lag(&v, "q-writers"), None);
    }

    #[test]
    fn totals() {
        let lane = |partition, lane, depth, pending, age: Option<u64>| LaneStats {
            partition,
            lane,
            depth,
            pending,
            lag: Some(depth - pending),
            oldest_pending_age: age.map(Duration::from_secs),
        };
        let s = QueueStats {
            lanes: vec![
                lane(0, Lane::High, 5, 2, Some(3)),
                lane(0, Lane::Normal, 10, 0, None),
                lane(1, Lane::High, 1, 1, Some(7)),
                lane(1, Lane::Normal, 4, 4, Some(1)),
            ],
            dlq_len: 0,
        };
        assert_eq!(s.depth(Lane::High), 6);
        assert_eq!(s.pending(Lane::Normal), 4);
        assert_eq!(s.waiting(Lane::Normal), 10);
        assert_eq!(s.lag(Lane::High), Some(3));
        assert_eq!(s.oldest_pending_age(), Some(Duration::from_secs(7)));
    }
}

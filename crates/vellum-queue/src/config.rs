//! Queue configuration and the names of every Redis key the queue uses.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::QueueError;

/// Environment variable that names the queue (`AUDIT_QUEUE_NAME`), read by the binary's
/// configuration resolution, not by this crate.
pub const ENV_QUEUE_NAME: &str = "AUDIT_QUEUE_NAME";

/// The queue name used when none is configured.
pub const DEFAULT_QUEUE_NAME: &str = "audit";

/// Largest partition count accepted: each partition costs two streams and, on the worker that
/// owns it, one connection, so a typo like `160000` should fail at start rather than open
/// thousands of sockets.
pub const MAX_PARTITIONS: u32 = 4096;

/// Priority lane of a partition.
///
/// Each partition has two streams; a consumer always drains [`Lane::High`] before it reads
/// [`Lane::Normal`], so urgent events (e.g. security alerts) are not stuck behind a bulk import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Read first, always.
    High,
    /// Read when the high lane is empty.
    Normal,
}

impl Lane {
    /// Both lanes in reading order (high first).
    pub const ALL: [Lane; 2] = [Lane::High, Lane::Normal];

    /// The lane's name as it appears in stream keys, dead letters and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Lane::High),
            "normal" => Ok(Lane::Normal),
            other => Err(QueueError::Config(format!("unknown lane {other:?}"))),
        }
    }
}

/// How the queue is laid out in Redis and how it behaves.
///
/// Every API node and every worker of one deployment must use the same `name` and `partitions`:
/// they decide which streams exist and where a log's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Prefix of every key (`AUDIT_QUEUE_NAME`, default `audit`). Lets several deployments, or
    /// parallel tests, share one Redis.
    pub name: String,
    /// Number of partitions (default 16). A log is mapped to one partition by the caller (see
    /// [`QueueConfig::partition_for`]); one worker owns a partition at a time, so this bounds the
    /// number of workers that can write in parallel.
    pub partitions: u32,
    /// A message delivered more than this many times is poison and should be dead-lettered
    /// (default 5). See [`crate::Message::deliveries`].
    pub max_deliveries: u64,
    /// How long an entry must have been pending with another consumer before
    /// [`crate::Consumer::claim_abandoned`] takes it over (default 10 s). Longer than the slowest
    /// normal commit, so a live but slow worker is not robbed of its batch.
    pub claim_min_idle: Duration,
    /// Backpressure threshold per stream: [`crate::Producer::enqueue`] refuses a batch with
    /// [`QueueError::Full`] when the target stream already holds this many entries (default
    /// `Some(100_000)`; `None` = unbounded). Entries are never trimmed: every entry is an
    /// accepted audit event, and trimming would silently drop it. Acknowledged entries are
    /// deleted instead, so a stream's length is exactly its unfinished work. The check is made
    /// before a batch is added, so a stream may exceed the limit by at most one batch.
    pub max_stream_len: Option<u64>,
    /// Deadline for one Redis round trip (default 2 s). A dead connection is noticed after this
    /// long instead of hanging a request.
    pub response_timeout: Duration,
    /// Deadline for establishing a connection (default 2 s).
    pub connect_timeout: Duration,
    /// Upper bound of the `block` argument of [`crate::Consumer::next_batch`] (default 5 s). The
    /// consumer's connection allows `response_timeout + max_block` per round trip, so a
    /// blocking read is not mistaken for a dead connection.
    pub max_block: Duration,
    /// Most receipt waiters one [`crate::ReceiptListener`] holds at once (default 100 000);
    /// further registrations fail with [`QueueError::Full`] so a flood of `?wait=committed`
    /// requests cannot grow memory without bound.
    pub max_receipt_waiters: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: DEFAULT_QUEUE_NAME.to_owned(),
            partitions: 16,
            max_deliveries: 5,
            claim_min_idle: Duration::from_secs(10),
            max_stream_len: Some(100_000),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_block: Duration::from_secs(5),
            max_receipt_waiters: 100_000,
        }
    }
}

impl QueueConfig {
    /// The default configuration under another queue name.
    pub fn named(name: impl Into<String>) -> Self {
        QueueConfig {
            name: name.into(),
            ..QueueConfig::default()
        }
    }

    /// Checks the values that would otherwise fail later in confusing ways.
    ///
    /// The name must be non-empty printable ASCII without spaces, `:` or braces (it is embedded
    /// in key names that are parsed back, and braces would change Redis Cluster hash slots).
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'{' | b'}'))
        {
            return Err(QueueError::Config(format!(
                "queue name {:?} must be 1-64 printable ASCII characters without ':', '{{' or '}}'",
                self.name
            )));
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(QueueError::Config(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, not {}",
                self.partitions
            )));
        }
        if self.max_deliveries == 0 {
            return Err(QueueError::Config(
                "max_deliveries must be at least 1".into(),
            ));
        }
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(QueueError::Config(
                "response_timeout and connect_timeout must be positive".into(),
            ));
        }
        if self.max_stream_len == Some(0) {
            return Err(QueueError::Config(
                "max_stream_len must be positive (use None for no limit)".into(),
            ));
        }
        if self.max_receipt_waiters == 0 {
            return Err(QueueError::Config(
                "max_receipt_waiters must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Fails with [`QueueError::Config`] unless `partition` exists.
    pub fn check_partition(&self, partition: u32) -> Result<(), QueueError> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(QueueError::Config(format!(
                "partition {partition} out of range (the queue has {})",
                self.partitions
            )))
        }
    }

    /// Key of one lane's stream: `{name}:p{partition}:{lane}`.
    pub fn stream_key(&self, partition: u32, lane: Lane) -> String {
        format!("{}:p{}:{}", self.name, partition, lane.as_str())
    }

    /// Parses a key made by [`stream_key`](Self::stream_key) back into its partition and lane,
    /// or `None` if it is not one of this queue's streams (dead-letter retries only ever write
    /// to such keys).
    pub fn parse_stream_key(&self, key: &str) -> Option<(u32, Lane)> {
        let rest = key.strip_prefix(self.name.as_str())?.strip_prefix(":p")?;
        let (partition, lane) = rest.split_once(':')?;
        if partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let partition: u32 = partition.parse().ok()?;
        let lane: Lane = lane.parse().ok()?;
        (partition < self.partitions && self.stream_key(partition, lane) == key)
            .then_some((partition, lane))
    }

    /// The consumer group every stream is read through: `{name}-writers`.
    pub fn group(&self) -> String {
        format!("{}-writers", self.name)
    }

    /// The dead-letter stream: `{name}:dlq`.
    pub fn dlq_key(&self) -> String {
        format!("{}:dlq", self.name)
    }

    /// The key holding one idempotency reservation: `{name}:idem:{key}`.
    pub fn idempotency_key(&self, key: &str) -> String {
        format!("{}:idem:{}", self.name, key)
    }

    /// The pub/sub channel on which an API node receives commit receipts:
    /// `{name}:receipts:{node_id}`.
    pub fn receipt_channel(&self, node_id: &str) -> String {
        format!("{}:receipts:{}", self.name, node_id)
    }

    /// A stable partition for a log id (FNV-1a 64 of its UTF-8 bytes, modulo `partitions`).
    ///
    /// Every API node must send a log's events to the same partition, across versions and
    /// restarts, so this uses a fixed, documented hash rather than the standard library's
    /// randomized one. Callers may use another mapping as long as all nodes agree.
    pub fn partition_for(&self, log_id: &str) -> u32 {
        partition_of(log_id, self.partitions)
    }
}

/// The partition of `log_id` out of `partitions` (FNV-1a 64 of the id, modulo): the one
/// mapping every API node, worker and single-node writer uses, so a log is always in one
/// partition and written by that partition's one owner. Pinned by a test: changing it would
/// split logs across partitions during a rolling upgrade.
pub fn partition_of(log_id: &str, partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = log_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // partitions >= 1 after validation; max(1) keeps an unvalidated config from dividing by 0.
    let partitions = u64::from(partitions.max(1));
    u32::try_from(hash % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = QueueConfig::default();
        assert_eq!(c.name, "audit");
        assert_eq!(c.partitions, 16);
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.claim_min_idle, Duration::from_secs(10));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn key_names() {
        let c = QueueConfig::named("audit");
        assert_eq!(c.stream_key(3, Lane::High), "audit:p3:high");
        assert_eq!(c.stream_key(0, Lane::Normal), "audit:p0:normal");
        assert_eq!(c.group(), "audit-writers");
        assert_eq!(c.dlq_key(), "audit:dlq");
        assert_eq!(c.idempotency_key("k1"), "audit:idem:k1");
        assert_eq!(c.receipt_channel("node-a"), "audit:receipts:node-a");
    }

    #[test]
    fn stream_keys_parse_back() {
        let c = QueueConfig::named("audit");
        for p in [0, 7, 15] {
            for lane in Lane::ALL {
                assert_eq!(c.parse_stream_key(&c.stream_key(p, lane)), Some((p, lane)));
            }
        }
        for bad in [
            "audit:p16:high",
            "audit:p1:low",
            "audit:p:high",
            "audit:p01:high",
            "audit:p+1:high",
            "other:p1:high",
            "audit:dlq",
            "audit:p1:high:x",
        ] {
            assert_eq!(c.parse_stream_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation() {
        let ok = QueueConfig::named("vt-1");
        assert!(ok.validate().is_ok());
        for name in ["", "a b", "a:b", "a{b}", "é"] {
            assert!(QueueConfig::named(name).validate().is_err(), "{name:?}");
        }
        let mut c = QueueConfig::named("q");
        c.partitions = 0;
        assert!(c.validate().is_err());
        c.partitions = MAX_PARTITIONS + 1;
        assert!(c.validate().is_err());
        let mut c = QueueConfig::named("q");
        c.max_deliveries = 0;
        assert!(c.validate().is_err());
        let mut c = QueueConfig::named("q");
        c.max_stream_len = Some(0);
        assert!(c.validate().is_err());
        c.max_stream_len = None;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn partition_check() {
        let c = QueueConfig::default();
        assert!(c.check_partition(15).is_ok());
        assert!(matches!(c.check_partition(16), Err(QueueError::Config(_))));
    }

    #[test]
    fn partition_for_is_stable_and_in_range() {
        let c = QueueConfig::default();
        // Pinned (FNV-1a 64: "default" = 0xebada5168620c5fe, "" = the offset basis): a change
        // of hash would split logs across partitions during a rolling upgrade.
        let got: Vec<u32> = ["default", "org-1", "org-2", ""]
            .iter()
            .map(|l| c.partition_for(l))
            .collect();
        assert_eq!(got, [14, 7, 10, 5]);
        for i in 0..1000 {
            assert!(c.partition_for(&format!("log-{i}")) < 16);
        }
        let one = QueueConfig {
            partitions: 1,
            ..QueueConfig::default()
        };
        assert_eq!(one.partition_for("anything"), 0);
    }

    #[test]
    fn lane_names_round_trip() {
        for lane in Lane::ALL {
            assert_eq!(lane.as_str().parse::<Lane>().ok(), Some(lane));
            assert_eq!(lane.to_string(), lane.as_str());
        }
        assert!("urgent".parse::<Lane>().is_err());
    }
}

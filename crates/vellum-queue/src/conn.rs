//! Opening connections and creating consumer groups.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Lane, QueueConfig};
use crate::error::{QueueError, server_code};

/// Parses a Redis URL without ever echoing it (it may hold a password).
pub(crate) fn client(url: &str) -> Result<redis::Client, QueueError> {
    redis::Client::open(url).map_err(QueueError::from)
}

/// A reconnecting connection whose round trips may take up to `response_timeout + extra`.
///
/// `extra` is the longest server-side wait a caller will ask for (a blocking `XREADGROUP`);
/// everything else uses the plain response timeout, so a dead socket is noticed quickly.
pub(crate) async fn manager(
    url: &str,
    config: &QueueConfig,
    extra: Duration,
) -> Result<ConnectionManager, QueueError> {
    config.validate()?;
    let client = client(url)?;
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout + extra))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, settings)
        .await
        .map_err(QueueError::from)
}

/// Creates the consumer group on both lanes of `partition` (and the streams, if missing).
///
/// The group starts at id `0`, not `$`: entries enqueued before any worker ever ran (or after
/// the group was lost with a Redis restart without persistence) are still delivered. That is
/// safe to repeat because acknowledged entries are deleted, so `0` never re-delivers finished
/// work. `BUSYGROUP` (the group already exists) is the normal case and is ignored.
pub(crate) async fn ensure_groups(
    conn: &mut ConnectionManager,
    config: &QueueConfig,
    partition: u32,
) -> Result<(), QueueError> {
    let group = config.group();
    for lane in Lane::ALL {
        let result: redis::RedisResult<redis::Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(config.stream_key(partition, lane))
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match result {
            Ok(_) => {}
            Err(e) if server_code(&e) == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Current time in milliseconds since the Unix epoch (for dead-letter records).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

//! Shared set-up of the Redis integration tests: where Redis is, unique queue names, clean-up.

#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::time::Duration;

use vellum_queue::QueueConfig;

/// The Redis URL to test against, or `None` (after saying why) when the tests should be
/// skipped. With `VELLUM_REQUIRE_SERVICES=1` a missing or unreachable Redis fails the test
/// instead, so CI cannot pass by skipping.
pub async fn redis_url() -> Option<String> {
    let require = std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let url = match std::env::var("VELLUM_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                !require,
                "VELLUM_REQUIRE_SERVICES=1 but VELLUM_TEST_REDIS_URL is not set"
            );
            eprintln!("skipping: VELLUM_TEST_REDIS_URL not set");
            return None;
        }
    };
    match ping(&url).await {
        Ok(()) => Some(url),
        Err(e) => {
            assert!(
                !require,
                "VELLUM_REQUIRE_SERVICES=1 but Redis at VELLUM_TEST_REDIS_URL is unreachable: {e}"
            );
            eprintln!("skipping: Redis at VELLUM_TEST_REDIS_URL is unreachable: {e}");
            None
        }
    }
}

async fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

/// A queue with a name no other test uses, whose keys are deleted when it is dropped (even if
/// the test panicked).
pub struct TestQueue {
    pub url: String,
    pub config: QueueConfig,
}

impl TestQueue {
    pub fn new(url: &str) -> Self {
        let name = format!("vt-{}", uuid::Uuid::now_v7().simple());
        let config = QueueConfig {
            partitions: 2,
            claim_min_idle: Duration::from_millis(500),
            ..QueueConfig::named(name)
        };
        TestQueue {
            url: url.to_owned(),
            config,
        }
    }

    /// A plain connection for poking at Redis directly.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // Synchronous clean-up: Drop cannot await, and this also runs while unwinding.
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}:*", self.config.name);
        let keys: Vec<String> = match redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
        {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

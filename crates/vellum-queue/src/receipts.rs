//! Commit receipts from workers back to the API node that holds the request
//! (`POST /v1/events?wait=committed` in scale-out mode).
//!
//! The worker that committed an event publishes its receipt on the pub/sub channel of the API
//! node that enqueued it ([`ReceiptBus::publish`]); that node's [`ReceiptListener`] hands it to
//! the request waiting under the receipt's key. Pub/sub is fire-and-forget: a receipt published
//! while the listener is reconnecting is lost, and the waiting request times out. That is
//! acceptable because the receipt is only a shortcut: the event is durable either way, and the
//! caller answers 202 (queued) on timeout, as it would without `?wait=committed`.
//!
//! Each message is a small binary frame, [`encode_receipt`]: version byte `1`, the key's length
//! as a big-endian `u32`, the key (UTF-8), then the payload (opaque bytes, the caller's format).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Value;
use redis::aio::{ConnectionManager, PubSub};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::QueueConfig;
use crate::conn;
use crate::error::QueueError;

/// Frame format version written by [`encode_receipt`].
const FRAME_VERSION: u8 = 1;
/// Bytes before the key: version and key length.
const FRAME_HEADER: usize = 5;
/// How often the listener checks that its connection is alive when no message arrives.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Reconnection delays of the listener: from the first to the largest.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Frames a receipt: `[1][key length: u32 BE][key][payload]`.
pub fn encode_receipt(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + key.len() + payload.len());
    out.push(FRAME_VERSION);
    // Keys are request-sized strings; a key over 4 GiB cannot reach here.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a frame made by [`encode_receipt`] into its key and payload.
pub fn decode_receipt(frame: &[u8]) -> Result<(&str, &[u8]), QueueError> {
    let malformed = |reason: &str| QueueError::Malformed {
        id: "receipt".into(),
        reason: reason.into(),
    };
    let [version, a, b, c, d, rest @ ..] = frame else {
        return Err(malformed("frame shorter than its header"));
    };
    if *version != FRAME_VERSION {
        return Err(malformed("unknown frame version"));
    }
    let key_len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() < key_len {
        return Err(malformed("frame shorter than its key"));
    }
    let (key, payload) = rest.split_at(key_len);
    let key = std::str::from_utf8(key).map_err(|_| malformed("key is not UTF-8"))?;
    Ok((key, payload))
}

/// One receipt to publish with [`ReceiptBus::publish_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The API node waiting for it (its [`ReceiptListener`]'s node id).
    pub node_id: String,
    /// The key the request registered.
    pub key: String,
    /// The receipt itself, in the caller's format.
    pub payload: Vec<u8>,
}

/// Publishes receipts (worker side).
#[derive(Clone)]
pub struct ReceiptBus {
    conn: ConnectionManager,
    config: QueueConfig,
}

impl fmt::Debug for ReceiptBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptBus")
            .field("queue", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ReceiptBus {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let conn = conn::manager(url, &config, Duration::ZERO).await?;
        Ok(ReceiptBus { conn, config })
    }

    /// Publishes one receipt to node `node_id` under `key`. Returns how many listeners got it
    /// (0 if that node is gone or reconnecting; nothing to do about it, see the module docs).
    pub async fn publish(
        &self,
        node_id: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let n: Value = redis::cmd("PUBLISH")
            .arg(self.config.receipt_channel(node_id))
            .arg(encode_receipt(key, payload))
            .query_async(&mut conn)
            .await?;
        Ok(crate::reply::uint(&n).unwrap_or(0))
    }

    /// Publishes a committed batch's receipts in one round trip.
    pub async fn publish_many(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for r in receipts {
            pipe.cmd("PUBLISH")
                .arg(self.config.receipt_channel(&r.node_id))
                .arg(encode_receipt(&r.key, &r.payload))
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: Value = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}

type Waiters = HashMap<String, Vec<(u64, oneshot::Sender<Vec<u8>>)>>;

/// State shared by the listener, its task and the registrations.
struct Shared {
    waiters: Mutex<WaiterMap>,
    next_id: AtomicU64,
    connected: AtomicBool,
    max: usize,
}

#[derive(Default)]
struct WaiterMap {
    by_key: Waiters,
    /// Total registrations over all keys (the bound applies to this).
    len: usize,
}

impl Shared {
    fn dispatch(&self, frame: &[u8]) {
        let (key, payload) = match decode_receipt(frame) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed receipt");
                return;
            }
        };
        let senders = {
            let mut map = self.waiters.lock();
            match map.by_key.remove(key) {
                Some(senders) => {
                    map.len -= senders.len();
                    senders
                }
                None => return, // nobody waits (timed out already, or another node's key)
            }
        };
        for (_, tx) in senders {
            let _ = tx.send(payload.to_vec());
        }
    }

    fn unregister(&self, key: &str, id: u64) {
        let mut map = self.waiters.lock();
        let Some(list) = map.by_key.get_mut(key) else {
            return;
        };
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        let removed = before - list.len();
        if list.is_empty() {
            map.by_key.remove(key);
        }
        map.len -= removed;
    }
}

/// Receives this API node's receipts and hands each to the request waiting for it.
///
/// One background tokio task on a dedicated pub/sub connection, subscribed to
/// `{name}:receipts:{node_id}`. It pings the connection every few seconds and reconnects (with
/// backoff) after a failure or a Redis restart. Dropping the listener stops the task and wakes
/// every waiter with an error.
pub struct ReceiptListener {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    channel: String,
}

impl fmt::Debug for ReceiptListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptListener")
            .field("channel", &self.channel)
            .field("connected", &self.is_connected())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl ReceiptListener {
    /// Subscribes to node `node_id`'s channel and starts the background task (must be called
    /// inside a tokio runtime).
    ///
    /// Returns once the subscription is confirmed, so receipts for keys registered afterwards
    /// cannot be missed (while the connection stays up); fails with
    /// [`QueueError::Unavailable`] if Redis cannot be reached now. `node_id` must be unique per
    /// running API node (e.g. a UUID made at start).
    pub async fn start(url: &str, config: &QueueConfig, node_id: &str) -> Result<Self, QueueError> {
        config.validate()?;
        if node_id.is_empty() {
            return Err(QueueError::Config("node id must not be empty".into()));
        }
        let client = conn::client(url)?;
        let channel = config.receipt_channel(node_id);
        let first = subscribe(&client, &channel, config.connect_timeout).await?;
        let shared = Arc::new(Shared {
            waiters: Mutex::new(WaiterMap::default()),
            next_id: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            max: config.max_receipt_waiters,
        });
        let task = tokio::spawn(run(
            client,
            channel.clone(),
            config.connect_timeout.max(config.response_timeout),
            Arc::clone(&shared),
            first,
        ));
        Ok(ReceiptListener {
            shared,
            task,
            channel,
        })
    }

    /// Registers interest in the receipt published under `key`.
    ///
    /// Register *before* enqueueing the event: a fast worker may publish the receipt before the
    /// enqueue call returns, and a receipt nobody waits for is dropped. Several registrations
    /// of one key all get the receipt. Dropping the [`Registration`] unregisters it. Fails with
    /// [`QueueError::Full`] when [`QueueConfig::max_receipt_waiters`] are registered already.
    pub fn register(&self, key: &str) -> Result<Registration, QueueError> {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self.shared.waiters.lock();
            if map.len >= self.shared.max {
                return Err(QueueError::Full(format!(
                    "{} requests already wait for receipts",
                    map.len
                )));
            }
            map.by_key.entry(key.to_owned()).or_default().push((id, tx));
            map.len += 1;
        }
        Ok(Registration {
            shared: Arc::clone(&self.shared),
            key: key.to_owned(),
            id,
            rx: Some(rx),
        })
    }

    /// Registers `key` and waits up to `timeout` for its receipt: `Ok(None)` on timeout.
    ///
    /// Only race-free when the receipt cannot have been published yet; otherwise use
    /// [`register`](Self::register) before enqueueing and [`Registration::wait`] after.
    pub async fn wait(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, QueueError> {
        self.register(key)?.wait(timeout).await
    }

    /// Whether the subscription is currently up (for `/readyz` and metrics). While it is down,
    /// receipts are lost and waiters time out.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Number of registrations currently waiting.
    pub fn waiting(&self) -> usize {
        self.shared.waiters.lock().len
    }

    /// The channel this listener is subscribed to.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for ReceiptListener {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.connected.store(false, Ordering::Relaxed);
        // Dropping the senders wakes every waiter with an error instead of a timeout.
        let mut map = self.shared.waiters.lock();
        map.by_key.clear();
        map.len = 0;
    }
}

/// Interest in one receipt, from [`ReceiptListener::register`]. Dropping it unregisters.
pub struct Registration {
    shared: Arc<Shared>,
    key: String,
    id: u64,
    rx: Option<oneshot::Receiver<Vec<u8>>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The key registered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits up to `timeout` for the receipt: `Ok(Some(payload))`, or `Ok(None)` on timeout.
    /// Fails with [`QueueError::Unavailable`] if the listener was shut down meanwhile.
    pub async fn wait(mut self, timeout: Duration) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(rx) = self.rx.take() else {
            return Ok(None);
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(payload)) => Ok(Some(payload)),
            Ok(Err(_)) => Err(QueueError::Unavailable("receipt listener stopped".into())),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.unregister(&self.key, self.id);
    }
}

/// Opens a pub/sub connection and subscribes to `channel`, within `limit` for each step.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
    limit: Duration,
) -> Result<PubSub, QueueError> {
    let timed_out = || QueueError::Unavailable("timed out connecting for receipts".into());
    let mut pubsub = tokio::time::timeout(limit, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(limit, pubsub.subscribe(channel))
        .await
        .map_err(|_| timed_out())??;
    Ok(pubsub)
}

/// The listener task: dispatch messages; on any connection trouble, resubscribe with backoff.
async fn run(
    client: redis::Client,
    channel: String,
    limit: Duration,
    shared: Arc<Shared>,
    first: PubSub,
) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let pubsub = match next.take() {
            Some(p) => p,
            None => match subscribe(&client, &channel, limit).await {
                Ok(p) => {
                    tracing::info!(channel = %channel, "receipt listener reconnected");
                    backoff = BACKOFF_MIN;
                    p
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "receipt listener cannot reconnect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        shared.connected.store(true, Ordering::Relaxed);
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => shared.dispatch(msg.get_payload_bytes()),
                    None => break,
                },
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(limit, sink.ping::<Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        shared.connected.store(false, Ordering::Relaxed);
        tracing::warn!(channel = %channel, "receipt listener lost its connection; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = encode_receipt("evt-1", b"{\"seq\":3}\x00\xff");
        let (key, payload) = decode_receipt(&frame).ok().unwrap_or(("", b""));
        assert_eq!(key, "evt-1");
        assert_eq!(payload, b"{\"seq\":3}\x00\xff");
        let empty = encode_receipt("", b"");
        assert_eq!(decode_receipt(&empty).ok(), Some(("", &b""[..])));
    }

    #[test]
    fn bad_frames_are_rejected() {
        assert!(decode_receipt(b"").is_err());
        assert!(decode_receipt(&[1, 0, 0]).is_err());
        assert!(decode_receipt(&[2, 0, 0, 0, 0]).is_err());
        assert!(decode_receipt(&[1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_receipt(&[1, 0, 0, 0, 1, 0xff]).is_err());
    }

    fn shared(max: usize) -> Arc<Shared> {
        Arc::new(Shared {
            waiters: Mutex::new(WaiterMap::default()),
            next_id: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            max,
        })
    }

    #[tokio::test]
    async fn dispatch_wakes_every_waiter_of_a_key_and_unregisters() {
        let s = shared(10);
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let (tx3, _rx3) = oneshot::channel();
        {
            let mut m = s.waiters.lock();
            m.by_key.insert("k".into(), vec![(1, tx1), (2, tx2)]);
            m.by_key.insert("other".into(), vec![(3, tx3)]);
            m.len = 3;
        }
        s.dispatch(&encode_receipt("k", b"r"));
        assert_eq!(rx1.await.ok(), Some(b"r".to_vec()));
        assert_eq!(rx2.await.ok(), Some(b"r".to_vec()));
        assert_eq!(s.waiters.lock().len, 1);
        s.dispatch(&encode_receipt("unknown", b"r"));
        s.dispatch(b"garbage");
        s.unregister("other", 3);
        assert_eq!(s.waiters.lock().len, 0);
        assert!(s.waiters.lock().by_key.is_empty());
    }
}

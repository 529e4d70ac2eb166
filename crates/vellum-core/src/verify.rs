//! Verification of a stored log's chain (SPEC §3): every hash, HMAC signature, `prevHash`
//! link and `seq` position, reported by `seq`.
//!
//! [`ChainVerifier`] is fed the rows of one log in `seq` order, as the store holds them, and
//! collects every failure instead of stopping at the first, so an auditor sees the whole
//! extent of a problem. It has no I/O: `vellum verify` and `POST /v1/verify` read the rows.

use crate::integrity::{
    GENESIS_PREV_HASH, HmacKeyring, SignatureError, event_hash, from_hex, to_hex,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One problem found in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Failure {
    /// The stored hash is not SHA-256 of the stored text: the event was modified.
    #[serde(rename_all = "camelCase")]
    HashMismatch {
        /// Position.
        seq: u64,
        /// What the stored text hashes to.
        computed: String,
        /// What is stored.
        stored: String,
    },
    /// The HMAC does not verify: the event (or its hash) was modified by someone without the
    /// secret.
    #[serde(rename_all = "camelCase")]
    SignatureMismatch {
        /// Position.
        seq: u64,
    },
    /// The event names a key id the verifier does not hold.
    #[serde(rename_all = "camelCase")]
    UnknownKey {
        /// Position.
        seq: u64,
        /// The key id.
        key_id: String,
    },
    /// The event has a key id but no signature, or a signature but no key id.
    #[serde(rename_all = "camelCase")]
    MissingSignature {
        /// Position.
        seq: u64,
    },
    /// The event carries no signature at all although signatures are required: anyone can
    /// compute a hash, so an unsigned event could have been forged without the secret.
    #[serde(rename_all = "camelCase")]
    Unsigned {
        /// Position.
        seq: u64,
    },
    /// `prevHash` is not the hash of the event before: an event was inserted, removed or
    /// reordered here.
    #[serde(rename_all = "camelCase")]
    ChainBreak {
        /// Position.
        seq: u64,
        /// `prevHash` the event carries.
        prev_hash: String,
        /// Hash of the event stored at `seq - 1` (zeros at 0).
        expected: String,
    },
    /// Positions with no event: events were deleted.
    #[serde(rename_all = "camelCase")]
    Missing {
        /// First missing position.
        from_seq: u64,
        /// Last missing position.
        to_seq: u64,
    },
    /// The position the store files the event under differs from the `seq` inside it, or the
    /// log differs: the event was moved.
    #[serde(rename_all = "camelCase")]
    Misplaced {
        /// Position in the store.
        seq: u64,
        /// `seq` inside the event.
        claimed_seq: Option<u64>,
        /// `logId` inside the event.
        claimed_log: Option<String>,
    },
    /// The store files the event under another `id` than the one inside it: a lookup by id
    /// (`GET /v1/events/{id}`) would return the wrong event.
    #[serde(rename_all = "camelCase")]
    Misfiled {
        /// Position.
        seq: u64,
        /// The `id` inside the event.
        id: String,
        /// The `id` the store files it under.
        filed_as: String,
    },
    /// The stored text is not an event this server could have written.
    #[serde(rename_all = "camelCase")]
    Malformed {
        /// Position.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The Merkle root of the stored events at a signed checkpoint's size is not the signed
    /// root: something in `[from_seq, tree_size)` was modified, inserted, removed or reordered
    /// after the checkpoint was signed (the previous checkpoint, at `from_seq`, still matched).
    #[serde(rename_all = "camelCase")]
    CheckpointMismatch {
        /// First position that may differ (size of the last matching checkpoint).
        from_seq: u64,
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The signed root (hex).
        signed_root: String,
        /// The root of the stored events (hex).
        computed_root: String,
    },
    /// A signed checkpoint covers more events than the log holds: the tail was truncated.
    #[serde(rename_all = "camelCase")]
    Truncated {
        /// Positions the log holds (last stored `seq` + 1, the first missing position).
        log_size: u64,
        /// Events the checkpoint covers.
        tree_size: u64,
    },
    /// A stored checkpoint does not verify (bad signature, unknown key, malformed note).
    #[serde(rename_all = "camelCase")]
    CheckpointInvalid {
        /// The tree size it claims.
        tree_size: u64,
        /// Why.
        reason: String,
    },
    /// A stored Merkle tile (used to serve proofs) disagrees with the tree of the stored
    /// events.
    #[serde(rename_all = "camelCase")]
    TileMismatch {
        /// First leaf under the first hash of the tile that differs.
        seq: u64,
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
    },
    /// Tombstones (purged events) that no purge record in the log accounts for, or that do
    /// not match the record's count and digest: content was removed outside retention.
    #[serde(rename_all = "camelCase")]
    UnaccountedPurge {
        /// First tombstoned position of this purge id.
        seq: u64,
        /// The purge id the tombstones name.
        purge_id: String,
        /// Tombstones found with that id.
        tombstones: u64,
        /// What the purge record says (`None`: there is no such record).
        recorded: Option<u64>,
    },
    /// The consistency proof served between two successive checkpoints does not verify.
    #[serde(rename_all = "camelCase")]
    Inconsistent {
        /// Smaller tree size.
        from_size: u64,
        /// Larger tree size.
        to_size: u64,
        /// Why.
        reason: String,
    },
}

impl Failure {
    /// The first position the failure concerns.
    pub fn seq(&self) -> u64 {
        match self {
            Self::HashMismatch { seq, .. }
            | Self::SignatureMismatch { seq }
            | Self::UnknownKey { seq, .. }
            | Self::MissingSignature { seq }
            | Self::Unsigned { seq }
            | Self::ChainBreak { seq, .. }
            | Self::Misplaced { seq, .. }
            | Self::Misfiled { seq, .. }
            | Self::Malformed { seq, .. } => *seq,
            Self::Missing { from_seq, .. } | Self::CheckpointMismatch { from_seq, .. } => *from_seq,
            Self::Truncated { log_size, .. } => *log_size,
            Self::CheckpointInvalid { tree_size, .. } => *tree_size,
            Self::TileMismatch { seq, .. } | Self::UnaccountedPurge { seq, .. } => *seq,
            Self::Inconsistent { from_size, .. } => *from_size,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch {
                seq,
                computed,
                stored,
            } => write!(
                f,
                "seq {seq}: content does not match its hash (stored {stored}, content hashes to {computed}): modified"
            ),
            Self::SignatureMismatch { seq } => {
                write!(f, "seq {seq}: HMAC signature does not verify: modified")
            }
            Self::UnknownKey { seq, key_id } => {
                write!(f, "seq {seq}: signed with unknown HMAC key {key_id:?}")
            }
            Self::MissingSignature { seq } => {
                write!(f, "seq {seq}: keyId and signature do not go together")
            }
            Self::Unsigned { seq } => write!(
                f,
                "seq {seq}: not signed although signatures are required: forged, or written with AUDIT_ENABLE_SIGNATURES=false"
            ),
            Self::ChainBreak {
                seq,
                prev_hash,
                expected,
            } => write!(
                f,
                "seq {seq}: prevHash {prev_hash} is not the hash of seq {} ({expected}): chain broken",
                seq.saturating_sub(1)
            ),
            Self::Missing { from_seq, to_seq } if from_seq == to_seq => {
                write!(f, "seq {from_seq}: missing (deleted)")
            }
            Self::Missing { from_seq, to_seq } => {
                write!(f, "seq {from_seq}..={to_seq}: missing (deleted)")
            }
            Self::Misplaced {
                seq,
                claimed_seq,
                claimed_log,
            } => write!(
                f,
                "seq {seq}: stored here but claims seq {claimed_seq:?} of log {claimed_log:?}: moved"
            ),
            Self::Malformed { seq, reason } => write!(f, "seq {seq}: malformed: {reason}"),
            Self::Misfiled { seq, id, filed_as } => write!(
                f,
                "seq {seq}: event {id} is filed under id {filed_as}: lookups by id return the wrong event"
            ),
            Self::CheckpointMismatch {
                from_seq,
                tree_size,
                signed_root,
                computed_root,
            } => write!(
                f,
                "seq {from_seq}..{tree_size}: Merkle root {computed_root} of the stored events differs from the root {signed_root} signed in the checkpoint of size {tree_size}: events in this range were altered, inserted, removed or reordered after signing"
            ),
            Self::Truncated {
                log_size,
                tree_size,
            } => write!(
                f,
                "seq {log_size}..{tree_size}: a signed checkpoint covers {tree_size} events but the log holds {log_size}: tail truncated"
            ),
            Self::CheckpointInvalid { tree_size, reason } => {
                write!(f, "checkpoint of size {tree_size}: invalid: {reason}")
            }
            Self::TileMismatch { seq, level, index } => write!(
                f,
                "seq {seq}: stored Merkle tile (level {level}, index {index}) differs from the tree of the stored events; proofs served from it are wrong"
            ),
            Self::UnaccountedPurge {
                seq,
                purge_id,
                tombstones,
                recorded: None,
            } => write!(
                f,
                "seq {seq}: {tombstones} event(s) replaced by tombstones of purge {purge_id:?}, which no signed purge record accounts for: content removed outside retention"
            ),
            Self::UnaccountedPurge {
                seq,
                purge_id,
                tombstones,
                recorded: Some(recorded),
            } => write!(
                f,
                "seq {seq}: purge {purge_id:?} recorded {recorded} event(s) but {tombstones} tombstone(s) (or their hashes) differ: content removed outside retention"
            ),
            Self::Inconsistent {
                from_size,
                to_size,
                reason,
            } => write!(
                f,
                "checkpoints {from_size} -> {to_size}: consistency proof fails: {reason}"
            ),
        }
    }
}

/// The fields verification needs from the stored text; parsing only these keeps verification
/// close to the speed of hashing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainFields<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    log_id: Option<std::borrow::Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow)]
    prev_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    key_id: Option<std::borrow::Cow<'a, str>>,
    /// Only the server can write this member (it is a server field: a client sending it is
    /// refused), so only a purge the server ran can account for tombstones.
    purge: Option<crate::retention::PurgeFacts>,
}

/// What checking one row finds without knowing any other row: its hash, its HMAC verdict, the
/// chain fields inside it, and its Merkle leaf. This is nearly all of the CPU of verification
/// (three SHA-256 passes over the text and a JSON scan) and is independent per row, so callers
/// compute it for many rows in parallel and feed the results in order to
/// [`ChainVerifier::check_facts`].
#[derive(Debug, Clone)]
pub struct RowFacts {
    computed: [u8; 32],
    leaf: crate::merkle::Hash,
    fields: Result<RowFields, String>,
    signature: SignatureFacts,
    /// The row is a purged event's tombstone (its content is gone; its hash stays).
    tombstone: Option<crate::retention::Tombstone>,
}

#[derive(Debug, Clone)]
struct RowFields {
    seq: Option<u64>,
    /// `Some(claimed)` when the event names another log (or none).
    other_log: Option<Option<String>>,
    /// `None` when missing or not 64 hex digits.
    prev_hash: Option<[u8; 32]>,
    /// The purge this event records, when it is a `retention.purge` record.
    purge_record: Option<crate::retention::PurgeFacts>,
    /// The `id` inside the event, as 16 bytes (`None` if absent or not a UUID).
    id: Option<[u8; 16]>,
}

#[derive(Debug, Clone)]
enum SignatureFacts {
    NotChecked,
    Absent,
    Valid,
    Mismatch,
    UnknownKey(String),
    Incomplete,
}

/// The 16 bytes of a UUID in its hyphenated text form.
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let compact: String = text.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(compact).ok()?;
    <[u8; 16]>::try_from(bytes.as_slice()).ok()
}

/// Computes a row's [`RowFacts`] for the log `log_id`; `keyring` `None` skips the HMAC.
pub fn row_facts(
    log_id: &str,
    keyring: Option<&HmacKeyring>,
    canonical: &str,
    hash: &[u8],
    signature: Option<&[u8]>,
) -> RowFacts {
    if let Some(tombstone) = crate::retention::Tombstone::from_body(canonical) {
        // Nothing to recompute: the content is gone. The stored hash stands (the next event's
        // prevHash and the Merkle tree commit to it), and a purge record must account for it.
        let stored: [u8; 32] = hash.try_into().unwrap_or([0u8; 32]);
        return RowFacts {
            computed: stored,
            leaf: crate::merkle::leaf_hash(&stored),
            fields: Ok(RowFields {
                seq: Some(tombstone.seq),
                other_log: None,
                prev_hash: None,
                purge_record: None,
                id: None,
            }),
            signature: SignatureFacts::NotChecked,
            tombstone: Some(tombstone),
        };
    }
    let computed = event_hash(canonical);
    // The tree is built over what is stored (the hash the log committed), so a body edited
    // without its hash is caught by the hash check and not reported twice by the tree.
    let stored: [u8; 32] = hash.try_into().unwrap_or(computed);
    let leaf = crate::merkle::leaf_hash(&stored);
    let (fields, signature) = match serde_json::from_str::<ChainFields<'_>>(canonical) {
        Err(e) => (
            Err(format!("not a JSON event: {e}")),
            SignatureFacts::NotChecked,
        ),
        Ok(f) => {
            let other_log = if f.log_id.as_deref() == Some(log_id) {
                None
            } else {
                Some(f.log_id.as_deref().map(str::to_owned))
            };
            let sig = match (keyring, f.key_id.as_deref(), signature) {
                (None, _, _) => SignatureFacts::NotChecked,
                (Some(_), None, None) => SignatureFacts::Absent,
                (Some(ring), Some(key_id), Some(sig)) => {
                    match ring.verify(key_id, canonical.as_bytes(), sig) {
                        Ok(()) => SignatureFacts::Valid,
                        Err(SignatureError::Mismatch) => SignatureFacts::Mismatch,
                        Err(SignatureError::UnknownKey(k)) => SignatureFacts::UnknownKey(k),
                    }
                }
                (Some(_), _, _) => SignatureFacts::Incomplete,
            };
            let purge_record = f.purge;
            (
                Ok(RowFields {
                    seq: f.seq,
                    other_log,
                    prev_hash: f.prev_hash.as_deref().and_then(from_hex),
                    purge_record,
                    id: f.id.as_deref().and_then(uuid_bytes),
                }),
                sig,
            )
        }
    };
    RowFacts {
        computed,
        leaf,
        fields,
        signature,
        tombstone: None,
    }
}

/// Verifies one log, row by row in `seq` order.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    log_id: String,
    keyring: Option<&'k HmacKeyring>,
    require_signatures: bool,
    next_seq: u64,
    prev_hash: [u8; 32],
    checked: u64,
    failures: Vec<Failure>,
    /// The Merkle tree of the stored event hashes, in stored order.
    tree: crate::tiles::TileWriter,
    /// Signed checkpoints still ahead, smallest size last (popped as the tree reaches them).
    checkpoints: Vec<crate::checkpoint::CheckpointBody>,
    /// Size of the last checkpoint whose root matched.
    last_good_checkpoint: u64,
    checkpoints_matched: u64,
    /// Tombstones seen, per purge id: first seq and the digest of their `(seq, hash)`.
    tombstones: BTreeMap<String, (u64, crate::retention::PurgeDigest)>,
    /// Signed purge records seen, per purge id: (count, digest).
    purge_records: BTreeMap<String, (u64, String)>,
}

impl<'k> ChainVerifier<'k> {
    /// Starts verifying `log_id` from its first event. Without a keyring, signatures are not
    /// checked (hashes and chain still are).
    pub fn new(log_id: &str, keyring: Option<&'k HmacKeyring>) -> Self {
        Self {
            log_id: log_id.to_owned(),
            keyring,
            require_signatures: false,
            next_seq: 0,
            prev_hash: GENESIS_PREV_HASH,
            checked: 0,
            failures: Vec::new(),
            tree: crate::tiles::TileWriter::new(),
            checkpoints: Vec::new(),
            last_good_checkpoint: 0,
            checkpoints_matched: 0,
            tombstones: BTreeMap::new(),
            purge_records: BTreeMap::new(),
        }
    }

    /// Signed checkpoints (already signature-checked) whose roots the stored events must
    /// reproduce. Each is compared when the tree reaches its size; any left over at
    /// [`ChainVerifier::finish`] cover events that are gone (truncation).
    pub fn with_checkpoints(
        mut self,
        mut checkpoints: Vec<crate::checkpoint::CheckpointBody>,
    ) -> Self {
        checkpoints.sort_by_key(|c| std::cmp::Reverse(c.tree_size));
        checkpoints.dedup_by_key(|c| c.tree_size);
        self.checkpoints = checkpoints;
        self.compare_checkpoints();
        self
    }

    /// Tiles of the recomputed tree changed since the last call, for comparison with the
    /// stored tiles that serve proofs.
    pub fn take_tiles(&mut self) -> Vec<crate::tiles::Tile> {
        self.tree.take_changed()
    }

    /// Records a failure found outside the row stream (stored tiles, checkpoint signatures,
    /// consistency proofs), so one report holds everything.
    pub fn report(&mut self, failure: Failure) {
        self.failures.push(failure);
    }

    fn compare_checkpoints(&mut self) {
        while let Some(cp) = self.checkpoints.last() {
            if cp.tree_size != self.tree.size() {
                return;
            }
            let computed = self.tree.root();
            if computed == cp.root_hash {
                self.last_good_checkpoint = cp.tree_size;
                self.checkpoints_matched += 1;
            } else {
                self.failures.push(Failure::CheckpointMismatch {
                    from_seq: self.last_good_checkpoint,
                    tree_size: cp.tree_size,
                    signed_root: to_hex(&cp.root_hash),
                    computed_root: to_hex(&computed),
                });
            }
            self.checkpoints.pop();
        }
    }

    /// Requires every event to be signed (when a keyring is given). Without this, an event with
    /// neither `keyId` nor signature passes, as written with signatures off; but then anyone
    /// can append a self-consistent forged event at the end of the log, since hashes need no
    /// secret.
    pub fn require_signatures(mut self, required: bool) -> Self {
        self.require_signatures = required;
        self
    }

    /// Checks the row stored at `seq` with its stored `hash` and `signature`.
    pub fn check(&mut self, seq: u64, canonical: &str, hash: &[u8], signature: Option<&[u8]>) {
        let facts = row_facts(&self.log_id, self.keyring, canonical, hash, signature);
        self.check_facts(seq, hash, facts);
    }

    /// [`ChainVerifier::check_facts`], also checking the `id` the store files the row under
    /// (the lookup column) against the `id` inside the event.
    pub fn check_filed_facts(
        &mut self,
        seq: u64,
        hash: &[u8],
        filed_as: Option<&[u8; 16]>,
        facts: RowFacts,
    ) {
        if let (Some(filed), Ok(fields)) = (filed_as, &facts.fields)
            && facts.tombstone.is_none()
            && fields.id.as_ref() != Some(filed)
        {
            self.failures.push(Failure::Misfiled {
                seq,
                id: fields.id.map_or_else(
                    || "(none)".to_owned(),
                    |id| uuid::Uuid::from_bytes(id).to_string(),
                ),
                filed_as: uuid::Uuid::from_bytes(*filed).to_string(),
            });
        }
        self.check_facts(seq, hash, facts);
    }

    /// [`ChainVerifier::check`] with the row's independent part already computed by
    /// [`row_facts`] (possibly on another thread); rows must still arrive in `seq` order.
    pub fn check_facts(&mut self, seq: u64, hash: &[u8], facts: RowFacts) {
        self.checked += 1;
        if seq > self.next_seq {
            self.failures.push(Failure::Missing {
                from_seq: self.next_seq,
                to_seq: seq - 1,
            });
        }
        let computed = facts.computed;
        if computed[..] != *hash {
            self.failures.push(Failure::HashMismatch {
                seq,
                computed: to_hex(&computed),
                stored: hex::encode(hash),
            });
        }
        if let Some(tombstone) = facts.tombstone {
            let stored: [u8; 32] = hash.try_into().unwrap_or([0u8; 32]);
            if tombstone.seq != seq || from_hex(&tombstone.hash) != Some(stored) {
                self.failures.push(Failure::Malformed {
                    seq,
                    reason: "tombstone names another position or hash than its row".into(),
                });
            }
            self.tombstones
                .entry(tombstone.purge_id)
                .or_insert_with(|| (seq, crate::retention::PurgeDigest::default()))
                .1
                .add(seq, &stored);
            self.prev_hash = stored;
            self.next_seq = seq + 1;
            self.tree.push(facts.leaf);
            self.compare_checkpoints();
            return;
        }
        match facts.fields {
            Err(reason) => self.failures.push(Failure::Malformed { seq, reason }),
            Ok(fields) => {
                if let Some(record) = &fields.purge_record
                    && matches!(
                        facts.signature,
                        SignatureFacts::Valid | SignatureFacts::NotChecked
                    )
                {
                    self.purge_records.insert(
                        record.purge_id.clone(),
                        (record.count, record.digest.clone()),
                    );
                }
                if fields.seq != Some(seq) || fields.other_log.is_some() {
                    self.failures.push(Failure::Misplaced {
                        seq,
                        claimed_seq: fields.seq,
                        claimed_log: match fields.other_log {
                            Some(claimed) => claimed,
                            None => Some(self.log_id.clone()),
                        },
                    });
                }
                match fields.prev_hash {
                    None => self.failures.push(Failure::Malformed {
                        seq,
                        reason: "prevHash is missing or not 64 hex digits".into(),
                    }),
                    Some(prev) if seq == self.next_seq && prev != self.prev_hash => {
                        self.failures.push(Failure::ChainBreak {
                            seq,
                            prev_hash: to_hex(&prev),
                            expected: to_hex(&self.prev_hash),
                        });
                    }
                    Some(_) => {}
                }
                match facts.signature {
                    SignatureFacts::NotChecked | SignatureFacts::Valid => {}
                    SignatureFacts::Absent => {
                        if self.require_signatures {
                            self.failures.push(Failure::Unsigned { seq });
                        }
                    }
                    SignatureFacts::Mismatch => {
                        self.failures.push(Failure::SignatureMismatch { seq });
                    }
                    SignatureFacts::UnknownKey(key_id) => {
                        self.failures.push(Failure::UnknownKey { seq, key_id });
                    }
                    SignatureFacts::Incomplete => {
                        self.failures.push(Failure::MissingSignature { seq });
                    }
                }
            }
        }
        // Continue the chain from what is stored, so one modified event is reported once
        // (its own hash) rather than also as a break at every later event.
        self.prev_hash = hash.try_into().unwrap_or(computed);
        self.next_seq = seq + 1;
        self.tree.push(facts.leaf);
        self.compare_checkpoints();
    }

    /// Declares where the log is known to end (e.g. a checkpoint's tree size), so missing
    /// events at the tail are reported too.
    pub fn expect_size(&mut self, size: u64) {
        if size > self.next_seq {
            self.failures.push(Failure::Missing {
                from_seq: self.next_seq,
                to_seq: size - 1,
            });
            self.next_seq = size;
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Failures so far.
    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// The result.
    pub fn finish(mut self) -> LogReport {
        // Checkpoints the rebuilt tree never reached (largest first). Only those beyond the
        // last stored position mean a cut tail. The others cover positions that exist but miss
        // events in the middle (already reported as `Missing`): the stored events are fewer
        // than the checkpoint covers, so they cannot reproduce its root. Calling those
        // "truncated" would send an auditor to the wrong end of the log.
        let mut truncated = None;
        for cp in std::mem::take(&mut self.checkpoints) {
            if cp.tree_size > self.next_seq {
                truncated.get_or_insert(cp.tree_size);
            } else {
                self.failures.push(Failure::CheckpointMismatch {
                    from_seq: self.last_good_checkpoint,
                    tree_size: cp.tree_size,
                    signed_root: to_hex(&cp.root_hash),
                    computed_root: to_hex(&self.tree.root()),
                });
            }
        }
        if let Some(tree_size) = truncated {
            self.failures.push(Failure::Truncated {
                log_size: self.next_seq,
                tree_size,
            });
        }
        // Every tombstone must be accounted for by a signed purge record with the same count
        // and digest. (A record whose tombstones are not there yet is a purge interrupted
        // between its record and its tombstones: the events are intact, nothing to report.)
        for (purge_id, (first_seq, digest)) in std::mem::take(&mut self.tombstones) {
            let tombstones = digest.count();
            let found = digest.finish();
            match self.purge_records.get(&purge_id) {
                Some((count, recorded)) if *count == tombstones && *recorded == found => {}
                other => self.failures.push(Failure::UnaccountedPurge {
                    seq: first_seq,
                    purge_id,
                    tombstones,
                    recorded: other.map(|(count, _)| *count),
                }),
            }
        }
        LogReport {
            log_id: self.log_id,
            events: self.checked,
            size: self.next_seq,
            last_hash: to_hex(&self.prev_hash),
            merkle_root: to_hex(&self.tree.root()),
            checkpoints_matched: self.checkpoints_matched,
            failures: self.failures,
        }
    }
}

/// Verification result for one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogReport {
    /// The log.
    pub log_id: String,
    /// Events checked.
    pub events: u64,
    /// Positions covered (last seq + 1).
    pub size: u64,
    /// Hash of the last event checked.
    pub last_hash: String,
    /// Merkle root of the stored events (hex).
    #[serde(default)]
    pub merkle_root: String,
    /// Signed checkpoints whose root the stored events reproduced.
    #[serde(default)]
    pub checkpoints_matched: u64,
    /// Every failure, in `seq` order.
    pub failures: Vec<Failure>,
}

impl LogReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedactionConfig, ValidationConfig};
    use crate::pipeline::{Pipeline, Sequencing, seal};
    use crate::redact::Redactor;
    use serde_json::json;
    use zeroize::Zeroizing;

    struct Row {
        seq: u64,
        canonical: String,
        hash: Vec<u8>,
        signature: Option<Vec<u8>>,
    }

    fn ring() -> HmacKeyring {
        HmacKeyring::single(Zeroizing::new(b"verification-test-secret".to_vec())).expect("ok")
    }

    fn log(n: u64, ring: &HmacKeyring) -> Vec<Row> {
        let redactor = Redactor::new(&RedactionConfig::default(), b"k").expect("ok");
        let pipeline = Pipeline::new(ValidationConfig::default(), redactor);
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut prev = GENESIS_PREV_HASH;
        (0..n)
            .map(|seq| {
                let prepared = pipeline
                    .prepare(
                        json!({"action": "a.b", "status": "success", "n": seq}),
                        10,
                        now,
                    )
                    .expect("valid");
                let id = format!("id-{seq}");
                let sealed = seal(
                    &prepared,
                    &Sequencing {
                        id: &id,
                        log_id: "default",
                        seq,
                        received_at: "2026-01-01T00:00:00.000000Z",
                        prev_hash: &prev,
                    },
                    Some(ring),
                );
                prev = sealed.hash;
                Row {
                    seq,
                    canonical: sealed.canonical,
                    hash: sealed.hash.to_vec(),
                    signature: sealed.signature.map(|(_, s)| s.to_vec()),
                }
            })
            .collect()
    }

    fn run(rows: &[Row], ring: &HmacKeyring) -> LogReport {
        let mut v = ChainVerifier::new("default", Some(ring));
        for r in rows {
            v.check(r.seq, &r.canonical, &r.hash, r.signature.as_deref());
        }
        v.finish()
    }

    #[test]
    fn intact_log_verifies() {
        let ring = ring();
        let report = run(&log(20, &ring), &ring);
        assert!(report.ok(), "{:?}", report.failures);
        assert_eq!(report.events, 20);
    }

    #[test]
    fn modified_event_is_named_once() {
        let ring = ring();
        let mut rows = log(10, &ring);
        rows[4].canonical = rows[4].canonical.replace("\"n\":4", "\"n\":5");
        let report = run(&rows, &ring);
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(matches!(
            report.failures[0],
            Failure::HashMismatch { seq: 4, .. }
        ));
        assert!(matches!(
            report.failures[1],
            Failure::SignatureMismatch { seq: 4 }
        ));
    }

    #[test]
    fn modified_event_with_recomputed_hash_fails_signature_and_chain() {
        let ring = ring();
        let mut rows = log(10, &ring);
        rows[4].canonical = rows[4].canonical.replace("\"n\":4", "\"n\":5");
        rows[4].hash = event_hash(&rows[4].canonical).to_vec();
        let report = run(&rows, &ring);
        let seqs: Vec<u64> = report.failures.iter().map(Failure::seq).collect();
        assert_eq!(seqs, vec![4, 5], "{:?}", report.failures);
        assert!(matches!(
            report.failures[0],
            Failure::SignatureMismatch { seq: 4 }
        ));
        assert!(matches!(
            report.failures[1],
            Failure::ChainBreak { seq: 5, .. }
        ));
    }

    #[test]
    fn deleted_event_is_reported_as_missing_and_break() {
        let ring = ring();
        let mut rows = log(10, &ring);
        rows.remove(6);
        let report = run(&rows, &ring);
        assert_eq!(
            report.failures[0],
            Failure::Missing {
                from_seq: 6,
                to_seq: 6
            }
        );
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    }

    #[test]
    fn truncated_tail_is_reported_against_expected_size() {
        let ring = ring();
        let rows = log(5, &ring);
        let mut v = ChainVerifier::new("default", Some(&ring));
        for r in &rows[..3] {
            v.check(r.seq, &r.canonical, &r.hash, r.signature.as_deref());
        }
        v.expect_size(5);
        let report = v.finish();
        assert_eq!(
            report.failures,
            vec![Failure::Missing {
                from_seq: 3,
                to_seq: 4
            }]
        );
    }

    #[test]
    fn unsigned_events_fail_only_when_signatures_are_required() {
        let ring = ring();
        let redactor = Redactor::new(&RedactionConfig::default(), b"k").expect("ok");
        let pipeline = Pipeline::new(ValidationConfig::default(), redactor);
        let prepared = pipeline
            .prepare(
                json!({"action": "a.b", "status": "success"}),
                10,
                time::OffsetDateTime::UNIX_EPOCH,
            )
            .expect("valid");
        let sealed = seal(
            &prepared,
            &Sequencing {
                id: "id-0",
                log_id: "default",
                seq: 0,
                received_at: "2026-01-01T00:00:00.000000Z",
                prev_hash: &GENESIS_PREV_HASH,
            },
            None,
        );
        let check = |required: bool| {
            let mut v = ChainVerifier::new("default", Some(&ring)).require_signatures(required);
            v.check(0, &sealed.canonical, &sealed.hash, None);
            v.finish().failures
        };
        assert!(check(false).is_empty());
        assert_eq!(check(true), vec![Failure::Unsigned { seq: 0 }]);
        // Signed events pass either way.
        let rows = log(3, &ring);
        let mut v = ChainVerifier::new("default", Some(&ring)).require_signatures(true);
        for r in &rows {
            v.check(r.seq, &r.canonical, &r.hash, r.signature.as_deref());
        }
        assert!(v.finish().ok());
    }

    /// Signed-root checkpoints of `rows` at `sizes`.
    fn checkpoints(rows: &[Row], sizes: &[u64]) -> Vec<crate::checkpoint::CheckpointBody> {
        let leaves: Vec<_> = rows
            .iter()
            .map(|r| crate::merkle::leaf_hash(&r.hash.clone().try_into().expect("32 bytes")))
            .collect();
        sizes
            .iter()
            .map(|&n| crate::checkpoint::CheckpointBody {
                log_id: "default".into(),
                tree_size: n,
                root_hash: crate::merkle::mth(&leaves[..n as usize]),
            })
            .collect()
    }

    fn run_with_checkpoints(rows: &[Row], ring: &HmacKeyring, sizes: &[u64]) -> LogReport {
        let all = log(10, ring);
        let mut v =
            ChainVerifier::new("default", Some(ring)).with_checkpoints(checkpoints(&all, sizes));
        for r in rows {
            v.check(r.seq, &r.canonical, &r.hash, r.signature.as_deref());
        }
        v.finish()
    }

    #[test]
    fn checkpoints_match_an_intact_log() {
        let ring = ring();
        let report = run_with_checkpoints(&log(10, &ring), &ring, &[1, 4, 10]);
        assert!(report.ok(), "{:?}", report.failures);
        assert_eq!(report.checkpoints_matched, 3);
    }

    #[test]
    fn cut_tail_is_truncated_but_a_middle_gap_is_not() {
        let ring = ring();
        let rows = log(10, &ring);
        // The last three events deleted: the largest checkpoint beyond the log names the cut.
        let report = run_with_checkpoints(&rows[..7], &ring, &[4, 8, 10]);
        assert_eq!(
            report.failures,
            vec![Failure::Truncated {
                log_size: 7,
                tree_size: 10
            }]
        );
        assert_eq!(report.checkpoints_matched, 1);
        // Seq 5 deleted: missing, and both later checkpoints broken from the last good one
        // (4); the tail (seq 9) is there, so nothing is "truncated".
        let mut gap: Vec<Row> = log(10, &ring);
        gap.remove(5);
        let report = run_with_checkpoints(&gap, &ring, &[4, 8, 10]);
        let kinds: Vec<(u64, &str)> = report
            .failures
            .iter()
            .map(|f| {
                let kind = match f {
                    Failure::Missing { .. } => "missing",
                    Failure::CheckpointMismatch { from_seq: 4, .. } => "checkpointMismatch",
                    _ => "other",
                };
                (f.seq(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (5, "missing"),
                (4, "checkpointMismatch"),
                (4, "checkpointMismatch")
            ],
            "{:?}",
            report.failures
        );
    }

    #[test]
    fn wrong_secret_fails_every_signature() {
        let ring = ring();
        let rows = log(3, &ring);
        let other =
            HmacKeyring::single(Zeroizing::new(b"another-secret-entirely".to_vec())).expect("ok");
        let report = run(&rows, &other);
        assert_eq!(report.failures.len(), 3);
    }
}

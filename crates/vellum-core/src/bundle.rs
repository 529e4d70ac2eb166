//! The export bundle (SPEC §4): selected events with everything a third party needs to check,
//! offline and without the HMAC secret, that each one is exactly what the log committed.
//!
//! # Format (`vellum-bundle`, version 1)
//!
//! NDJSON, UTF-8, one JSON object per line, so that it is written and checked in constant
//! memory however many events it holds:
//!
//! 1. **Header** (first line):
//!    `{"format":"vellum-bundle","version":1,"createdAt":…,"query":{…},`
//!    `"checkpoints":[<signed checkpoint>…],"publicKeys":[{keyId,algorithm,publicKey,name}…]}`
//!    — one signed checkpoint per log that has events in the bundle (the JSON form of
//!    `GET /v1/logs/{logId}/checkpoint`, including its C2SP note), and the public keys that
//!    signed them.
//! 2. **One line per event**: `{"event":{…},"proof":{"logId","leafIndex","treeSize","hashes"}}`
//!    — the event as the API returns it (the stored object plus `hash` and `signature`), and
//!    its RFC 9162 inclusion proof (hex hashes, leaf to root) in the tree of that log's
//!    checkpoint.
//! 3. **Trailer** (last line): `{"end":true,"events":N}`, so a truncated file is detected.
//!
//! # What a verifier checks ([`BundleVerifier`])
//!
//! - every checkpoint's Ed25519 signature (over its C2SP note body), under a key the verifier
//!   trusts — given out of band (`--public-key`), or else the bundle's own keys, in which case
//!   the verdict says that trust rests on comparing the key id with the operator's published
//!   one;
//! - for every event: `hash` = SHA-256 of the RFC 8785 form of the event without `hash`,
//!   `signature` and `decrypted` (SPEC §3); `seq` and `logId` inside the event match the proof;
//!   the inclusion proof of `SHA-256(0x00 || hash)` at `seq` leads to the checkpoint's root;
//! - the trailer's count.
//!
//! The HMAC `signature` cannot be checked without the secret and is not needed: the Merkle
//! proof to a signed root already binds the hash.

use crate::canonical::to_canonical_string;
use crate::checkpoint::{CheckpointBody, CheckpointKey, SignedCheckpoint};
use crate::integrity::{event_hash, from_hex};
use crate::merkle::{Hash, leaf_hash, verify_inclusion};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `format` of the header line.
pub const FORMAT: &str = "vellum-bundle";
/// Version this code writes and reads.
pub const VERSION: u32 = 1;

/// A public key as carried in a bundle (and in `GET /v1/keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleKey {
    /// 8 hex digits.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// Raw public key, base64.
    pub public_key: String,
    /// Signer name.
    pub name: String,
}

impl BundleKey {
    /// From a checkpoint key.
    pub fn from_key(key: &CheckpointKey) -> Self {
        Self {
            key_id: key.key_id_hex(),
            algorithm: "ed25519".into(),
            public_key: key.public_key_base64(),
            name: key.name.clone(),
        }
    }
}

/// The first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// When the bundle was made.
    pub created_at: String,
    /// The selection (search filters) that produced it.
    #[serde(default)]
    pub query: Value,
    /// One checkpoint per log with events in the bundle.
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Keys that signed the checkpoints.
    pub public_keys: Vec<BundleKey>,
}

/// An event's inclusion proof inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleProof {
    /// The log.
    pub log_id: String,
    /// The event's `seq`.
    pub leaf_index: u64,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// Audit path, hex.
    pub hashes: Vec<String>,
}

/// One event line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    /// The event with `hash` and `signature`.
    pub event: Value,
    /// Its proof.
    pub proof: BundleProof,
}

/// The last line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleTrailer {
    /// Always true.
    pub end: bool,
    /// Event lines written.
    pub events: u64,
}

/// One problem found in a bundle, located by line and (for events) id and seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleFailure {
    /// 1-based line number in the file.
    pub line: u64,
    /// Event id, when the line is an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Log and seq, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for BundleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(id) = &self.event_id {
            write!(f, ", event {id}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleReport {
    /// True when every check passed.
    pub ok: bool,
    /// Events whose hash and proof verified.
    pub events_verified: u64,
    /// Event lines seen.
    pub events: u64,
    /// Checkpoints whose signature verified: `(logId, treeSize, keyId)`.
    pub checkpoints: Vec<(String, u64, String)>,
    /// True when the keys came from the bundle itself rather than from the verifier.
    pub keys_from_bundle: bool,
    /// Every failure.
    pub failures: Vec<BundleFailure>,
}

/// Checks a bundle line by line: [`BundleVerifier::line`] for each line, then
/// [`BundleVerifier::finish`].
#[derive(Debug)]
pub struct BundleVerifier {
    trusted: Vec<CheckpointKey>,
    keys_from_bundle: bool,
    roots: BTreeMap<String, CheckpointBody>,
    line_no: u64,
    header_seen: bool,
    trailer: Option<u64>,
    report: BundleReport,
}

impl BundleVerifier {
    /// A verifier trusting `keys`; with none, the bundle's own keys are used (and the report
    /// says so).
    pub fn new(keys: Vec<CheckpointKey>) -> Self {
        Self {
            keys_from_bundle: keys.is_empty(),
            trusted: keys,
            roots: BTreeMap::new(),
            line_no: 0,
            header_seen: false,
            trailer: None,
            report: BundleReport {
                ok: false,
                events_verified: 0,
                events: 0,
                checkpoints: Vec::new(),
                keys_from_bundle: false,
                failures: Vec::new(),
            },
        }
    }

    fn fail(&mut self, event_id: Option<String>, seq: Option<u64>, reason: impl Into<String>) {
        self.report.failures.push(BundleFailure {
            line: self.line_no,
            event_id,
            seq,
            reason: reason.into(),
        });
    }

    /// Feeds the next line (without its newline).
    pub fn line(&mut self, text: &str) {
        self.line_no += 1;
        if text.trim().is_empty() {
            return;
        }
        if self.trailer.is_some() {
            self.fail(None, None, "content after the end line");
            return;
        }
        if !self.header_seen {
            self.header_seen = true;
            self.header(text);
            return;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.fail(None, None, format!("not JSON: {e}")),
        };
        if value.get("end").is_some() {
            match serde_json::from_value::<BundleTrailer>(value) {
                Ok(t) => self.trailer = Some(t.events),
                Err(e) => self.fail(None, None, format!("malformed end line: {e}")),
            }
            return;
        }
        match serde_json::from_value::<BundleEntry>(value) {
            Ok(entry) => self.entry(entry),
            Err(e) => {
                self.report.events += 1;
                self.fail(None, None, format!("malformed event line: {e}"));
            }
        }
    }

    fn header(&mut self, text: &str) {
        let header: BundleHeader = match serde_json::from_str(text) {
            Ok(h) => h,
            Err(e) => return self.fail(None, None, format!("malformed header: {e}")),
        };
        if header.format != FORMAT || header.version != VERSION {
            return self.fail(
                None,
                None,
                format!(
                    "not a {FORMAT} version {VERSION} file (format {:?}, version {})",
                    header.format, header.version
                ),
            );
        }
        if self.keys_from_bundle {
            for k in &header.public_keys {
                match CheckpointKey::parse(&k.public_key) {
                    Ok(mut key) => {
                        key.name.clone_from(&k.name);
                        self.trusted.push(key);
                    }
                    Err(e) => self.fail(None, None, format!("public key {}: {e}", k.key_id)),
                }
            }
        }
        for cp in &header.checkpoints {
            match cp.verify(&self.trusted) {
                Ok(body) => {
                    self.report.checkpoints.push((
                        body.log_id.clone(),
                        body.tree_size,
                        cp.key_id.clone(),
                    ));
                    self.roots.insert(body.log_id.clone(), body);
                }
                Err(e) => self.fail(
                    None,
                    None,
                    format!(
                        "checkpoint of log {} at size {}: {e}",
                        cp.log_id, cp.tree_size
                    ),
                ),
            }
        }
    }

    fn entry(&mut self, entry: BundleEntry) {
        self.report.events += 1;
        let id = entry
            .event
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let seq = entry.proof.leaf_index;
        let Value::Object(mut object) = entry.event else {
            return self.fail(id, Some(seq), "event is not a JSON object");
        };
        let stated = object
            .remove("hash")
            .and_then(|h| h.as_str().and_then(from_hex));
        object.remove("signature");
        object.remove("decrypted");
        let Some(stated) = stated else {
            return self.fail(id, Some(seq), "event has no 64-hex-digit `hash`");
        };
        if object.get("seq").and_then(Value::as_u64) != Some(seq) {
            return self.fail(
                id,
                Some(seq),
                "the event's `seq` is not the proof's leafIndex",
            );
        }
        if object.get("logId").and_then(Value::as_str) != Some(entry.proof.log_id.as_str()) {
            return self.fail(id, Some(seq), "the event's `logId` is not the proof's log");
        }
        let canonical = to_canonical_string(&Value::Object(object));
        if event_hash(&canonical) != stated {
            return self.fail(
                id,
                Some(seq),
                "content does not match its hash: the event was modified",
            );
        }
        let Some(root) = self.roots.get(&entry.proof.log_id) else {
            return self.fail(
                id,
                Some(seq),
                format!(
                    "no verified checkpoint for log {:?} in the header",
                    entry.proof.log_id
                ),
            );
        };
        if root.tree_size != entry.proof.tree_size {
            let size = root.tree_size;
            return self.fail(
                id,
                Some(seq),
                format!(
                    "proof is for tree size {} but the checkpoint is {size}",
                    entry.proof.tree_size
                ),
            );
        }
        let path: Option<Vec<Hash>> = entry.proof.hashes.iter().map(|h| from_hex(h)).collect();
        let Some(path) = path else {
            return self.fail(id, Some(seq), "a proof hash is not 64 hex digits");
        };
        let root_hash = root.root_hash;
        let size = root.tree_size;
        match verify_inclusion(seq, size, &leaf_hash(&stated), &path, &root_hash) {
            Ok(()) => self.report.events_verified += 1,
            Err(e) => self.fail(
                id,
                Some(seq),
                format!("inclusion proof does not lead to the signed root: {e}"),
            ),
        }
    }

    /// The verdict.
    pub fn finish(mut self) -> BundleReport {
        if !self.header_seen {
            self.fail(None, None, "empty file: no header");
        }
        match self.trailer {
            None => self.fail(None, None, "no end line: the bundle is truncated"),
            Some(n) if n != self.report.events => {
                let events = self.report.events;
                self.fail(
                    None,
                    None,
                    format!("end line says {n} events but the bundle holds {events}"),
                );
            }
            Some(_) => {}
        }
        self.report.keys_from_bundle = self.keys_from_bundle;
        self.report.ok = self.report.failures.is_empty();
        self.report
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointSigner;
    use crate::merkle::MemoryTree;
    use serde_json::json;

    /// A three-event bundle built by hand: what the server writes.
    fn bundle() -> (Vec<String>, CheckpointKey) {
        let signer = CheckpointSigner::from_seed("vellum", &[3; 32]).unwrap();
        let mut events = Vec::new();
        let mut tree = MemoryTree::new();
        for seq in 0..3u64 {
            let e = json!({"id": format!("id-{seq}"), "logId": "default", "seq": seq,
                           "action": "patient.read", "note": "héllo\u{1}", "n": 1e21});
            let canonical = to_canonical_string(&e);
            let hash = event_hash(&canonical);
            tree.push(leaf_hash(&hash));
            let mut with = e.clone();
            with["hash"] = json!(hex::encode(hash));
            with["signature"] = json!("00");
            events.push(with);
        }
        let cp = signer.sign(
            &CheckpointBody {
                log_id: "default".into(),
                tree_size: 3,
                root_hash: tree.root(),
            },
            "t",
        );
        let header = BundleHeader {
            format: FORMAT.into(),
            version: VERSION,
            created_at: "t".into(),
            query: json!({}),
            checkpoints: vec![cp],
            public_keys: vec![BundleKey::from_key(&signer.public())],
        };
        let mut lines = vec![serde_json::to_string(&header).unwrap()];
        for (seq, event) in events.into_iter().enumerate() {
            let mut src = &tree;
            let proof = crate::merkle::inclusion_proof(&mut src, seq as u64, 3).unwrap();
            lines.push(
                serde_json::to_string(&BundleEntry {
                    event,
                    proof: BundleProof {
                        log_id: "default".into(),
                        leaf_index: seq as u64,
                        tree_size: 3,
                        hashes: proof.iter().map(hex::encode).collect(),
                    },
                })
                .unwrap(),
            );
        }
        lines.push(r#"{"end":true,"events":3}"#.into());
        (lines, signer.public())
    }

    fn check(lines: &[String], keys: Vec<CheckpointKey>) -> BundleReport {
        let mut v = BundleVerifier::new(keys);
        for l in lines {
            v.line(l);
        }
        v.finish()
    }

    #[test]
    fn a_faithful_bundle_verifies_with_and_without_a_pinned_key() {
        let (lines, key) = bundle();
        let r = check(&lines, vec![key]);
        assert!(r.ok, "{:?}", r.failures);
        assert_eq!(r.events_verified, 3);
        assert!(!r.keys_from_bundle);
        let r = check(&lines, vec![]);
        assert!(r.ok && r.keys_from_bundle);
    }

    #[test]
    fn a_modified_event_is_named() {
        let (mut lines, key) = bundle();
        lines[2] = lines[2].replace("patient.read", "patient.wipe");
        let r = check(&lines, vec![key]);
        assert!(!r.ok);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].line, 3);
        assert_eq!(r.failures[0].seq, Some(1));
        assert_eq!(r.failures[0].event_id.as_deref(), Some("id-1"));
    }

    #[test]
    fn a_rehashed_event_fails_its_proof() {
        // Attacker edits the event and recomputes its hash: the proof no longer reaches the root.
        let (lines, key) = bundle();
        let mut entry: BundleEntry = serde_json::from_str(&lines[1]).unwrap();
        entry.event["action"] = json!("patient.wipe");
        let mut obj = entry.event.as_object().unwrap().clone();
        obj.remove("hash");
        obj.remove("signature");
        entry.event["hash"] = json!(hex::encode(event_hash(&to_canonical_string(
            &Value::Object(obj)
        ))));
        let mut lines = lines;
        lines[1] = serde_json::to_string(&entry).unwrap();
        let r = check(&lines, vec![key]);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].reason.contains("inclusion proof"));
        assert_eq!(r.failures[0].seq, Some(0));
    }

    #[test]
    fn wrong_key_truncation_and_bad_proofs_fail() {
        let (lines, _) = bundle();
        let stranger = CheckpointSigner::from_seed("vellum", &[4; 32]).unwrap();
        let r = check(&lines, vec![stranger.public()]);
        assert!(!r.ok);
        assert!(
            r.failures[0].reason.contains("unknown key"),
            "{:?}",
            r.failures
        );

        let r = check(&lines[..3], vec![]);
        assert!(r.failures.iter().any(|f| f.reason.contains("truncated")));

        let mut bad = lines.clone();
        let mut entry: BundleEntry = serde_json::from_str(&bad[3]).unwrap();
        entry.proof.hashes[0] = hex::encode([0u8; 32]);
        bad[3] = serde_json::to_string(&entry).unwrap();
        let r = check(&bad, vec![]);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].seq, Some(2));

        let mut bad = lines.clone();
        bad.remove(2);
        let r = check(&bad, vec![]);
        assert!(
            r.failures
                .iter()
                .any(|f| f.reason.contains("end line says 3"))
        );
    }
}

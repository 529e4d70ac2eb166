//! Offline verification of what a Vellum server hands out (SPEC §3, §4): an application, an
//! auditor's script or a third party can check an event without trusting the server that
//! served it.
//!
//! - [`event_hash`] / [`check_hash`]: the event's `hash` is SHA-256 of its RFC 8785 canonical
//!   form without `hash`, `signature` and `decrypted`.
//! - [`check_signature`]: its `signature` is HMAC-SHA256 of the same bytes under the secret
//!   named by its `keyId` (compared in constant time).
//! - [`verify_checkpoint`]: a checkpoint's signed note verifies under a published Ed25519 key
//!   and its JSON fields agree with the note.
//! - [`verify_inclusion`]: the event is leaf `seq` of the tree the checkpoint commits to.
//!
//! The algorithms are `vellum_core`'s, the same code the server and `vellum verify-bundle`
//! run, so a client can never disagree with the server about what "valid" means.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vellum_core::checkpoint::{CheckpointKey, SignedCheckpoint};
use vellum_core::integrity::{HmacKeyring, from_hex, to_hex};

/// Why an event, proof or checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The event is not a JSON object, or lacks a field verification needs.
    #[error("malformed event: {0}")]
    MalformedEvent(String),
    /// The recomputed hash differs from the event's `hash`: the event was altered.
    #[error("hash mismatch: the event says {claimed}, its content hashes to {computed}")]
    HashMismatch {
        /// The event's `hash`.
        claimed: String,
        /// SHA-256 of its canonical form.
        computed: String,
    },
    /// The HMAC does not match under the given secret.
    #[error("HMAC signature does not match under key {key_id:?}")]
    SignatureMismatch {
        /// The event's `keyId`.
        key_id: String,
    },
    /// The event carries no signature (signatures are off on that server).
    #[error("the event has no signature")]
    Unsigned,
    /// The secret is unusable (shorter than 16 bytes).
    #[error("unusable HMAC secret: {0}")]
    BadSecret(String),
    /// The checkpoint does not verify.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A published key could not be parsed.
    #[error("public key: {0}")]
    BadKey(String),
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("inclusion proof: {0}")]
    Inclusion(String),
}

/// A published checkpoint key, as `GET /v1/keys` lists it (`checkpointKeys[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedKey {
    /// 8 hex digits.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// Raw 32-byte public key, base64.
    pub public_key: String,
    /// Signer name in the note's signature lines.
    pub name: String,
}

impl PublishedKey {
    /// The key in the form the verifier uses; checks that the published key id matches.
    pub fn to_checkpoint_key(&self) -> Result<CheckpointKey, VerifyError> {
        if self.algorithm != "ed25519" {
            return Err(VerifyError::BadKey(format!(
                "algorithm {:?} is not ed25519",
                self.algorithm
            )));
        }
        let mut key = CheckpointKey::parse(&self.public_key)
            .map_err(|e| VerifyError::BadKey(e.to_string()))?;
        key.name = self.name.clone();
        if key.key_id_hex() != self.key_id {
            return Err(VerifyError::BadKey(format!(
                "key id {} does not belong to key {} named {:?}",
                self.key_id, self.public_key, self.name
            )));
        }
        Ok(key)
    }
}

/// An inclusion proof as `GET /v1/events/{id}/proof` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    /// The log.
    pub log_id: String,
    /// The event's `seq`.
    pub leaf_index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// `SHA-256(0x00 || event hash)`, hex.
    pub leaf_hash: String,
    /// The audit path, hex.
    pub hashes: Vec<String>,
    /// The checkpoint of exactly `treeSize`, when the server attached one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SignedCheckpoint>,
}

fn object(event: &Value) -> Result<&serde_json::Map<String, Value>, VerifyError> {
    event
        .as_object()
        .ok_or_else(|| VerifyError::MalformedEvent("not a JSON object".into()))
}

fn text_field<'a>(event: &'a Value, name: &str) -> Result<&'a str, VerifyError> {
    event
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::MalformedEvent(format!("no `{name}` string")))
}

/// The canonical form that `hash` and `signature` cover: the stored event without `hash`,
/// `signature` and `decrypted`, serialized by RFC 8785.
pub fn canonical_form(event: &Value) -> Result<String, VerifyError> {
    let mut map = object(event)?.clone();
    for excluded in ["hash", "signature", "decrypted"] {
        map.remove(excluded);
    }
    Ok(vellum_core::canonical::to_canonical_string(&Value::Object(
        map,
    )))
}

/// The event's hash recomputed from its content, lowercase hex.
pub fn event_hash(event: &Value) -> Result<String, VerifyError> {
    let canonical = canonical_form(event)?;
    Ok(to_hex(&vellum_core::integrity::event_hash(&canonical)))
}

/// Checks that the event's `hash` is the hash of its content.
pub fn check_hash(event: &Value) -> Result<(), VerifyError> {
    let claimed = text_field(event, "hash")?;
    let computed = event_hash(event)?;
    if claimed == computed {
        Ok(())
    } else {
        Err(VerifyError::HashMismatch {
            claimed: claimed.to_owned(),
            computed,
        })
    }
}

/// Checks the event's HMAC `signature` under `secret`, the bytes of the secret its `keyId`
/// names (`AUDIT_CRYPTO_SECRET` for key `default`). Compared in constant time; the secret is
/// held in zeroizing memory only for the call.
pub fn check_signature(event: &Value, secret: &[u8]) -> Result<(), VerifyError> {
    let key_id = text_field(event, "keyId").unwrap_or("default").to_owned();
    let Some(signature) = event.get("signature").and_then(Value::as_str) else {
        return Err(VerifyError::Unsigned);
    };
    let signature = hex::decode(signature).map_err(|_| VerifyError::SignatureMismatch {
        key_id: key_id.clone(),
    })?;
    let keyring = HmacKeyring::new(
        &key_id,
        [(key_id.clone(), zeroize::Zeroizing::new(secret.to_vec()))],
    )
    .map_err(|e| VerifyError::BadSecret(e.to_string()))?;
    let canonical = canonical_form(event)?;
    keyring
        .verify(&key_id, canonical.as_bytes(), &signature)
        .map_err(|_| VerifyError::SignatureMismatch { key_id })
}

/// Verifies a checkpoint's signed note under the published keys, and that its JSON fields
/// agree with the signed note. Returns the key that signed it.
pub fn verify_checkpoint(
    checkpoint: &SignedCheckpoint,
    keys: &[PublishedKey],
) -> Result<CheckpointKey, VerifyError> {
    let keys = keys
        .iter()
        .map(PublishedKey::to_checkpoint_key)
        .collect::<Result<Vec<_>, _>>()?;
    checkpoint
        .verify(&keys)
        .map_err(|e| VerifyError::Checkpoint(e.to_string()))?;
    keys.into_iter()
        .find(|k| k.key_id_hex() == checkpoint.key_id)
        .ok_or_else(|| VerifyError::Checkpoint("no key matches the checkpoint's keyId".into()))
}

/// Checks that `event` (with a valid `hash`) is leaf `seq` of the tree `checkpoint` commits
/// to, using `proof`. Does not check the checkpoint's signature: call [`verify_checkpoint`]
/// (or use [`verify_event`], which does both).
pub fn verify_inclusion(
    event: &Value,
    proof: &InclusionProof,
    checkpoint: &SignedCheckpoint,
) -> Result<(), VerifyError> {
    check_hash(event)?;
    let bad = |why: String| VerifyError::Inclusion(why);
    let seq = event
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| VerifyError::MalformedEvent("no `seq` number".into()))?;
    let log_id = text_field(event, "logId")?;
    if proof.log_id != log_id || checkpoint.log_id != log_id {
        return Err(bad(format!(
            "the event is in log {log_id:?}, the proof in {:?}, the checkpoint in {:?}",
            proof.log_id, checkpoint.log_id
        )));
    }
    if proof.leaf_index != seq {
        return Err(bad(format!(
            "the proof is for leaf {}, the event is seq {seq}",
            proof.leaf_index
        )));
    }
    if proof.tree_size != checkpoint.tree_size {
        return Err(bad(format!(
            "the proof is for tree size {}, the checkpoint has {}",
            proof.tree_size, checkpoint.tree_size
        )));
    }
    let event_hash = from_hex(text_field(event, "hash")?)
        .ok_or_else(|| VerifyError::MalformedEvent("`hash` is not 64 hex digits".into()))?;
    let leaf = vellum_core::merkle::leaf_hash(&event_hash);
    if hex::encode(leaf) != proof.leaf_hash {
        return Err(bad(
            "the proof's leafHash is not this event's leaf hash".into()
        ));
    }
    let root = from_hex(&checkpoint.root_hash)
        .ok_or_else(|| bad("the checkpoint's rootHash is not 64 hex digits".into()))?;
    let path = proof
        .hashes
        .iter()
        .map(|h| from_hex(h).ok_or_else(|| bad(format!("proof hash {h:?} is not 64 hex digits"))))
        .collect::<Result<Vec<_>, _>>()?;
    vellum_core::merkle::verify_inclusion(seq, proof.tree_size, &leaf, &path, &root)
        .map_err(|e| bad(e.to_string()))
}

/// Everything at once: the checkpoint's signature under the published keys, the event's hash,
/// its inclusion under the checkpoint, and (given the secret) its HMAC.
pub fn verify_event(
    event: &Value,
    proof: &InclusionProof,
    checkpoint: &SignedCheckpoint,
    keys: &[PublishedKey],
    hmac_secret: Option<&[u8]>,
) -> Result<(), VerifyError> {
    verify_checkpoint(checkpoint, keys)?;
    verify_inclusion(event, proof, checkpoint)?;
    if let Some(secret) = hmac_secret {
        check_signature(event, secret)?;
    }
    Ok(())
}

//! Erasure by crypto-shredding (SPEC §7, GDPR Art. 17).
//!
//! The values of an event that are tied to a data subject (`gdprContext.dataSubjectId` and the
//! fields configured as personal) are moved, before hashing, into a `sealed` object: their
//! plaintext encrypted with XChaCha20-Poly1305 under a key of that subject alone. The hash and
//! the signature cover the sealed form, so destroying the subject's key later makes the values
//! unreadable without changing a single stored byte: the chain, the Merkle tree and
//! `vellum verify` are untouched by an erasure.
//!
//! The `sealed` object holds the subject's random reference (not derived from the subject id,
//! so nothing stored links it back once the key is gone), a search tag (a keyed hash of the
//! subject id under the subject's own key: computable only while the key exists, so after
//! erasure a search by the id finds nothing), the nonce, the ciphertext, and which fields it
//! holds. This module is pure: keys and nonces come from the caller.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Member of the stored event that holds the encrypted values.
pub const SEALED_FIELD: &str = "sealed";
/// The pointer whose presence makes an event a data subject's.
pub const SUBJECT_POINTER: &str = "/gdprContext/dataSubjectId";

/// A data subject's key and public reference.
pub struct SubjectSecret {
    /// The 256-bit AEAD key (zeroized on drop).
    pub key: Zeroizing<[u8; 32]>,
    /// Random reference stored in sealed events (32 hex digits).
    pub subject_ref: String,
}

impl std::fmt::Debug for SubjectSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectSecret")
            .field("subject_ref", &self.subject_ref)
            .finish_non_exhaustive()
    }
}

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShredError {
    /// The sealed object is not one this module wrote.
    #[error("sealed object is malformed: {0}")]
    Malformed(String),
    /// The key does not open the ciphertext (wrong key, or altered ciphertext).
    #[error("the key does not open this sealed object")]
    WrongKey,
}

/// The search tag of `subject_id` under its subject's key: 32 hex digits of
/// HMAC-SHA256(key, "vellum/subject/" || id).
pub fn subject_tag(key: &[u8; 32], subject_id: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(b"vellum/subject/");
    mac.update(subject_id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn take_pointer(map: &mut Map<String, Value>, pointer: &str) -> Option<Value> {
    let mut parts = pointer.strip_prefix('/')?.split('/');
    let first = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return map.remove(first);
    }
    let mut node = map.get_mut(first)?;
    for (i, part) in rest.iter().enumerate() {
        let object = node.as_object_mut()?;
        if i + 1 == rest.len() {
            return object.remove(*part);
        }
        node = object.get_mut(*part)?;
    }
    None
}

/// The subject id of an event, if it has one (a string at [`SUBJECT_POINTER`]).
pub fn subject_of(map: &Map<String, Value>) -> Option<&str> {
    map.get("gdprContext")?.get("dataSubjectId")?.as_str()
}

/// Moves the values at `pointers` (present ones; the subject id is always among them) into a
/// `sealed` object encrypted under `secret`. Returns whether the event had a subject.
pub fn seal(
    map: &mut Map<String, Value>,
    pointers: &[String],
    secret: &SubjectSecret,
    nonce: &[u8; 24],
) -> Result<bool, ShredError> {
    let Some(subject) = subject_of(map).map(str::to_owned) else {
        return Ok(false);
    };
    let mut plaintext: BTreeMap<String, Value> = BTreeMap::new();
    let subject_pointer = SUBJECT_POINTER.to_owned();
    for pointer in std::iter::once(&subject_pointer).chain(pointers.iter()) {
        if plaintext.contains_key(pointer) {
            continue;
        }
        if let Some(value) = take_pointer(map, pointer) {
            plaintext.insert(pointer.clone(), value);
        }
    }
    let message = Zeroizing::new(
        serde_json::to_vec(&plaintext).map_err(|e| ShredError::Malformed(e.to_string()))?,
    );
    let cipher = XChaCha20Poly1305::new(secret.key.as_ref().into());
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: &message,
                aad: secret.subject_ref.as_bytes(),
            },
        )
        .map_err(|_| ShredError::WrongKey)?;
    let mut sealed = Map::new();
    sealed.insert("alg".into(), Value::String("XChaCha20-Poly1305".into()));
    sealed.insert("subject".into(), Value::String(secret.subject_ref.clone()));
    sealed.insert(
        "subjectTag".into(),
        Value::String(subject_tag(&secret.key, &subject)),
    );
    sealed.insert("nonce".into(), Value::String(B64.encode(nonce)));
    sealed.insert("ciphertext".into(), Value::String(B64.encode(ciphertext)));
    sealed.insert(
        "fields".into(),
        Value::Array(plaintext.keys().cloned().map(Value::String).collect()),
    );
    map.insert(SEALED_FIELD.into(), Value::Object(sealed));
    Ok(true)
}

/// The subject reference of a stored `sealed` object.
pub fn sealed_subject(sealed: &Value) -> Option<&str> {
    sealed.get("subject")?.as_str()
}

/// Decrypts a stored `sealed` object: the original values by JSON pointer.
pub fn open(sealed: &Value, key: &[u8; 32]) -> Result<Map<String, Value>, ShredError> {
    let field = |name: &str| {
        sealed
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| ShredError::Malformed(format!("{name} missing")))
    };
    let subject = field("subject")?;
    let nonce = B64
        .decode(field("nonce")?)
        .map_err(|e| ShredError::Malformed(format!("nonce: {e}")))?;
    if nonce.len() != 24 {
        return Err(ShredError::Malformed("nonce is not 24 bytes".into()));
    }
    let ciphertext = B64
        .decode(field("ciphertext")?)
        .map_err(|e| ShredError::Malformed(format!("ciphertext: {e}")))?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: subject.as_bytes(),
                },
            )
            .map_err(|_| ShredError::WrongKey)?,
    );
    serde_json::from_slice(&plaintext).map_err(|e| ShredError::Malformed(e.to_string()))
}

/// Wraps a subject key for storage under a key-encryption key (XChaCha20-Poly1305, the
/// subject reference as associated data): `nonce || ciphertext`.
pub fn wrap_key(kek: &[u8; 32], secret: &SubjectSecret, nonce: &[u8; 24]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(kek.into());
    let mut out = nonce.to_vec();
    let wrapped = cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: secret.key.as_ref(),
                aad: secret.subject_ref.as_bytes(),
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&wrapped);
    out
}

/// Unwraps a stored subject key.
pub fn unwrap_key(
    kek: &[u8; 32],
    subject_ref: &str,
    wrapped: &[u8],
) -> Result<SubjectSecret, ShredError> {
    if wrapped.len() < 24 {
        return Err(ShredError::Malformed("wrapped key too short".into()));
    }
    let (nonce, ciphertext) = wrapped.split_at(24);
    let cipher = XChaCha20Poly1305::new(kek.into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: subject_ref.as_bytes(),
                },
            )
            .map_err(|_| ShredError::WrongKey)?,
    );
    let key: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| ShredError::Malformed("wrapped key is not 32 bytes".into()))?;
    Ok(SubjectSecret {
        key: Zeroizing::new(key),
        subject_ref: subject_ref.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(byte: u8) -> SubjectSecret {
        SubjectSecret {
            key: Zeroizing::new([byte; 32]),
            subject_ref: "ab".repeat(16),
        }
    }

    #[test]
    fn seal_moves_personal_values_and_open_restores_them() {
        let mut event = json!({
            "action": "gdpr.access", "status": "success",
            "gdprContext": {"dataSubjectId": "ds-42", "lawfulBasis": "consent"},
            "sessionContext": {"ipAddress": "203.0.113.77", "sessionId": "s1"},
            "outcomeDescription": "emailed jane.roe@example.org",
        });
        let map = event.as_object_mut().expect("object");
        let pointers = vec![
            "/sessionContext/ipAddress".to_owned(),
            "/outcomeDescription".to_owned(),
            "/details".to_owned(),
        ];
        assert!(seal(map, &pointers, &secret(7), &[1; 24]).expect("seal"));
        let text = serde_json::to_string(map).expect("json");
        for plaintext in ["ds-42", "203.0.113.77", "jane.roe"] {
            assert!(!text.contains(plaintext), "{plaintext} left in {text}");
        }
        assert_eq!(map["gdprContext"]["lawfulBasis"], "consent");
        assert_eq!(map["sessionContext"]["sessionId"], "s1");
        let sealed = &map[SEALED_FIELD];
        assert_eq!(sealed["subjectTag"], subject_tag(&[7; 32], "ds-42"));
        let opened = open(sealed, &[7; 32]).expect("open");
        assert_eq!(opened["/gdprContext/dataSubjectId"], "ds-42");
        assert_eq!(opened["/sessionContext/ipAddress"], "203.0.113.77");
        assert_eq!(
            opened["/outcomeDescription"],
            "emailed jane.roe@example.org"
        );
        assert!(!opened.contains_key("/details"));
        assert_eq!(open(sealed, &[8; 32]), Err(ShredError::WrongKey));
        // An event without a subject is left alone.
        let mut plain = json!({"action": "a", "status": "success"});
        assert!(
            !seal(
                plain.as_object_mut().expect("object"),
                &pointers,
                &secret(7),
                &[1; 24]
            )
            .expect("ok")
        );
    }

    #[test]
    fn wrapped_keys_round_trip_and_bind_the_reference() {
        let s = secret(9);
        let wrapped = wrap_key(&[3; 32], &s, &[2; 24]);
        let back = unwrap_key(&[3; 32], &s.subject_ref, &wrapped).expect("unwrap");
        assert_eq!(*back.key, [9; 32]);
        assert!(unwrap_key(&[4; 32], &s.subject_ref, &wrapped).is_err());
        assert!(unwrap_key(&[3; 32], "other", &wrapped).is_err());
        assert_ne!(subject_tag(&[9; 32], "ds-1"), subject_tag(&[8; 32], "ds-1"));
    }
}

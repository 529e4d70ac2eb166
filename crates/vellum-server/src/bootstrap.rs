//! First-start set-up of a data directory: the HMAC secret and the bootstrap admin key.
//!
//! Both are written with mode 0600 and never logged; the log says only where they are.

use crate::auth::{generate_key, new_key_id};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::io::Write;
use std::path::{Path, PathBuf};
use vellum_store::{ApiKeyRecord, AuditStore, StoreError};
use zeroize::Zeroizing;

/// File holding the generated HMAC secret.
pub const SECRET_FILE: &str = "secret.key";
/// File holding rotated HMAC keys (`vellum keys rotate-hmac`): one `<keyId> <secret>` per line,
/// the last one signing new events.
pub const HMAC_KEYS_FILE: &str = "hmac-keys";
/// File holding the bootstrap admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// File holding the generated Ed25519 checkpoint signing key.
pub const CHECKPOINT_KEY_FILE: &str = "checkpoint.key";

/// What went wrong while preparing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The OS random generator failed.
    #[error("random generator: {0}")]
    Random(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file has the wrong content.
    #[error("{0}")]
    Invalid(String),
}

/// Writes `contents` to a new file readable only by its owner, fsynced.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Returns the HMAC secret: `configured` if given, else the one in the data dir, generating it
/// on first start (64 hex characters; the characters' bytes are the key, as for
/// `AUDIT_CRYPTO_SECRET`).
pub fn load_or_create_secret(
    data_dir: &Path,
    configured: Option<&Zeroizing<String>>,
) -> Result<Zeroizing<Vec<u8>>, BootstrapError> {
    if let Some(secret) = configured {
        return Ok(Zeroizing::new(secret.as_bytes().to_vec()));
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = Zeroizing::new(bytes);
            let trimmed = text.trim_ascii();
            if trimmed.len() < 16 {
                return Err(BootstrapError::Invalid(format!(
                    "{} holds fewer than 16 bytes",
                    path.display()
                )));
            }
            Ok(Zeroizing::new(trimmed.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = Zeroizing::new([0u8; 32]);
            getrandom::fill(raw.as_mut()).map_err(|e| BootstrapError::Random(e.to_string()))?;
            let secret = Zeroizing::new(hex::encode(raw.as_ref()).into_bytes());
            write_private_file(&path, &secret)?;
            tracing::warn!(
                path = %path.display(),
                "no AUDIT_CRYPTO_SECRET set: generated a new HMAC secret into the data directory; back it up, events cannot be verified without it"
            );
            Ok(secret)
        }
        Err(source) => Err(BootstrapError::Io { path, source }),
    }
}

/// Named HMAC secrets, in the order they were added.
type KeyList = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Parses `id=secret,id=secret` (environment) or `id secret` lines (key file) into pairs.
fn parse_key_list(text: &str, origin: &str) -> Result<KeyList, BootstrapError> {
    let mut keys = Vec::new();
    let separator = if origin == HMAC_KEYS_FILE { '\n' } else { ',' };
    for (index, entry) in text.split(separator).enumerate() {
        let entry = entry.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let split = if origin == HMAC_KEYS_FILE {
            entry.split_once(char::is_whitespace)
        } else {
            entry.split_once('=')
        };
        let Some((id, secret)) = split else {
            return Err(BootstrapError::Invalid(format!(
                "{origin}: entry {} is not `keyId{}secret`",
                index + 1,
                if origin == HMAC_KEYS_FILE { " " } else { "=" }
            )));
        };
        keys.push((
            id.trim().to_owned(),
            Zeroizing::new(secret.trim().as_bytes().to_vec()),
        ));
    }
    Ok(keys)
}

/// Builds the HMAC keyring (SPEC §3): the key `default` (`AUDIT_CRYPTO_SECRET`, or
/// `secret.key` generated on first start) plus every rotated key, from `AUDIT_CRYPTO_KEYS` when
/// set, else from `<data-dir>/hmac-keys`. The last rotated key signs new events; every key
/// verifies. Secrets stay in zeroized buffers and are never logged.
pub fn load_keyring(
    data_dir: &Path,
    configured_secret: Option<&Zeroizing<String>>,
    configured_keys: Option<&Zeroizing<String>>,
) -> Result<vellum_core::integrity::HmacKeyring, BootstrapError> {
    let default = load_or_create_secret(data_dir, configured_secret)?;
    let rotated = match configured_keys {
        Some(text) => parse_key_list(text, "AUDIT_CRYPTO_KEYS")?,
        None => {
            let path = data_dir.join(HMAC_KEYS_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = Zeroizing::new(String::from_utf8(bytes).map_err(|_| {
                        BootstrapError::Invalid(format!("{} is not UTF-8", path.display()))
                    })?);
                    parse_key_list(&text, HMAC_KEYS_FILE)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => return Err(BootstrapError::Io { path, source }),
            }
        }
    };
    let active = rotated
        .last()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| vellum_core::integrity::DEFAULT_KEY_ID.to_owned());
    let mut keys = vec![(vellum_core::integrity::DEFAULT_KEY_ID.to_owned(), default)];
    for (id, secret) in rotated {
        if keys.iter().any(|(known, _)| *known == id) {
            return Err(BootstrapError::Invalid(format!(
                "HMAC key id {id:?} appears twice"
            )));
        }
        keys.push((id, secret));
    }
    vellum_core::integrity::HmacKeyring::new(&active, keys)
        .map_err(|e| BootstrapError::Invalid(e.to_string()))
}

/// Adds a new random HMAC key to `<data-dir>/hmac-keys` and makes it the signing key from the
/// next start on; returns its id. The file is rewritten atomically (temporary file, fsync,
/// rename, directory fsync) with mode 0600: a crash leaves the old or the new file, never a
/// torn one, and never a file without the keys old events name.
pub fn rotate_hmac_key(data_dir: &Path) -> Result<String, BootstrapError> {
    let path = data_dir.join(HMAC_KEYS_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BootstrapError::Io { path, source }
    };
    let existing = match std::fs::read(&path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Zeroizing::new(Vec::new()),
        Err(source) => return Err(BootstrapError::Io { path, source }),
    };
    let existing_text = Zeroizing::new(
        String::from_utf8(existing.to_vec())
            .map_err(|_| BootstrapError::Invalid(format!("{} is not UTF-8", path.display())))?,
    );
    let known = parse_key_list(&existing_text, HMAC_KEYS_FILE)?;
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|e| BootstrapError::Random(e.to_string()))?;
    let date = time::OffsetDateTime::now_utc().date();
    let id = format!(
        "k{:04}{:02}{:02}-{}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        hex::encode(&raw[..3])
    );
    if known.iter().any(|(k, _)| *k == id) {
        return Err(BootstrapError::Invalid(format!(
            "key id {id} exists; retry"
        )));
    }
    let mut contents = Zeroizing::new(existing_text.as_bytes().to_vec());
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    contents.extend_from_slice(id.as_bytes());
    contents.push(b' ');
    contents.extend_from_slice(hex::encode(&raw[3..]).as_bytes());
    contents.push(b'\n');
    let temporary = data_dir.join(format!("{HMAC_KEYS_FILE}.tmp"));
    if temporary.exists() {
        std::fs::remove_file(&temporary).map_err(io(&temporary))?;
    }
    write_private_file(&temporary, &contents)?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(data_dir))?;
    Ok(id)
}

/// Creates the bootstrap admin key when the store has no key at all, writing it once to
/// `<data-dir>/admin.key`. Returns the path when a key was created.
pub fn ensure_admin_key(
    data_dir: &Path,
    store: &dyn AuditStore,
) -> Result<Option<PathBuf>, BootstrapError> {
    if !store.list_api_keys()?.is_empty() {
        return Ok(None);
    }
    let key = generate_key().map_err(|e| BootstrapError::Random(e.to_string()))?;
    let path = data_dir.join(ADMIN_KEY_FILE);
    if path.exists() {
        // A stale file from a store that was deleted: replace it, it no longer works.
        std::fs::remove_file(&path).map_err(|source| BootstrapError::Io {
            path: path.clone(),
            source,
        })?;
    }
    let mut contents = Zeroizing::new(key.secret.as_bytes().to_vec());
    contents.push(b'\n');
    write_private_file(&path, &contents)?;
    let record = ApiKeyRecord {
        id: new_key_id(),
        key_hash: key.hash,
        role: "admin".into(),
        organization_id: None,
        name: Some("bootstrap admin".into()),
        created_at: vellum_core::pipeline::server_now().1,
        revoked_at: None,
    };
    // No audit event for this one: a new log begins with the application's first event
    // (seq 0, prevHash of zeros), and this key's creation is the installation itself. The key
    // record keeps its creation time and the server log says where the key was written.
    store.insert_api_key(&record, &[])?;
    tracing::warn!(path = %path.display(), "created the bootstrap admin API key; it is stored only as a hash, the file is its only copy");
    Ok(Some(path))
}

/// Reads a checkpoint key file (base64 of a 32-byte Ed25519 seed).
pub fn read_checkpoint_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, BootstrapError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    })?);
    let raw = Zeroizing::new(
        B64.decode(bytes.trim_ascii())
            .map_err(|_| BootstrapError::Invalid(format!("{} is not base64", path.display())))?,
    );
    let seed: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        BootstrapError::Invalid(format!(
            "{} must hold a base64 32-byte Ed25519 seed",
            path.display()
        ))
    })?;
    Ok(Zeroizing::new(seed))
}

/// Loads the checkpoint signing key from `configured` or `<data-dir>/checkpoint.key`, creating
/// the latter on first start (base64 of a random 32-byte Ed25519 seed, mode 0600), and records
/// its public key in the store so `GET /v1/keys` keeps publishing it after a rotation.
pub fn load_or_create_checkpoint_signer(
    data_dir: &Path,
    configured: Option<&Path>,
    name: &str,
    store: &dyn AuditStore,
) -> Result<vellum_core::checkpoint::CheckpointSigner, BootstrapError> {
    let path = configured.map_or_else(|| data_dir.join(CHECKPOINT_KEY_FILE), Path::to_path_buf);
    let seed = match read_checkpoint_seed(&path) {
        Ok(seed) => seed,
        Err(BootstrapError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && configured.is_none() =>
        {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut()).map_err(|e| BootstrapError::Random(e.to_string()))?;
            let mut text = Zeroizing::new(B64.encode(seed.as_ref()).into_bytes());
            text.push(b'\n');
            write_private_file(&path, &text)?;
            tracing::warn!(path = %path.display(), "created the Ed25519 checkpoint signing key; back it up");
            seed
        }
        Err(e) => return Err(e),
    };
    let signer = vellum_core::checkpoint::CheckpointSigner::from_seed(name, &seed)
        .map_err(|e| BootstrapError::Invalid(e.to_string()))?;
    let public = signer.public();
    store.insert_checkpoint_key(&vellum_store::CheckpointKeyRecord {
        key_id: public.key_id_hex(),
        name: public.name.clone(),
        public_key: public.public_key,
        created_at: vellum_core::pipeline::server_now().1,
    })?;
    tracing::info!(key_id = %public.key_id_hex(), "checkpoint signing key loaded");
    Ok(signer)
}

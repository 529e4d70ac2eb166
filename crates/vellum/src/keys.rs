//! `vellum keys create|list|revoke`: API key administration on the data directory, with the
//! server stopped or running (SQLite lets both write; the server's writer is never bypassed:
//! the audit event of each change is queued in the outbox in the same transaction as the
//! change, and appended by the running server within a second or, with none running, by
//! this command before it exits).

use anyhow::{Context, bail};
use std::process::ExitCode;
use std::sync::Arc;
use vellum_server::ServerConfig;
use vellum_server::keys::{Actor, KeyInfo, key_change_event, new_key};
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};

/// `vellum keys …`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Create an API key; prints the key once (it is stored only as a hash).
    Create {
        /// ingest, reader, auditor or admin.
        #[arg(long)]
        role: String,
        /// Bind the key to one organization.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON (`{id, key, role, …}`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List API keys (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by id.
    Revoke {
        /// The key's id (`key_…`, from `vellum keys list`).
        id: String,
    },
    /// Add a new HMAC signing key to `<data-dir>/hmac-keys`; new events are signed with it
    /// from the server's next start, and every older key keeps verifying the events it signed.
    RotateHmac,
}

/// The store keys live in: the data directory's SQLite log, or PostgreSQL (`AUDIT_DB_URL`).
struct KeyStore {
    store: Arc<dyn AuditStore>,
    sqlite: Option<Arc<SqliteStore>>,
}

impl std::ops::Deref for KeyStore {
    type Target = dyn AuditStore;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl KeyStore {
    fn shutdown(&self) {
        if let Some(sqlite) = &self.sqlite {
            sqlite.shutdown();
        }
    }
}

fn open(config: &ServerConfig) -> anyhow::Result<KeyStore> {
    if let Some(url) = &config.db_url {
        let store = vellum_store::postgres::PgStore::connect(
            url.as_str(),
            vellum_store::postgres::PgOptions {
                schema: Some(config.db_schema.clone()),
                ..vellum_store::postgres::PgOptions::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("AUDIT_DB_URL: {e}"))?;
        return Ok(KeyStore {
            store: Arc::new(store),
            sqlite: None,
        });
    }
    if !config.data_dir.join("vellum.db").exists() {
        bail!(
            "no store in {} (start `vellum serve` once, or pass --data-dir)",
            config.data_dir.display()
        );
    }
    let sqlite = SqliteStore::open(
        &config.data_dir,
        SqliteOptions {
            run_indexer: false,
            ..SqliteOptions::default()
        },
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    Ok(KeyStore {
        store: sqlite.clone(),
        sqlite: Some(sqlite),
    })
}

/// Appends the queued audit events now if no server runs on the data dir.
fn settle(config: &ServerConfig) -> anyhow::Result<()> {
    if config.db_url.is_some() {
        // PostgreSQL: the change and its audit event committed together; the serving nodes
        // move the event into the log (every second), like any outbox entry.
        eprintln!("(the Vellum servers on this database record the change in the log)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(vellum_server::drain_outbox_offline(config))? {
        Some(_) => {}
        None => {
            eprintln!("(a server is running on this data dir; it records the change in the log)")
        }
    }
    Ok(())
}

/// Runs `vellum keys …`.
pub(crate) fn run(config: &ServerConfig, args: &KeysArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        KeysCommand::Create {
            role,
            org,
            name,
            json,
        } => {
            let (record, secret) = new_key(role, org.clone(), name.clone())
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let store = open(config)?;
            let event =
                key_change_event("apikey.create", &Actor::cli("vellum keys create"), &record);
            store
                .insert_api_key(&record, &[event.to_string()])
                .context("storing the key")?;
            store.shutdown();
            drop(store);
            settle(config)?;
            if *json {
                let mut value = serde_json::to_value(KeyInfo::from(&record))?;
                value["key"] = serde_json::Value::String(secret.to_string());
                println!("{value}");
            } else {
                println!("{}", secret.as_str());
                eprintln!(
                    "created {} (role {}{}); the key above is shown once and stored only as a hash",
                    record.id,
                    record.role,
                    record
                        .organization_id
                        .as_deref()
                        .map(|o| format!(", organization {o}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { json } => {
            let store = open(config)?;
            let keys = store.list_api_keys().context("listing keys")?;
            store.shutdown();
            let infos: Vec<KeyInfo> = keys.iter().map(KeyInfo::from).collect();
            if *json {
                println!("{}", serde_json::json!({ "keys": infos }));
            } else {
                println!(
                    "{:<18} {:<8} {:<16} {:<28} {:<28} NAME",
                    "ID", "ROLE", "ORGANIZATION", "CREATED", "REVOKED"
                );
                for k in &infos {
                    println!(
                        "{:<18} {:<8} {:<16} {:<28} {:<28} {}",
                        k.id,
                        k.role,
                        k.organization_id.as_deref().unwrap_or("-"),
                        k.created_at,
                        k.revoked_at.as_deref().unwrap_or("-"),
                        k.name.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::RotateHmac => {
            if config.db_url.is_some() {
                bail!(
                    "with AUDIT_DB_URL every node takes its HMAC keys from AUDIT_CRYPTO_KEYS (or AUDIT_CRYPTO_SECRET): rotate by appending `newId=newSecret` to AUDIT_CRYPTO_KEYS on every API node and worker, keeping every older key"
                );
            }
            if config.crypto_keys.is_some() {
                bail!(
                    "HMAC keys come from AUDIT_CRYPTO_KEYS here; rotate by appending `newId=newSecret` to it (the last key signs), keeping every older key"
                );
            }
            let store = open(config)?;
            let before = vellum_server::bootstrap::load_keyring(
                &config.data_dir,
                config.crypto_secret.as_ref(),
                None,
            )
            .context("reading the current HMAC keys")?;
            let previous = before.active_key_id().to_owned();
            drop(before);
            let id = vellum_server::bootstrap::rotate_hmac_key(&config.data_dir)
                .context("adding the HMAC key")?;
            // The file must still load, with the new key active, before this is called done.
            let after = vellum_server::bootstrap::load_keyring(
                &config.data_dir,
                config.crypto_secret.as_ref(),
                None,
            )
            .context("reading the rotated HMAC keys back")?;
            if after.active_key_id() != id {
                bail!("the new key {id} is not the active one after rotation");
            }
            let actor = Actor::cli("vellum keys rotate-hmac");
            let event = serde_json::json!({
                "action": "hmac.rotate",
                "status": "success",
                "principalId": actor.principal_id,
                "principalType": actor.principal_type,
                "targetResourceType": "HmacKey",
                "targetResourceId": id,
                "dataClassification": "CONFIDENTIAL",
                "severity": "medium",
                "technicalContext": {"endpoint": actor.endpoint},
                "details": {"previousKeyId": previous, "keyIds": after.key_ids().collect::<Vec<_>>()},
            });
            store
                .push_outbox(&[event.to_string()])
                .context("recording the rotation")?;
            store.shutdown();
            drop(store);
            settle(config)?;
            println!("{id}");
            eprintln!(
                "added HMAC key {id} to {} (mode 0600; back it up with the others). A running server keeps signing with {previous} until it restarts; every key keeps verifying.",
                config
                    .data_dir
                    .join(vellum_server::bootstrap::HMAC_KEYS_FILE)
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => {
            let store = open(config)?;
            let keys = store.list_api_keys().context("listing keys")?;
            let Some(mut record) = keys.into_iter().find(|k| &k.id == id) else {
                bail!("no API key {id} (see `vellum keys list`)");
            };
            if record.revoked_at.is_some() {
                bail!("API key {id} is already revoked");
            }
            let at = vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc());
            record.revoked_at = Some(at.clone());
            let event =
                key_change_event("apikey.revoke", &Actor::cli("vellum keys revoke"), &record);
            if !store
                .revoke_api_key(id, &at, &[event.to_string()])
                .context("revoking the key")?
            {
                bail!("API key {id} is already revoked");
            }
            store.shutdown();
            drop(store);
            settle(config)?;
            eprintln!("revoked {id}; a running server refuses it within 5 seconds");
            Ok(ExitCode::SUCCESS)
        }
    }
}

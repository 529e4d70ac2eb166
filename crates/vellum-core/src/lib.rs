//! # vellum-core
//!
//! The pure logic of Vellum, with no I/O: what an audit event is ([`model`]), how it is checked
//! ([`validate`]), cleaned ([`sanitize`]) and stripped of personal data ([`redact`]), how it is
//! turned into the exact bytes that are hashed and stored ([`canonical`]), how those bytes are
//! hashed, signed and chained ([`integrity`]), and the whole path from raw client JSON to a sealed
//! record ([`pipeline`]). The Merkle tree and its proofs live in [`merkle`].
//!
//! Everything here is deterministic given its inputs (clock readings and ids are passed in), so
//! every other program that follows SPEC §3 computes the same hashes.

pub mod breaker;
pub mod bundle;
pub mod canonical;
pub mod checkpoint;
pub mod config;
pub mod detect;
pub mod error;
pub mod export;
pub mod forward;
pub mod integrity;
pub mod merkle;
pub mod model;
pub mod pipeline;
pub mod redact;
pub mod report;
pub mod retention;
pub mod sanitize;
pub mod shred;
pub mod synthetic;
pub mod tiles;
pub mod time_fmt;
pub mod validate;
pub mod verify;

pub use error::FieldError;

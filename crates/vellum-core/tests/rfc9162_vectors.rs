//! RFC 9162 inclusion and consistency vectors from transparency-dev/merkle (SPEC §4: "The vectors
//! in `testdata/rfc9162/` must all pass (every `wantErr` case rejected)").
//!
//! The vectors are vendored in `tests/data/rfc9162/` (with their Apache-2.0 LICENSE and README),
//! a copy of the shared `testdata/rfc9162/`, so the test runs on a clean clone. Every JSON file
//! under `{inclusion,consistency}` goes through the byte-slice verifiers
//! ([`verify_inclusion_bytes`], [`verify_consistency_bytes`]), which take wire bytes exactly as
//! the reference Go verifier does: every happy case must verify and every `wantErr` case must be
//! rejected, with no exception. Where every hash is 32 bytes, the typed verifiers must agree with
//! the byte-slice ones; and for the cases built on the README's reference tree, the proofs
//! Vellum *generates* must equal the vectors' proofs byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vellum_core::merkle::{
    self, Hash, MemoryTree, consistency_proof, hash_from_slice, inclusion_proof, leaf_hash_of_data,
    verify_consistency, verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
};

/// The README's reference leaves (RFC 6962 test data), hex.
const REFERENCE_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// The vendored copy, next to this file.
fn testdata_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc9162");
    assert!(
        dir.join("LICENSE").is_file() && dir.join("README.md").is_file(),
        "the vendored RFC 9162 vectors (with LICENSE and README.md) are missing from {}",
        dir.display()
    );
    dir
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

struct Case {
    /// Path relative to the testdata root, with `/` separators.
    name: String,
    json: Value,
    want_err: bool,
}

fn load(root: &Path, kind: &str) -> Vec<Case> {
    let mut files = Vec::new();
    json_files(&root.join(kind), &mut files);
    assert!(
        !files.is_empty(),
        "no JSON files under {}",
        root.join(kind).display()
    );
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
            let want_err = json["wantErr"]
                .as_bool()
                .unwrap_or_else(|| panic!("{}: missing wantErr", path.display()));
            let name = path
                .strip_prefix(root)
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            Case {
                name,
                json,
                want_err,
            }
        })
        .collect()
}

fn u64_field(case: &Case, key: &str) -> u64 {
    case.json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: missing or non-integer {key}", case.name))
}

fn bytes_field(case: &Case, key: &str) -> Vec<u8> {
    let s = case.json[key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: missing {key}", case.name));
    B64.decode(s)
        .unwrap_or_else(|e| panic!("{}: {key} is not base64: {e}", case.name))
}

/// `proof` may be `null` (Go's nil slice) or a list of base64 strings; items are kept as bytes.
fn proof_field(case: &Case) -> Vec<Vec<u8>> {
    match &case.json["proof"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                let s = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: proof item is not a string", case.name));
                B64.decode(s)
                    .unwrap_or_else(|e| panic!("{}: proof item is not base64: {e}", case.name))
            })
            .collect(),
        other => panic!("{}: unexpected proof {other}", case.name),
    }
}

fn slices(proof: &[Vec<u8>]) -> Vec<&[u8]> {
    proof.iter().map(Vec::as_slice).collect()
}

/// The proof as typed hashes, when every item is 32 bytes.
fn typed(proof: &[Vec<u8>]) -> Option<Vec<Hash>> {
    proof.iter().map(|p| hash_from_slice(p).ok()).collect()
}

fn reference_tree() -> MemoryTree {
    MemoryTree::from_leaves(
        REFERENCE_LEAVES
            .iter()
            .map(|h| leaf_hash_of_data(&hex::decode(h).unwrap())),
    )
}

/// Whether a case belongs to the numbered folders, which are all built on the reference tree.
fn uses_reference_tree(case: &Case) -> bool {
    case.name
        .split('/')
        .nth(1)
        .is_some_and(|dir| dir.chars().all(|c| c.is_ascii_digit()))
}

#[derive(Default, Debug)]
struct Tally {
    happy: usize,
    rejected: usize,
    /// Cases where every hash was 32 bytes, so the typed verifier was run too and agreed.
    typed_agreed: usize,
    generated_matches: usize,
}

fn check_inclusion(case: &Case, tree: &mut MemoryTree, tally: &mut Tally) {
    let index = u64_field(case, "leafIdx");
    let size = u64_field(case, "treeSize");
    let leaf = bytes_field(case, "leafHash");
    let root = bytes_field(case, "root");
    let proof = proof_field(case);
    let result = verify_inclusion_bytes(index, size, &leaf, &slices(&proof), &root);
    match (case.want_err, &result) {
        (false, Ok(())) => tally.happy += 1,
        (false, Err(e)) => panic!("{}: happy case rejected: {e}", case.name),
        (true, Ok(())) => panic!("{}: wantErr case accepted", case.name),
        (true, Err(_)) => tally.rejected += 1,
    }
    if let (Ok(l), Ok(r), Some(p)) = (
        hash_from_slice(&leaf),
        hash_from_slice(&root),
        typed(&proof),
    ) {
        assert_eq!(
            verify_inclusion(index, size, &l, &p, &r).is_ok(),
            result.is_ok(),
            "{}: typed and byte-slice verifiers disagree",
            case.name
        );
        tally.typed_agreed += 1;
        if !case.want_err && uses_reference_tree(case) {
            assert_eq!(tree.leaves()[index as usize], l, "{}: leaf", case.name);
            assert_eq!(merkle::root(tree, size).unwrap(), r, "{}: root", case.name);
            let generated = inclusion_proof(tree, index, size).unwrap();
            assert_eq!(generated, p, "{}: generated proof differs", case.name);
            tally.generated_matches += 1;
        }
    }
}

fn check_consistency(case: &Case, tree: &mut MemoryTree, tally: &mut Tally) {
    let size1 = u64_field(case, "size1");
    let size2 = u64_field(case, "size2");
    let root1 = bytes_field(case, "root1");
    let root2 = bytes_field(case, "root2");
    let proof = proof_field(case);
    let result = verify_consistency_bytes(size1, size2, &root1, &root2, &slices(&proof));
    match (case.want_err, &result) {
        (false, Ok(())) => tally.happy += 1,
        (false, Err(e)) => panic!("{}: happy case rejected: {e}", case.name),
        (true, Ok(())) => panic!("{}: wantErr case accepted", case.name),
        (true, Err(_)) => tally.rejected += 1,
    }
    if let (Ok(r1), Ok(r2), Some(p)) = (
        hash_from_slice(&root1),
        hash_from_slice(&root2),
        typed(&proof),
    ) {
        assert_eq!(
            verify_consistency(size1, size2, &r1, &r2, &p).is_ok(),
            result.is_ok(),
            "{}: typed and byte-slice verifiers disagree",
            case.name
        );
        tally.typed_agreed += 1;
        if !case.want_err && uses_reference_tree(case) {
            assert_eq!(
                merkle::root(tree, size1).unwrap(),
                r1,
                "{}: root1",
                case.name
            );
            assert_eq!(
                merkle::root(tree, size2).unwrap(),
                r2,
                "{}: root2",
                case.name
            );
            let generated = consistency_proof(tree, size1, size2).unwrap();
            assert_eq!(generated, p, "{}: generated proof differs", case.name);
            tally.generated_matches += 1;
        }
    }
}

#[test]
fn inclusion_vectors() {
    let root = testdata_dir();
    let cases = load(&root, "inclusion");
    let mut tree = reference_tree();
    let mut tally = Tally::default();
    for case in &cases {
        check_inclusion(case, &mut tree, &mut tally);
    }
    eprintln!("inclusion: {} files, {tally:?}", cases.len());
    assert_eq!(tally.happy + tally.rejected, cases.len());
    assert!(tally.happy >= 6, "{tally:?}");
    // Every numbered folder has a happy path built on the reference tree.
    assert!(tally.generated_matches >= 5, "{tally:?}");
}

#[test]
fn consistency_vectors() {
    let root = testdata_dir();
    let cases = load(&root, "consistency");
    let mut tree = reference_tree();
    let mut tally = Tally::default();
    for case in &cases {
        check_consistency(case, &mut tree, &mut tally);
    }
    eprintln!("consistency: {} files, {tally:?}", cases.len());
    assert_eq!(tally.happy + tally.rejected, cases.len());
    assert!(tally.happy >= 6, "{tally:?}");
    assert!(tally.generated_matches >= 5, "{tally:?}");
    // The one happy case with opaque (12-byte) roots is no longer an exception: it is among
    // the happy cases above, verified by the byte-slice verifier.
    let opaque = cases
        .iter()
        .find(|c| c.name == "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json")
        .expect("the opaque-root vector is present");
    assert!(!opaque.want_err);
    assert_ne!(bytes_field(opaque, "root1").len(), 32);
}

/// The vendored copy is the shared one, byte for byte, whenever the shared folder is present
/// (it is absent on a clean clone, and then there is nothing to compare).
#[test]
fn vendored_copy_matches_shared_testdata() {
    let vendored = testdata_dir();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/rfc9162");
    if !shared.is_dir() {
        eprintln!("{} absent: nothing to compare", shared.display());
        return;
    }
    let files = |root: &Path| {
        let mut out = Vec::new();
        all_files(root, &mut out);
        out.into_iter()
            .map(|p| {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                (rel, std::fs::read(&p).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let a = files(&vendored);
    let b = files(&shared);
    assert_eq!(
        a.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        b.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "file lists differ"
    );
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{} differs from the shared copy", path.display());
    }
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Beyond the vectors' own proofs: every proof the reference tree can produce verifies against
/// the reference roots, and the reference roots are the well-known RFC 6962 values.
#[test]
fn reference_tree_all_proofs() {
    let mut tree = reference_tree();
    assert_eq!(
        hex::encode(tree.root()),
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    );
    for size in 1..=8u64 {
        let root = merkle::root(&mut tree, size).unwrap();
        for index in 0..size {
            let proof = inclusion_proof(&mut tree, index, size).unwrap();
            let leaf = tree.leaves()[index as usize];
            verify_inclusion(index, size, &leaf, &proof, &root).unwrap();
        }
        for size1 in 1..=size {
            let root1 = merkle::root(&mut tree, size1).unwrap();
            let proof = consistency_proof(&mut tree, size1, size).unwrap();
            verify_consistency(size1, size, &root1, &root, &proof).unwrap();
        }
    }
}

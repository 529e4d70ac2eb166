//! Property tests of the Merkle proofs as the store serves them (issue 3, "Tests"): trees are
//! built the way the ingest writer builds them — [`TileWriter`] in random batch sizes, every
//! changed tile stored after each batch — and read back through [`TileSource`] over a
//! `HashMap`, the in-memory stand-in for the `merkle_tiles` table.
//!
//! For random sizes (1..5000, and a few large trees spanning several tile levels):
//! * every inclusion and consistency proof generated from the tiles equals the RFC 9162
//!   reference definition (`PATH`, `PROOF`) and verifies against the reference root
//!   ([`merkle::mth`]) of the random leaves;
//! * flipping any one bit of any proof hash, of the leaf, or of a root makes verification fail,
//!   and so does changing the index or a tree size, dropping or adding a hash.
//!
//! On changed sizes: RFC 9162 proofs do not bind the tree size by themselves (the inclusion proof
//! of leaf 0 in a tree of 3 also "verifies" as a proof in a tree of 4 *against the root of 3*);
//! the size is bound by the signed checkpoint that carries both. So a changed size is checked
//! the way a verifier meets it: against the root of the tree of that size, which the proof must
//! not reach.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use proptest::prelude::*;
use std::collections::HashMap;
use vellum_core::integrity::sha256;
use vellum_core::merkle::{
    self, Hash, consistency_proof, inclusion_proof, leaf_hash, mth, path, subproof,
    verify_consistency, verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
};
use vellum_core::tiles::{TileKey, TileSource, TileWriter};

/// `n` random-looking leaf hashes (`leaf_hash` of an event hash), different for every `seed`.
fn leaves(seed: u64, n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| {
            let mut data = seed.to_le_bytes().to_vec();
            data.extend_from_slice(&i.to_le_bytes());
            leaf_hash(&sha256(&data))
        })
        .collect()
}

/// The stored tiles of a tree of `leaves`, appended in batches of the given sizes (cycled), each
/// batch followed by storing `take_changed()`, exactly as the writer commits.
fn build_tiles(leaves: &[Hash], batches: &[usize]) -> (HashMap<TileKey, Vec<Hash>>, TileWriter) {
    let mut store = HashMap::new();
    let mut writer = TileWriter::new();
    let mut next = 0;
    for &batch in batches.iter().cycle() {
        if next >= leaves.len() {
            break;
        }
        let end = (next + batch.max(1)).min(leaves.len());
        for leaf in &leaves[next..end] {
            writer.push(*leaf);
        }
        next = end;
        for tile in writer.take_changed() {
            store.insert(tile.key, tile.hashes);
        }
    }
    (store, writer)
}

fn source(
    store: &HashMap<TileKey, Vec<Hash>>,
) -> TileSource<impl FnMut(TileKey) -> Result<Option<Vec<Hash>>, ()> + '_> {
    TileSource::new(move |k| Ok(store.get(&k).cloned()))
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out[(bit / 8) % 32] ^= 1 << (bit % 8);
    out
}

fn slices(proof: &[Hash]) -> Vec<&[u8]> {
    proof.iter().map(|h| &h[..]).collect()
}

/// Inclusion of leaf `m` in the tree of size `n` (a prefix of `all`), from the tiles.
fn check_inclusion(
    tiles: &HashMap<TileKey, Vec<Hash>>,
    all: &[Hash],
    m: u64,
    n: u64,
    bit: usize,
    other: u64,
    reference: bool,
) -> Result<(), TestCaseError> {
    let prefix = &all[..n as usize];
    let root = mth(prefix);
    let leaf = all[m as usize];
    let proof = inclusion_proof(&mut source(tiles), m, n).unwrap();
    if reference {
        prop_assert_eq!(&proof, &path(prefix, m).unwrap(), "PATH({}, {})", m, n);
    }
    prop_assert_eq!(verify_inclusion(m, n, &leaf, &proof, &root), Ok(()));
    prop_assert_eq!(
        verify_inclusion_bytes(m, n, &leaf, &slices(&proof), &root),
        Ok(())
    );

    // One bit anywhere.
    prop_assert!(verify_inclusion(m, n, &flip(&leaf, bit), &proof, &root).is_err());
    prop_assert!(verify_inclusion(m, n, &leaf, &proof, &flip(&root, bit)).is_err());
    for i in 0..proof.len() {
        let mut bad = proof.clone();
        bad[i] = flip(&bad[i], bit + 37 * i);
        prop_assert!(
            verify_inclusion(m, n, &leaf, &bad, &root).is_err(),
            "bit {} of hash {} flipped",
            bit + 37 * i,
            i
        );
        prop_assert!(verify_inclusion_bytes(m, n, &leaf, &slices(&bad), &root).is_err());
    }
    // A hash dropped or added; a truncated root or leaf.
    if !proof.is_empty() {
        prop_assert!(verify_inclusion(m, n, &leaf, &proof[1..], &root).is_err());
        prop_assert!(verify_inclusion(m, n, &leaf, &proof[..proof.len() - 1], &root).is_err());
    }
    let mut longer = proof.clone();
    longer.push(root);
    prop_assert!(verify_inclusion(m, n, &leaf, &longer, &root).is_err());
    prop_assert!(verify_inclusion_bytes(m, n, &leaf, &slices(&proof), &root[..31]).is_err());
    prop_assert!(verify_inclusion_bytes(m, n, &leaf[..31], &slices(&proof), &root).is_err());

    // Another index, same leaf, proof and root.
    for m2 in [m.wrapping_sub(1), m + 1, other % n, m ^ 1, m ^ (other % 64)] {
        if m2 != m && m2 < n {
            prop_assert!(
                verify_inclusion(m2, n, &leaf, &proof, &root).is_err(),
                "proof of {} in {} accepted for index {}",
                m,
                n,
                m2
            );
        }
    }
    // Another size, against that tree's own root.
    for n2 in [n - 1, n + 1, 2 * n, m + 1 + other % n] {
        if n2 != n && n2 > m && n2 as usize <= all.len() {
            let root2 = mth(&all[..n2 as usize]);
            prop_assert!(
                verify_inclusion(m, n2, &leaf, &proof, &root2).is_err(),
                "proof of {} in {} accepted for size {}",
                m,
                n,
                n2
            );
        }
    }
    // Out of range.
    prop_assert!(verify_inclusion(n, n, &leaf, &proof, &root).is_err());
    Ok(())
}

/// Consistency between the trees of sizes `m <= n` (prefixes of `all`), from the tiles.
#[allow(clippy::too_many_arguments)]
fn check_consistency(
    tiles: &HashMap<TileKey, Vec<Hash>>,
    all: &[Hash],
    m: u64,
    n: u64,
    bit: usize,
    other: u64,
    reference: bool,
) -> Result<(), TestCaseError> {
    let root1 = mth(&all[..m as usize]);
    let root2 = mth(&all[..n as usize]);
    // Tiles only grow: the root of any older size is still computable from them.
    prop_assert_eq!(merkle::root(&mut source(tiles), m).unwrap(), root1);
    let proof = consistency_proof(&mut source(tiles), m, n).unwrap();
    if reference {
        prop_assert_eq!(
            &proof,
            &subproof(&all[..n as usize], m).unwrap(),
            "PROOF({}, {})",
            m,
            n
        );
    }
    prop_assert_eq!(verify_consistency(m, n, &root1, &root2, &proof), Ok(()));
    prop_assert_eq!(
        verify_consistency_bytes(m, n, &root1, &root2, &slices(&proof)),
        Ok(())
    );

    prop_assert!(verify_consistency(m, n, &root1, &flip(&root2, bit), &proof).is_err());
    if m == n {
        // Nothing links the two roots but equality; an empty proof is the only proof.
        prop_assert!(proof.is_empty());
        prop_assert!(verify_consistency(m, n, &flip(&root1, bit), &root2, &proof).is_err());
        return Ok(());
    }
    prop_assert!(verify_consistency(m, n, &flip(&root1, bit), &root2, &proof).is_err());
    prop_assert!(verify_consistency(m, n, &root2, &root1, &proof).is_err());
    for i in 0..proof.len() {
        let mut bad = proof.clone();
        bad[i] = flip(&bad[i], bit + 37 * i);
        prop_assert!(
            verify_consistency(m, n, &root1, &root2, &bad).is_err(),
            "bit {} of hash {} flipped",
            bit + 37 * i,
            i
        );
        prop_assert!(verify_consistency_bytes(m, n, &root1, &root2, &slices(&bad)).is_err());
    }
    prop_assert!(verify_consistency(m, n, &root1, &root2, &proof[1..]).is_err());
    prop_assert!(verify_consistency(m, n, &root1, &root2, &proof[..proof.len() - 1]).is_err());
    let mut longer = proof.clone();
    longer.push(root1);
    prop_assert!(verify_consistency(m, n, &root1, &root2, &longer).is_err());
    prop_assert!(verify_consistency_bytes(m, n, &root1[..31], &root2, &slices(&proof)).is_err());

    // Other sizes, each against the true roots of the trees of those sizes.
    let size_ok = |s: u64| s >= 1 && s as usize <= all.len();
    for m2 in [m - 1, m + 1, 1 + other % n] {
        if m2 != m && size_ok(m2) && m2 <= n {
            let r = mth(&all[..m2 as usize]);
            prop_assert!(
                verify_consistency(m2, n, &r, &root2, &proof).is_err(),
                "proof {} -> {} accepted as {} -> {}",
                m,
                n,
                m2,
                n
            );
        }
    }
    for n2 in [n - 1, n + 1, n + 1 + other % n] {
        if n2 != n && size_ok(n2) && n2 >= m {
            let r = mth(&all[..n2 as usize]);
            prop_assert!(
                verify_consistency(m, n2, &root1, &r, &proof).is_err(),
                "proof {} -> {} accepted as {} -> {}",
                m,
                n,
                m,
                n2
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random trees of 1..5000 leaves, built in random batches, proofs read from the tiles.
    #[test]
    fn tiled_proofs_verify_and_every_change_fails(
        seed in any::<u64>(),
        n in 1u64..5000,
        batches in prop::collection::vec(1usize..700, 1..8),
        idx in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        bit in 0usize..256,
        other in any::<u64>(),
    ) {
        // A few spare leaves beyond n, so "another size" can be larger than n.
        let all = leaves(seed, n as usize + 3);
        let (tiles, writer) = build_tiles(&all[..n as usize], &batches);
        prop_assert_eq!(writer.size(), n);
        prop_assert_eq!(writer.root(), mth(&all[..n as usize]));
        prop_assert_eq!(merkle::root(&mut source(&tiles), n).unwrap(), writer.root());

        let m = idx.index(n as usize) as u64;
        check_inclusion(&tiles, &all, m, n, bit, other, true)?;
        // The first and last leaves: the tree's left and right borders.
        check_inclusion(&tiles, &all, 0, n, bit, other, false)?;
        check_inclusion(&tiles, &all, n - 1, n, bit, other, false)?;

        let m1 = cut.index(n as usize) as u64 + 1;
        check_consistency(&tiles, &all, m1, n, bit, other, true)?;
        check_consistency(&tiles, &all, n, n, bit, other, false)?;
        if n > 1 {
            check_consistency(&tiles, &all, 1, n, bit, other, false)?;
        }
    }
}

proptest! {
    // Each case hashes a few hundred thousand leaves: few cases.
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Large trees spanning two and three tile levels (256 and 65,536 leaves per tile root).
    #[test]
    fn large_tiled_trees(
        seed in any::<u64>(),
        n in prop_oneof![Just(65_536u64), Just(65_537u64), 60_000u64..140_000],
        batches in prop::collection::vec(1usize..5000, 1..6),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 4),
        bit in 0usize..256,
        other in any::<u64>(),
    ) {
        let all = leaves(seed, n as usize + 3);
        let (tiles, writer) = build_tiles(&all[..n as usize], &batches);
        prop_assert_eq!(writer.root(), mth(&all[..n as usize]));
        for (idx, cut) in &picks {
            let m = idx.index(n as usize) as u64;
            let mut src = source(&tiles);
            inclusion_proof(&mut src, m, n).unwrap();
            // O(log n) storage reads: one tile per 8 tree levels, plus the right edge.
            prop_assert!(src.tiles_read() <= 6, "{} tiles read", src.tiles_read());
            check_inclusion(&tiles, &all, m, n, bit, other, false)?;
            let m1 = cut.index(n as usize) as u64 + 1;
            check_consistency(&tiles, &all, m1, n, bit, other, false)?;
        }
        check_inclusion(&tiles, &all, n - 1, n, bit, other, false)?;
        check_consistency(&tiles, &all, 65_536.min(n), n, bit, other, false)?;
    }
}

/// A tree read through tiles whose writer was resumed (as after a restart) gives the same proofs.
#[test]
fn proofs_survive_a_resumed_writer() {
    let all = leaves(7, 70_500);
    let (mut tiles, writer) = build_tiles(&all[..66_000], &[1000]);
    let mut resumed = TileWriter::resume(writer.size(), |k| Ok::<_, ()>(tiles.get(&k).cloned()))
        .unwrap()
        .unwrap();
    for leaf in &all[66_000..] {
        resumed.push(*leaf);
    }
    for tile in resumed.take_changed() {
        tiles.insert(tile.key, tile.hashes);
    }
    let n = all.len() as u64;
    assert_eq!(resumed.root(), mth(&all));
    for m in [0, 255, 256, 65_535, 65_536, 65_999, 66_000, n - 1] {
        check_inclusion(&tiles, &all, m, n, 5, 11, false).unwrap();
    }
    check_consistency(&tiles, &all, 66_000, n, 5, 11, false).unwrap();
}

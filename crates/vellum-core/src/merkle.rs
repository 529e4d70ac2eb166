//! The verifiable log's Merkle tree (SPEC §4), exactly as RFC 9162 §2.1 defines it.
//!
//! * Hashing: a leaf is `SHA-256(0x00 || data)` and an interior node `SHA-256(0x01 || left ||
//!   right)`. In Vellum the leaf data is the raw 32-byte event hash ([`leaf_hash`]); the RFC test
//!   vectors hash arbitrary bytes ([`leaf_hash_of_data`]). The two prefixes keep a leaf from ever
//!   being passed off as an interior node (second-preimage resistance).
//! * Reference definitions: [`mth`], [`path`] and [`subproof`] are the RFC's recursive
//!   definitions over an in-memory slice of leaf hashes. They are simple enough to be obviously
//!   right, so the tests use them as the oracle for everything else.
//! * Production generation: the store never holds every leaf in memory. [`root`],
//!   [`inclusion_proof`] and [`consistency_proof`] ask a [`NodeSource`] only for hashes of
//!   *perfect* subtrees (`2^level` leaves, aligned), which never change once complete, so the
//!   store can persist each one once and answer any proof with O(log n) reads.
//! * Verification: [`verify_inclusion`] (§2.1.3.2) and [`verify_consistency`] (§2.1.4.2) follow
//!   the RFC's step-by-step algorithms, after checking the exact proof length up front so every
//!   malformed proof is rejected with a precise [`ProofError`].
//! * Ingest: [`CompactRange`] is the tree's right edge (one perfect subtree per set bit of the
//!   size). It appends a leaf in O(1) amortized hashes, reports the perfect subtrees each append
//!   completes so the store can write them in the same batch, computes the root in O(log n), and
//!   serializes to a few bytes so it can be restored after a restart.
//!
//! Nothing here performs I/O or panics on any input: bad sizes and indices come back as errors.

use sha2::{Digest, Sha256};

/// A SHA-256 output: every leaf, node and root hash in the tree.
pub type Hash = [u8; 32];

/// Length in bytes of a [`Hash`](type@Hash); anything else on the wire is not a tree hash.
pub const HASH_LEN: usize = 32;

/// Domain-separation prefix of leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of one Vellum event: `SHA-256(0x00 || event_hash)`.
///
/// SPEC §4 makes the leaf data the raw 32-byte event hash (not its hex form), so a verifier only
/// needs the event hash, never the event body, to check a proof.
pub fn leaf_hash(event_hash: &[u8; 32]) -> Hash {
    leaf_hash_of_data(event_hash)
}

/// The RFC 9162 leaf hash of arbitrary leaf data: `SHA-256(0x00 || data)`.
///
/// Vellum itself always hashes 32-byte event hashes ([`leaf_hash`]); this general form exists for
/// the RFC 6962/9162 test vectors, whose leaves are arbitrary byte strings.
pub fn leaf_hash_of_data(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")` (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Converts wire bytes (e.g. decoded base64) into a [`Hash`](type@Hash), rejecting any other length.
///
/// Proof hashes and roots arrive from clients and bundles; a value that is not exactly 32 bytes
/// cannot be a SHA-256 tree hash, so it is refused here rather than inside the verifiers.
pub fn hash_from_slice(bytes: &[u8]) -> Result<Hash, ProofError> {
    Hash::try_from(bytes).map_err(|_| ProofError::BadHashLength { len: bytes.len() })
}

/// Why a proof was rejected, or why a proof cannot be produced for the requested sizes.
///
/// Verification failures are deliberately specific so a caller (or an auditor reading a report)
/// can tell a malformed request from a tampered log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree (`leaf_index >= tree_size`).
    #[error("leaf index {leaf_index} is out of range for a tree of size {tree_size}")]
    IndexOutOfRange {
        /// The index that was asked about.
        leaf_index: u64,
        /// The size of the tree.
        tree_size: u64,
    },
    /// The proof does not have the exact number of hashes the sizes call for.
    #[error("proof has {got} hashes, expected {expected}")]
    WrongProofLength {
        /// The number of hashes RFC 9162 prescribes for these sizes.
        expected: usize,
        /// The number of hashes supplied.
        got: usize,
    },
    /// The root recomputed from the proof differs from the claimed root (for a consistency
    /// proof: the root of the second, larger tree).
    #[error("the root computed from the proof does not match the expected root")]
    RootMismatch,
    /// Consistency proof: the root recomputed for the first, smaller tree differs from `root1`.
    #[error("the first tree's root computed from the proof does not match root1")]
    OldRootMismatch,
    /// Consistency proof: the first tree is larger than the second.
    #[error("the first tree (size {size1}) is larger than the second (size {size2})")]
    SizeOrder {
        /// Size of the first tree.
        size1: u64,
        /// Size of the second tree.
        size2: u64,
    },
    /// Consistency proof from the empty tree to a non-empty one. RFC 9162 requires
    /// `0 < size1`: every tree trivially extends the empty tree, so there is nothing to prove and
    /// such a "proof" is refused rather than silently accepted.
    #[error("a consistency proof from the empty tree (size 0) to size {size2} is meaningless")]
    EmptyFirstTree {
        /// Size of the second tree.
        size2: u64,
    },
    /// A wire value that should be a 32-byte hash has another length.
    #[error("a hash must be 32 bytes, got {len}")]
    BadHashLength {
        /// The length that was supplied.
        len: usize,
    },
}

/// Number of hashes in the RFC 9162 inclusion proof of `leaf_index` in a tree of `tree_size`.
///
/// Useful to reject oversized requests before doing any work; the verifiers check it first.
pub fn inclusion_proof_len(leaf_index: u64, tree_size: u64) -> Result<usize, ProofError> {
    if leaf_index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            leaf_index,
            tree_size,
        });
    }
    let (inner, border) = decomp_inclusion(leaf_index, tree_size);
    Ok((inner + border) as usize)
}

/// Number of hashes in the RFC 9162 consistency proof between trees of `size1` and `size2`.
///
/// Zero when the sizes are equal; an error when `size1 > size2` or `size1 == 0 < size2`.
pub fn consistency_proof_len(size1: u64, size2: u64) -> Result<usize, ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizeOrder { size1, size2 });
    }
    if size1 == size2 {
        return Ok(0);
    }
    if size1 == 0 {
        return Err(ProofError::EmptyFirstTree { size2 });
    }
    // The proof is a suffix of the inclusion proof of leaf size1-1 in tree size2, minus the
    // levels below the perfect subtree that ends at size1, plus that subtree's hash unless it is
    // the whole first tree (then the verifier already knows it: it is root1).
    let (inner, border) = decomp_inclusion(size1 - 1, size2);
    let shift = size1.trailing_zeros();
    let seed = u32::from(!size1.is_power_of_two());
    Ok((seed + inner.saturating_sub(shift) + border) as usize)
}

/// Splits the inclusion proof of `index` in a tree of `size` (`index < size`) into the number of
/// hashes below the point where the paths to `index` and `size - 1` diverge (`inner`) and the
/// number of left siblings above it on the tree's right border (`border`).
fn decomp_inclusion(index: u64, size: u64) -> (u32, u32) {
    let inner = u64::BITS - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// Recomputes the root of a tree of `tree_size` from an inclusion proof of `leaf_hash` at
/// `leaf_index` (RFC 9162 §2.1.3.2, steps 1-4).
///
/// Returned separately from [`verify_inclusion`] so callers can compare against a root they
/// obtain later (e.g. from a signed checkpoint) or report the computed value.
pub fn root_from_inclusion_proof(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let expected = inclusion_proof_len(leaf_index, tree_size)?;
    let wrong_len = ProofError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_len);
    }
    // Step 2-3 (`fn` is a keyword, hence `fnode`).
    let mut fnode = leaf_index;
    let mut snode = tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(wrong_len);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5, first half: the proof must have reached the root.
    if snode != 0 {
        return Err(wrong_len);
    }
    Ok(r)
}

/// Verifies that `leaf_hash` is the leaf at `leaf_index` of the tree of `tree_size` whose root is
/// `root`, given its inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_index, tree_size, leaf_hash, proof)?;
    if &computed != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof against `root1` and returns the root of the tree of `size2` that it
/// implies (RFC 9162 §2.1.4.2, steps 1-6, plus the `fr == root1` half of step 7).
///
/// Edge cases outside the RFC's `0 < size1 < size2`: equal sizes need an empty proof and return
/// `root1` unchanged (for size 0 it must be the empty root, the only root a tree of size 0 has);
/// `size1 == 0 < size2` is refused with [`ProofError::EmptyFirstTree`].
pub fn root_from_consistency_proof(
    size1: u64,
    size2: u64,
    root1: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let expected = consistency_proof_len(size1, size2)?;
    let wrong_len = ProofError::WrongProofLength {
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_len);
    }
    if size1 == size2 {
        if size1 == 0 && *root1 != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        return Ok(*root1);
    }
    // Step 1 (an empty proof fails) is covered by the length check: `expected >= 1` here.
    // Step 2: if size1 is a power of two, root1 is the implicit first element of the path.
    let (first, rest) = if size1.is_power_of_two() {
        (root1, proof)
    } else {
        match proof.split_first() {
            Some(split) => split,
            None => return Err(wrong_len),
        }
    };
    // Steps 3-4.
    let mut fnode = size1 - 1;
    let mut snode = size2 - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = *first;
    let mut sr = *first;
    // Step 6.
    for c in rest {
        if snode == 0 {
            return Err(wrong_len);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(wrong_len);
    }
    if fr != *root1 {
        return Err(ProofError::OldRootMismatch);
    }
    Ok(sr)
}

/// Verifies that the tree of `size1` with root `root1` is a prefix of the tree of `size2` with
/// root `root2`, given a consistency proof (RFC 9162 §2.1.4.2).
///
/// This is what makes two checkpoints of one log provably non-contradictory (SPEC §4). See
/// [`root_from_consistency_proof`] for the equal-size and empty-tree rules.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let computed = root_from_consistency_proof(size1, size2, root1, proof)?;
    if &computed != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Verifiers over wire bytes (opaque roots), as the reference Go verifier takes them.
// ---------------------------------------------------------------------------------------------

/// Converts every proof item with [`hash_from_slice`].
fn hashes_from_slices(proof: &[&[u8]]) -> Result<Vec<Hash>, ProofError> {
    proof.iter().map(|p| hash_from_slice(p)).collect()
}

/// [`verify_inclusion`] over wire bytes, with the semantics of the reference Go verifier
/// (transparency-dev/merkle `proof.VerifyInclusion`): the leaf and every proof item must be
/// 32-byte hashes ([`ProofError::BadHashLength`] otherwise); the computed root is compared with
/// `root` as bytes, so a root of any other length is simply a [`ProofError::RootMismatch`].
pub fn verify_inclusion_bytes(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &[u8],
    proof: &[&[u8]],
    root: &[u8],
) -> Result<(), ProofError> {
    // Index and length first, as the typed verifier orders its checks.
    inclusion_proof_len(leaf_index, tree_size)?;
    let leaf = hash_from_slice(leaf_hash)?;
    let proof = hashes_from_slices(proof)?;
    let computed = root_from_inclusion_proof(leaf_index, tree_size, &leaf, &proof)?;
    if computed[..] != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// [`verify_consistency`] over wire bytes, with the semantics of the reference Go verifier
/// (transparency-dev/merkle `proof.VerifyConsistency`) for every case Vellum accepts:
///
/// * `size1 == size2`: the proof must be empty and the roots are compared **as opaque bytes**
///   (nothing is hashed, so nothing requires them to be 32 bytes; the RFC 9162 vector
///   `sizes-are-equal-one-and-proof-is-empty` uses 12-byte roots). For size 0 the root must
///   moreover be the empty tree's root, the only root a tree of size 0 has.
/// * `size1 == 0 < size2`: refused ([`ProofError::EmptyFirstTree`]), as the typed verifier does
///   (Go accepts it with an empty proof; the vectors shipped with SPEC §4 require rejecting it).
/// * otherwise: both roots and every proof item must be 32-byte hashes, then
///   [`verify_consistency`].
pub fn verify_consistency_bytes(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[&[u8]],
) -> Result<(), ProofError> {
    let expected = consistency_proof_len(size1, size2)?;
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength {
            expected,
            got: proof.len(),
        });
    }
    if size1 == size2 {
        if size1 == 0 && *root1 != empty_root()[..] {
            return Err(ProofError::OldRootMismatch);
        }
        if root1 != root2 {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let root1 = hash_from_slice(root1)?;
    let root2 = hash_from_slice(root2)?;
    let proof = hashes_from_slices(proof)?;
    verify_consistency(size1, size2, &root1, &root2, &proof)
}

// ---------------------------------------------------------------------------------------------
// Reference definitions over an in-memory slice (RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1).
// ---------------------------------------------------------------------------------------------

/// The largest power of two strictly smaller than `n` (the RFC's `k`); requires `n >= 2`.
fn split_point(n: u64) -> u64 {
    // Saturating so that out-of-contract inputs give 1 instead of panicking.
    1u64 << (u64::BITS - 1).saturating_sub(n.saturating_sub(1).leading_zeros())
}

/// Splits `leaves` at the RFC's `k` (the largest power of two smaller than its length, >= 2).
fn split_leaves(leaves: &[Hash]) -> (&[Hash], &[Hash]) {
    let k = split_point(leaves.len() as u64) as usize;
    leaves.split_at(k)
}

/// The Merkle Tree Hash of a list of leaf hashes, by the RFC's recursive definition.
///
/// O(n) and needs every leaf: meant for tests, small trees and as the oracle that the
/// [`NodeSource`]-based [`root`] is checked against. Recursion depth is at most 64.
pub fn mth(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = split_leaves(leaves);
            node_hash(&mth(left), &mth(right))
        }
    }
}

/// The inclusion proof `PATH(m, D[n])` of leaf `m`, by the RFC's recursive definition over all
/// leaf hashes (RFC 9162 §2.1.3.1). Reference for [`inclusion_proof`].
pub fn path(leaves: &[Hash], m: u64) -> Result<Vec<Hash>, ProofError> {
    let n = leaves.len() as u64;
    if m >= n {
        return Err(ProofError::IndexOutOfRange {
            leaf_index: m,
            tree_size: n,
        });
    }
    let mut out = Vec::new();
    path_rec(leaves, m, &mut out);
    Ok(out)
}

fn path_rec(leaves: &[Hash], m: u64, out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let (left, right) = split_leaves(leaves);
    let k = left.len() as u64;
    if m < k {
        path_rec(left, m, out);
        out.push(mth(right));
    } else {
        path_rec(right, m - k, out);
        out.push(mth(left));
    }
}

/// The consistency proof `PROOF(m, D[n])` between the first `m` leaves and all of them, by the
/// RFC's recursive `SUBPROOF` definition (RFC 9162 §2.1.4.1). Reference for
/// [`consistency_proof`]; same size rules as [`consistency_proof_len`].
pub fn subproof(leaves: &[Hash], m: u64) -> Result<Vec<Hash>, ProofError> {
    consistency_proof_len(m, leaves.len() as u64)?;
    let mut out = Vec::new();
    subproof_rec(leaves, m, true, &mut out);
    Ok(out)
}

fn subproof_rec(leaves: &[Hash], m: u64, b: bool, out: &mut Vec<Hash>) {
    let n = leaves.len() as u64;
    if m == n {
        if !b {
            out.push(mth(leaves));
        }
        return;
    }
    let (left, right) = split_leaves(leaves);
    let k = left.len() as u64;
    if m <= k {
        subproof_rec(left, m, b, out);
        out.push(mth(right));
    } else {
        subproof_rec(right, m - k, false, out);
        out.push(mth(left));
    }
}

// ---------------------------------------------------------------------------------------------
// Generation over perfect subtrees.
// ---------------------------------------------------------------------------------------------

/// Where proof generation reads hashes from: the hash of any *perfect* subtree.
///
/// A perfect subtree at `level` and `index` covers leaves `[index * 2^level, (index + 1) *
/// 2^level)`; level 0 is the leaf hashes themselves. Once all its leaves exist, such a subtree's
/// hash never changes however large the tree grows, so a store can persist it exactly once (see
/// [`CompactRange::append_into`]) and answer any root or proof with O(log n) point reads. The
/// functions here only ever ask for subtrees lying entirely below the tree size they are given,
/// so a source may hold more leaves than that size.
pub trait NodeSource {
    /// Why a lookup failed (I/O error, missing node, ...).
    type Error;

    /// The hash of the complete subtree at `level` (0 = leaves) and position `index` on that level.
    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

impl<S: NodeSource + ?Sized> NodeSource for &mut S {
    type Error = S::Error;

    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        (**self).subtree_hash(level, index)
    }
}

/// Why a root or proof could not be produced from a [`NodeSource`].
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E> {
    /// The request itself is invalid (index out of range, sizes out of order, ...).
    #[error(transparent)]
    Request(#[from] ProofError),
    /// The node source failed to return a subtree hash (the cause is the source's error).
    #[error("the Merkle node source failed")]
    Source(#[source] E),
}

/// The MTH of leaves `[start, end)`, read as perfect subtrees from `src`.
///
/// Meant for ranges that are subtrees in the RFC's recursive split of some tree: `start` is zero
/// or a multiple of the largest power of two not above `end - start`. Then the set bits of
/// `end - start`, largest first, are perfect subtrees laid out left to right, and folding them
/// right to left reproduces the RFC's left-heavy shape in `popcount(end - start)` lookups.
fn range_hash<S: NodeSource>(src: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    if start >= end {
        return Ok(empty_root());
    }
    let n = end - start;
    let top = u64::BITS - 1 - n.leading_zeros();
    if start != 0 && start.trailing_zeros() < top {
        // Not an RFC subtree range (never happens for the callers in this module).
        return range_hash_unaligned(src, start, end);
    }
    // The lowest set bit of `n` is the rightmost block.
    let mut acc: Option<Hash> = None;
    let mut block_end = end;
    for level in 0..u64::BITS {
        if n & (1u64 << level) == 0 {
            continue;
        }
        let block_start = block_end - (1u64 << level);
        let h = src.subtree_hash(level, block_start >> level)?;
        acc = Some(match acc {
            None => h,
            Some(right) => node_hash(&h, &right),
        });
        block_end = block_start;
    }
    Ok(acc.unwrap_or_else(empty_root))
}

/// Fallback for ranges [`range_hash`] cannot decompose as a binary number: computes their MTH by
/// recursing on the RFC split. Never reached by this module's callers; kept so the function is
/// total instead of panicking.
fn range_hash_unaligned<S: NodeSource>(
    src: &mut S,
    start: u64,
    end: u64,
) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 1 {
        return src.subtree_hash(0, start);
    }
    let k = split_point(n);
    let left = range_hash_unaligned(src, start, start + k)?;
    let right = range_hash_unaligned(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `tree_size` leaves, read from `src` in at most
/// `popcount(tree_size)` lookups. `tree_size == 0` gives [`empty_root`] without any lookup.
pub fn root<S: NodeSource>(src: &mut S, tree_size: u64) -> Result<Hash, S::Error> {
    range_hash(src, 0, tree_size)
}

/// The RFC 9162 inclusion proof `PATH(leaf_index, D[tree_size])`, read from `src`.
///
/// Walks from the root towards the leaf, recording the sibling of each step, then reads the
/// siblings bottom-up. Every sibling is a perfect subtree except at most one on the tree's right
/// edge, so this is O(log n) lookups.
pub fn inclusion_proof<S: NodeSource>(
    src: &mut S,
    leaf_index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    let len = inclusion_proof_len(leaf_index, tree_size)?;
    let mut siblings: Vec<(u64, u64)> = Vec::with_capacity(len);
    let (mut lo, mut hi) = (0u64, tree_size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if leaf_index < mid {
            siblings.push((mid, hi));
            hi = mid;
        } else {
            siblings.push((lo, mid));
            lo = mid;
        }
    }
    let mut out = Vec::with_capacity(siblings.len());
    for &(start, end) in siblings.iter().rev() {
        out.push(range_hash(src, start, end).map_err(TreeError::Source)?);
    }
    Ok(out)
}

/// The RFC 9162 consistency proof `PROOF(size1, D[size2])`, read from `src`.
///
/// Unrolls the RFC's `SUBPROOF` recursion the same way as [`inclusion_proof`]; O(log n) lookups.
/// Equal sizes give an empty proof; `size1 > size2` and `size1 == 0 < size2` are errors.
pub fn consistency_proof<S: NodeSource>(
    src: &mut S,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    let len = consistency_proof_len(size1, size2)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut siblings: Vec<(u64, u64)> = Vec::with_capacity(len);
    let (mut lo, mut hi) = (0u64, size2);
    let mut whole_first_tree = true; // The RFC's `b`.
    while size1 < hi {
        let mid = lo + split_point(hi - lo);
        if size1 <= mid {
            siblings.push((mid, hi));
            hi = mid;
        } else {
            siblings.push((lo, mid));
            lo = mid;
            whole_first_tree = false;
        }
    }
    let mut out = Vec::with_capacity(len);
    if !whole_first_tree {
        out.push(range_hash(src, lo, hi).map_err(TreeError::Source)?);
    }
    for &(start, end) in siblings.iter().rev() {
        out.push(range_hash(src, start, end).map_err(TreeError::Source)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// In-memory tree.
// ---------------------------------------------------------------------------------------------

/// A requested subtree is not (yet) complete in a [`MemoryTree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no complete subtree at level {level}, index {index}")]
pub struct MissingNode {
    /// The requested level.
    pub level: u32,
    /// The requested index on that level.
    pub index: u64,
}

/// Every leaf and every complete interior node in memory: a [`NodeSource`] for tests, tools and
/// small logs (e.g. verifying an export bundle), where holding the whole tree is fine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    /// `levels[l][i]` is the perfect subtree at level `l`, index `i`; `levels[0]` are the leaves.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree holding `leaf_hashes` in order.
    pub fn from_leaves<I: IntoIterator<Item = Hash>>(leaf_hashes: I) -> Self {
        let mut tree = Self::new();
        for leaf in leaf_hashes {
            tree.push(leaf);
        }
        tree
    }

    /// Appends one leaf hash, storing every interior node it completes.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(h);
            if row.len() % 2 == 1 {
                return;
            }
            match row.get(row.len() - 2) {
                Some(left) => h = node_hash(left, &h),
                None => return,
            }
            level += 1;
        }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.leaves().len() as u64
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves().is_empty()
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        let mut src = self;
        // Every complete subtree below `len()` is stored, so the lookups cannot fail; fall back
        // to the reference definition rather than panic all the same.
        root(&mut src, self.len()).unwrap_or_else(|_| mth(self.leaves()))
    }

    /// The stored perfect subtree at `level`, `index`, if it is complete.
    fn get(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        let missing = MissingNode { level, index };
        let row = self.levels.get(level as usize).ok_or(missing)?;
        let i = usize::try_from(index).map_err(|_| missing)?;
        row.get(i).copied().ok_or(missing)
    }
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;

    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.get(level, index)
    }
}

impl NodeSource for &MemoryTree {
    type Error = MissingNode;

    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.get(level, index)
    }
}

// ---------------------------------------------------------------------------------------------
// Compact range (the right edge of the tree).
// ---------------------------------------------------------------------------------------------

/// One perfect subtree completed by an append: `(level, index, hash)`, addressed as in
/// [`NodeSource::subtree_hash`].
pub type CompletedSubtree = (u32, u64, Hash);

/// Why a [`CompactRange`] could not be built, restored or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactRangeError {
    /// The serialized form has an unknown version byte.
    #[error("unknown compact range encoding version {0}")]
    UnknownVersion(u8),
    /// The serialized form is shorter than its header.
    #[error("compact range encoding is truncated ({len} bytes)")]
    Truncated {
        /// The length that was supplied.
        len: usize,
    },
    /// The number of subtree hashes does not match the size (one per set bit).
    #[error("a compact range of size {size} needs {expected} subtree hashes, got {got}")]
    WrongHashCount {
        /// The tree size.
        size: u64,
        /// `popcount(size)`.
        expected: usize,
        /// The number supplied.
        got: usize,
    },
    /// The tree already holds `u64::MAX` leaves.
    #[error("the tree is full")]
    Full,
}

/// Version byte of [`CompactRange::to_bytes`].
const COMPACT_RANGE_VERSION: u8 = 1;
/// Version byte plus the big-endian size.
const COMPACT_RANGE_HEADER: usize = 1 + 8;

/// The right edge of an append-only Merkle tree: the hashes of the perfect subtrees that make up
/// the tree's binary decomposition, one per set bit of its size, largest (leftmost) first.
///
/// This is all the ingest path needs to keep in memory: appending a leaf merges equal-sized
/// subtrees like a binary counter increment (amortized one hash per append, no allocation), and
/// the root of the current tree folds at most 64 hashes. The perfect subtrees completed by each
/// append are reported so the store can persist them in the same write batch; a
/// [`NodeSource`] over those persisted nodes then serves every proof.
#[derive(Debug, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Invariant: `hashes.len() == size.count_ones()`; `hashes[i]` covers the `i`-th set bit of
    /// `size` counted from the most significant one.
    hashes: Vec<Hash>,
}

impl Clone for CompactRange {
    /// Keeps the reserved capacity (a derived clone would shrink it to the current length), so
    /// appends to a clone never reallocate either.
    fn clone(&self) -> Self {
        let mut hashes = Vec::with_capacity(u64::BITS as usize);
        hashes.extend_from_slice(&self.hashes);
        Self {
            size: self.size,
            hashes,
        }
    }
}

impl Default for CompactRange {
    fn default() -> Self {
        Self::new()
    }
}

impl CompactRange {
    /// The compact range of the empty tree. Capacity for 64 hashes is reserved up front so
    /// appends never reallocate.
    pub fn new() -> Self {
        Self {
            size: 0,
            hashes: Vec::with_capacity(u64::BITS as usize),
        }
    }

    /// Rebuilds a compact range from its size and subtree hashes (largest first), e.g. as read
    /// back from the store.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, CompactRangeError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(CompactRangeError::WrongHashCount {
                size,
                expected,
                got: hashes.len(),
            });
        }
        let mut this = Self::new();
        this.size = size;
        this.hashes.extend_from_slice(&hashes);
        Ok(this)
    }

    /// Rebuilds the compact range of the first `size` leaves from the store's perfect subtrees,
    /// in `popcount(size)` lookups (e.g. at startup, when no serialized copy is available).
    pub fn from_source<S: NodeSource>(src: &mut S, size: u64) -> Result<Self, S::Error> {
        let mut this = Self::new();
        let mut start = 0u64;
        for level in (0..u64::BITS).rev() {
            if size & (1u64 << level) != 0 {
                this.hashes.push(src.subtree_hash(level, start >> level)?);
                start += 1u64 << level;
            }
        }
        this.size = size;
        Ok(this)
    }

    /// The number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtree hashes of the right edge, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The right edge as `(level, index, hash)` triples, largest (leftmost) first.
    pub fn subtrees(&self) -> impl Iterator<Item = CompletedSubtree> + '_ {
        let size = self.size;
        let mut start = 0u64;
        (0..u64::BITS)
            .rev()
            .filter(move |level| size & (1u64 << level) != 0)
            .zip(self.hashes.iter())
            .map(move |(level, hash)| {
                let index = start >> level;
                start += 1u64 << level;
                (level, index, *hash)
            })
    }

    /// Appends one leaf hash and pushes onto `out` every perfect subtree this completes: first
    /// the leaf itself as `(0, leaf_index, leaf_hash)`, then each interior node it closes, from
    /// level 1 upwards (one per trailing one-bit of the old size).
    ///
    /// `out` is appended to, never cleared, so one buffer can collect a whole write batch; this
    /// is the allocation-free hot-path form of [`CompactRange::append`].
    pub fn append_into(
        &mut self,
        leaf: Hash,
        out: &mut Vec<CompletedSubtree>,
    ) -> Result<(), CompactRangeError> {
        let old = self.size;
        let new = old.checked_add(1).ok_or(CompactRangeError::Full)?;
        let mut h = leaf;
        let mut level = 0u32;
        let mut index = old;
        out.push((level, index, h));
        // Like a binary increment: each trailing one-bit of the old size is a subtree of the
        // same size as `h` sitting immediately to its left; merge them.
        while (old >> level) & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                // Unreachable while the invariant holds; refuse rather than corrupt state.
                return Err(CompactRangeError::WrongHashCount {
                    size: old,
                    expected: old.count_ones() as usize,
                    got: self.hashes.len(),
                });
            };
            h = node_hash(&left, &h);
            level += 1;
            index >>= 1;
            out.push((level, index, h));
        }
        self.hashes.push(h);
        self.size = new;
        Ok(())
    }

    /// Appends one leaf hash and returns the perfect subtrees it completes (see
    /// [`CompactRange::append_into`], which avoids the allocation).
    pub fn append(&mut self, leaf: Hash) -> Result<Vec<CompletedSubtree>, CompactRangeError> {
        let mut out = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        self.append_into(leaf, &mut out)?;
        Ok(out)
    }

    /// The root of the current tree (RFC 9162 MTH): the subtree hashes folded right to left.
    pub fn root(&self) -> Hash {
        let mut iter = self.hashes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Serializes as: version byte (1), size as 8 bytes big-endian, then the subtree hashes,
    /// largest first. At most 9 + 64 * 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMPACT_RANGE_HEADER + self.hashes.len() * HASH_LEN);
        out.push(COMPACT_RANGE_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses the output of [`CompactRange::to_bytes`], checking the version and that exactly
    /// `popcount(size)` hashes follow.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CompactRangeError> {
        let truncated = CompactRangeError::Truncated { len: bytes.len() };
        let (&version, rest) = bytes.split_first().ok_or(truncated.clone())?;
        if version != COMPACT_RANGE_VERSION {
            return Err(CompactRangeError::UnknownVersion(version));
        }
        let (size_bytes, hash_bytes) = rest.split_first_chunk::<8>().ok_or(truncated)?;
        let size = u64::from_be_bytes(*size_bytes);
        let expected = size.count_ones() as usize;
        let (chunks, remainder) = hash_bytes.as_chunks::<HASH_LEN>();
        if !remainder.is_empty() || chunks.len() != expected {
            return Err(CompactRangeError::WrongHashCount {
                size,
                expected,
                got: hash_bytes.len() / HASH_LEN,
            });
        }
        let mut this = Self::new();
        this.size = size;
        this.hashes.extend_from_slice(chunks);
        Ok(this)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 6962 reference leaves (also in the shared test-vector README).
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

    /// Roots of the reference tree truncated to sizes 1..=8 (RFC 6962 test data).
    const REFERENCE_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference_leaves() -> Vec<Hash> {
        REFERENCE_LEAVES
            .iter()
            .map(|h| leaf_hash_of_data(&hex::decode(h).unwrap()))
            .collect()
    }

    /// Distinct leaf hashes for property tests. Not real hashes: SHA-256 is slow in debug
    /// builds and the tree does not care what its leaves look like.
    fn synthetic_leaves(n: usize) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| {
                let mut h = [0xa5u8; 32];
                h[..8].copy_from_slice(&i.to_le_bytes());
                h
            })
            .collect()
    }

    /// Bits to flip in exhaustive tests: one in every byte, at every position within a byte.
    fn some_bits() -> impl Iterator<Item = usize> {
        (0..32).map(|byte| byte * 8 + byte % 8)
    }

    fn flip(h: &Hash, bit: usize) -> Hash {
        let mut out = *h;
        out[(bit / 8) % HASH_LEN] ^= 1 << (bit % 8);
        out
    }

    /// A source for astronomically large trees: answers any perfect subtree with a synthetic
    /// hash, counts lookups and records any request that is not inside `limit` leaves.
    struct FakeSource {
        limit: u64,
        lookups: usize,
        out_of_bounds: Vec<(u32, u64)>,
    }

    impl NodeSource for FakeSource {
        type Error = std::convert::Infallible;

        fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            self.lookups += 1;
            let first = u128::from(index) << level;
            let end = first + (1u128 << level);
            if level >= u64::BITS || end > u128::from(self.limit) {
                self.out_of_bounds.push((level, index));
            }
            let mut h = Sha256::new();
            h.update(level.to_be_bytes());
            h.update(index.to_be_bytes());
            Ok(h.finalize().into())
        }
    }

    #[test]
    fn hashing_known_answers() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(mth(&[]), empty_root());
        // Leaf hash of the empty string: SHA-256(0x00).
        assert_eq!(
            hex::encode(leaf_hash_of_data(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let event = [7u8; 32];
        let mut data = vec![0u8];
        data.extend_from_slice(&event);
        assert_eq!(leaf_hash(&event), <Hash>::from(Sha256::digest(&data)));
        let (l, r) = ([1u8; 32], [2u8; 32]);
        let mut data = vec![1u8];
        data.extend_from_slice(&l);
        data.extend_from_slice(&r);
        assert_eq!(node_hash(&l, &r), <Hash>::from(Sha256::digest(&data)));
        assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    }

    #[test]
    fn reference_tree_roots() {
        let leaves = reference_leaves();
        let tree = MemoryTree::from_leaves(leaves.iter().copied());
        for (i, want) in REFERENCE_ROOTS.iter().enumerate() {
            let size = i as u64 + 1;
            assert_eq!(hex::encode(mth(&leaves[..=i])), *want, "mth size {size}");
            let mut src = &tree;
            assert_eq!(hex::encode(root(&mut src, size).unwrap()), *want);
        }
        assert_eq!(hex::encode(tree.root()), REFERENCE_ROOTS[7]);
    }

    #[test]
    fn hash_from_slice_checks_length() {
        assert_eq!(hash_from_slice(&[0u8; 32]), Ok([0u8; 32]));
        assert_eq!(
            hash_from_slice(&[0u8; 31]),
            Err(ProofError::BadHashLength { len: 31 })
        );
        assert_eq!(
            hash_from_slice(&[]),
            Err(ProofError::BadHashLength { len: 0 })
        );
    }

    #[test]
    fn inclusion_request_errors() {
        let mut tree = MemoryTree::from_leaves(synthetic_leaves(5));
        let leaf = tree.leaves()[0];
        let r = tree.root();
        assert_eq!(
            verify_inclusion(5, 5, &leaf, &[], &r),
            Err(ProofError::IndexOutOfRange {
                leaf_index: 5,
                tree_size: 5
            })
        );
        assert_eq!(
            verify_inclusion(0, 0, &leaf, &[], &empty_root()),
            Err(ProofError::IndexOutOfRange {
                leaf_index: 0,
                tree_size: 0
            })
        );
        assert_eq!(
            verify_inclusion(0, 5, &leaf, &[], &r),
            Err(ProofError::WrongProofLength {
                expected: 3,
                got: 0
            })
        );
        assert!(matches!(
            inclusion_proof(&mut tree, 5, 5),
            Err(TreeError::Request(ProofError::IndexOutOfRange { .. }))
        ));
        // Asking beyond what the source holds surfaces the source's error.
        assert!(matches!(
            inclusion_proof(&mut tree, 0, 6),
            Err(TreeError::Source(MissingNode { .. }))
        ));
        // A single-leaf tree: the proof is empty and the root is the leaf.
        verify_inclusion(0, 1, &leaf, &[], &leaf).unwrap();
        assert_eq!(
            verify_inclusion(0, 1, &leaf, &[leaf], &leaf),
            Err(ProofError::WrongProofLength {
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn consistency_request_errors() {
        let mut tree = MemoryTree::from_leaves(synthetic_leaves(5));
        let r = tree.root();
        let e = empty_root();
        assert_eq!(
            verify_consistency(5, 4, &r, &r, &[]),
            Err(ProofError::SizeOrder { size1: 5, size2: 4 })
        );
        assert_eq!(
            verify_consistency(0, 5, &e, &r, &[]),
            Err(ProofError::EmptyFirstTree { size2: 5 })
        );
        assert!(matches!(
            consistency_proof(&mut tree, 0, 5),
            Err(TreeError::Request(ProofError::EmptyFirstTree { size2: 5 }))
        ));
        assert!(matches!(
            consistency_proof(&mut tree, 3, 2),
            Err(TreeError::Request(ProofError::SizeOrder { .. }))
        ));
        // Equal sizes: empty proof, identical roots; size 0 only with the empty root.
        verify_consistency(5, 5, &r, &r, &[]).unwrap();
        verify_consistency(0, 0, &e, &e, &[]).unwrap();
        assert_eq!(
            verify_consistency(0, 0, &r, &r, &[]),
            Err(ProofError::OldRootMismatch)
        );
        assert_eq!(
            verify_consistency(5, 5, &r, &e, &[]),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(5, 5, &r, &r, &[r]),
            Err(ProofError::WrongProofLength {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            consistency_proof(&mut tree, 5, 5).unwrap(),
            Vec::<Hash>::new()
        );
        assert_eq!(
            verify_consistency(2, 5, &r, &r, &[]),
            Err(ProofError::WrongProofLength {
                expected: 2,
                got: 0
            })
        );
    }

    #[test]
    fn exhaustive_small_trees() {
        // Every index and size pair up to 32 leaves, against the reference definitions, with
        // single-bit flips in every byte of every hash for the smaller sizes.
        let leaves = synthetic_leaves(32);
        let mut tree = MemoryTree::from_leaves(leaves.iter().copied());
        for n in 1..=32u64 {
            let prefix = &leaves[..n as usize];
            let r = mth(prefix);
            assert_eq!(root(&mut tree, n).unwrap(), r);
            for m in 0..n {
                let p = inclusion_proof(&mut tree, m, n).unwrap();
                assert_eq!(p, path(prefix, m).unwrap(), "PATH({m}, {n})");
                assert_eq!(p.len(), inclusion_proof_len(m, n).unwrap());
                let leaf = leaves[m as usize];
                verify_inclusion(m, n, &leaf, &p, &r).unwrap();
                if n <= 10 {
                    for bit in some_bits() {
                        assert!(verify_inclusion(m, n, &flip(&leaf, bit), &p, &r).is_err());
                        assert!(verify_inclusion(m, n, &leaf, &p, &flip(&r, bit)).is_err());
                        for i in 0..p.len() {
                            let mut bad = p.clone();
                            bad[i] = flip(&bad[i], bit);
                            assert!(verify_inclusion(m, n, &leaf, &bad, &r).is_err());
                        }
                    }
                }
            }
            for m in 1..=n {
                let r1 = mth(&leaves[..m as usize]);
                let p = consistency_proof(&mut tree, m, n).unwrap();
                assert_eq!(p, subproof(prefix, m).unwrap(), "PROOF({m}, {n})");
                assert_eq!(p.len(), consistency_proof_len(m, n).unwrap());
                verify_consistency(m, n, &r1, &r, &p).unwrap();
                if n <= 10 {
                    for bit in some_bits() {
                        if m != n {
                            assert!(verify_consistency(m, n, &flip(&r1, bit), &r, &p).is_err());
                        }
                        assert!(verify_consistency(m, n, &r1, &flip(&r, bit), &p).is_err());
                        for i in 0..p.len() {
                            let mut bad = p.clone();
                            bad[i] = flip(&bad[i], bit);
                            assert!(verify_consistency(m, n, &r1, &r, &bad).is_err());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn huge_trees_do_not_overflow_and_stay_in_bounds() {
        let sizes = [
            u64::MAX,
            u64::MAX - 1,
            1u64 << 63,
            (1u64 << 63) + 1,
            (1u64 << 40) + 12345,
        ];
        for &n in &sizes {
            for m in [0, 1, n / 2, n / 3, n - 2, n - 1] {
                let mut src = FakeSource {
                    limit: n,
                    lookups: 0,
                    out_of_bounds: Vec::new(),
                };
                let p = inclusion_proof(&mut src, m, n).unwrap();
                assert_eq!(p.len(), inclusion_proof_len(m, n).unwrap());
                assert!(src.lookups <= 2 * p.len() + 1, "{} lookups", src.lookups);
                let leaf = src.subtree_hash(0, m).unwrap();
                let r = root_from_inclusion_proof(m, n, &leaf, &p).unwrap();
                assert!(verify_inclusion(m, n, &leaf, &p, &flip(&r, 3)).is_err());

                if m == 0 {
                    continue;
                }
                let p = consistency_proof(&mut src, m, n).unwrap();
                assert_eq!(p.len(), consistency_proof_len(m, n).unwrap());
                assert!(src.out_of_bounds.is_empty(), "{:?}", src.out_of_bounds);
            }
            let mut src = FakeSource {
                limit: n,
                lookups: 0,
                out_of_bounds: Vec::new(),
            };
            root(&mut src, n).unwrap();
            assert_eq!(src.lookups, n.count_ones() as usize);
            let cr = CompactRange::from_source(&mut src, n).unwrap();
            assert_eq!(cr.size(), n);
            assert_eq!(CompactRange::from_bytes(&cr.to_bytes()).unwrap(), cr);
            assert!(src.out_of_bounds.is_empty());
        }
        // Verifiers on extreme sizes only ever return errors, never panic.
        let h = [0u8; 32];
        assert!(verify_inclusion(u64::MAX - 1, u64::MAX, &h, &[h; 64], &h).is_err());
        assert!(verify_inclusion(u64::MAX, u64::MAX, &h, &[], &h).is_err());
        assert!(verify_consistency(1, u64::MAX, &h, &h, &[h; 64]).is_err());
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &h, &h, &[h; 3]).is_err());
        assert!(verify_consistency(u64::MAX, u64::MAX, &h, &h, &[]).is_ok());
    }

    #[test]
    fn compact_range_basics() {
        let mut cr = CompactRange::new();
        assert_eq!(cr.size(), 0);
        assert_eq!(cr.root(), empty_root());
        assert_eq!(cr.to_bytes(), [&[1u8][..], &[0u8; 8][..]].concat());
        let leaves = synthetic_leaves(4);
        assert_eq!(cr.append(leaves[0]).unwrap(), vec![(0, 0, leaves[0])]);
        let n01 = node_hash(&leaves[0], &leaves[1]);
        assert_eq!(
            cr.append(leaves[1]).unwrap(),
            vec![(0, 1, leaves[1]), (1, 0, n01)]
        );
        assert_eq!(cr.append(leaves[2]).unwrap(), vec![(0, 2, leaves[2])]);
        let n23 = node_hash(&leaves[2], &leaves[3]);
        assert_eq!(
            cr.append(leaves[3]).unwrap(),
            vec![
                (0, 3, leaves[3]),
                (1, 1, n23),
                (2, 0, node_hash(&n01, &n23))
            ]
        );
        assert_eq!(cr.hashes(), &[node_hash(&n01, &n23)]);
    }

    #[test]
    fn compact_range_errors() {
        assert_eq!(
            CompactRange::from_bytes(&[]),
            Err(CompactRangeError::Truncated { len: 0 })
        );
        assert_eq!(
            CompactRange::from_bytes(&[2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CompactRangeError::UnknownVersion(2))
        );
        assert_eq!(
            CompactRange::from_bytes(&[1, 0, 0]),
            Err(CompactRangeError::Truncated { len: 3 })
        );
        let mut bytes = vec![1, 0, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(&[9u8; 32]);
        assert!(matches!(
            CompactRange::from_bytes(&bytes),
            Err(CompactRangeError::WrongHashCount {
                size: 3,
                expected: 2,
                got: 1
            })
        ));
        bytes.extend_from_slice(&[9u8; 31]);
        assert!(CompactRange::from_bytes(&bytes).is_err());
        bytes.push(9);
        assert_eq!(CompactRange::from_bytes(&bytes).unwrap().size(), 3);
        assert!(CompactRange::from_parts(3, vec![[0u8; 32]]).is_err());

        let mut full = CompactRange::from_parts(u64::MAX, vec![[0u8; 32]; 64]).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            full.append_into([1u8; 32], &mut out),
            Err(CompactRangeError::Full)
        );
        assert!(out.is_empty());
        assert_eq!(full.size(), u64::MAX);
        assert_eq!(CompactRange::from_bytes(&full.to_bytes()).unwrap(), full);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn node_source_root_equals_mth(n in 0usize..2000, cut in any::<prop::sample::Index>()) {
            let leaves = synthetic_leaves(n);
            let mut tree = MemoryTree::from_leaves(leaves.iter().copied());
            prop_assert_eq!(tree.root(), mth(&leaves));
            let m = cut.index(n + 1);
            prop_assert_eq!(root(&mut tree, m as u64).unwrap(), mth(&leaves[..m]));
        }

        #[test]
        fn inclusion_proofs_verify_and_detect_flips(
            n in 1u64..2000,
            idx in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            bit in 0usize..256,
        ) {
            let leaves = synthetic_leaves(n as usize);
            let mut tree = MemoryTree::from_leaves(leaves.iter().copied());
            let m = idx.index(n as usize) as u64;
            let leaf = leaves[m as usize];
            let r = tree.root();
            let p = inclusion_proof(&mut tree, m, n).unwrap();
            prop_assert_eq!(&p, &path(&leaves, m).unwrap());
            prop_assert_eq!(root_from_inclusion_proof(m, n, &leaf, &p), Ok(r));
            verify_inclusion(m, n, &leaf, &p, &r).unwrap();

            prop_assert!(verify_inclusion(m, n, &leaf, &p, &flip(&r, bit)).is_err());
            prop_assert!(verify_inclusion(m, n, &flip(&leaf, bit), &p, &r).is_err());
            if !p.is_empty() {
                let i = which.index(p.len());
                let mut bad = p.clone();
                bad[i] = flip(&bad[i], bit);
                prop_assert!(verify_inclusion(m, n, &leaf, &bad, &r).is_err());
                // Dropping or adding a hash is a length error.
                prop_assert!(verify_inclusion(m, n, &leaf, &p[1..], &r).is_err());
            }
            let mut longer = p.clone();
            longer.push(r);
            prop_assert!(verify_inclusion(m, n, &leaf, &longer, &r).is_err());
            // The same proof does not prove the neighbour. (It may well fit another tree size
            // with the same root, e.g. leaf 0 of 3 and of 4: the size is bound by the signed
            // checkpoint, not by the proof.)
            if m + 1 < n {
                prop_assert!(verify_inclusion(m + 1, n, &leaf, &p, &r).is_err());
            }
        }

        #[test]
        fn consistency_proofs_verify_and_detect_flips(
            n in 1u64..2000,
            cut in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            bit in 0usize..256,
        ) {
            let leaves = synthetic_leaves(n as usize);
            let mut tree = MemoryTree::from_leaves(leaves.iter().copied());
            let m = cut.index(n as usize) as u64 + 1;
            let r1 = mth(&leaves[..m as usize]);
            let r2 = tree.root();
            let p = consistency_proof(&mut tree, m, n).unwrap();
            prop_assert_eq!(&p, &subproof(&leaves, m).unwrap());
            prop_assert_eq!(p.len(), consistency_proof_len(m, n).unwrap());
            verify_consistency(m, n, &r1, &r2, &p).unwrap();

            if m != n {
                prop_assert!(verify_consistency(m, n, &flip(&r1, bit), &r2, &p).is_err());
                let i = which.index(p.len());
                let mut bad = p.clone();
                bad[i] = flip(&bad[i], bit);
                prop_assert!(verify_consistency(m, n, &r1, &r2, &bad).is_err());
                prop_assert!(verify_consistency(m, n, &r1, &r2, &p[1..]).is_err());
                prop_assert!(verify_consistency(m, n, &r2, &r1, &p).is_err());
            }
            prop_assert!(verify_consistency(m, n, &r1, &flip(&r2, bit), &p).is_err());
            let mut longer = p.clone();
            longer.push(r1);
            prop_assert!(verify_consistency(m, n, &r1, &r2, &longer).is_err());
        }

    }

    proptest! {
        // Quadratic (an MTH per prefix), so fewer and smaller cases.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn compact_range_tracks_mth(n in 0usize..160) {
            let leaves = synthetic_leaves(n);
            let mut cr = CompactRange::new();
            let mut tree = MemoryTree::new();
            let mut batch = Vec::new();
            for (i, leaf) in leaves.iter().enumerate() {
                let before = batch.len();
                cr.append_into(*leaf, &mut batch).unwrap();
                tree.push(*leaf);
                let size = i as u64 + 1;
                prop_assert_eq!(cr.size(), size);
                prop_assert_eq!(cr.hashes().len(), size.count_ones() as usize);
                prop_assert_eq!(cr.root(), mth(&leaves[..=i]));
                // Every reported subtree is exactly what the full tree stores there.
                prop_assert_eq!(batch[before], (0, i as u64, *leaf));
                for &(level, index, hash) in &batch[before..] {
                    prop_assert_eq!(tree.subtree_hash(level, index), Ok(hash));
                }
                prop_assert_eq!(batch.len() - before, 1 + (size - 1).trailing_ones() as usize);
                prop_assert_eq!(&CompactRange::from_bytes(&cr.to_bytes()).unwrap(), &cr);
                prop_assert_eq!(&CompactRange::from_source(&mut tree, size).unwrap(), &cr);
                for (level, index, hash) in cr.subtrees() {
                    prop_assert_eq!(tree.subtree_hash(level, index), Ok(hash));
                }
            }
            // The batch holds every perfect subtree of the final tree exactly once.
            let total: usize = (0..u64::BITS).map(|l| (n as u64 >> l) as usize).sum();
            prop_assert_eq!(batch.len(), total);
        }
    }
}

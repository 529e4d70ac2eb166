//! How the Merkle tree of a log is persisted: *tiles*, in the manner of C2SP `tlog-tiles`.
//!
//! A tile is up to [`TILE_WIDTH`] = 256 consecutive node hashes of one tree level that is a
//! multiple of [`TILE_HEIGHT`] = 8. Tile `(t, k)` holds the hashes of level `8t`, indices
//! `256k .. 256k + width`. From one tile, any node on the 8 levels above it that lies inside the
//! tile is computed in memory (at most 255 hashes), so a node anywhere in the tree costs one tile
//! read and an inclusion or consistency proof costs O(log n / 8) tile reads: about 3–6 for a
//! log of ten million events, never a read of the events themselves.
//!
//! Record layout: a tile is stored as the concatenation of its hashes (`32 × width` bytes) under
//! the key `(log, tile level, tile index)`. Tiles only grow: the hashes at positions below a
//! tile's width never change, so a reader that sees a newer, wider version of a tile than the
//! tree size it is proving still reads the right nodes.
//!
//! Ingest: [`TileWriter`] follows the tree's right edge. Each appended leaf goes into the
//! rightmost level-0 tile; when a tile fills up, its root (a level-`8(t+1)` node) goes into the
//! tile one level up. [`TileWriter::take_changed`] returns every tile whose content changed since
//! the last call, so the writer stores them **in the same transaction** as the events they cover
//! (invariant: the persisted tree always has exactly as many leaves as the log has events).
//! Per batch that is one rewrite of the partial level-0 tile (≤ 8 KiB) plus, every 256 events,
//! one more tile.

use crate::merkle::{Hash, NodeSource, mth};

/// Levels covered by one tile.
pub const TILE_HEIGHT: u32 = 8;
/// Most hashes in one tile (`2^TILE_HEIGHT`).
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;

/// Address of a tile: the tree level it stores is `level * TILE_HEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileKey {
    /// Tile level (0 = leaf hashes, 1 = level-8 nodes, ...).
    pub level: u8,
    /// Position of the tile on its level.
    pub index: u64,
}

/// One tile's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Where it goes.
    pub key: TileKey,
    /// Its node hashes, left to right; `1..=TILE_WIDTH` of them.
    pub hashes: Vec<Hash>,
}

impl Tile {
    /// The stored form: the hashes concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.hashes.len() * 32);
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses the stored form; `None` when the length is not a positive multiple of 32 up to a
    /// full tile (a damaged row).
    pub fn hashes_from_bytes(bytes: &[u8]) -> Option<Vec<Hash>> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(32) || bytes.len() > TILE_WIDTH * 32 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
        )
    }
}

/// The rightmost tile of one tile level, where `TileWriter` appends.
#[derive(Debug, Clone, Default)]
struct Edge {
    index: u64,
    hashes: Vec<Hash>,
    changed: bool,
}

/// Why a [`TileWriter`] could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileResumeError {
    /// A stored edge tile does not have the width the tree size implies.
    #[error(
        "tile level {level} index {index} holds {found} hashes, but a tree of {size} leaves needs {expected}"
    )]
    WrongWidth {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// Hashes found.
        found: usize,
        /// Hashes expected.
        expected: usize,
        /// The tree size being resumed.
        size: u64,
    },
    /// A stored edge tile is missing.
    #[error("tile level {level} index {index} is missing for a tree of {size} leaves")]
    Missing {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// The tree size being resumed.
        size: u64,
    },
}

/// Appends leaves to a tiled tree and reports which tiles to store.
#[derive(Debug, Clone, Default)]
pub struct TileWriter {
    size: u64,
    edges: Vec<Edge>,
    completed: Vec<Tile>,
}

impl TileWriter {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The edge tiles a tree of `size` leaves has: `(key, width)` for every tile level with a
    /// partial (non-full, non-empty) rightmost tile. These are what [`TileWriter::resume`] needs.
    pub fn edge_tiles(size: u64) -> Vec<(TileKey, usize)> {
        let mut out = Vec::new();
        let mut nodes = size; // nodes on the current tile level's tree level
        let mut level: u8 = 0;
        while nodes > 0 {
            let width = (nodes % TILE_WIDTH as u64) as usize;
            if width > 0 {
                out.push((
                    TileKey {
                        level,
                        index: nodes / TILE_WIDTH as u64,
                    },
                    width,
                ));
            }
            nodes /= TILE_WIDTH as u64;
            level = level.saturating_add(1);
        }
        out
    }

    /// Resumes a tree of `size` leaves from its stored edge tiles (see
    /// [`TileWriter::edge_tiles`]); `load` returns a stored tile's hashes.
    pub fn resume<E>(
        size: u64,
        mut load: impl FnMut(TileKey) -> Result<Option<Vec<Hash>>, E>,
    ) -> Result<Result<Self, TileResumeError>, E> {
        let mut writer = Self {
            size,
            edges: Vec::new(),
            completed: Vec::new(),
        };
        let mut nodes = size;
        let mut level: u8 = 0;
        while nodes > 0 {
            let index = nodes / TILE_WIDTH as u64;
            let width = (nodes % TILE_WIDTH as u64) as usize;
            let hashes = if width == 0 {
                Vec::new()
            } else {
                let key = TileKey { level, index };
                match load(key)? {
                    None => return Ok(Err(TileResumeError::Missing { level, index, size })),
                    Some(mut h) => {
                        if h.len() < width {
                            return Ok(Err(TileResumeError::WrongWidth {
                                level,
                                index,
                                found: h.len(),
                                expected: width,
                                size,
                            }));
                        }
                        h.truncate(width);
                        h
                    }
                }
            };
            writer.edges.push(Edge {
                index,
                hashes,
                changed: false,
            });
            nodes /= TILE_WIDTH as u64;
            level = level.saturating_add(1);
        }
        Ok(Ok(writer))
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash (`merkle::leaf_hash` of the event hash).
    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut carry = leaf;
        let mut level = 0usize;
        loop {
            if self.edges.len() == level {
                self.edges.push(Edge::default());
            }
            let Some(edge) = self.edges.get_mut(level) else {
                return;
            };
            edge.hashes.push(carry);
            edge.changed = true;
            if edge.hashes.len() < TILE_WIDTH {
                return;
            }
            // The tile is full: store it once, and its root is the next level's new node.
            let hashes = std::mem::take(&mut edge.hashes);
            carry = mth(&hashes);
            self.completed.push(Tile {
                key: TileKey {
                    level: u8::try_from(level).unwrap_or(u8::MAX),
                    index: edge.index,
                },
                hashes,
            });
            edge.index += 1;
            edge.changed = false;
            level += 1;
        }
    }

    /// Every tile changed since the last call: tiles completed (full) and the current partial
    /// edge tiles that grew. Store all of them with the events pushed since the last call.
    pub fn take_changed(&mut self) -> Vec<Tile> {
        let mut out = std::mem::take(&mut self.completed);
        for (level, edge) in self.edges.iter_mut().enumerate() {
            if edge.changed && !edge.hashes.is_empty() {
                out.push(Tile {
                    key: TileKey {
                        level: u8::try_from(level).unwrap_or(u8::MAX),
                        index: edge.index,
                    },
                    hashes: edge.hashes.clone(),
                });
            }
            edge.changed = false;
        }
        out
    }

    /// Discards changes not yet taken (after a failed commit the caller resumes from the store
    /// instead; this is for callers that keep the writer).
    pub fn clear_changes(&mut self) {
        self.completed.clear();
        for edge in &mut self.edges {
            edge.changed = false;
        }
    }

    /// The root of the current tree, from the edge tiles only.
    pub fn root(&self) -> Hash {
        let mut src = EdgeSource { writer: self };
        crate::merkle::root(&mut src, self.size).unwrap_or_else(|_| crate::merkle::empty_root())
    }
}

/// Node source over a writer's edge tiles: enough for the root (every node of the right edge
/// lives in an edge tile), not for arbitrary proofs.
struct EdgeSource<'a> {
    writer: &'a TileWriter,
}

impl NodeSource for EdgeSource<'_> {
    type Error = ();

    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, ()> {
        let tile_level = level / TILE_HEIGHT;
        let edge = self.writer.edges.get(tile_level as usize).ok_or(())?;
        node_in_tile(level, index, edge.index, &edge.hashes).ok_or(())
    }
}

/// The node at tree `level`, `index`, computed from the tile at tile level `level / 8`,
/// position `tile_index`, with content `hashes`; `None` when the node is not inside that tile
/// or the tile is not wide enough to contain all of it.
pub fn node_in_tile(level: u32, index: u64, tile_index: u64, hashes: &[Hash]) -> Option<Hash> {
    let rel = level % TILE_HEIGHT;
    let first = index.checked_shl(rel)?; // first node on the tile's own level
    if first / TILE_WIDTH as u64 != tile_index {
        return None;
    }
    let offset = usize::try_from(first % TILE_WIDTH as u64).ok()?;
    let count = 1usize << rel;
    let slice = hashes.get(offset..offset.checked_add(count)?)?;
    Some(mth(slice))
}

/// The tile that holds node (`level`, `index`).
pub fn tile_for_node(level: u32, index: u64) -> Option<TileKey> {
    let tile_level = u8::try_from(level / TILE_HEIGHT).ok()?;
    let rel = level % TILE_HEIGHT;
    let first = index.checked_shl(rel)?;
    Some(TileKey {
        level: tile_level,
        index: first / TILE_WIDTH as u64,
    })
}

/// Why [`TileSource`] could not produce a node.
#[derive(Debug, thiserror::Error)]
pub enum TileSourceError<E> {
    /// Reading the tile failed.
    #[error("reading a Merkle tile failed")]
    Read(#[source] E),
    /// The tile is missing or too narrow for the requested node: the stored tree is damaged or
    /// shorter than the tree size asked about.
    #[error("Merkle node at level {level} index {index} is not stored")]
    Missing {
        /// Tree level.
        level: u32,
        /// Index on that level.
        index: u64,
    },
}

/// A [`NodeSource`] over stored tiles, reading each tile at most once while it is cached.
///
/// One source per proof reads each tile once per proof. One source kept across many proofs
/// against the same tree size (an export bundle's page of proofs) reads the tiles they share
/// once: neighbouring leaves share their level-0 tile and every upper tile. The cache holds at
/// most `capacity` tiles (8 KiB each) and starts over when full, so memory stays bounded
/// however many proofs the source serves.
pub struct TileSource<F> {
    load: F,
    cache: std::collections::HashMap<TileKey, Vec<Hash>>,
    capacity: usize,
    reads: usize,
    /// Interior nodes already computed from cached tiles. A node `r` levels above its tile's
    /// base costs `2^r - 1` hashes; a proof needs ~8 of them per tile level, and neighbouring
    /// proofs need the same upper ones. Dropped with the tiles.
    nodes: std::collections::HashMap<(u32, u64), Hash>,
}

/// Tiles a [`TileSource`] keeps unless told otherwise: ample for one proof (≤ 2 per level of
/// tiles) and for a page of neighbouring proofs (2 MiB).
const DEFAULT_TILE_CACHE: usize = 256;

impl<E, F: FnMut(TileKey) -> Result<Option<Vec<Hash>>, E>> TileSource<F> {
    /// A source that reads tiles with `load`.
    pub fn new(load: F) -> Self {
        Self::with_capacity(load, DEFAULT_TILE_CACHE)
    }

    /// A source that keeps at most `capacity` tiles (at least 16: one proof's worth).
    pub fn with_capacity(load: F, capacity: usize) -> Self {
        Self {
            load,
            cache: std::collections::HashMap::new(),
            capacity: capacity.max(16),
            reads: 0,
            nodes: std::collections::HashMap::new(),
        }
    }

    /// Tiles read so far (for metrics and tests of the O(log n) claim).
    pub fn tiles_read(&self) -> usize {
        self.reads
    }
}

impl<E, F: FnMut(TileKey) -> Result<Option<Vec<Hash>>, E>> NodeSource for TileSource<F> {
    type Error = TileSourceError<E>;

    fn subtree_hash(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let missing = TileSourceError::Missing { level, index };
        let Some(key) = tile_for_node(level, index) else {
            return Err(missing);
        };
        if let Some(node) = self.nodes.get(&(level, index)) {
            return Ok(*node);
        }
        if !self.cache.contains_key(&key) {
            let hashes = (self.load)(key)
                .map_err(TileSourceError::Read)?
                .unwrap_or_default();
            self.reads += 1;
            if self.cache.len() >= self.capacity {
                self.cache.clear();
                self.nodes.clear();
            }
            self.cache.insert(key, hashes);
        }
        let node = self
            .cache
            .get(&key)
            .and_then(|h| node_in_tile(level, index, key.index, h))
            .ok_or(missing)?;
        // Only complete nodes are asked for (a proof never names a partial one), so a node
        // computed once is final for every tree size that contains it.
        if !level.is_multiple_of(TILE_HEIGHT) {
            self.nodes.insert((level, index), node);
        }
        Ok(node)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::merkle::{
        MemoryTree, consistency_proof, inclusion_proof, leaf_hash, verify_consistency,
        verify_inclusion,
    };
    use std::collections::HashMap;

    fn leaf(i: u64) -> Hash {
        leaf_hash(&crate::integrity::sha256(&i.to_be_bytes()))
    }

    /// Builds a tiled tree of `n` leaves by pushing in batches, storing what `take_changed`
    /// returns, exactly as the writer does.
    fn build(n: u64, batch: u64) -> (HashMap<TileKey, Vec<Hash>>, TileWriter) {
        let mut store = HashMap::new();
        let mut w = TileWriter::new();
        let mut i = 0;
        while i < n {
            for _ in 0..batch.min(n - i) {
                w.push(leaf(i));
                i += 1;
            }
            for t in w.take_changed() {
                store.insert(t.key, t.hashes);
            }
        }
        (store, w)
    }

    #[test]
    fn roots_match_the_reference_for_many_sizes_and_batchings() {
        let mut mem = MemoryTree::new();
        let (store, _) = build(70_000, 97);
        for n in 0..70_000u64 {
            if n > 0 && !(n < 600 || n % 1013 == 0 || n == 65_536 || n == 65_535 || n == 65_537) {
                mem.push(leaf(n - 1));
                continue;
            }
            if n > 0 {
                mem.push(leaf(n - 1));
            }
            let mut src = TileSource::new(|k| Ok::<_, ()>(store.get(&k).cloned()));
            let got = crate::merkle::root(&mut src, n).unwrap();
            assert_eq!(got, mem.root(), "size {n}");
        }
    }

    #[test]
    fn writer_root_matches_memory_tree_after_every_push() {
        let mut mem = MemoryTree::new();
        let mut w = TileWriter::new();
        for i in 0..1_000 {
            w.push(leaf(i));
            mem.push(leaf(i));
            assert_eq!(w.root(), mem.root(), "size {}", i + 1);
        }
    }

    #[test]
    fn proofs_from_tiles_verify_and_read_few_tiles() {
        let n = 200_000u64;
        let (store, w) = build(n, 1000);
        let root = w.root();
        for &idx in &[0u64, 1, 255, 256, 65_535, 65_536, 123_457, n - 1] {
            let mut src = TileSource::new(|k| Ok::<_, ()>(store.get(&k).cloned()));
            let proof = inclusion_proof(&mut src, idx, n).unwrap();
            assert!(
                src.tiles_read() <= 6,
                "{} tiles for one proof",
                src.tiles_read()
            );
            verify_inclusion(idx, n, &leaf(idx), &proof, &root).unwrap();
        }
        let mut mem = MemoryTree::new();
        for i in 0..70_000 {
            mem.push(leaf(i));
        }
        let old_root = mem.root();
        let mut src = TileSource::new(|k| Ok::<_, ()>(store.get(&k).cloned()));
        let proof = consistency_proof(&mut src, 70_000, n).unwrap();
        verify_consistency(70_000, n, &old_root, &root, &proof).unwrap();
    }

    #[test]
    fn resume_continues_identically() {
        for n in [0u64, 1, 255, 256, 257, 65_536, 70_001] {
            let (store, w) = build(n, 33);
            let mut resumed = TileWriter::resume(n, |k| Ok::<_, ()>(store.get(&k).cloned()))
                .unwrap()
                .unwrap();
            assert_eq!(resumed.root(), w.root(), "size {n}");
            let (_, mut straight) = build(n, 33);
            for i in n..n + 600 {
                resumed.push(leaf(i));
                straight.push(leaf(i));
            }
            assert_eq!(resumed.root(), straight.root());
            assert_eq!(resumed.take_changed(), straight.take_changed());
        }
    }

    #[test]
    fn resume_reports_missing_or_short_edge_tiles() {
        let (mut store, _) = build(300, 300);
        let err = TileWriter::resume(301, |k| Ok::<_, ()>(store.get(&k).cloned()))
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, TileResumeError::WrongWidth { .. }), "{err}");
        store.clear();
        let err = TileWriter::resume(300, |k| Ok::<_, ()>(store.get(&k).cloned()))
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, TileResumeError::Missing { .. }), "{err}");
    }

    #[test]
    fn edge_tiles_lists_partial_rightmost_tiles() {
        assert!(TileWriter::edge_tiles(0).is_empty());
        assert_eq!(
            TileWriter::edge_tiles(257),
            vec![
                (TileKey { level: 0, index: 1 }, 1),
                (TileKey { level: 1, index: 0 }, 1)
            ]
        );
        assert_eq!(
            TileWriter::edge_tiles(65_536),
            vec![(TileKey { level: 2, index: 0 }, 1)]
        );
    }

    #[test]
    fn tile_bytes_round_trip_and_reject_damage() {
        let t = Tile {
            key: TileKey { level: 0, index: 0 },
            hashes: vec![[1; 32], [2; 32]],
        };
        assert_eq!(Tile::hashes_from_bytes(&t.to_bytes()).unwrap(), t.hashes);
        assert!(Tile::hashes_from_bytes(&[0; 33]).is_none());
        assert!(Tile::hashes_from_bytes(&[]).is_none());
        assert!(Tile::hashes_from_bytes(&vec![0; 257 * 32]).is_none());
    }
}

//! A map from key to per-key rule state that holds at most `capacity` keys and forgets the key
//! seen least recently when a new one needs room.
//!
//! Choice: an intrusive doubly linked list over a slab (`Vec` of slots linked by `u32`
//! indices, oldest to newest) plus a `HashMap` from key to slot. Touching a key unlinks its
//! slot and relinks it at the newest end; a new key at capacity takes over the oldest slot in
//! place. Both are O(1) with no allocation except the new key's name (an `Arc<str>` shared by
//! the map and the slot, so a key's text is stored once). A generation queue would allocate
//! on every touch and need periodic compaction; this needs neither. The map uses std's
//! randomly keyed SipHash: keys come from clients, so the hash must resist collision floods.

use std::collections::HashMap;
use std::sync::Arc;

/// No slot.
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<V> {
    key: Arc<str>,
    value: V,
    /// Towards the oldest end.
    older: u32,
    /// Towards the newest end.
    newer: u32,
}

/// Bounded key → state map, least recently seen evicted first.
#[derive(Debug)]
pub(super) struct KeyedLru<V> {
    index: HashMap<Arc<str>, u32>,
    slots: Vec<Slot<V>>,
    oldest: u32,
    newest: u32,
    capacity: usize,
}

impl<V> KeyedLru<V> {
    /// An empty map for at most `capacity` keys (at least 1, below `u32::MAX`).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            oldest: NIL,
            newest: NIL,
            capacity: capacity.clamp(1, (NIL - 1) as usize),
        }
    }

    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The state of `key`, without counting as a sighting.
    pub(super) fn get(&self, key: &str) -> Option<&V> {
        let at = *self.index.get(key)?;
        self.slots.get(at as usize).map(|s| &s.value)
    }

    /// The state of `key`, created with `make` when absent, marked as the most recently seen.
    /// At capacity, a new key evicts the least recently seen one.
    pub(super) fn touch(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.index.get(key) {
            Some(&at) => {
                self.unlink(at);
                at
            }
            None if self.slots.len() < self.capacity => {
                let at = u32::try_from(self.slots.len()).unwrap_or(NIL - 1);
                let key: Arc<str> = Arc::from(key);
                self.index.insert(Arc::clone(&key), at);
                self.slots.push(Slot {
                    key,
                    value: make(),
                    older: NIL,
                    newer: NIL,
                });
                at
            }
            None => {
                // Reuse the oldest slot in place.
                let at = self.oldest;
                self.unlink(at);
                let key: Arc<str> = Arc::from(key);
                let slot = &mut self.slots[at as usize];
                self.index.remove(&slot.key);
                slot.key = Arc::clone(&key);
                slot.value = make();
                self.index.insert(key, at);
                at
            }
        };
        self.link_newest(at);
        &mut self.slots[at as usize].value
    }

    /// Every key and state, least recently seen first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        let mut at = self.oldest;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.newer;
            Some((&*slot.key, &slot.value))
        })
    }

    /// Calls `f` on every key and state, least recently seen first, without changing the
    /// order.
    pub(super) fn for_each_mut(&mut self, mut f: impl FnMut(&str, &mut V)) {
        let mut at = self.oldest;
        while let Some(slot) = self.slots.get_mut(at as usize) {
            at = slot.newer;
            f(&slot.key, &mut slot.value);
        }
    }

    fn unlink(&mut self, at: u32) {
        let (older, newer) = {
            let slot = &self.slots[at as usize];
            (slot.older, slot.newer)
        };
        match self.slots.get_mut(older as usize) {
            Some(s) => s.newer = newer,
            None => self.oldest = newer,
        }
        match self.slots.get_mut(newer as usize) {
            Some(s) => s.older = older,
            None => self.newest = older,
        }
        let slot = &mut self.slots[at as usize];
        slot.older = NIL;
        slot.newer = NIL;
    }

    fn link_newest(&mut self, at: u32) {
        let previous = self.newest;
        {
            let slot = &mut self.slots[at as usize];
            slot.older = previous;
            slot.newer = NIL;
        }
        match self.slots.get_mut(previous as usize) {
            Some(s) => s.newer = at,
            None => self.oldest = at,
        }
        self.newest = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(map: &KeyedLru<u32>) -> Vec<String> {
        map.iter().map(|(k, _)| k.to_owned()).collect()
    }

    #[test]
    fn evicts_the_least_recently_seen_key() {
        let mut map = KeyedLru::new(3);
        for k in ["a", "b", "c"] {
            *map.touch(k, || 0) += 1;
        }
        *map.touch("a", || 0) += 1;
        assert_eq!(keys(&map), ["b", "c", "a"]);
        *map.touch("d", || 0) += 1;
        assert_eq!(keys(&map), ["c", "a", "d"]);
        assert_eq!(map.get("b"), None);
        assert_eq!(map.get("a"), Some(&2));
        assert_eq!(map.len(), 3);
        let mut seen = Vec::new();
        map.for_each_mut(|k, v| {
            *v += 10;
            seen.push(k.to_owned());
        });
        assert_eq!(seen, ["c", "a", "d"]);
        assert_eq!(map.get("d"), Some(&11));
    }

    #[test]
    fn capacity_one_and_repeated_touches() {
        let mut map = KeyedLru::new(1);
        for i in 0..100 {
            *map.touch(&format!("k{}", i % 3), || 0) += 1;
            *map.touch(&format!("k{}", i % 3), || 0) += 1;
            assert_eq!(map.len(), 1);
        }
        assert_eq!(map.get("k0"), Some(&2));
        let mut zero = KeyedLru::<u8>::new(0);
        zero.touch("x", || 1);
        assert_eq!(zero.len(), 1);
    }

    #[test]
    fn order_survives_many_moves() {
        let mut map = KeyedLru::new(50);
        let mut model: Vec<String> = Vec::new();
        let mut x: u64 = 7;
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 80);
            map.touch(&key, || 0);
            model.retain(|k| *k != key);
            model.push(key);
            if model.len() > 50 {
                model.remove(0);
            }
            assert_eq!(keys(&map), model);
        }
    }
}

//! Cache accounting and eviction policy, free of disks and clocks.
//!
//! The ledger knows, per content, how many bytes it holds against the cap, when it was
//! last used (milliseconds since the Unix epoch, passed in by the caller) and whether it
//! is pinned. It answers one question: which contents to evict, least recently used
//! first and never a pinned one, so that a new reservation fits under the cap.

use std::collections::HashMap;

use crate::id::ContentId;

/// What the ledger records about one content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// Bytes charged against the cap (content size plus its map and `have` files).
    pub bytes: u64,
    /// Last use (Unix milliseconds).
    pub last_access: u64,
    /// Pinned content is never evicted.
    pub pinned: bool,
}

/// Why a reservation cannot fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NoRoom {
    /// Bytes asked for.
    pub needed: u64,
    /// Cache cap (bytes).
    pub cap: u64,
    /// Bytes held by pinned content.
    pub pinned: u64,
}

/// Accounting of a cache: cap, items, and the bytes they hold.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    cap: u64,
    items: HashMap<ContentId, Item>,
    used: u64,
}

impl Ledger {
    /// An empty ledger with a cap (bytes).
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            items: HashMap::new(),
            used: 0,
        }
    }

    /// Cap (bytes).
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes charged by all items.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes charged by pinned items.
    pub fn pinned_bytes(&self) -> u64 {
        self.items
            .values()
            .filter(|i| i.pinned)
            .map(|i| i.bytes)
            .sum()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The record of one item.
    pub fn get(&self, id: &ContentId) -> Option<&Item> {
        self.items.get(id)
    }

    /// Adds (or replaces) an item.
    pub fn insert(&mut self, id: ContentId, item: Item) {
        if let Some(old) = self.items.insert(id, item) {
            self.used -= old.bytes;
        }
        self.used += item.bytes;
    }

    /// Removes an item; returns its record.
    pub fn remove(&mut self, id: &ContentId) -> Option<Item> {
        let old = self.items.remove(id)?;
        self.used -= old.bytes;
        Some(old)
    }

    /// Records a use at `now` (Unix ms). Time never goes back for an item, so a clock
    /// stepping backwards cannot make recent content look old.
    pub fn touch(&mut self, id: &ContentId, now: u64) {
        if let Some(i) = self.items.get_mut(id) {
            i.last_access = i.last_access.max(now);
        }
    }

    /// Pins or unpins an item; returns false if it is unknown.
    pub fn set_pinned(&mut self, id: &ContentId, pinned: bool) -> bool {
        match self.items.get_mut(id) {
            Some(i) => {
                i.pinned = pinned;
                true
            }
            None => false,
        }
    }

    /// Unpinned items, least recently used first (ties broken by id, so the order is
    /// deterministic).
    fn eviction_order(&self) -> Vec<(ContentId, Item)> {
        let mut v: Vec<_> = self
            .items
            .iter()
            .filter(|(_, i)| !i.pinned)
            .map(|(id, i)| (*id, *i))
            .collect();
        v.sort_by_key(|(id, i)| (i.last_access, *id));
        v
    }

    /// Which items to evict so that `needed` more bytes fit under the cap. Returns the
    /// victims in eviction order, or [`NoRoom`] (and evicts nothing) if even evicting
    /// every unpinned item is not enough.
    pub fn plan_room(&self, needed: u64) -> Result<Vec<ContentId>, NoRoom> {
        let no_room = NoRoom {
            needed,
            cap: self.cap,
            pinned: self.pinned_bytes(),
        };
        let limit = self.cap.checked_sub(needed).ok_or(no_room)?;
        let mut used = self.used;
        let mut victims = Vec::new();
        for (id, item) in self.eviction_order() {
            if used <= limit {
                break;
            }
            used -= item.bytes;
            victims.push(id);
        }
        if used <= limit {
            Ok(victims)
        } else {
            Err(no_room)
        }
    }

    /// Which items to evict to bring usage back under the cap (after the cap shrank).
    /// Pinned items stay even if they alone exceed the cap.
    pub fn plan_shrink(&self) -> Vec<ContentId> {
        let mut used = self.used;
        let mut victims = Vec::new();
        for (id, item) in self.eviction_order() {
            if used <= self.cap {
                break;
            }
            used -= item.bytes;
            victims.push(id);
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> ContentId {
        ContentId::from_bytes([n; 32])
    }

    fn item(bytes: u64, last_access: u64, pinned: bool) -> Item {
        Item {
            bytes,
            last_access,
            pinned,
        }
    }

    #[test]
    fn evicts_least_recently_used_first_and_skips_pins() {
        let mut l = Ledger::new(100);
        l.insert(id(1), item(30, 10, false));
        l.insert(id(2), item(30, 5, true));
        l.insert(id(3), item(30, 20, false));
        assert_eq!(l.used(), 90);
        // 10 free; 40 needed: evict one (the oldest unpinned is id 1, not pinned id 2).
        assert_eq!(l.plan_room(40), Ok(vec![id(1)]));
        // 70 needed: evict both unpinned.
        assert_eq!(l.plan_room(70), Ok(vec![id(1), id(3)]));
        // 71 needed: impossible because 30 bytes are pinned.
        assert_eq!(
            l.plan_room(71),
            Err(NoRoom {
                needed: 71,
                cap: 100,
                pinned: 30
            })
        );
        // Touching id 1 makes id 3 the oldest.
        l.touch(&id(1), 30);
        assert_eq!(l.plan_room(40), Ok(vec![id(3)]));
        // Time going back does not make id 1 older.
        l.touch(&id(1), 0);
        assert_eq!(l.plan_room(40), Ok(vec![id(3)]));
        assert_eq!(
            l.plan_room(101),
            Err(NoRoom {
                needed: 101,
                cap: 100,
                pinned: 30
            })
        );
        assert_eq!(l.plan_room(10), Ok(vec![]));
    }

    #[test]
    fn shrink_keeps_pins() {
        let mut l = Ledger::new(100);
        l.insert(id(1), item(80, 1, true));
        l.insert(id(2), item(80, 2, false));
        l.insert(id(3), item(10, 0, false));
        l = Ledger { cap: 50, ..l };
        assert_eq!(l.plan_shrink(), vec![id(3), id(2)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { n: u8, bytes: u64 },
        Touch { n: u8 },
        Pin { n: u8, pinned: bool },
        Remove { n: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0u64..400).prop_map(|(n, bytes)| Op::Reserve { n, bytes }),
            (0u8..12).prop_map(|n| Op::Touch { n }),
            (0u8..12, any::<bool>()).prop_map(|(n, pinned)| Op::Pin { n, pinned }),
            (0u8..12).prop_map(|n| Op::Remove { n }),
        ]
    }

    proptest! {
        /// Under any sequence of reservations, touches, pins and removals: usage never
        /// exceeds the cap, pinned items are never evicted, a refused reservation evicts
        /// nothing, and victims are always older than the survivors they were chosen over.
        #[test]
        fn cap_never_exceeded_and_pins_respected(ops in proptest::collection::vec(op(), 1..80)) {
            let mut l = Ledger::new(1000);
            let mut now = 0u64;
            for op in ops {
                now += 1;
                match op {
                    Op::Reserve { n, bytes } => {
                        if l.get(&id(n)).is_some() {
                            continue;
                        }
                        match l.plan_room(bytes) {
                            Ok(victims) => {
                                let unpinned_survivor_min = l.items.iter()
                                    .filter(|(k, i)| !i.pinned && !victims.contains(k))
                                    .map(|(_, i)| i.last_access)
                                    .min();
                                for v in &victims {
                                    let it = *l.get(v).unwrap();
                                    prop_assert!(!it.pinned, "evicted a pinned item");
                                    if let Some(m) = unpinned_survivor_min {
                                        prop_assert!(it.last_access <= m, "evicted a newer item");
                                    }
                                    l.remove(v);
                                }
                                l.insert(id(n), item(bytes, now, false));
                            }
                            Err(e) => {
                                prop_assert!(e.needed > e.cap - e.pinned.min(e.cap)
                                    || e.needed + e.pinned > e.cap);
                            }
                        }
                    }
                    Op::Touch { n } => l.touch(&id(n), now),
                    Op::Pin { n, pinned } => { l.set_pinned(&id(n), pinned); }
                    Op::Remove { n } => { l.remove(&id(n)); }
                }
                prop_assert!(l.used() <= l.cap());
                prop_assert_eq!(l.used(), l.items.values().map(|i| i.bytes).sum::<u64>());
            }
        }
    }
}

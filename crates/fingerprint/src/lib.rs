//! A set of 64-bit key fingerprints in one flat open-addressing table: the key set of dedupe
//! `keep = "first"` and the occurrence counting of LINE WORKS rows in `normalize`.
//!
//! A general-purpose hash set of 128-bit hashes cost 19–39 bytes per key (16-byte entries, a
//! control byte each, and a table that doubles). This one stores the 8-byte fingerprint alone,
//! with 0 reserved for an empty slot (a real 0 is stored as 1), and grows by ×1.5 when the load
//! passes 0.8, so the load stays between 0.53 and 0.8: **10 to 15 bytes per key**. A growth moves
//! the keys over chunk by chunk and hands the old table's pages back as it goes, so it costs no
//! more memory than the new table (see `rebuild`).
//!
//! Probing is linear; the home slot of a fingerprint is `fp × capacity / 2⁶⁴` ("fastrange"), so
//! any capacity works, not just powers of two. Removal shifts the following entries of the probe
//! run back instead of leaving tombstones, so lookups never slow down after removals.
//!
//! Why a crate of its own: two transforms use the set, and neither should depend on the other
//! (`normalize` would otherwise compile dedupe's spill and history code to count rows), nor does
//! the set belong in `chatlake-core`, the narrow waist every component compiles against. It has no
//! dependency at all, so the crate costs nothing to build.

/// A set of non-zero-mapped 64-bit fingerprints. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct FingerprintSet {
    /// 0 is an empty slot.
    slots: Vec<u64>,
    len: usize,
}

/// The capacity of the first table.
const MIN_CAPACITY: usize = 16;

impl FingerprintSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table has allocated.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u64>()
    }

    /// Allocated bytes per fingerprint held (0 when empty).
    pub fn bytes_per_key(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            self.memory_bytes() as f64 / self.len as f64
        }
    }

    /// Adds `fp`; true if it was not there.
    pub fn insert(&mut self, fp: u64) -> bool {
        let fp = nonzero(fp);
        // Grow before the load would pass 0.8: len + 1 > 0.8 × capacity.
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.rebuild((self.slots.len() + self.slots.len() / 2).max(MIN_CAPACITY));
        }
        self.insert_reserved(fp)
    }

    /// Adds every fingerprint of `fps` in order, telling `each` whether it was new, as
    /// [`insert`](Self::insert) one by one would. Faster on a table bigger than the CPU caches:
    /// the home slots of a group of fingerprints are loaded first, side by side, so their cache
    /// misses overlap instead of coming one after another.
    pub fn insert_many(&mut self, fps: &[u64], mut each: impl FnMut(bool)) {
        const GROUP: usize = 16;
        self.reserve(fps.len());
        for group in fps.chunks(GROUP) {
            let mut touched = 0u64;
            for &fp in group {
                touched ^= self.slots[self.home(nonzero(fp))];
            }
            std::hint::black_box(touched);
            for &fp in group {
                each(self.insert_reserved(nonzero(fp)));
            }
        }
    }

    /// Makes room for `additional` more fingerprints without growing.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed * 5 <= self.slots.len() * 4 {
            return;
        }
        let mut cap = self.slots.len().max(MIN_CAPACITY);
        while needed * 5 > cap * 4 {
            cap += cap / 2;
        }
        self.rebuild(cap);
    }

    /// `insert` once [`reserve`](Self::reserve) made room.
    fn insert_reserved(&mut self, fp: u64) -> bool {
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = fp;
                    self.len += 1;
                    return true;
                }
                s if s == fp => return false,
                _ => i = self.next(i),
            }
        }
    }

    pub fn contains(&self, fp: u64) -> bool {
        self.find(nonzero(fp)).is_some()
    }

    /// Removes `fp`; true if it was there.
    pub fn remove(&mut self, fp: u64) -> bool {
        let Some(mut hole) = self.find(nonzero(fp)) else {
            return false;
        };
        self.slots[hole] = 0;
        self.len -= 1;
        // Backward shift: walk the rest of the probe run and move back every entry whose home
        // slot is not between the hole and where it sits (cyclically), so that no lookup stops
        // at the hole before reaching its entry.
        let cap = self.slots.len();
        let mut j = hole;
        loop {
            j = self.next(j);
            let s = self.slots[j];
            if s == 0 {
                return true;
            }
            let home = self.home(s);
            let from_home = (j + cap - home) % cap;
            let from_hole = (j + cap - hole) % cap;
            if from_home >= from_hole {
                self.slots[hole] = s;
                self.slots[j] = 0;
                hole = j;
            }
        }
    }

    fn find(&self, fp: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                0 => return None,
                s if s == fp => return Some(i),
                _ => i = self.next(i),
            }
        }
    }

    /// The slot a fingerprint's probe starts at: `fp × capacity / 2⁶⁴`.
    fn home(&self, fp: u64) -> usize {
        ((fp as u128 * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// Moves every fingerprint into a new table of `cap` slots.
    ///
    /// A fingerprint's home slot is proportional to its value in any table, so the entries of
    /// the old table, read front to back, land in the new one front to back too, at about
    /// `cap / old capacity` times their old place. The move goes chunk by chunk: the pages of
    /// the new table a chunk will land on are faulted in writable just before (a page first
    /// read by a probe would be mapped to the shared zero page, and the write after it would
    /// cost a second fault and a TLB flush on every core: 5 % of the LINE WORKS job's time
    /// when done one by one), and the pages of the old chunk are handed back to the OS right
    /// after. So the two tables never hold much more memory together than the new one alone,
    /// where holding both at once made a growth cost 20 bytes per old slot (the largest step
    /// in the peak memory of a 10M-row job).
    fn rebuild(&mut self, cap: usize) {
        // `vec!` of zeros asks the allocator for zeroed memory, which the OS hands out lazily.
        let mut old = std::mem::replace(&mut self.slots, vec![0; cap]);
        let mut pages = pages::Pages::new(&mut self.slots);
        for start in (0..old.len()).step_by(MOVE_CHUNK) {
            let end = (start + MOVE_CHUNK).min(old.len());
            // Where this chunk's entries land, plus their probe runs (a few slots at load ≤ 0.53).
            let reach = ((end as u128 * cap as u128) / old.len() as u128) as usize + MOVE_CHUNK;
            pages.populate_new_until(&mut self.slots, reach.min(cap));
            for &fp in &old[start..end] {
                if fp == 0 {
                    continue;
                }
                let mut i = self.home(fp);
                while self.slots[i] != 0 {
                    i = self.next(i);
                }
                self.slots[i] = fp;
            }
            pages.release_old(&mut old, end);
        }
    }
}

/// Slots moved per step of a rebuild: 64 KiB of the old table.
const MOVE_CHUNK: usize = 8192;

/// The page work of a rebuild: faulting in the new table ahead of the move, handing the old
/// one back behind it. Only tables of at least [`pages::LARGE`] bytes take part (a smaller one
/// is not worth the system calls, and may share pages with other allocations); elsewhere, and
/// off Linux, the new table's pages are written once up front instead.
mod pages {
    /// Tables from this size on (the binary's allocator gives blocks of 4 MiB and more their
    /// own mapping).
    pub const LARGE: usize = 8 << 20;
    const PAGE: usize = 4096;

    pub struct Pages {
        /// New slots before this are faulted in.
        populated: usize,
        /// Old slots before this are handed back.
        released: usize,
        progressive: bool,
    }

    impl Pages {
        pub fn new(new: &mut [u64]) -> Self {
            let progressive = cfg!(target_os = "linux") && std::mem::size_of_val(new) >= LARGE;
            if !progressive {
                // Write to every page once now (see `rebuild`). `black_box`: the compiler
                // knows the memory is zero and would drop a plain 0.
                for slot in new.iter_mut().step_by(PAGE / std::mem::size_of::<u64>()) {
                    *slot = std::hint::black_box(0);
                }
            }
            Self {
                populated: 0,
                released: 0,
                progressive,
            }
        }

        /// Faults in the new table's pages up to slot `until`, keeping what they hold.
        pub fn populate_new_until(&mut self, new: &mut [u64], until: usize) {
            if !self.progressive || until <= self.populated {
                return;
            }
            advise(new, self.populated, until, Advice::PopulateWrite);
            self.populated = until;
        }

        /// Hands the old table's whole pages before slot `until` back to the OS.
        pub fn release_old(&mut self, old: &mut [u64], until: usize) {
            if !self.progressive {
                return;
            }
            advise(old, self.released, until, Advice::DontNeed);
            self.released = until;
        }
    }

    #[derive(Clone, Copy)]
    enum Advice {
        PopulateWrite,
        DontNeed,
    }

    /// `madvise` on the whole pages within `slots[from..until]`. Pages that straddle the ends
    /// are left alone: they may hold the allocator's own bookkeeping.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn advise(slots: &mut [u64], from: usize, until: usize, advice: Advice) {
        let base = slots.as_mut_ptr() as usize;
        let start = (base + from * 8).next_multiple_of(PAGE);
        let end = (base + until * 8) / PAGE * PAGE;
        if end <= start {
            return;
        }
        let advice = match advice {
            Advice::PopulateWrite => libc::MADV_POPULATE_WRITE,
            Advice::DontNeed => libc::MADV_DONTNEED,
        };
        // SAFETY: [start, end) is whole pages inside `slots`, borrowed mutably for the call.
        // Populating changes no byte. Handing pages back makes them read as zero, as a write
        // of zeros would: the caller reads no old slot before `until` again. A failure (a
        // kernel without MADV_POPULATE_WRITE, before 5.14) only loses the saving.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, advice);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn advise(_: &mut [u64], _: usize, _: usize, _: Advice) {}
}

/// 0 marks an empty slot, so a real 0 is stored as 1 (one more way to collide, at 2⁻⁶⁴).
fn nonzero(fp: u64) -> u64 {
    fp.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a reproducible stream of well-mixed numbers without a dependency.
    pub(crate) fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn insert_contains_remove() {
        let mut s = FingerprintSet::new();
        assert!(!s.contains(7));
        assert!(!s.remove(7));
        assert!(s.insert(7));
        assert!(!s.insert(7));
        assert!(s.contains(7));
        assert_eq!(s.len(), 1);
        assert!(s.remove(7));
        assert!(!s.contains(7));
        assert!(s.is_empty());
        // 0 is stored as 1: they are the same fingerprint.
        assert!(s.insert(0));
        assert!(s.contains(1));
        assert!(!s.insert(1));
        // The extremes of the fingerprint space land in the first and last slot.
        assert!(s.insert(u64::MAX));
        assert!(s.insert(u64::MAX - 1));
        assert!(s.contains(u64::MAX) && s.contains(u64::MAX - 1));
        assert!(s.remove(u64::MAX));
        assert!(s.contains(u64::MAX - 1));
    }

    #[test]
    fn insert_many_answers_as_insert_one_by_one_does() {
        let mut state = 11;
        // Repeats within a group, across groups, and of 0 / 1 (the same fingerprint).
        let mut fps: Vec<u64> = (0..5_000).map(|_| splitmix(&mut state) % 3_000).collect();
        fps.extend([0, 1, 0, u64::MAX, u64::MAX]);
        let mut one_by_one = FingerprintSet::new();
        let expected: Vec<bool> = fps.iter().map(|&fp| one_by_one.insert(fp)).collect();
        let mut many = FingerprintSet::new();
        let mut got = Vec::new();
        for batch in fps.chunks(777) {
            many.insert_many(batch, |new| got.push(new));
        }
        assert_eq!(got, expected);
        assert_eq!(many.len(), one_by_one.len());
        assert!(many.len() * 5 <= many.slots.len() * 4, "load stays ≤ 0.8");
        assert!(fps.iter().all(|&fp| many.contains(fp)));
    }

    #[test]
    fn grows_by_half_and_keeps_every_key() {
        let mut s = FingerprintSet::new();
        let mut caps = Vec::new();
        for i in 1..=10_000u64 {
            assert!(s.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            if caps.last() != Some(&s.slots.len()) {
                caps.push(s.slots.len());
            }
            assert!(s.len() * 5 <= s.slots.len() * 4, "load stays ≤ 0.8");
        }
        assert_eq!(&caps[..4], &[16, 24, 36, 54]);
        for i in 1..=10_000u64 {
            assert!(s.contains(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        assert!(!s.contains(0x1234_5678));
    }

    /// Clustered fingerprints (one home slot for many, runs that wrap around the end) exercise
    /// the backward shift; every operation is checked against `std`'s set.
    #[test]
    fn random_operations_agree_with_std() {
        for (seed, universe) in [(1u64, 64u64), (2, 1 << 12), (3, u64::MAX)] {
            let mut rng = seed;
            let mut ours = FingerprintSet::new();
            let mut reference = std::collections::HashSet::new();
            for step in 0..200_000 {
                let r = splitmix(&mut rng);
                // Small universes: many repeats. The largest one mixes random fingerprints with
                // a few hundred at the very top, whose probe runs wrap around the end.
                let fp = match universe {
                    u64::MAX if r.is_multiple_of(8) => u64::MAX - splitmix(&mut rng) % 300,
                    u64::MAX => splitmix(&mut rng),
                    n => splitmix(&mut rng) % n,
                };
                match (r >> 8) % 3 {
                    0 | 1 => assert_eq!(ours.insert(fp), reference.insert(fp.max(1)), "{step}"),
                    _ => assert_eq!(ours.remove(fp), reference.remove(&fp.max(1)), "{step}"),
                }
                assert_eq!(ours.len(), reference.len());
                if step % 1000 == 0 {
                    for &k in &reference {
                        assert!(ours.contains(k), "lost {k:#x} at step {step}");
                    }
                }
            }
            for &k in &reference {
                assert!(ours.contains(k));
            }
            assert_eq!(
                ours.slots.iter().filter(|&&s| s != 0).count(),
                reference.len()
            );
        }
    }

    /// Tables past `pages::LARGE` move chunk by chunk, faulting the new table in ahead and
    /// handing the old one back behind: every key survives, those whose probe runs wrap
    /// around the end included, through several growths.
    #[test]
    fn large_tables_keep_every_key_through_their_growths() {
        let mut s = FingerprintSet::new();
        let mut rng = 7;
        let mut keys = Vec::new();
        let mut large_growths = 0;
        let mut cap = 0;
        for i in 0..3_000_000u64 {
            // One in 64 at the very top of the fingerprint space: long runs that wrap.
            let fp = if i % 64 == 0 {
                u64::MAX - splitmix(&mut rng) % 50_000
            } else {
                splitmix(&mut rng)
            };
            s.insert(fp);
            keys.push(fp);
            if s.slots.len() != cap {
                cap = s.slots.len();
                if cap * 8 >= pages::LARGE {
                    large_growths += 1;
                }
            }
        }
        assert!(large_growths >= 2, "{large_growths}");
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(s.len(), keys.len());
        assert!(keys.iter().all(|&fp| s.contains(fp)));
        assert_eq!(s.slots.iter().filter(|&&x| x != 0).count(), keys.len());
    }

    /// The figure the crate docs state, measured on the allocation: at most 16 bytes per key at
    /// every size from 1,000 to 1,000,000 keys.
    #[test]
    fn at_most_16_bytes_per_key() {
        let mut s = FingerprintSet::new();
        let mut rng = 42;
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for i in 1..=1_000_000 {
            s.insert(splitmix(&mut rng));
            if i >= 1000 && i % 997 == 0 {
                lo = lo.min(s.bytes_per_key());
                hi = hi.max(s.bytes_per_key());
            }
        }
        assert_eq!(s.len(), 1_000_000);
        println!(
            "fingerprint set: {lo:.1} to {hi:.1} bytes per key; {:.2} at 1M keys",
            s.bytes_per_key()
        );
        assert!(s.bytes_per_key() <= 16.0);
        assert!(lo >= 10.0 && hi <= 16.0, "{lo} {hi}");
    }
}

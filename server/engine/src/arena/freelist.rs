//! The free ranges of one segment: best fit by size, coalescing by offset.
//!
//! Two indexes over the same set of free ranges:
//! - `by_offset` (offset → length) finds a freed range's neighbours, so a
//!   free merges with the range that ends where it starts and the range that
//!   starts where it ends — no two free ranges are ever adjacent;
//! - `by_size` ((length, offset)) finds the smallest range that fits, lowest
//!   offset among equals.
//!
//! Both are B-trees, so alloc and free are O(log n) in the number of free
//! ranges. The caller rounds lengths to the granule; this type only does the
//! bookkeeping and never touches memory.

use std::collections::{BTreeMap, BTreeSet};

/// Free ranges of a segment of `len` bytes.
#[derive(Debug)]
pub(super) struct FreeList {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free: u64,
}

impl FreeList {
    /// All of `len` bytes free, as one range.
    pub(super) fn new(len: u64) -> Self {
        let mut list = FreeList {
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            free: 0,
        };
        if len > 0 {
            list.insert(0, len);
        }
        list
    }

    /// The offset of a range of `len` (> 0) bytes taken from the smallest
    /// free range that holds it; `None` when no free range is that large.
    pub(super) fn alloc(&mut self, len: u64) -> Option<u64> {
        debug_assert!(len > 0);
        let &(found, offset) = self.by_size.range((len, 0)..).next()?;
        self.remove(offset, found);
        if found > len {
            // Keep the tail: the block's start is handed out, so successive
            // allocations from one big range pack towards low offsets.
            self.insert(offset + len, found - len);
        }
        Some(offset)
    }

    /// Returns `[offset, offset + len)`, merging it with free neighbours.
    pub(super) fn free(&mut self, mut offset: u64, mut len: u64) {
        debug_assert!(len > 0);
        if let Some((&prev, &prev_len)) = self.by_offset.range(..offset).next_back() {
            debug_assert!(prev + prev_len <= offset, "double free at {offset}");
            if prev + prev_len == offset {
                self.remove(prev, prev_len);
                offset = prev;
                len += prev_len;
            }
        }
        if let Some((&next, &next_len)) = self.by_offset.range(offset..).next() {
            debug_assert!(offset + len <= next, "double free at {offset}");
            if offset + len == next {
                self.remove(next, next_len);
                len += next_len;
            }
        }
        self.insert(offset, len);
    }

    /// Free bytes.
    #[cfg(test)]
    pub(super) fn free_bytes(&self) -> u64 {
        self.free
    }

    /// Length of the largest free range (0 when full).
    pub(super) fn largest(&self) -> u64 {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// Free ranges as (offset, length), by offset.
    #[cfg(test)]
    pub(super) fn ranges(&self) -> Vec<(u64, u64)> {
        self.by_offset.iter().map(|(&o, &l)| (o, l)).collect()
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
        self.free += len;
    }

    fn remove(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
        self.free -= len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_from_the_smallest_range_that_fits() {
        let mut f = FreeList::new(100);
        let a = f.alloc(10).unwrap();
        let b = f.alloc(30).unwrap();
        let c = f.alloc(10).unwrap();
        let d = f.alloc(20).unwrap();
        assert_eq!((a, b, c, d), (0, 10, 40, 50));
        f.free(b, 30); // hole of 30 at 10
        f.free(d, 20); // merges with the tail: 50..100 free
        assert_eq!(f.ranges(), vec![(10, 30), (50, 50)]);
        // 25 fits both holes; best fit takes the 30-byte one.
        assert_eq!(f.alloc(25), Some(10));
        // 40 fits only the tail.
        assert_eq!(f.alloc(40), Some(50));
        assert_eq!(f.ranges(), vec![(35, 5), (90, 10)]);
        assert_eq!(f.free_bytes(), 15);
        assert_eq!(f.largest(), 10);
        assert_eq!(f.alloc(11), None);
    }

    #[test]
    fn free_coalesces_with_both_neighbours() {
        let mut f = FreeList::new(40);
        let offs: Vec<u64> = (0..4).map(|_| f.alloc(10).unwrap()).collect();
        assert_eq!(offs, vec![0, 10, 20, 30]);
        assert_eq!(f.largest(), 0);
        f.free(0, 10);
        f.free(20, 10);
        assert_eq!(f.ranges(), vec![(0, 10), (20, 10)]);
        f.free(10, 10); // joins left and right
        assert_eq!(f.ranges(), vec![(0, 30)]);
        f.free(30, 10);
        assert_eq!(f.ranges(), vec![(0, 40)]);
        assert_eq!((f.free_bytes(), f.largest()), (40, 40));
    }

    #[test]
    fn ties_go_to_the_lowest_offset() {
        let mut f = FreeList::new(50);
        let offs: Vec<u64> = (0..5).map(|_| f.alloc(10).unwrap()).collect();
        f.free(offs[3], 10);
        f.free(offs[1], 10);
        assert_eq!(f.alloc(10), Some(10));
        assert_eq!(f.alloc(10), Some(30));
    }
}

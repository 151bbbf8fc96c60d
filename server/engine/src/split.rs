//! Splitting a byte range into the parts of a ranged fetch.

use std::ops::Range;

/// Parts of `range`, each `part_size` long except the last.
///
/// Invariants (property-tested): the parts are in order, contiguous, cover
/// `range` exactly, and none is empty or longer than `part_size`.
pub fn split(range: Range<u64>, part_size: u64) -> impl Iterator<Item = Range<u64>> {
    assert!(part_size > 0, "part size must be positive");
    let Range { start, end } = range;
    let count = end.saturating_sub(start).div_ceil(part_size);
    (0..count).map(move |i| {
        let s = start + i * part_size;
        s..(s + part_size).min(end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(split(0..10, 4).collect::<Vec<_>>(), vec![0..4, 4..8, 8..10]);
        assert_eq!(split(3..3, 4).count(), 0);
        assert_eq!(split(5..9, 4).collect::<Vec<_>>(), vec![5..9]);
    }

    proptest! {
        #[test]
        fn parts_cover_exactly_without_overlap(start in 0u64..1 << 40, len in 0u64..1 << 34, part in 1u64..1 << 26) {
            let parts: Vec<_> = split(start..start + len, part).collect();
            let mut at = start;
            for p in &parts {
                prop_assert_eq!(p.start, at, "gap or overlap");
                prop_assert!(p.end > p.start, "empty part");
                prop_assert!(p.end - p.start <= part, "part too long");
                at = p.end;
            }
            prop_assert_eq!(at, start + len, "does not reach the end");
            prop_assert_eq!(parts.len() as u64, len.div_ceil(part));
        }
    }
}

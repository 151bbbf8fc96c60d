//! Measuring the compression and dedup ratios of what was generated.
//!
//! Both are measured on the payload's blocks as they are made (the bytes
//! that were uploaded; format framing such as npy headers or TFRecord
//! fields is left out), as a store that dedups fixed 4 KiB blocks and then
//! compresses the distinct ones would see them:
//!
//! - dedup ratio = blocks / distinct blocks;
//! - compress ratio = bytes of distinct blocks / their size after zstd
//!   level 3, compressed in frames of 256 blocks (1 MiB).
//!
//! (zstd run over a whole object sees both: about R x D where copies fall
//! inside its window.)
//!
//! Memory stays bounded by sampling on content: a block is in the sample
//! when its CRC32C is below a threshold, so either every copy of a content
//! is in or none is, and the ratios of the sample estimate those of the
//! whole. Thresholds keep about 2^20 blocks (8 MiB of set) for dedup and
//! 8192 blocks (32 MiB) for compression; datasets smaller than these are
//! measured whole. Distinct blocks are told apart by their CRC32C and
//! CRC-32 together (64 bits).

use std::collections::{BTreeMap, HashSet};

/// Blocks kept for the dedup estimate.
const DEDUP_SAMPLE: u64 = 1 << 20;
/// Blocks kept for the compression estimate: 32 MiB, about 0.1 s of zstd.
const COMPRESS_SAMPLE: u64 = 8192;
/// Blocks per zstd frame: 1 MiB, a typical compressed block store's unit.
const FRAME_BLOCKS: usize = 256;
/// The level asked for.
const ZSTD_LEVEL: i32 = 3;

/// Which blocks are in the sample: CRC32C thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    dedup_below: u64,
    compress_below: u64,
}

impl Sampling {
    /// Thresholds for a dataset of `total_blocks` blocks.
    pub fn for_blocks(total_blocks: u64) -> Self {
        let below = |keep: u64| (1u64 << 32) / total_blocks.div_ceil(keep).max(1);
        Sampling {
            dedup_below: below(DEDUP_SAMPLE),
            compress_below: below(COMPRESS_SAMPLE),
        }
    }
}

/// What one object's blocks contributed.
#[derive(Debug, Default)]
pub struct Sample {
    blocks: u64,
    /// Sampled blocks: their 64-bit identity, and the bytes of those in
    /// the compression sample.
    sampled: Vec<(u64, Option<Vec<u8>>)>,
}

impl Sample {
    /// Counts a block, keeping it when the sampling says so.
    pub fn observe(&mut self, sampling: &Sampling, block: &[u8]) {
        self.blocks += 1;
        let crc = u64::from(crc32c::crc32c(block));
        if crc >= sampling.dedup_below {
            return;
        }
        let identity = crc << 32 | u64::from(crc32fast::hash(block));
        let bytes = (crc < sampling.compress_below).then(|| block.to_vec());
        self.sampled.push((identity, bytes));
    }

    /// Blocks seen.
    #[cfg(test)]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
}

/// The dataset's sample, merged from every object's.
#[derive(Debug, Default)]
pub struct Measure {
    blocks: u64,
    sampled: u64,
    distinct: HashSet<u64>,
    /// Distinct blocks of the compression sample, by identity (an order
    /// that does not depend on which object finished first).
    to_compress: BTreeMap<u64, Vec<u8>>,
}

/// The measured ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    pub compress: f64,
    pub dedup: f64,
    /// Blocks in the dedup sample, of `blocks`.
    pub sampled: u64,
    pub blocks: u64,
}

impl Measure {
    pub fn merge(&mut self, sample: Sample) {
        self.blocks += sample.blocks;
        self.sampled += sample.sampled.len() as u64;
        for (identity, bytes) in sample.sampled {
            if self.distinct.insert(identity)
                && let Some(bytes) = bytes
            {
                self.to_compress.insert(identity, bytes);
            }
        }
    }

    /// The ratios (1.0 where the sample is empty).
    pub fn ratios(&self) -> std::io::Result<Ratios> {
        let blocks: Vec<&[u8]> = self.to_compress.values().map(Vec::as_slice).collect();
        let (mut raw, mut packed) = (0usize, 0usize);
        for frame in blocks.chunks(FRAME_BLOCKS) {
            let data = frame.concat();
            raw += data.len();
            packed += zstd::bulk::compress(&data, ZSTD_LEVEL)?.len();
        }
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        Ok(Ratios {
            compress: ratio(raw, packed),
            dedup: ratio(self.sampled as usize, self.distinct.len()),
            sampled: self.sampled,
            blocks: self.blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::data::{BLOCK, Source};
    use super::*;

    fn measure(compress: f64, dedup: f64, total: u64) -> Ratios {
        let source = Source::new(11, compress, dedup, total);
        let sampling = Sampling::for_blocks(total);
        let mut measure = Measure::default();
        let mut sample = Sample::default();
        let mut block = [0u8; BLOCK];
        for g in 0..total {
            source.fill_block(g, &mut block);
            sample.observe(&sampling, &block);
        }
        measure.merge(sample);
        measure.ratios().unwrap()
    }

    #[test]
    fn measured_ratios_are_the_asked_ones() {
        for (compress, dedup) in [(1.0, 1.0), (2.0, 3.0), (4.0, 1.5), (10.0, 2.0)] {
            let ratios = measure(compress, dedup, 3000);
            assert_eq!(ratios.blocks, 3000);
            assert_eq!(ratios.sampled, 3000, "small datasets are measured whole");
            let off = |measured: f64, asked: f64| (measured / asked - 1.0).abs();
            assert!(off(ratios.compress, compress) < 0.03, "{ratios:?}");
            assert!(off(ratios.dedup, dedup) < 0.01, "{ratios:?}");
        }
    }

    #[test]
    fn large_datasets_are_sampled_by_content() {
        let sampling = Sampling::for_blocks(4 * DEDUP_SAMPLE);
        assert_eq!(sampling.dedup_below, 1 << 30);
        assert_eq!(sampling.compress_below, (1 << 32) / 512);
        let source = Source::new(2, 1.0, 2.0, 16_000);
        let small = Sampling {
            dedup_below: 1 << 30,
            compress_below: 1 << 28,
        };
        let (mut sample, mut block) = (Sample::default(), [0u8; BLOCK]);
        for g in 0..16_000 {
            source.fill_block(g, &mut block);
            sample.observe(&small, &block);
        }
        let mut measure = Measure::default();
        measure.merge(sample);
        let ratios = measure.ratios().unwrap();
        assert!((3_200..4_800).contains(&ratios.sampled), "{ratios:?}");
        assert!((ratios.dedup - 2.0).abs() < 0.03, "{ratios:?}");
    }
}

//! The bytes of generated samples: seeded, compressible and duplicated as
//! asked.
//!
//! Every object's payload (the concatenation of its samples' bytes) is cut
//! into blocks of [`BLOCK`] bytes from its start, the last one short. The
//! blocks of the whole dataset are numbered in object order (block `g`),
//! and each block's bytes depend on the seed and `g` only, so an object's
//! bytes never depend on which task made it or when.
//!
//! Dedup (ratio D): block `g` shows content `id = floor(x / D)` with `x =
//! (a * g + b) mod T`, T the dataset's block count and `a` coprime to T.
//! `x` runs over all of `0..T` once, so there are `ceil(T / D)` contents
//! each about D times, and the multiplier `a` (near 0.618 T) scatters the
//! copies of one content across objects instead of placing them side by
//! side. (A short last block shows only the start of its content, so it
//! rarely matches another: sizes that are multiples of 4 KiB dedup
//! exactly.)
//!
//! Compression (ratio R): a content is `round(4096 / R) - 4` bytes of
//! ChaCha8 keystream (incompressible; the keystream at `id * 4096` of the
//! seed's key) followed by zeros, which zstd codes in about 4 bytes (one
//! literal and a match): so a block compresses by about R, down to one
//! random byte a block.

use std::io::{self, Write};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::measure::{Sample, Sampling};

/// Bytes of a dedup and compression block: the page size, the unit of
/// fixed-block dedup in file systems and storage arrays.
pub const BLOCK: usize = 4096;

/// What zstd (level 3) spends on a block's run of zeros, measured: the
/// random part is shortened by this much so that whole blocks hit R.
const ZERO_RUN_COST: usize = 4;

/// The keyed generator of block contents.
#[derive(Debug, Clone)]
pub struct Source {
    keystream: ChaCha8Rng,
    /// Random bytes at the start of each content.
    random_len: usize,
    dedup_ratio: f64,
    total_blocks: u64,
    multiplier: u64,
    offset: u64,
}

impl Source {
    /// Contents for a dataset of `total_blocks` blocks.
    pub fn new(seed: u64, compress_ratio: f64, dedup_ratio: f64, total_blocks: u64) -> Self {
        let random_len = if compress_ratio <= 1.0 {
            BLOCK
        } else {
            let ideal = (BLOCK as f64 / compress_ratio).round() as usize;
            ideal.saturating_sub(ZERO_RUN_COST).max(1)
        };
        let total = total_blocks.max(1);
        let mut multiplier = ((total as f64 * 0.618_034) as u64).max(1);
        while gcd(multiplier, total) != 1 {
            multiplier += 1;
        }
        Source {
            keystream: ChaCha8Rng::from_seed(key(seed, *b"data")),
            random_len,
            dedup_ratio: dedup_ratio.max(1.0),
            total_blocks: total,
            multiplier,
            offset: seed % total,
        }
    }

    /// The content shown by dataset block `g`.
    pub fn content_id(&self, g: u64) -> u64 {
        let x = (u128::from(self.multiplier) * u128::from(g) + u128::from(self.offset))
            % u128::from(self.total_blocks);
        (x as f64 / self.dedup_ratio) as u64
    }

    /// Fills `out` (at most [`BLOCK`] bytes) with the start of block `g`.
    pub fn fill_block(&self, g: u64, out: &mut [u8]) {
        let random = self.random_len.min(out.len());
        let mut keystream = self.keystream.clone();
        // 4096 bytes of keystream per content: 1024 words of 4 bytes.
        keystream.set_word_pos(u128::from(self.content_id(g)) * (BLOCK as u128 / 4));
        keystream.fill_bytes(&mut out[..random]);
        out[random..].fill(0);
    }
}

/// A 32-byte ChaCha key from the seed and a domain tag, so that the
/// streams of different purposes never overlap.
pub fn key(seed: u64, domain: [u8; 4]) -> [u8; 32] {
    let mut key = [0; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..12].copy_from_slice(&domain);
    key[12..].copy_from_slice(b"sluice gen v1 key...");
    key
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The payload of one object, written out piece by piece; every block
/// made is shown to the measurement sample.
pub struct Payload<'a> {
    source: &'a Source,
    sampling: &'a Sampling,
    /// Dataset index of the payload's first block.
    first_block: u64,
    len: u64,
    position: u64,
    block: Box<[u8; BLOCK]>,
    /// Payload block held in `block`.
    held: Option<u64>,
    pub sample: Sample,
}

impl<'a> Payload<'a> {
    /// A payload of `len` bytes starting at dataset block `first_block`.
    pub fn new(source: &'a Source, sampling: &'a Sampling, first_block: u64, len: u64) -> Self {
        Payload {
            source,
            sampling,
            first_block,
            len,
            position: 0,
            block: Box::new([0; BLOCK]),
            held: None,
            sample: Sample::default(),
        }
    }

    /// Writes the next `n` bytes of the payload to `out`.
    pub fn write_to(&mut self, mut n: u64, out: &mut dyn Write) -> io::Result<()> {
        assert!(self.position + n <= self.len, "past the payload's end");
        while n > 0 {
            let index = self.position / BLOCK as u64;
            let block_len = (self.len - index * BLOCK as u64).min(BLOCK as u64) as usize;
            if self.held != Some(index) {
                let block = &mut self.block[..block_len];
                self.source.fill_block(self.first_block + index, block);
                self.sample.observe(self.sampling, block);
                self.held = Some(index);
            }
            let within = (self.position % BLOCK as u64) as usize;
            let take = (block_len - within).min(n as usize);
            out.write_all(&self.block[within..within + take])?;
            self.position += take as u64;
            n -= take as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn contents_cover_t_over_d_ids() {
        for (total, dedup) in [(1000u64, 1.0), (1000, 3.0), (4097, 2.5), (1, 4.0)] {
            let source = Source::new(9, 1.0, dedup, total);
            let ids: HashSet<u64> = (0..total).map(|g| source.content_id(g)).collect();
            assert_eq!(ids.len() as u64, (total as f64 / dedup).ceil() as u64);
        }
    }

    #[test]
    fn copies_of_a_content_are_scattered() {
        let source = Source::new(1, 1.0, 4.0, 10_000);
        let neighbours = (0..9_999)
            .filter(|&g| source.content_id(g) == source.content_id(g + 1))
            .count();
        assert!(neighbours < 10, "{neighbours} adjacent duplicates");
    }

    #[test]
    fn blocks_depend_on_seed_and_index_only() {
        let (a, b) = (Source::new(5, 2.0, 1.0, 64), Source::new(5, 2.0, 1.0, 64));
        let (mut x, mut y) = ([0u8; BLOCK], [0u8; BLOCK]);
        a.fill_block(17, &mut x);
        b.fill_block(17, &mut y);
        assert_eq!(x, y);
        Source::new(6, 2.0, 1.0, 64).fill_block(17, &mut y);
        assert_ne!(x, y);
        // Half random (less the zero run's cost), half zeros.
        assert!(x[BLOCK / 2..].iter().all(|&b| b == 0));
        assert!(
            x[..BLOCK / 2 - ZERO_RUN_COST]
                .iter()
                .filter(|&&b| b != 0)
                .count()
                > 1900
        );
    }

    #[test]
    fn payload_pieces_join_to_whole_blocks() {
        let source = Source::new(3, 1.0, 1.0, 16);
        let sampling = Sampling::for_blocks(16);
        let mut whole = Vec::new();
        Payload::new(&source, &sampling, 2, 10_000)
            .write_to(10_000, &mut whole)
            .unwrap();
        let mut pieces = Vec::new();
        let mut payload = Payload::new(&source, &sampling, 2, 10_000);
        for n in [1, 4095, 3000, 2904] {
            payload.write_to(n, &mut pieces).unwrap();
        }
        assert_eq!(pieces, whole);
        let mut block = [0u8; BLOCK];
        source.fill_block(3, &mut block);
        assert_eq!(&whole[BLOCK..2 * BLOCK], &block);
        assert_eq!(payload.sample.blocks(), 3);
    }
}

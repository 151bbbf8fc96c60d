//! `--size`: the sizes of generated samples, fixed or drawn.
//!
//! Grammar (SIZE is a number, decimals allowed, with an optional unit
//! B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of
//! 1024), case-insensitive; no unit is bytes):
//!
//! - `SIZE`: every sample that size, e.g. `128KiB`;
//! - `SIZE,SIZE,..`: the list cycled in order by sample index;
//! - `choice:SIZE,SIZE,..`: one of the list, drawn per sample;
//! - `uniform:MIN-MAX`: uniform between MIN and MAX, both included;
//! - `normal:MEAN,STDDEV`: normal, rounded, clipped at 1 byte.
//!
//! Draws come from the object's own generator, so a sample's size depends
//! on the seed and its index only.

use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::RngCore;

/// How samples are sized.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpec {
    /// One size.
    Fixed(u64),
    /// Sizes taken in turn by sample index.
    Cycle(Vec<u64>),
    /// A size drawn from the list per sample.
    Choice(Vec<u64>),
    /// Uniform over `min..=max`.
    Uniform { min: u64, max: u64 },
    /// Normal, clipped at 1 byte.
    Normal { mean: f64, stddev: f64 },
}

impl SizeSpec {
    /// The size of sample `sample` (the dataset-wide index), drawing from
    /// `rng` where the spec is random.
    pub fn draw(&self, sample: u64, rng: &mut ChaCha8Rng) -> u64 {
        match self {
            SizeSpec::Fixed(size) => *size,
            SizeSpec::Cycle(sizes) => sizes[(sample % sizes.len() as u64) as usize],
            SizeSpec::Choice(sizes) => sizes[below(rng, sizes.len() as u64) as usize],
            SizeSpec::Uniform { min, max } => min + below(rng, max - min + 1),
            SizeSpec::Normal { mean, stddev } => {
                let size = (mean + stddev * standard_normal(rng)).round();
                if size < 1.0 { 1 } else { size as u64 }
            }
        }
    }
}

/// Uniform in `0..n` (n > 0; n = 0 stands for 2^64), by the widening
/// multiply (bias below 2^-64 * n, negligible).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 53 random bits in (0, 1]: ln() needs a non-zero argument.
    let unit = |rng: &mut ChaCha8Rng| ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let (u1, u2) = (unit(rng), unit(rng));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl FromStr for SizeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let list = |s: &str| s.split(',').map(parse_size).collect::<Result<Vec<_>, _>>();
        if let Some(rest) = text.strip_prefix("choice:") {
            return Ok(SizeSpec::Choice(list(rest)?));
        }
        if let Some(rest) = text.strip_prefix("uniform:") {
            let (min, max) = rest
                .split_once('-')
                .ok_or_else(|| format!("{text:?}: expected uniform:MIN-MAX"))?;
            let (min, max) = (parse_size(min)?, parse_size(max)?);
            if min > max {
                return Err(format!("{text:?}: MIN is above MAX"));
            }
            return Ok(SizeSpec::Uniform { min, max });
        }
        if let Some(rest) = text.strip_prefix("normal:") {
            let (mean, stddev) = rest
                .split_once(',')
                .ok_or_else(|| format!("{text:?}: expected normal:MEAN,STDDEV"))?;
            return Ok(SizeSpec::Normal {
                mean: parse_size(mean)? as f64,
                stddev: parse_size(stddev)? as f64,
            });
        }
        let sizes = list(text)?;
        Ok(match sizes.as_slice() {
            [one] => SizeSpec::Fixed(*one),
            _ => SizeSpec::Cycle(sizes),
        })
    }
}

/// Parses `128KiB`, `1.5MB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a size (e.g. 4096, 128KiB, 1.5MB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    Ok((number * scale as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("128KiB"), Ok(128 << 10));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_size("2 gib"), Ok(2 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
    }

    #[test]
    fn specs_parse() {
        let parse = |s: &str| s.parse::<SizeSpec>();
        assert_eq!(parse("32MiB"), Ok(SizeSpec::Fixed(32 << 20)));
        assert_eq!(parse("1KiB,2KiB"), Ok(SizeSpec::Cycle(vec![1024, 2048])));
        assert_eq!(parse("choice:1,2"), Ok(SizeSpec::Choice(vec![1, 2])));
        assert_eq!(
            parse("uniform:64KiB-1MiB"),
            Ok(SizeSpec::Uniform {
                min: 64 << 10,
                max: 1 << 20
            })
        );
        assert_eq!(
            parse("normal:1MB,100KB"),
            Ok(SizeSpec::Normal {
                mean: 1e6,
                stddev: 1e5
            })
        );
        assert!(parse("uniform:2-1").is_err());
        assert!(parse("normal:5").is_err());
    }

    #[test]
    fn draws_stay_in_range_and_follow_the_spec() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cycle = SizeSpec::Cycle(vec![1, 2, 3]);
        let drawn: Vec<u64> = (0..5).map(|i| cycle.draw(i, &mut rng)).collect();
        assert_eq!(drawn, [1, 2, 3, 1, 2]);
        let uniform = SizeSpec::Uniform { min: 10, max: 12 };
        let drawn: Vec<u64> = (0..300).map(|i| uniform.draw(i, &mut rng)).collect();
        for size in 10..=12 {
            assert!(drawn.contains(&size), "{size} never drawn");
        }
        assert!(drawn.iter().all(|s| (10..=12).contains(s)));
        let normal = SizeSpec::Normal {
            mean: 1000.0,
            stddev: 100.0,
        };
        let drawn: Vec<u64> = (0..4000).map(|i| normal.draw(i, &mut rng)).collect();
        let mean = drawn.iter().sum::<u64>() as f64 / drawn.len() as f64;
        assert!((mean - 1000.0).abs() < 10.0, "mean {mean}");
        let clipped = SizeSpec::Normal {
            mean: 0.0,
            stddev: 5.0,
        };
        assert!((0..100).all(|i| clipped.draw(i, &mut rng) >= 1));
    }
}

//! The file formats of `sluice gen`: how an object's samples are laid out.
//!
//! | format     | object name             | holds                                          |
//! |------------|-------------------------|------------------------------------------------|
//! | `raw`      | `sample_NNNNNN.bin`     | the sample's bytes                             |
//! | `npy`      | `sample_NNNNNN.npy`     | a 1-D uint8 array of the sample                |
//! | `npz`      | `sample_NNNNNN.npz`     | `x.npy` (the sample) and `y.npy` (its label)   |
//! | `tfrecord` | `shard_NNNNNN.tfrecord` | `--records-per-file` `tf.train.Example`s       |
//!
//! A TFRecord example holds `image` (the sample's bytes) and `label`; the
//! other formats hold one sample per object. A sample's label is its
//! dataset-wide index modulo [`LABELS`].

use std::io::{self, Write};

use super::data::Payload;
use super::{example, numpy};

/// Labels run over `0..LABELS`, the class count of ImageNet-1k.
pub const LABELS: u64 = 1000;

/// The layout of generated objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The sample's bytes as they are.
    Raw,
    /// A NumPy `.npy` uint8 array.
    Npy,
    /// A NumPy `.npz` archive: `x` (uint8 array) and `y` (int64 label).
    Npz,
    /// A TFRecord file of `tf.train.Example`s (`image` bytes, `label` int64).
    Tfrecord,
}

/// One object: its samples and the dataset index of the first.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectPlan {
    pub first_sample: u64,
    pub samples: Vec<u64>,
}

impl ObjectPlan {
    /// Bytes of all its samples: the payload.
    pub fn payload_len(&self) -> u64 {
        self.samples.iter().sum()
    }

    fn label(&self, sample: usize) -> i64 {
        ((self.first_sample + sample as u64) % LABELS) as i64
    }
}

impl Format {
    /// Samples in each object.
    pub fn samples_per_object(self, records_per_file: u64) -> u64 {
        match self {
            Format::Tfrecord => records_per_file,
            _ => 1,
        }
    }

    /// The object's name below the prefix, its index padded to `width`.
    pub fn object_name(self, index: u64, width: usize) -> String {
        let (stem, ext) = match self {
            Format::Raw => ("sample", "bin"),
            Format::Npy => ("sample", "npy"),
            Format::Npz => ("sample", "npz"),
            Format::Tfrecord => ("shard", "tfrecord"),
        };
        format!("{stem}_{index:0width$}.{ext}")
    }

    /// Bytes of the object.
    pub fn object_size(self, plan: &ObjectPlan) -> u64 {
        let len = plan.payload_len();
        match self {
            Format::Raw => len,
            Format::Npy => numpy::npy_size(len),
            Format::Npz => numpy::npz_size(len),
            Format::Tfrecord => (0..plan.samples.len())
                .map(|i| example::record_size(plan.label(i), plan.samples[i]))
                .sum(),
        }
    }

    /// Why `plan` cannot be written in this format, if it cannot.
    pub fn check(self, plan: &ObjectPlan) -> Result<(), String> {
        if self == Format::Npz && self.object_size(plan) >= numpy::ZIP_LIMIT {
            return Err(format!(
                "a {}-byte sample makes an npz past 4 GiB (zip64 is not written)",
                plan.payload_len()
            ));
        }
        Ok(())
    }

    /// Writes the object, its samples' bytes taken from `payload`.
    pub fn write(
        self,
        plan: &ObjectPlan,
        payload: &mut Payload<'_>,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let len = plan.payload_len();
        match self {
            Format::Raw => payload.write_to(len, out),
            Format::Npy => {
                out.write_all(&numpy::npy_header("|u1", &[len]))?;
                payload.write_to(len, out)
            }
            Format::Npz => numpy::write_npz(out, len, plan.label(0), |w| payload.write_to(len, w)),
            Format::Tfrecord => {
                for (i, &size) in plan.samples.iter().enumerate() {
                    example::write_record(out, plan.label(i), size, |w| payload.write_to(size, w))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data::Source;
    use super::super::measure::Sampling;
    use super::*;

    #[test]
    fn written_objects_have_their_planned_sizes() {
        let plan = ObjectPlan {
            first_sample: 998,
            samples: vec![10_000, 0, 1, 70_000],
        };
        let source = Source::new(1, 2.0, 1.5, 64);
        let sampling = Sampling::for_blocks(64);
        for format in [Format::Raw, Format::Npy, Format::Npz, Format::Tfrecord] {
            let one = ObjectPlan {
                first_sample: 3,
                samples: vec![12_345],
            };
            let plan = if format == Format::Tfrecord {
                &plan
            } else {
                &one
            };
            let mut out = Vec::new();
            let mut payload = Payload::new(&source, &sampling, 0, plan.payload_len());
            format.write(plan, &mut payload, &mut out).unwrap();
            assert_eq!(out.len() as u64, format.object_size(plan), "{format:?}");
        }
    }

    #[test]
    fn labels_wrap_and_names_are_padded() {
        let plan = ObjectPlan {
            first_sample: 999,
            samples: vec![1, 1],
        };
        assert_eq!((plan.label(0), plan.label(1)), (999, 0));
        assert_eq!(Format::Npz.object_name(42, 6), "sample_000042.npz");
        assert_eq!(
            Format::Tfrecord.object_name(1_234_567, 6),
            "shard_1234567.tfrecord"
        );
    }

    #[test]
    fn npz_past_4_gib_is_refused() {
        let plan = ObjectPlan {
            first_sample: 0,
            samples: vec![5 << 30],
        };
        assert!(Format::Npz.check(&plan).is_err());
        assert!(Format::Npy.check(&plan).is_ok());
    }
}

//! Checking an image stream as it passes: the SHA-256 of everything, or per block-map range.

use std::sync::Arc;

use lazarus_node::index::{Chunk, ChunkIndex};
use lazarus_proto::Sha256;
use sha2::Digest;

use super::bmap::MappedRange;
use super::{is_zero, ImageError};

/// How an image is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The SHA-256 of every byte.
    Whole(Sha256),
    /// A SHA-256 per mapped range (sorted, disjoint); every other byte must be zero.
    Ranges(Vec<MappedRange>),
    /// A chunk index: each chunk (a hole, or a SHA-256) checked on its own, on any core.
    Index(Arc<ChunkIndex>),
}

impl Verification {
    pub(super) fn checker(&self) -> Checker<'_> {
        Checker {
            verify: self,
            sha: sha2::Sha256::new(),
            next_range: 0,
        }
    }
}

/// Consumes the stream in order.
pub(super) struct Checker<'a> {
    verify: &'a Verification,
    sha: sha2::Sha256,
    next_range: usize,
}

impl Checker<'_> {
    /// Feeds the bytes at `offset` (chunks arrive in order, without gaps); `hole`: they came
    /// from a hole of the image file, so they are zeros and need no zero check.
    pub(super) fn feed(&mut self, offset: u64, data: &[u8], hole: bool) -> Result<(), ImageError> {
        let ranges = match self.verify {
            Verification::Whole(_) => {
                self.sha.update(data);
                return Ok(());
            }
            Verification::Ranges(r) => r,
            Verification::Index(idx) => {
                let i = idx.chunk_at(offset);
                let r = idx.range(i);
                let known =
                    hole && idx.chunks()[i] == Chunk::Hole && r.end - r.start == data.len() as u64;
                if r.start != offset || !(known || idx.matches(i, data)) {
                    return Err(ImageError::ChunkMismatch {
                        chunk: i,
                        start: r.start,
                        end: r.end,
                    });
                }
                return Ok(());
            }
        };
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let slice = |a: u64, b: u64| &data[(a - offset) as usize..(b - offset) as usize];
            match ranges.get(self.next_range) {
                Some(r) if pos >= r.start => {
                    let stop = r.end.min(end);
                    self.sha.update(slice(pos, stop));
                    pos = stop;
                    if pos == r.end {
                        let got = Sha256(std::mem::take(&mut self.sha).finalize().into());
                        if got != r.sha256 {
                            return Err(ImageError::RangeMismatch {
                                start: r.start,
                                end: r.end,
                            });
                        }
                        self.next_range += 1;
                    }
                }
                next => {
                    let stop = next.map_or(end, |r| r.start.min(end));
                    let gap = slice(pos, stop);
                    if !hole && !is_zero(gap) {
                        let first = gap.iter().position(|&b| b != 0).unwrap_or(0);
                        return Err(ImageError::DataOutsideMap {
                            offset: pos + first as u64,
                        });
                    }
                    pos = stop;
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: the whole digest must match, or every range must have been seen.
    pub(super) fn finish(self) -> Result<(), ImageError> {
        match self.verify {
            Verification::Whole(expected) => {
                let got = Sha256(self.sha.finalize().into());
                if got != *expected {
                    return Err(ImageError::DigestMismatch {
                        expected: *expected,
                        got,
                    });
                }
                Ok(())
            }
            // The engine counts the chunks it saw.
            Verification::Index(_) => Ok(()),
            Verification::Ranges(ranges) => match ranges.get(self.next_range) {
                None => Ok(()),
                Some(r) => Err(ImageError::RangeMismatch {
                    start: r.start,
                    end: r.end,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(d: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(d).into())
    }

    fn image() -> (Vec<u8>, Vec<MappedRange>) {
        let mut img = vec![0u8; 64 * 1024];
        img[4096..12288].fill(7);
        img[40000..40010].fill(9);
        let ranges = vec![
            MappedRange {
                start: 4096,
                end: 12288,
                sha256: sha(&img[4096..12288]),
            },
            MappedRange {
                start: 36864,
                end: 40960,
                sha256: sha(&img[36864..40960]),
            },
        ];
        (img, ranges)
    }

    fn run(v: &Verification, img: &[u8], chunk: usize) -> Result<(), ImageError> {
        let mut c = v.checker();
        for (i, part) in img.chunks(chunk).enumerate() {
            c.feed((i * chunk) as u64, part, false)?;
        }
        c.finish()
    }

    #[test]
    fn ranges_verify_at_any_chunking() {
        let (img, ranges) = image();
        let v = Verification::Ranges(ranges);
        for chunk in [1000, 4096, 5000, 65536] {
            run(&v, &img, chunk).unwrap();
        }
    }

    #[test]
    fn a_changed_mapped_byte_or_data_in_a_hole_is_caught() {
        let (img, ranges) = image();
        let v = Verification::Ranges(ranges);
        let mut bad = img.clone();
        bad[5000] ^= 1;
        assert!(matches!(
            run(&v, &bad, 4096),
            Err(ImageError::RangeMismatch { start: 4096, .. })
        ));
        let mut bad = img.clone();
        bad[20000] = 1;
        assert!(matches!(
            run(&v, &bad, 4096),
            Err(ImageError::DataOutsideMap { offset: 20000 })
        ));
        assert!(matches!(
            run(&v, &img[..38000], 4096),
            Err(ImageError::RangeMismatch { start: 36864, .. })
        ));
    }

    #[test]
    fn whole_digest_checks_everything() {
        let (img, _) = image();
        run(&Verification::Whole(sha(&img)), &img, 3000).unwrap();
        assert!(run(&Verification::Whole(sha(&img[1..])), &img, 3000).is_err());
    }
}

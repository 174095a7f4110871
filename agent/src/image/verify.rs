//! Checking an image stream as it passes: the SHA-256 of everything, or per block-map range.

use std::sync::Arc;

use lazarus_node::index::{Chunk, ChunkIndex, Hasher};
use lazarus_proto::Sha256;

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
    /// How many checkers can share the stream: one per core for an index or a block map with
    /// more than one range (each range's digest is its own), else one.
    pub(super) fn checkers(&self) -> usize {
        let cores = super::cores(16);
        match self {
            Verification::Whole(_) => 1,
            Verification::Ranges(r) => cores.min(r.len()).max(1),
            Verification::Index(_) => cores,
        }
    }

    /// Which of `shares` checkers owns each block-map range (empty when one checker does it
    /// all): each range and the gap before it belong to one share, the ranges dealt largest
    /// first to the share with the fewest bytes, the trailing gap to share 0. Every share must
    /// see the whole stream in order; together they check every byte exactly once.
    pub(super) fn owners(&self, shares: usize) -> Vec<usize> {
        let Verification::Ranges(ranges) = self else {
            return Vec::new();
        };
        if shares < 2 {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ranges[i].end - ranges[i].start));
        let mut load = vec![0u64; shares];
        let mut owner = vec![0; ranges.len()];
        for i in order {
            let least = (0..shares).min_by_key(|&k| load[k]).unwrap_or(0);
            load[least] += ranges[i].end - ranges[i].start;
            owner[i] = least;
        }
        owner
    }

    /// The checker for `share`, given [`Verification::owners`].
    pub(super) fn checker<'a>(&'a self, share: usize, owners: &'a [usize]) -> Checker<'a> {
        Checker {
            verify: self,
            sha: Hasher::default(),
            next_range: 0,
            share,
            owner: owners,
        }
    }
}

/// Consumes the stream in order.
pub(super) struct Checker<'a> {
    verify: &'a Verification,
    sha: Hasher,
    next_range: usize,
    /// Which share this checker is, and each block-map range's share (empty: all are ours).
    share: usize,
    owner: &'a [usize],
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
            // Whether the range at or after `pos` (and the gap before it) is this share's.
            let mine = match self.owner.get(self.next_range) {
                Some(&owner) => owner == self.share,
                // One checker for everything, or the trailing gap (share 0's).
                None => self.owner.is_empty() || self.share == 0,
            };
            match ranges.get(self.next_range) {
                Some(r) if pos >= r.start => {
                    let stop = r.end.min(end);
                    if mine {
                        self.sha.update(slice(pos, stop));
                    }
                    pos = stop;
                    if pos == r.end {
                        let sha = std::mem::take(&mut self.sha);
                        if mine && sha.finalize() != r.sha256 {
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
                    if mine && !hole && !is_zero(gap) {
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
                let got = self.sha.finalize();
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
    use sha2::Digest;

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
        let mut c = v.checker(0, &[]);
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

    /// An image of 32 blocks of 4 KiB, mapped where `map` has a bit set (runs merged into
    /// ranges), with noise in the mapped blocks.
    fn mapped(map: u32, seed: u8) -> (Vec<u8>, Vec<MappedRange>) {
        const B: usize = 4096;
        let mut img = vec![0u8; 32 * B];
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < 32 {
            if map & (1 << i) == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < 32 && map & (1 << i) != 0 {
                i += 1;
            }
            for (n, b) in img[start * B..i * B].iter_mut().enumerate() {
                *b = (n as u8).wrapping_mul(31).wrapping_add(seed) | 1;
            }
            ranges.push(MappedRange {
                start: (start * B) as u64,
                end: (i * B) as u64,
                sha256: sha(&img[start * B..i * B]),
            });
        }
        (img, ranges)
    }

    fn run_share(
        v: &Verification,
        img: &[u8],
        chunk: usize,
        share: usize,
        shares: usize,
    ) -> Result<(), ImageError> {
        let owners = v.owners(shares);
        let mut c = v.checker(share, &owners);
        for (i, part) in img.chunks(chunk).enumerate() {
            c.feed((i * chunk) as u64, part, false)?;
        }
        c.finish()
    }

    /// Where the last mapped range ends.
    fn v_end(v: &Verification) -> usize {
        match v {
            Verification::Ranges(r) => r.last().map_or(0, |r| r.end as usize),
            _ => 0,
        }
    }

    proptest::proptest! {
        /// Shares of a block map's check, each fed the whole stream, together check every byte
        /// exactly once: an intact image passes every share, and one changed byte (in a range
        /// or a gap) fails exactly one share, with the error a single checker gives.
        #[test]
        fn block_map_shares_check_every_byte_exactly_once(
            map: u32,
            seed: u8,
            shares in 1usize..5,
            chunk in 1000usize..40_000,
            at in 0usize..32 * 4096,
        ) {
            let (img, ranges) = mapped(map, seed);
            let v = Verification::Ranges(ranges);
            for share in 0..shares {
                proptest::prop_assert!(run_share(&v, &img, chunk, share, shares).is_ok());
            }
            let mut bad = img.clone();
            bad[at] ^= 0x80;
            let alone = format!("{:?}", run_share(&v, &bad, chunk, 0, 1).unwrap_err());
            let failed: Vec<String> = (0..shares)
                .filter_map(|share| run_share(&v, &bad, chunk, share, shares).err())
                .map(|e| format!("{e:?}"))
                .collect();
            proptest::prop_assert_eq!(failed, vec![alone]);
            // A stream cut short before the end of the last range fails every share.
            let last = v_end(&v);
            if at < last {
                for share in 0..shares {
                    proptest::prop_assert!(run_share(&v, &img[..at], chunk, share, shares).is_err());
                }
            }
        }
    }

    #[test]
    fn whole_digest_checks_everything() {
        let (img, _) = image();
        run(&Verification::Whole(sha(&img)), &img, 3000).unwrap();
        assert!(run(&Verification::Whole(sha(&img[1..])), &img, 3000).is_err());
    }
}

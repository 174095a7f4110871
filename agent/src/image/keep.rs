//! Target ranges a copy leaves as they are: the flag record's slots inside a whole-disk image's
//! range. Their image bytes are still read and verified, but never written, zeroed or punched,
//! so the agent's current record stays on the disk through the copy (and a stale record captured
//! in the image never lands there).

use std::io;
use std::ops::Range;

use super::buf::ALIGN;
use super::Target;

/// Sorted, disjoint target ranges the copy must not touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept(Vec<Range<u64>>);

impl Kept {
    /// The ranges `ranges`, sorted and merged; empty ones dropped.
    pub fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        v.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        Self(out)
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parts of `range` outside every kept range, in order.
    pub fn outside(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = range.start;
        for k in &self.0 {
            if k.end <= at {
                continue;
            }
            if k.start >= range.end {
                break;
            }
            if k.start > at {
                out.push(at..k.start);
            }
            at = at.max(k.end);
        }
        if at < range.end {
            out.push(at..range.end);
        }
        out
    }

    /// Whether `range` overlaps a kept range widened to whole `ALIGN` blocks (what a punch must
    /// leave out, since block devices punch only aligned ranges).
    pub fn touches_block_of(&self, range: Range<u64>) -> bool {
        let a = ALIGN as u64;
        self.0
            .iter()
            .any(|k| k.start / a * a < range.end && range.start < k.end.div_ceil(a) * a)
    }

    /// fallocate(PUNCH_HOLE) of `range` but the aligned blocks holding kept ranges; true when every
    /// piece now reads back zero.
    pub fn punch(&self, target: &Target, range: Range<u64>) -> bool {
        let a = ALIGN as u64;
        let widened = Kept::new(
            self.0
                .iter()
                .map(|k| k.start / a * a..k.end.div_ceil(a) * a),
        );
        widened
            .outside(range)
            .into_iter()
            .all(|r| target.punch_zeroes(r.start, r.end - r.start))
    }

    /// Writes zeros over `range` but the kept ranges.
    pub fn write_zeroes(&self, target: &Target, range: Range<u64>) -> io::Result<()> {
        for r in self.outside(range) {
            target.write_zeroes(r.start, r.end - r.start)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_cuts_kept_ranges_out() {
        let k = Kept::new([10..20, 30..40, 15..25]);
        assert_eq!(k.ranges(), &[10..25, 30..40]);
        assert_eq!(k.outside(0..50), vec![0..10, 25..30, 40..50]);
        assert_eq!(k.outside(12..35), vec![25..30]);
        assert_eq!(k.outside(12..22), Vec::<Range<u64>>::new());
        assert_eq!(Kept::default().outside(3..9), vec![3..9]);
        assert!(!k.touches_block_of(4096..8192));
        assert!(k.touches_block_of(0..1));
    }
}

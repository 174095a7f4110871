//! Block maps (`.bmap` files of bmaptool, format 2.x): which ranges of an image hold data, with
//! a SHA-256 per range.
//!
//! Users of sparse images already have these. With one, the copy engine hashes only the mapped
//! ranges (checking each against its digest as soon as it has streamed) and checks that every
//! unmapped byte is zero, instead of hashing gigabytes of holes. The map itself is trusted only
//! through the SHA-256 the (authenticated) plan gives for it.
//!
//! Only the elements the engine needs are read: `bmap version`, `ImageSize`, `BlockSize`,
//! `ChecksumType` (must be sha256) and the `Range` list. Comments are skipped.

use lazarus_proto::Sha256;

/// A mapped byte range `[start, end)` and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    pub start: u64,
    pub end: u64,
    pub sha256: Sha256,
}

/// A parsed block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Sorted, non-overlapping, within the image.
    pub ranges: Vec<MappedRange>,
}

/// Why a block map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmapError {
    #[error("bmap: missing <{0}>")]
    Missing(&'static str),
    #[error("bmap: invalid {0}")]
    Invalid(String),
    #[error("bmap: format version {0} is not supported (need 2.x with sha256)")]
    Version(String),
}

impl Bmap {
    /// Parses a `.bmap` file's text.
    pub fn parse(text: &str) -> Result<Self, BmapError> {
        let text = strip_comments(text);
        let version = attr(&text, "<bmap", "version").ok_or(BmapError::Missing("bmap version"))?;
        if !version.starts_with("2.") {
            return Err(BmapError::Version(version.to_string()));
        }
        let number = |tag: &'static str| -> Result<u64, BmapError> {
            element(&text, tag)
                .ok_or(BmapError::Missing(tag))?
                .trim()
                .parse()
                .map_err(|_| BmapError::Invalid(tag.to_string()))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if !block_size.is_power_of_two() || block_size < 512 || image_size == 0 {
            return Err(BmapError::Invalid("ImageSize or BlockSize".into()));
        }
        let kind = element(&text, "ChecksumType").ok_or(BmapError::Missing("ChecksumType"))?;
        if kind.trim() != "sha256" {
            return Err(BmapError::Version(format!(
                "{version} with checksum {}",
                kind.trim()
            )));
        }
        let map = element(&text, "BlockMap").ok_or(BmapError::Missing("BlockMap"))?;
        let mut ranges = Vec::new();
        let mut rest = map;
        while let Some(at) = rest.find("<Range") {
            rest = &rest[at..];
            let open_end = rest
                .find('>')
                .ok_or_else(|| BmapError::Invalid("Range".into()))?;
            let close = rest
                .find("</Range>")
                .ok_or_else(|| BmapError::Invalid("Range".into()))?;
            let digest = attr(&rest[..open_end], "<Range", "chksum")
                .and_then(Sha256::from_hex)
                .ok_or_else(|| BmapError::Invalid("Range chksum".into()))?;
            let span = rest[open_end + 1..close].trim();
            let (first, last) = match span.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (span, span),
            };
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| BmapError::Invalid(format!("Range {span}")))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            let start = first
                .checked_mul(block_size)
                .ok_or_else(|| BmapError::Invalid(format!("Range {span}")))?;
            let end = last
                .checked_add(1)
                .and_then(|l| l.checked_mul(block_size))
                .ok_or_else(|| BmapError::Invalid(format!("Range {span}")))?
                .min(image_size);
            if last < first
                || start >= image_size
                || ranges.last().is_some_and(|r: &MappedRange| r.end > start)
            {
                return Err(BmapError::Invalid(format!(
                    "Range {span} (out of order, overlapping or past the image)"
                )));
            }
            ranges.push(MappedRange {
                start,
                end,
                sha256: digest,
            });
            rest = &rest[close + "</Range>".len()..];
        }
        Ok(Self {
            image_size,
            block_size,
            ranges,
        })
    }

    /// Bytes the map says hold data.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<!--") {
        out.push_str(&rest[..at]);
        match rest[at..].find("-->") {
            Some(end) => rest = &rest[at + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// The text inside `<tag>…</tag>`.
fn element<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(&text[start..end])
}

/// The value of attribute `name` in the first element starting with `opening`.
fn attr<'a>(text: &'a str, opening: &str, name: &str) -> Option<&'a str> {
    let at = text.find(opening)?;
    let tag = &text[at..at + text[at..].find('>').unwrap_or(text.len() - at)];
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(&tag[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" ?>
<!-- a comment with <Range chksum="x"> 1-2 </Range> inside -->
<bmap version="2.0">
    <ImageSize> 20971520 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 5120 </BlocksCount>
    <MappedBlocksCount> 4    </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> bb8bc35106795589a56d8f11e740c2fe90a709fe4a59d74c91299bc387758f09 </BmapFileChecksum>
    <BlockMap>
        <Range chksum="9af6dfe81ad0a55bf41d0fa3b5cd7a4174e3139b5f547ba952a9f071030bf541"> 100-102 </Range>
        <Range chksum="6a2eaf5e69aa3bac6ea4da6994f657c05c17b8ecac1d470e46a944e8fe6e2b2d"> 1000 </Range>
    </BlockMap>
</bmap>"#;

    #[test]
    fn parses_a_bmaptool_map() {
        let m = Bmap::parse(SAMPLE).unwrap();
        assert_eq!((m.image_size, m.block_size), (20_971_520, 4096));
        assert_eq!(m.ranges.len(), 2);
        assert_eq!(
            (m.ranges[0].start, m.ranges[0].end),
            (100 * 4096, 103 * 4096)
        );
        assert_eq!(
            (m.ranges[1].start, m.ranges[1].end),
            (1000 * 4096, 1001 * 4096)
        );
        assert_eq!(m.mapped_bytes(), 4 * 4096);
        assert_eq!(
            m.ranges[1].sha256.to_hex(),
            "6a2eaf5e69aa3bac6ea4da6994f657c05c17b8ecac1d470e46a944e8fe6e2b2d"
        );
    }

    #[test]
    fn refuses_old_formats_and_broken_maps() {
        assert!(matches!(
            Bmap::parse(&SAMPLE.replace("2.0", "1.4")),
            Err(BmapError::Version(_))
        ));
        assert!(matches!(
            Bmap::parse(&SAMPLE.replace("sha256 <", "sha1 <")),
            Err(BmapError::Version(_))
        ));
        assert!(Bmap::parse(&SAMPLE.replace("100-102", "102-100")).is_err());
        assert!(
            Bmap::parse(&SAMPLE.replace("> 1000 <", "> 101 <")).is_err(),
            "overlap accepted"
        );
        assert!(
            Bmap::parse(&SAMPLE.replace("> 1000 <", "> 9000 <")).is_err(),
            "range past the image"
        );
        assert!(Bmap::parse(&SAMPLE.replace("9af6", "zzzz")).is_err());
        assert!(Bmap::parse(&SAMPLE.replace("<BlockSize> 4096", "<BlockSize> 1000")).is_err());
        assert!(Bmap::parse("").is_err());
        assert!(Bmap::parse("<bmap version=\"2.0\">").is_err());
    }
}

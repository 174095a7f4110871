//! `lazarus image index IMAGE -o IMAGE.idx`: builds an image's chunk index on every core and
//! writes it atomically (temp name, fsync, rename); prints the lines a plan or cluster file needs.

use std::io::Write;
use std::path::Path;

use lazarus_node::index::{self, ChunkIndex};

/// Errors of the image commands.
#[derive(Debug, thiserror::Error)]
pub enum ImageCmdError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}: {1}")]
    Index(String, index::IndexError),
}

/// Builds the index of `image` with chunks of `chunk` bytes on `threads` threads, writes it to
/// `out`; returns the summary printed to the operator.
pub fn build_index(
    image: &Path,
    out: &Path,
    chunk: u32,
    threads: usize,
) -> Result<String, ImageCmdError> {
    let start = std::time::Instant::now();
    let idx = index::build(image, chunk, threads)
        .map_err(|e| ImageCmdError::Read(image.display().to_string(), e))?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = idx.encode();
    let tmp = out.with_extension("idx.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(|e| ImageCmdError::Write(out.display().to_string(), e))?;
    let holes = idx
        .chunks()
        .iter()
        .filter(|c| **c == index::Chunk::Hole)
        .count();
    Ok(format!(
        "indexed {} bytes in {} chunks of {} bytes ({holes} holes) on {threads} threads in \
         {secs:.2} s ({:.0} MB/s)\nindex = {{ path = \"{}\", sha256 = \"{}\" }}",
        idx.image_size(),
        idx.len(),
        idx.chunk_size(),
        idx.image_size() as f64 / secs.max(1e-9) / 1e6,
        out.display(),
        index::sha256(&bytes)
    ))
}

/// Checks an index file (its own checksum and fields) and, given the image, every chunk.
pub fn check_index(idx_path: &Path, image: Option<&Path>) -> Result<String, ImageCmdError> {
    let bytes = std::fs::read(idx_path)
        .map_err(|e| ImageCmdError::Read(idx_path.display().to_string(), e))?;
    let idx = ChunkIndex::decode(&bytes)
        .map_err(|e| ImageCmdError::Index(idx_path.display().to_string(), e))?;
    let mut line = format!(
        "{}: version {}, {} chunks of {} bytes, image {} bytes, sha256 {}",
        idx_path.display(),
        if idx.frame(0).is_some() {
            index::VERSION_PACKED
        } else {
            index::VERSION
        },
        idx.len(),
        idx.chunk_size(),
        idx.image_size(),
        index::sha256(&bytes)
    );
    if let Some(image) = image {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let fresh = index::build(image, idx.chunk_size(), threads)
            .map_err(|e| ImageCmdError::Read(image.display().to_string(), e))?;
        let differ = if fresh.image_size() != idx.image_size() {
            idx.len()
        } else {
            (0..idx.len())
                .filter(|&i| fresh.chunks()[i] != idx.chunks()[i])
                .count()
        };
        if differ > 0 {
            return Err(ImageCmdError::Read(
                image.display().to_string(),
                std::io::Error::other(format!("{differ} chunks differ from the index")),
            ));
        }
        line.push_str(&format!("; {} matches it", image.display()));
    }
    Ok(line)
}

/// Packs `image` as seekable zstd (one frame per chunk) into `out`, with its packed index in
/// `index_out`; returns the summary printed to the operator.
pub fn pack(
    image: &Path,
    out: &Path,
    index_out: &Path,
    chunk: u32,
    threads: usize,
) -> Result<String, ImageCmdError> {
    let start = std::time::Instant::now();
    let tmp = out.with_extension("zst.tmp");
    let write_err = |e| ImageCmdError::Write(out.display().to_string(), e);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(write_err)?);
    let idx = index::pack(image, &mut file, chunk, threads)
        .map_err(|e| ImageCmdError::Read(image.display().to_string(), e))?;
    let file = file.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, out).map_err(write_err)?;
    let packed = std::fs::metadata(out).map_err(write_err)?.len();
    let bytes = idx.encode();
    let itmp = index_out.with_extension("idx.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&itmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&itmp, index_out)
    };
    write().map_err(|e| ImageCmdError::Write(index_out.display().to_string(), e))?;
    Ok(format!(
        "packed {} bytes into {packed} ({} frames of {} bytes each, {threads} threads, {:.2} s)\n\
         format = \"zstd\"\nindex = {{ path = \"{}\", sha256 = \"{}\" }}",
        idx.image_size(),
        idx.len(),
        idx.chunk_size(),
        start.elapsed().as_secs_f64(),
        index_out.display(),
        index::sha256(&bytes)
    ))
}

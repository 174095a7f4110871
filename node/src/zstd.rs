//! A `Read` over a zstd stream of any number of frames (as `zstd`, `pzstd` and concatenation
//! produce), skipping skippable frames, in pure Rust (ruzstd).

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::FrameDecoderError;
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Decompresses every frame of `source` in sequence.
pub struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    pub fn new(source: R) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Like [`ZstdFrames::new`], refusing frames whose window (the memory the decoder reserves)
    /// is over `max` bytes (ruzstd's own default is 128 MiB).
    pub fn with_max_window(source: R, max: u64) -> Self {
        let mut frames = Self::new(source);
        frames.decoder.set_max_window_size(max);
        frames
    }

    /// Starts the next frame; `false` at the clean end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(
                    ruzstd::decoding::errors::ReadFrameHeaderError::SkipFrame { length, .. },
                )) => {
                    let skipped = io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd: truncated skippable frame",
                        ));
                    }
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("zstd: {e}"),
                    ))
                }
            }
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                    })?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                self.in_frame = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn decodes_concatenated_and_skippable_frames() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![0u8; 300_000];
        let mut stream = compress(&a);
        // A skippable frame: magic 0x184D2A50, length 5, payload.
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5]);
        stream.extend_from_slice(&compress(&b));
        let mut out = Vec::new();
        ZstdFrames::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn a_window_over_the_limit_is_refused() {
        // A frame header declaring a 64 MiB window (descriptor exponent 16), then one empty raw
        // last block.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 16 << 3, 0x01, 0x00, 0x00];
        let mut out = Vec::new();
        ZstdFrames::new(&frame[..]).read_to_end(&mut out).unwrap();
        let err = ZstdFrames::with_max_window(&frame[..], 8 << 20)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn corrupt_or_truncated_streams_are_errors() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let stream = compress(&data);
        let mut out = Vec::new();
        let cut = ZstdFrames::new(&stream[..stream.len() / 2]).read_to_end(&mut out);
        assert!(cut.is_err() || out.len() < data.len());
        let mut garbage = stream.clone();
        garbage[0] ^= 0xff;
        assert!(ZstdFrames::new(&garbage[..])
            .read_to_end(&mut Vec::new())
            .is_err());
    }
}

//! The framing of W&B's `.wandb` run file: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB's log
//! format in 32 KiB blocks: records cut into chunks that never cross a block, each chunk `crc32 | len | type`.
//! The checksum is plain CRC-32/IEEE over `type ++ payload`, unmasked (W&B's Python docstring says crc32c; its
//! reader and `wandb sync` use IEEE; the layout is specified in docs/internals/wandb-format.md §2).

use std::io::{self, Write};

/// The file header.
pub const HEADER: [u8; 7] = [b':', b'W', b'&', b'B', 0xe1, 0xbe, 0];
/// Block size.
pub const BLOCK: usize = 32768;
/// Chunk header size.
pub const CHUNK_HEADER: usize = 7;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

/// Appends records to a run file; each record reaches the writer in one `write_all` and is flushed, so a crash
/// leaves a readable prefix.
pub struct StoreWriter<W: Write> {
    out: W,
    offset: usize,
    buf: Vec<u8>,
}

impl<W: Write> StoreWriter<W> {
    /// Start a new file: writes the header.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&HEADER)?;
        out.flush()?;
        Ok(StoreWriter { out, offset: HEADER.len(), buf: Vec::new() })
    }

    /// Frame one record (one serialized `Record`) into chunks and write it.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        frame(&mut self.buf, self.offset, payload);
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        self.offset += self.buf.len();
        Ok(())
    }

    /// Bytes written so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Append the chunks of `payload` to `out`, for a record starting at file offset `offset`.
pub fn frame(out: &mut Vec<u8>, mut offset: usize, payload: &[u8]) {
    let mut rest = payload;
    let mut first = true;
    loop {
        let left = BLOCK - offset % BLOCK;
        if left < CHUNK_HEADER {
            // Too small for a chunk header: zero-fill to the next block. Exactly 7 bytes left still takes an
            // (empty) chunk, as W&B's writers do.
            out.resize(out.len() + left, 0);
            offset += left;
            continue;
        }
        let room = left - CHUNK_HEADER;
        let take = room.min(rest.len());
        let last = take == rest.len();
        let kind = match (first, last) {
            (true, true) => FULL,
            (true, false) => FIRST,
            (false, false) => MIDDLE,
            (false, true) => LAST,
        };
        let (chunk, tail) = rest.split_at(take);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(chunk);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&(take as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(chunk);
        offset += CHUNK_HEADER + take;
        rest = tail;
        first = false;
        if last {
            return;
        }
    }
}

/// Why a run file could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The first 7 bytes are not W&B's header.
    BadHeader,
    /// A chunk's checksum does not match, at this file offset.
    Checksum(usize),
    /// A chunk is malformed (bad type, length past the block, broken FIRST/MIDDLE/LAST sequence) at this offset.
    Corrupt(usize),
}

/// Read every complete record. A record cut off by the end of the file (a crash mid-write) is left out, as W&B's
/// reader does; returns the records and whether such a partial tail was present.
pub fn read_records(data: &[u8]) -> Result<(Vec<Vec<u8>>, bool), ReadError> {
    if data.len() < HEADER.len() || data[..HEADER.len()] != HEADER {
        return Err(ReadError::BadHeader);
    }
    let mut records = Vec::new();
    let mut pos = HEADER.len();
    let mut partial: Option<Vec<u8>> = None;
    while pos < data.len() {
        let left = BLOCK - pos % BLOCK;
        if left < CHUNK_HEADER {
            if data[pos..(pos + left).min(data.len())].iter().any(|&b| b != 0) {
                return Err(ReadError::Corrupt(pos));
            }
            pos += left;
            continue;
        }
        if pos + CHUNK_HEADER > data.len() {
            return Ok((records, true));
        }
        let crc = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default());
        let len = u16::from_le_bytes([data[pos + 4], data[pos + 5]]) as usize;
        let kind = data[pos + 6];
        if CHUNK_HEADER + len > left {
            return Err(ReadError::Corrupt(pos));
        }
        let start = pos + CHUNK_HEADER;
        if start + len > data.len() {
            return Ok((records, true));
        }
        let chunk = &data[start..start + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(chunk);
        if h.finalize() != crc {
            return Err(ReadError::Checksum(pos));
        }
        match (kind, partial.as_mut()) {
            (FULL, None) => records.push(chunk.to_vec()),
            (FIRST, None) => partial = Some(chunk.to_vec()),
            (MIDDLE, Some(p)) => p.extend_from_slice(chunk),
            (LAST, Some(p)) => {
                p.extend_from_slice(chunk);
                records.push(partial.take().unwrap_or_default());
            }
            _ => return Err(ReadError::Corrupt(pos)),
        }
        pos = start + len;
    }
    Ok((records, partial.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(records: &[Vec<u8>]) -> Vec<u8> {
        let mut w = StoreWriter::new(Vec::new()).unwrap();
        for r in records {
            w.append(r).unwrap();
        }
        w.out
    }

    #[test]
    fn crc_is_ieee_over_type_and_payload() {
        // The 16-byte run record of the worked example in docs/internals/wandb-format.md §2.5; its checksum is
        // 0xca7d140c.
        let payload = b"\x8a\x01\x0d\x0a\x08abc12345\x1a\x01p";
        let bytes = write(&[payload.to_vec()]);
        assert_eq!(&bytes[..7], &HEADER);
        assert_eq!(&bytes[7..11], &0xca7d140cu32.to_le_bytes());
        assert_eq!(&bytes[11..14], &[16, 0, FULL]);
    }

    #[test]
    fn exactly_seven_bytes_left_takes_an_empty_first_chunk() {
        // First record fills block 0 up to 7 bytes before its end.
        let a = vec![0xaa; BLOCK - HEADER.len() - CHUNK_HEADER - CHUNK_HEADER];
        let b = vec![0xbb; 10];
        let bytes = write(&[a.clone(), b.clone()]);
        let at = BLOCK - CHUNK_HEADER;
        assert_eq!(&bytes[at + 4..at + 7], &[0, 0, FIRST], "empty FIRST chunk at the block's last 7 bytes");
        assert_eq!(&bytes[BLOCK + 4..BLOCK + 7], &[10, 0, LAST]);
        assert_eq!(bytes.len(), BLOCK + CHUNK_HEADER + 10);
        assert_eq!(read_records(&bytes).unwrap(), (vec![a, b], false));
    }

    #[test]
    fn fewer_than_seven_bytes_left_are_zero_padded() {
        let a = vec![0x11; BLOCK - HEADER.len() - CHUNK_HEADER - 3];
        let b = vec![0x22; 5];
        let bytes = write(&[a.clone(), b.clone()]);
        assert_eq!(&bytes[BLOCK - 3..BLOCK], &[0, 0, 0]);
        assert_eq!(&bytes[BLOCK + 4..BLOCK + 7], &[5, 0, FULL]);
        assert_eq!(read_records(&bytes).unwrap(), (vec![a, b], false));
    }

    #[test]
    fn large_records_span_blocks_with_middle_chunks() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let small = vec![1, 2, 3];
        let bytes = write(&[small.clone(), big.clone(), small.clone()]);
        // Types in order: FULL, FIRST, MIDDLE, MIDDLE, LAST, FULL.
        let (records, partial) = read_records(&bytes).unwrap();
        assert!(!partial);
        assert_eq!(records, vec![small.clone(), big, small]);
        assert_eq!(bytes[BLOCK + 6], MIDDLE);
    }

    #[test]
    fn many_records_cross_many_boundaries() {
        let records: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 256) as u8; 20 + (i as usize * 13) % 90]).collect();
        let bytes = write(&records);
        assert!(bytes.len() > 5 * BLOCK);
        assert_eq!(read_records(&bytes).unwrap(), (records, false));
    }

    #[test]
    fn truncation_keeps_the_prefix_and_corruption_is_detected() {
        let records = vec![vec![5u8; 40], vec![6u8; 50_000]];
        let bytes = write(&records);
        let cut = &bytes[..bytes.len() - 100];
        assert_eq!(read_records(cut).unwrap(), (vec![records[0].clone()], true));
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(read_records(&bad), Err(ReadError::Checksum(7)));
        assert_eq!(read_records(b"nope"), Err(ReadError::BadHeader));
    }
}

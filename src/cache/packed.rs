//! Bodies kept gzip-compressed while they wait in the cache.
//!
//! Job JSON is mostly text (captions, titles, keywords, URLs): gzip shrinks a few KiB of
//! it two to three times. A stored answer keeps only its gzip form, which clients that
//! accept gzip get as it is (as Varnish does); the identity body is rebuilt for the
//! others, once per entry while it is hot (the front table keeps that copy), so a hit on
//! a hot job never decompresses.
//!
//! gzip rather than zstd: the HTTP clients apps use (the SDKs' fetch, requests, reqwest,
//! curl) all accept gzip, few accept zstd, and a zstd form would need a gzip copy beside
//! it for them, which holds more, not less.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// Bodies shorter than this stay as they are: gzip's 18 bytes of framing and a second
/// allocation would eat most of what it saves, against an entry's fixed cost of several
/// hundred bytes.
pub const MIN_PACKED: usize = 512;

/// Bodies longer than this stay as they are: compressing is done on the fill's task, and
/// a body of several MiB (a huge chunk window) would hold a runtime thread for tens of
/// milliseconds. Job answers are far below it.
pub const MAX_PACKED: usize = 1 << 20;

/// gzip's level: 6 (zlib's default). Compression runs once per upstream answer (the
/// quota bounds those to a few thousand an hour), so the smaller form is worth its cost:
/// level 1 keeps about a third more bytes of job bodies (benches/hot_path.rs measures
/// both).
pub const LEVEL: u32 = 6;

/// The gzip header of every form made here: no name, no time, no flags (RFC 1952).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// The gzip trailer's length: CRC-32 and length, little-endian.
const TRAILER: usize = 8;

thread_local! {
    /// Each thread's deflate state, by level, made once: a fresh one allocates and
    /// clears a few hundred KiB, which cost more than compressing a 2 KiB body.
    static DEFLATERS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Each thread's inflate state (its 32 KiB window), made once, for the same reason.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `body` gzip-compressed at `level`, if that makes it at least an eighth smaller.
pub fn pack_at(body: &[u8], level: u32) -> Option<Bytes> {
    if !(MIN_PACKED..=MAX_PACKED).contains(&body.len()) {
        return None;
    }
    // What is worth keeping; deflate stops when its output reaches this, without
    // compressing the rest.
    let limit = body.len() - body.len() / 8;
    let mut out = Vec::with_capacity(limit);
    out.extend_from_slice(&HEADER);
    let deflated = with_deflater(level, |deflater| {
        // One call with room for all that is worth keeping: it ends the stream, or runs
        // out of room (not worth it).
        matches!(
            deflater.compress_vec(body, &mut out, FlushCompress::Finish),
            Ok(Status::StreamEnd)
        )
    });
    if !deflated || out.len() + TRAILER > limit {
        return None;
    }
    let mut crc = Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    // Into `Bytes` as it is: the vector was sized for `limit`, and `Bytes` from a vector
    // keeps its capacity; a copy holds exactly the form.
    Some(Bytes::copy_from_slice(&out))
}

/// `body` gzip-compressed at [`LEVEL`], when that saves memory.
pub fn pack(body: &[u8]) -> Option<Bytes> {
    pack_at(body, LEVEL)
}

/// The identity body of `gzip`, which must be exactly `len` bytes; `None` if it is not
/// (never for what [`pack`] made: a bit flip in memory, not input, would be the cause).
pub fn unpack(gzip: &[u8], len: usize) -> Option<Bytes> {
    unpack_vec(gzip, len).map(Bytes::from)
}

/// [`unpack`], into a vector of exactly `len` bytes.
pub fn unpack_vec(gzip: &[u8], len: usize) -> Option<Vec<u8>> {
    // Only the forms made here: this header, a deflate stream, the trailer.
    if gzip.len() < HEADER.len() + TRAILER || gzip[..4] != HEADER[..4] {
        return None;
    }
    let (stream, trailer) = gzip[HEADER.len()..].split_at(gzip.len() - HEADER.len() - TRAILER);
    let mut out = Vec::with_capacity(len);
    let inflated = with_inflater(|inflater| {
        // Room for `len` bytes exactly: a longer stream cannot end in it.
        matches!(
            inflater.decompress_vec(stream, &mut out, FlushDecompress::Finish),
            Ok(Status::StreamEnd)
        )
    });
    if !inflated || out.len() != len {
        return None;
    }
    let mut crc = Crc::new();
    crc.update(&out);
    let stated = |at: usize| {
        trailer
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    (stated(0) == Some(crc.sum()) && stated(4) == Some(len as u32)).then_some(out)
}

/// Runs `f` with this thread's deflate state for `level`, reset.
fn with_deflater<T>(level: u32, mut f: impl FnMut(&mut Compress) -> T) -> T {
    let fresh = || Compress::new(Compression::new(level), false);
    let kept = DEFLATERS.try_with(|cell| {
        let mut all = cell.try_borrow_mut().ok()?;
        let at = match all.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                all.push((level, fresh()));
                all.len() - 1
            }
        };
        let deflater = &mut all[at].1;
        deflater.reset();
        Some(f(deflater))
    });
    match kept {
        Ok(Some(done)) => done,
        // The thread is ending (or the state is in use): a state of its own.
        _ => f(&mut fresh()),
    }
}

/// Runs `f` with this thread's inflate state, reset.
fn with_inflater<T>(mut f: impl FnMut(&mut Decompress) -> T) -> T {
    let kept = INFLATER.try_with(|cell| {
        let mut kept = cell.try_borrow_mut().ok()?;
        let inflater = kept.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        Some(f(inflater))
    });
    match kept {
        Ok(Some(done)) => done,
        _ => f(&mut Decompress::new(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_like(len: usize) -> Vec<u8> {
        let mut body =
            br#"{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","state":"completed","caption":""#
                .to_vec();
        let mut i = 0u32;
        while body.len() < len - 2 {
            body.extend_from_slice(format!("word{} ", i.wrapping_mul(2654435761) % 997).as_bytes());
            i += 1;
        }
        body.truncate(len - 2);
        body.extend_from_slice(b"\"}");
        body
    }

    #[test]
    fn a_packed_body_unpacks_to_the_same_bytes() {
        for len in [MIN_PACKED, 2048, 4097, 8192, 100_000] {
            let body = job_like(len);
            let packed = pack(&body).expect("job text compresses");
            assert!(packed.len() < body.len() / 2, "{len}: {}", packed.len());
            assert_eq!(unpack(&packed, body.len()).as_deref(), Some(&body[..]));
        }
    }

    #[test]
    fn the_form_is_plain_gzip_that_any_decoder_reads() {
        use std::io::{Read, Write};
        let body = job_like(4096);
        let packed = pack(&body).expect("compresses");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut decoded)
            .expect("a gzip stream");
        assert_eq!(decoded, body);
        // And a gzip stream made elsewhere (a header without flags) is read back too.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&body).expect("gzip");
        let other = encoder.finish().expect("gzip");
        assert_eq!(unpack(&other, body.len()).as_deref(), Some(&body[..]));
        // Many in a row on one thread: the kept states are reset between uses.
        for len in [600, 8000, 1000, 3000] {
            let b = job_like(len);
            assert_eq!(
                unpack(&pack(&b).expect("packs"), len).as_deref(),
                Some(&b[..])
            );
        }
    }

    #[test]
    fn small_large_and_incompressible_bodies_stay_as_they_are() {
        assert!(pack(&job_like(MIN_PACKED - 1)).is_none());
        assert!(pack(&vec![b'a'; MAX_PACKED + 1]).is_none());
        // Already compressed (or random) bytes: gzip would only add its framing.
        let noise: Vec<u8> = (0..128u32)
            .flat_map(|i| crate::auth::sha256(&i.to_le_bytes()))
            .collect();
        assert!(pack(&noise).is_none());
    }

    #[test]
    fn a_wrong_length_or_damaged_form_is_refused() {
        let body = job_like(4096);
        let packed = pack(&body).expect("compresses");
        assert!(unpack(&packed, body.len() - 1).is_none());
        assert!(unpack(&packed, body.len() + 1).is_none());
        assert!(unpack(&packed[..packed.len() / 2], body.len()).is_none());
        let mut flipped = packed.to_vec();
        flipped[packed.len() / 2] ^= 0x55;
        assert!(unpack(&flipped, body.len()).is_none_or(|b| b != body[..]));
    }
}

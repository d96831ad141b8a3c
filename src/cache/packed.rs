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

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;

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
/// level 1 kept about 10% more bytes on job bodies (benches/hot_path.rs measures both).
pub const LEVEL: u32 = 6;

/// `body` gzip-compressed at `level`, if that makes it at least an eighth smaller.
pub fn pack_at(body: &[u8], level: u32) -> Option<Bytes> {
    if !(MIN_PACKED..=MAX_PACKED).contains(&body.len()) {
        return None;
    }
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), Compression::new(level));
    encoder.write_all(body).ok()?;
    let packed = encoder.finish().ok()?;
    // Kept only when worth the second form's bookkeeping; the copy trims the vector's
    // spare capacity, which would otherwise be held for as long as the entry lives.
    (packed.len() <= body.len() - body.len() / 8).then(|| Bytes::copy_from_slice(&packed))
}

/// `body` gzip-compressed at [`LEVEL`], when that saves memory.
pub fn pack(body: &[u8]) -> Option<Bytes> {
    pack_at(body, LEVEL)
}

/// The identity body of `gzip`, which must be exactly `len` bytes; `None` if it is not
/// (never for what [`pack`] made: a bit flip in memory, not input, would be the cause).
pub fn unpack(gzip: &[u8], len: usize) -> Option<Bytes> {
    let mut out = Vec::with_capacity(len);
    let mut decoder = flate2::read::GzDecoder::new(gzip).take(len as u64 + 1);
    decoder.read_to_end(&mut out).ok()?;
    (out.len() == len).then(|| Bytes::from(out))
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

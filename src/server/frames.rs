//! An HTTP/2 client's bytes, followed just far enough to know when it is in the middle of
//! a head, so that a head is timed whatever protocol it is in.
//!
//! A connection's "head" in HTTP/2 is the preface and the client's first frame (its
//! SETTINGS), and then each header block: a HEADERS frame and the CONTINUATION frames
//! that follow it, up to the frame flagged END_HEADERS. A client that trickles any of
//! these, or leaves a header block open and sends a CONTINUATION every few seconds,
//! holds hyper's state for that stream without ever making a request; the supervisor
//! cuts it at `server.header_read_timeout`, as it does a slow HTTP/1 head. Frame
//! payloads are skipped by their length, never read: the cost is a few comparisons per
//! frame.

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where a client's byte stream stands.
#[derive(Debug)]
pub struct H2Heads {
    /// Bytes of the preface matched so far (24 when it is complete).
    preface: usize,
    /// The first frame after the preface (its SETTINGS) has arrived whole.
    settings: bool,
    /// The frame header being read, and how much of it.
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame belongs to a header block and ends it.
    ends_block: bool,
    /// A header block is open (from its HEADERS frame to the end of the frame that
    /// carries END_HEADERS).
    in_block: bool,
    /// Header blocks begun: each is a new head with its own deadline.
    blocks: u64,
}

/// What a read told.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Still consistent with an HTTP/2 preface, or past it.
    H2,
    /// Not HTTP/2 at all (an HTTP/1 request): stop feeding.
    NotH2,
}

impl Default for H2Heads {
    fn default() -> Self {
        H2Heads {
            preface: 0,
            settings: false,
            header: [0; FRAME_HEADER],
            header_len: 0,
            payload_left: 0,
            ends_block: false,
            in_block: false,
            blocks: 0,
        }
    }
}

impl H2Heads {
    /// Follows the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Seen {
        if self.preface < PREFACE.len() {
            let take = bytes.len().min(PREFACE.len() - self.preface);
            if bytes[..take] != PREFACE[self.preface..self.preface + take] {
                return Seen::NotH2;
            }
            self.preface += take;
            bytes = &bytes[take..];
        }
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = bytes.len().min(self.payload_left);
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let take = bytes.len().min(FRAME_HEADER - self.header_len);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                self.frame_begun();
            }
        }
        Seen::H2
    }

    /// A frame header arrived whole.
    fn frame_begun(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.ends_block = false;
        if kind == HEADERS || (kind == CONTINUATION && self.in_block) {
            if !self.in_block {
                self.blocks += 1;
            }
            self.in_block = true;
            self.ends_block = flags & END_HEADERS != 0;
        }
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    /// The current frame's payload arrived whole.
    fn frame_done(&mut self) {
        self.settings = true;
        if self.ends_block {
            self.in_block = false;
            self.ends_block = false;
        }
    }

    /// Whether the preface is complete (the connection is HTTP/2).
    pub fn is_h2(&self) -> bool {
        self.preface == PREFACE.len()
    }

    /// Whether the client is in the middle of a head: the preface and first SETTINGS, or
    /// a header block.
    pub fn head_pending(&self) -> bool {
        !self.settings || self.in_block
    }

    /// Which head is pending (changes with each header block).
    pub fn head_number(&self) -> u64 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_preface_and_first_settings_are_a_head_even_trickled() {
        let mut h = H2Heads::default();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for (i, b) in bytes.iter().enumerate() {
            assert!(h.head_pending(), "byte {i}");
            assert_eq!(h.feed(&[*b]), Seen::H2);
        }
        assert!(h.is_h2());
        assert!(!h.head_pending());
    }

    #[test]
    fn a_header_block_is_a_head_until_end_headers() {
        let mut h = H2Heads::default();
        h.feed(PREFACE);
        h.feed(&frame(0x4, 0, 0, &[]));
        assert!(!h.head_pending());
        h.feed(&frame(HEADERS, 0, 1, b"abc"));
        assert!(h.head_pending());
        assert_eq!(h.head_number(), 1);
        h.feed(&frame(CONTINUATION, 0, 1, b"def"));
        assert!(h.head_pending());
        let last = frame(CONTINUATION, END_HEADERS, 1, b"ghi");
        h.feed(&last[..10]);
        assert!(h.head_pending(), "until the frame is whole");
        h.feed(&last[10..]);
        assert!(!h.head_pending());
        // A body does not count; the next block is a new head.
        h.feed(&frame(0x0, 0, 1, &[7; 1000]));
        assert!(!h.head_pending());
        h.feed(&frame(HEADERS, END_HEADERS, 3, b"x"));
        assert!(!h.head_pending());
        assert_eq!(h.head_number(), 2);
    }

    #[test]
    fn http1_is_told_at_its_first_byte() {
        assert_eq!(H2Heads::default().feed(b"GET / HTTP/1.1\r\n"), Seen::NotH2);
        let mut h = H2Heads::default();
        assert_eq!(h.feed(b"PRI "), Seen::H2);
        assert!(!h.is_h2());
        assert_eq!(h.feed(b"/ HTTP/1.1"), Seen::NotH2);
    }
}

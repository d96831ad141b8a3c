//! A stored answer as bytes, for the places it outlives this process's memory: the shared
//! tier on Redis and the snapshot in `state.dir`. One format serves both.
//!
//! Times are wall-clock milliseconds since the Unix epoch (an `Instant` means nothing to
//! another process), and a reader drops an envelope whose expiry has passed. The first
//! four bytes name the format; a reader that does not know them reads nothing, so old and
//! new gateways in a rolling deploy never misread each other (the shared tier also puts
//! the version in its keys, so they do not even see each other's entries).
//!
//! Layout, integers big-endian: magic `XGE1` | status u16 | state u8 | fetched_at u64 |
//! expires_at u64 | content-type length u16 | content type | body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

use super::policy::JobState;

const MAGIC: &[u8; 4] = b"XGE1";
const FIXED: usize = 4 + 2 + 1 + 8 + 8 + 2;

/// One answer, as stored outside memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The upstream's status.
    pub status: StatusCode,
    /// `Content-Type`, if any.
    pub content_type: Option<Bytes>,
    /// The job's state, for a 200 job answer.
    pub job_state: Option<JobState>,
    /// When the answer was fetched from the upstream (Unix ms).
    pub fetched_at: u64,
    /// When it stops being true (Unix ms).
    pub expires_at: u64,
    /// The body.
    pub body: Bytes,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn state_byte(state: Option<JobState>) -> u8 {
    match state {
        None => 0,
        Some(JobState::Pending) => 1,
        Some(JobState::Processing) => 2,
        Some(JobState::Completed) => 3,
        Some(JobState::Failed) => 4,
        Some(JobState::Cleaned) => 5,
        Some(JobState::Unknown) => 6,
    }
}

fn byte_state(byte: u8) -> Option<Option<JobState>> {
    Some(match byte {
        0 => None,
        1 => Some(JobState::Pending),
        2 => Some(JobState::Processing),
        3 => Some(JobState::Completed),
        4 => Some(JobState::Failed),
        5 => Some(JobState::Cleaned),
        6 => Some(JobState::Unknown),
        _ => return None,
    })
}

impl Envelope {
    /// The bytes.
    pub fn encode(&self) -> Bytes {
        let ct = self.content_type.as_deref().unwrap_or(&[]);
        // A content type longer than u16 is no content type any server sends; cut, not
        // refused, so the answer is still kept.
        let ct = &ct[..ct.len().min(usize::from(u16::MAX))];
        let mut out = BytesMut::with_capacity(FIXED + ct.len() + self.body.len());
        out.put_slice(MAGIC);
        out.put_u16(self.status.as_u16());
        out.put_u8(state_byte(self.job_state));
        out.put_u64(self.fetched_at);
        out.put_u64(self.expires_at);
        out.put_u16(u16::try_from(ct.len()).unwrap_or(u16::MAX));
        out.put_slice(ct);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads an envelope; `None` for anything that is not one of this format (another
    /// version, a truncated or corrupt value).
    pub fn decode(bytes: &Bytes) -> Option<Envelope> {
        if bytes.len() < FIXED || &bytes[..4] != MAGIC {
            return None;
        }
        let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let status = StatusCode::from_u16(u16_at(4)).ok()?;
        let job_state = byte_state(bytes[6])?;
        let fetched_at = u64_at(7);
        let expires_at = u64_at(15);
        let ct_len = usize::from(u16_at(23));
        let body_at = FIXED.checked_add(ct_len)?;
        if bytes.len() < body_at || fetched_at > expires_at {
            return None;
        }
        let content_type = (ct_len > 0).then(|| bytes.slice(FIXED..body_at));
        Some(Envelope {
            status,
            content_type,
            job_state,
            fetched_at,
            expires_at,
            body: bytes.slice(body_at..),
        })
    }

    /// How long it stays true from `now` (Unix ms); `None` once expired.
    pub fn left(&self, now: u64) -> Option<Duration> {
        (self.expires_at > now).then(|| Duration::from_millis(self.expires_at - now))
    }

    /// How long ago it was fetched, as of `now` (Unix ms).
    pub fn age(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.fetched_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            status: StatusCode::OK,
            content_type: Some(Bytes::from_static(b"application/json")),
            job_state: Some(JobState::Completed),
            fetched_at: 1_700_000_000_000,
            expires_at: 1_700_000_060_000,
            body: Bytes::from_static(br#"{"id":"x"}"#),
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()), Some(e));
        let bare = Envelope {
            content_type: None,
            job_state: None,
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            ..sample()
        };
        assert_eq!(Envelope::decode(&bare.encode()), Some(bare));
    }

    #[test]
    fn anything_else_reads_as_nothing() {
        let good = sample().encode();
        for cut in 0..good.len() - sample().body.len() {
            assert!(
                Envelope::decode(&good.slice(..cut)).is_none(),
                "cut at {cut}"
            );
        }
        let mut other = good.to_vec();
        other[3] = b'2';
        assert!(
            Envelope::decode(&Bytes::from(other)).is_none(),
            "another version"
        );
        let mut bad_state = good.to_vec();
        bad_state[6] = 99;
        assert!(Envelope::decode(&Bytes::from(bad_state)).is_none());
        assert!(Envelope::decode(&Bytes::from_static(b"garbage that is long enough..")).is_none());
    }

    #[test]
    fn expiry_is_read_against_the_wall_clock() {
        let e = sample();
        assert_eq!(e.left(e.expires_at), None);
        assert_eq!(
            e.left(e.expires_at - 1500),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(e.age(e.fetched_at + 2000), Duration::from_secs(2));
    }
}

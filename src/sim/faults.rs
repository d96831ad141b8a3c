//! Faults the simulator can inject, and which request gets which.

use std::time::Duration;

/// A misbehaviour applied to requests, before the key check and routing.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Behave normally.
    None,
    /// Answer normally after this delay.
    Latency(Duration),
    /// Answer as things stood when the request arrived, but only after this delay (the
    /// answer is on its way while the job changes: a race with a job action).
    SlowAnswer(Duration),
    /// `429` with a JSON body, and `Retry-After: <seconds>` if `Some`.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds; `None` omits it.
        retry_after: Option<u64>,
    },
    /// `500` with a JSON body.
    ServerError,
    /// Read the request, then reset the TCP connection (RST) without answering.
    Reset,
    /// `200` announcing the full `Content-Length` of a job body, send half of
    /// it, then close the connection.
    Truncated,
    /// `200`, `Content-Type: application/json`, body `{"id": "oops` (not JSON).
    InvalidJson,
    /// Read the request and never answer; the connection stays open until
    /// [`super::Simulator::shutdown`].
    Silent,
}

/// The fault currently set, and for how many more requests.
#[derive(Debug)]
pub(super) struct FaultState {
    fault: Fault,
    /// `None`: until changed; `Some(n)`: `n` more requests.
    remaining: Option<usize>,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            fault: Fault::None,
            remaining: None,
        }
    }
}

impl FaultState {
    /// Sets the fault, for `count` requests or (with `None`) until changed.
    pub(super) fn set(&mut self, fault: Fault, count: Option<usize>) {
        if count == Some(0) {
            // "The next 0 requests" is no request at all.
            *self = FaultState::default();
        } else {
            self.fault = fault;
            self.remaining = count;
        }
    }

    /// The fault for the request being handled now, counting it against a
    /// limited fault.
    pub(super) fn next(&mut self) -> Fault {
        let fault = self.fault.clone();
        if let Some(n) = self.remaining {
            if n <= 1 {
                *self = FaultState::default();
            } else {
                self.remaining = Some(n - 1);
            }
        }
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_fault_expires() {
        let mut s = FaultState::default();
        s.set(Fault::ServerError, Some(2));
        assert_eq!(s.next(), Fault::ServerError);
        assert_eq!(s.next(), Fault::ServerError);
        assert_eq!(s.next(), Fault::None);
    }

    #[test]
    fn unlimited_fault_stays_and_zero_count_is_none() {
        let mut s = FaultState::default();
        s.set(Fault::Silent, None);
        assert_eq!(s.next(), Fault::Silent);
        assert_eq!(s.next(), Fault::Silent);
        s.set(Fault::Silent, Some(0));
        assert_eq!(s.next(), Fault::None);
    }
}

//! One quota and one 429 gate for every replica.
//!
//! The account's `upstream.rate_limit` as a GCRA on Redis (one key holding the
//! theoretical arrival time), checked in the same script as the gate that an upstream
//! 429 on any replica closes. A token is taken only by a call about to go upstream, and
//! given back (the arrival time moved back one interval) when that call was not sent.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{Shared, Unavailable};
use crate::config::Rate;

/// What the shared quota said about one upstream call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Go; this many tokens are left (-1: no quota, the gate alone was checked).
    Allowed(i64),
    /// The quota is spent for this long.
    Spent(Duration),
    /// An upstream 429 closed the gate, for this long.
    Closed(Duration),
}

/// The GCRA's emission interval (ms per token) and burst for `rate`.
pub fn interval(rate: Option<Rate>, burst: Option<u32>) -> (u64, u32) {
    match rate {
        None => (0, 0),
        Some(rate) => {
            let per = u64::try_from(rate.per.as_millis()).unwrap_or(u64::MAX);
            let t = (per / u64::from(rate.count.max(1))).max(1);
            (t, burst.unwrap_or((rate.count / 10).max(1)))
        }
    }
}

impl Shared {
    /// Takes one token (checking the 429 gate first); `Err` when Redis did not answer,
    /// and the caller falls back to its local share.
    pub async fn take(
        &self,
        rate: Option<Rate>,
        burst: Option<u32>,
        max_closed: Duration,
    ) -> Result<Verdict, Unavailable> {
        let max_closed = u64::try_from(max_closed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (t, burst) = interval(rate, burst);
        let script = &self.scripts.take;
        let (quota, gate) = (self.keys.quota(), self.keys.cooldown());
        let reply = self
            .run::<Vec<Value>, _, _>("quota", false, |mut c| async move {
                script
                    .key(quota)
                    .key(gate)
                    .arg(t)
                    .arg(burst)
                    .arg(max_closed)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        match reply.as_slice() {
            [Value::Int(0), Value::Int(left)] => Ok(Verdict::Allowed(*left)),
            [Value::Int(1), Value::Int(wait)] => Ok(Verdict::Spent(ms(*wait))),
            [Value::Int(2), Value::Int(wait)] => Ok(Verdict::Closed(ms(*wait))),
            _ => {
                self.metrics.shared_op("quota", "invalid");
                Err(Unavailable)
            }
        }
    }

    /// Gives back a token taken for a call that was not sent; in the background.
    pub fn refund(self: &Arc<Self>, rate: Option<Rate>, burst: Option<u32>) {
        let (t, _) = interval(rate, burst);
        if t == 0 {
            return;
        }
        let shared = Arc::clone(self);
        super::spawn(async move {
            let script = &shared.scripts.refund;
            let quota = shared.keys.quota();
            let _ = shared
                .run::<i64, _, _>("refund", true, |mut c| async move {
                    script.key(quota).arg(t).invoke_async(&mut c).await
                })
                .await;
        });
    }

    /// Closes the gate on every replica for `wait` (an upstream 429 here); in the
    /// background.
    pub fn close_gate(self: &Arc<Self>, wait: Duration) {
        let shared = Arc::clone(self);
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        super::spawn(async move {
            let script = &shared.scripts.close_gate;
            let gate = shared.keys.cooldown();
            let _ = shared
                .run::<i64, _, _>("cooldown", true, |mut c| async move {
                    script.key(gate).arg(ms).invoke_async(&mut c).await
                })
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_spreads_the_rate_over_its_period() {
        let rate = Rate {
            count: 5000,
            per: Duration::from_secs(3600),
        };
        assert_eq!(interval(Some(rate), None), (720, 500));
        assert_eq!(interval(Some(rate), Some(20)), (720, 20));
        assert_eq!(interval(None, None), (0, 0));
    }
}

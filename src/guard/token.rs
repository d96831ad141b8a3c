//! A token taken for one upstream request, given back unless the request is sent.
//!
//! Quota is spent by requests that reach the upstream and by nothing else: a request
//! refused by the cooldown, by a busy slot or by the other bucket, or answered from the
//! cache after all, returns what it took. Holding the token as a value makes that the
//! default (its `Drop` gives it back) and spending it the one explicit step, taken at
//! the moment the request is handed to the connection.

use std::sync::Arc;
use std::time::Duration;

use super::TokenBucket;
use crate::config::Rate;
use crate::shared::Shared;

/// The longest 429 gate a resend's token will believe (the guard's own cap applied to
/// the first token already; this only bounds a junk value).
const RESEND_GATE_CAP: Duration = Duration::from_secs(3600);

/// One token of one bucket.
pub struct Token {
    /// Where it came from (and goes back to).
    source: Source,
    /// Set once the request it paid for was sent: then it is gone for good.
    spent: bool,
}

/// The bucket a token is of.
enum Source {
    /// This process's bucket.
    Local(Arc<TokenBucket>),
    /// The account's quota on the shared tier (at this rate and burst), with the local
    /// share to fall back on if Redis is away when the token is needed again. `local`:
    /// the local share was charged too (see [`Token::shared`]).
    Shared {
        shared: Arc<Shared>,
        rate: Option<Rate>,
        burst: Option<u32>,
        fallback: Arc<TokenBucket>,
        local: bool,
    },
}

impl Token {
    /// Takes a token from `bucket`, or says how long until one is free.
    pub fn take(bucket: &Arc<TokenBucket>) -> Result<Token, Duration> {
        bucket.try_take()?;
        Ok(Token {
            source: Source::Local(Arc::clone(bucket)),
            spent: false,
        })
    }

    /// A token the shared quota gave (given back there if unused). The local share is
    /// charged as well, when it has a token: what this replica spends in shared mode is
    /// then already spent from its share when Redis goes away, and an outage right after
    /// the account's bucket ran dry hands out no fresh burst per replica.
    pub fn shared(
        shared: &Arc<Shared>,
        rate: Option<Rate>,
        burst: Option<u32>,
        fallback: &Arc<TokenBucket>,
    ) -> Token {
        let local = fallback.try_take().is_ok();
        Token {
            source: Source::Shared {
                shared: Arc::clone(shared),
                rate,
                burst,
                fallback: Arc::clone(fallback),
                local,
            },
            spent: false,
        }
    }

    /// Another token from the same bucket (a resent request pays again).
    pub async fn take_another(&self) -> Result<Token, Duration> {
        match &self.source {
            Source::Local(bucket) => Token::take(bucket),
            Source::Shared {
                shared,
                rate,
                burst,
                fallback,
                ..
            } => match shared.take(*rate, *burst, RESEND_GATE_CAP).await {
                Ok(crate::shared::quota::Verdict::Allowed(_)) => {
                    Ok(Token::shared(shared, *rate, *burst, fallback))
                }
                Ok(
                    crate::shared::quota::Verdict::Spent(wait)
                    | crate::shared::quota::Verdict::Closed(wait),
                ) => Err(wait),
                Err(_) => Token::take(fallback),
            },
        }
    }

    /// The request was sent: the token is used.
    pub fn spend(&mut self) {
        self.spent = true;
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        match &self.source {
            Source::Local(bucket) => bucket.give_back(),
            Source::Shared {
                shared,
                rate,
                burst,
                fallback,
                local,
            } => {
                shared.refund(*rate, *burst);
                if *local {
                    fallback.give_back();
                }
            }
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("spent", &self.spent)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn one_token() -> Arc<TokenBucket> {
        let rate = Rate {
            count: 1,
            per: Duration::from_secs(3600),
        };
        Arc::new(TokenBucket::new(Some(rate), Some(1)))
    }

    #[test]
    fn an_unspent_token_goes_back() {
        let bucket = one_token();
        let token = Token::take(&bucket).expect("full");
        assert!(Token::take(&bucket).is_err());
        drop(token);
        assert!(Token::take(&bucket).is_ok());
    }

    #[test]
    fn a_spent_token_stays_spent() {
        let bucket = one_token();
        let mut token = Token::take(&bucket).expect("full");
        token.spend();
        drop(token);
        assert!(Token::take(&bucket).is_err());
    }
}

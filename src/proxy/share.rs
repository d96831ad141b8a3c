//! Whose share of the upstream quota a request draws on, beyond the account's.
//!
//! With `[[clients]]`, a client's own `rate_limit`. With none, and
//! `upstream.per_address_rate_limit` set, its address's (an IPv6 address counts by its
//! /64, which one host can rotate through): one address scanning made-up job ids cannot
//! then spend the whole account's quota. The share is taken only by a request that needs
//! the upstream, and goes back unless the call is sent (see `guard::token`).

use std::net::IpAddr;
use std::sync::Arc;

use super::exchange::Exchange;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::guard::{rate_limited, Token, TokenBucket};

/// The share token for one upstream call by this request (`None`: it has no share of
/// its own), or its own refusal.
pub async fn take(gw: &Gateway, ex: &Exchange) -> Result<Option<Token>, GatewayError> {
    if let Some(client) = &ex.client {
        return client.take_share();
    }
    let Some(address) = ex.address else {
        return Ok(None);
    };
    let Some(rate) = gw.peek().config.upstream.per_address_rate_limit else {
        return Ok(None);
    };
    let bucket = gw
        .addresses
        .get_with(group(address), async move {
            Arc::new(TokenBucket::new(Some(rate), None))
        })
        .await;
    Token::take(&bucket).map(Some).map_err(|wait| {
        rate_limited(
            ErrorKind::QuotaExhausted,
            "this address's share of the upstream quota (upstream.per_address_rate_limit) is used up",
            wait,
        )
    })
}

/// The key an address's share is kept under: IPv4 as it is (an IPv4-mapped IPv6
/// address as its IPv4), IPv6 by its /64.
pub fn group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(group(a), group(b));
        assert_ne!(group(a), group(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(group(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }
}

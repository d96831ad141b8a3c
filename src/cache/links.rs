//! When the signed links in a job die: every http(s) URL in its JSON is read for an
//! expiry where its format says one, and the earliest is what the job's entry may not
//! outlive (less `cache.link_margin`).
//!
//! Formats read (query keys are case-sensitive, as the signers write them):
//! - S3 SigV4: `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) + `X-Amz-Expires` (seconds);
//! - GCS V4: `X-Goog-Date` + `X-Goog-Expires`;
//! - S3 SigV2, CloudFront canned, GCS V2: `Expires` (Unix seconds);
//! - CloudFront custom: `Policy` (CloudFront's base64), `Statement[0].Condition.
//!   DateLessThan["AWS:EpochTime"]`;
//! - Azure SAS: `se` (RFC 3339, or a date alone) beside `sig`;
//! - a generic `exp` / `expires` epoch (seconds, or milliseconds past 10^12);
//! - a JWT-looking `token` (three base64url parts) whose payload has an `exp` claim (read,
//!   not verified: only its expiry matters here).
//!
//! Anything else is unknown and changes nothing.

use base64::Engine as _;
use time::OffsetDateTime;

/// The earliest expiry of a signed link in `body` (a JSON document), if any link says.
pub fn earliest_expiry(body: &[u8]) -> Option<OffsetDateTime> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut earliest: Option<OffsetDateTime> = None;
    visit(&value, &mut |url| {
        if let Some(at) = url_expiry(url) {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    });
    earliest
}

/// Calls `found` with every string in `value` that looks like an http(s) URL.
fn visit(value: &serde_json::Value, found: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::String(s) if s.starts_with("https://") || s.starts_with("http://") => {
            found(s)
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit(v, found)),
        serde_json::Value::Object(map) => map.values().for_each(|v| visit(v, found)),
        _ => {}
    }
}

/// The expiry one URL states, if its format is one of those read.
pub fn url_expiry(url: &str) -> Option<OffsetDateTime> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let candidates = [
        dated(get("X-Amz-Date"), get("X-Amz-Expires")),
        dated(get("X-Goog-Date"), get("X-Goog-Expires")),
        get("Expires").and_then(epoch),
        get("Policy").and_then(cloudfront_policy),
        get("sig").and(get("se")).and_then(azure_time),
        get("exp").and_then(epoch),
        get("expires").and_then(epoch),
        get("token").and_then(jwt_exp),
    ];
    candidates.into_iter().flatten().min()
}

fn decode(text: &str) -> Option<String> {
    let plus = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `YYYYMMDDTHHMMSSZ` + seconds.
fn dated(date: Option<&str>, seconds: Option<&str>) -> Option<OffsetDateTime> {
    let (date, seconds) = (date?, seconds?);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let signed = time::PrimitiveDateTime::parse(date, &format)
        .ok()?
        .assume_utc();
    let lifetime: i64 = seconds.trim().parse().ok().filter(|s: &i64| *s >= 0)?;
    signed.checked_add(time::Duration::seconds(lifetime))
}

/// Unix seconds, or milliseconds when past 10^12.
fn epoch(text: &str) -> Option<OffsetDateTime> {
    let n: i64 = text.trim().parse().ok().filter(|n: &i64| *n > 0)?;
    let secs = if n > 1_000_000_000_000 { n / 1000 } else { n };
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

/// CloudFront's policy: base64 with `-`, `_`, `~` for `+`, `=`, `/`.
fn cloudfront_policy(text: &str) -> Option<OffsetDateTime> {
    let standard: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    let json = base64::engine::general_purpose::STANDARD
        .decode(standard.trim())
        .ok()?;
    let policy: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let at = &policy["Statement"][0]["Condition"]["DateLessThan"]["AWS:EpochTime"];
    at.as_i64()
        .or_else(|| at.as_str().and_then(|s| s.parse().ok()))
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
}

/// Azure's `se`: RFC 3339, or a date alone (the end of that day's start, UTC).
fn azure_time(text: &str) -> Option<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Some(at);
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &day)
        .ok()
        .map(|d| d.midnight().assume_utc())
}

/// A JWT's `exp`, read without verifying it.
fn jwt_exp(token: &str) -> Option<OffsetDateTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims["exp"]
        .as_i64()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("time")
    }

    #[test]
    fn each_format_is_read() {
        // 2026-12-01T10:00:00Z = 1796119200.
        let cases = [
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261201T100000Z&X-Amz-Expires=3600&X-Amz-Signature=x",
                1_796_119_200 + 3600,
            ),
            (
                "https://storage.googleapis.com/b/k?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Date=20261201T100000Z&X-Goog-Expires=600&X-Goog-Signature=x",
                1_796_119_200 + 600,
            ),
            ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1796119300&Signature=x", 1_796_119_300),
            ("https://d.cloudfront.net/k?Expires=1796119400&Signature=x&Key-Pair-Id=K", 1_796_119_400),
            ("https://a.blob.core.windows.net/c/k?sv=2022-11-02&se=2026-12-01T11%3A00%3A00Z&sp=r&sig=x", 1_796_122_800),
            ("https://cdn.example.com/k?exp=1796119500", 1_796_119_500),
            ("https://cdn.example.com/k?expires=1796119600000", 1_796_119_600),
        ];
        for (url, secs) in cases {
            assert_eq!(url_expiry(url), Some(at(secs)), "{url}");
        }
    }

    #[test]
    fn cloudfront_custom_policies_and_jwts_are_read() {
        let policy = r#"{"Statement":[{"Resource":"https://d.cloudfront.net/*","Condition":{"DateLessThan":{"AWS:EpochTime":1796119700}}}]}"#;
        let encoded: String = base64::engine::general_purpose::STANDARD
            .encode(policy)
            .chars()
            .map(|c| match c {
                '+' => '-',
                '=' => '_',
                '/' => '~',
                c => c,
            })
            .collect();
        let url = format!("https://d.cloudfront.net/k?Policy={encoded}&Signature=x&Key-Pair-Id=K");
        assert_eq!(url_expiry(&url), Some(at(1_796_119_700)));
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1796119800}"#);
        let url = format!("https://cdn.exabase.io/k.jpeg?token=eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(url_expiry(&url), Some(at(1_796_119_800)));
    }

    #[test]
    fn unknown_or_broken_formats_change_nothing() {
        for url in [
            "https://cdn.exabase.io/link-previews/x.jpeg",
            "https://cdn.exabase.io/x.jpeg?token=t",
            "https://cdn.exabase.io/x?X-Amz-Expires=86400&X-Amz-Signature=abc",
            "https://cdn.exabase.io/x?X-Amz-Date=garbage&X-Amz-Expires=60",
            "https://cdn.exabase.io/x?exp=-5",
            "https://cdn.exabase.io/x?se=2026-12-01",
            "https://cdn.exabase.io/x?Policy=!!!",
        ] {
            assert_eq!(url_expiry(url), None, "{url}");
        }
    }

    #[test]
    fn the_earliest_link_of_a_job_wins() {
        let body = br#"{"id":"j","links":{"chunks":"https://api.exabase.io/v2/extract/j/chunks"},
            "extraction":{"common":{"thumbnail":"https://c/t?exp=1796119900"},
            "document":{"pdfRender":{"url":"https://c/p?exp=1796119850"}},
            "items":["https://c/i?Expires=1796119990", 5, null]}}"#;
        assert_eq!(earliest_expiry(body), Some(at(1_796_119_850)));
        assert_eq!(earliest_expiry(br#"{"id":"j"}"#), None);
        assert_eq!(earliest_expiry(b"not json"), None);
    }
}

//! Rewriting the links in a job so that following them goes through the gateway.
//!
//! The body goes through the JSON parser, never string replacement, but is not
//! re-serialised: serde_json's borrowed `RawValue`s tell exactly where each `links` URL
//! sits in the original bytes, and only those spans are replaced. Everything else (the
//! pre-signed CDN URLs in `extraction`, number formats, key order, whitespace) comes out
//! byte for byte as it went in, and a job with nothing to rewrite is not copied at all.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cache::JobState;

/// What the cache needs to know about a job, read while rewriting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    /// The `id` field, when it is a string.
    pub id: Option<String>,
    /// The `state` field.
    pub state: JobState,
    /// The `createdAt` field, when it is a valid RFC 3339 time.
    pub created_at: Option<OffsetDateTime>,
}

/// The body is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAJob(pub String);

impl fmt::Display for NotAJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rewrites absolute links under `/v2/` to `public_url` + path + query.
#[derive(Debug, Clone)]
pub struct LinkRewriter {
    /// Where rewritten links point: the gateway's public origin and prefix, no trailing
    /// slash.
    public_url: String,
}

/// One replacement: bytes `start..end` of the body become `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

impl LinkRewriter {
    /// A rewriter pointing links at `public_url`.
    pub fn new(public_url: &str) -> LinkRewriter {
        LinkRewriter {
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// Reads a job body, rewrites its `links`, and returns the new body with the facts
    /// the cache policy needs.
    pub fn rewrite_job(&self, body: &Bytes) -> Result<(Bytes, JobFacts), NotAJob> {
        let top: TopLevel<'_> = serde_json::from_slice(body)
            .map_err(|e| NotAJob(format!("the job body is not a JSON object: {e}")))?;
        let mut edits = Vec::new();
        for links in &top.links {
            self.link_edits(body, links, &mut edits);
        }
        let facts = JobFacts {
            id: top
                .id
                .and_then(|raw| string_value(raw).map(Cow::into_owned)),
            state: JobState::parse(top.state.and_then(string_value).as_deref()),
            created_at: top
                .created_at
                .and_then(string_value)
                .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok()),
        };
        Ok((apply(body, edits), facts))
    }

    /// Rewrites the links of every job in a list answer (`{"items": [job, ...]}`).
    pub fn rewrite_list(&self, body: &Bytes) -> Result<Bytes, NotAJob> {
        let list: ListBody<'_> = serde_json::from_slice(body)
            .map_err(|e| NotAJob(format!("the list body is not a JSON object: {e}")))?;
        let mut edits = Vec::new();
        for items in &list.items {
            let Ok(jobs) = serde_json::from_str::<Vec<&RawValue>>(items.get()) else {
                continue;
            };
            for job in jobs {
                if let Ok(top) = serde_json::from_str::<TopLevel<'_>>(job.get()) {
                    for links in &top.links {
                        self.link_edits(body, links, &mut edits);
                    }
                }
            }
        }
        Ok(apply(body, edits))
    }

    /// The rewritten form of one link, or `None` to leave it alone.
    pub fn rewrite_url(&self, url: &str) -> Option<String> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?;
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return None;
        }
        uri.authority()?;
        let path_and_query = uri.path_and_query()?.as_str();
        // Only API paths: a link elsewhere (a CDN, a pre-signed URL) must keep its host
        // and signature, and the gateway could not serve it anyway.
        if !path_and_query.starts_with("/v2/") {
            return None;
        }
        Some(format!("{}{}", self.public_url, path_and_query))
    }

    /// Collects edits for the string values of one `links` object. `links` borrows from
    /// `body`, so its position in `body` is found by address.
    fn link_edits(&self, body: &[u8], links: &RawValue, edits: &mut Vec<Edit>) {
        let Ok(entries) = serde_json::from_str::<Entries<'_>>(links.get()) else {
            return; // null, or not an object: nothing to rewrite
        };
        for raw in entries.0 {
            let Some(url) = string_value(raw) else {
                continue;
            };
            let Some(new) = self.rewrite_url(&url) else {
                continue;
            };
            let Some(start) = offset_in(body, raw.get()) else {
                continue;
            };
            let text = serde_json::to_string(&new).unwrap_or_default();
            edits.push(Edit {
                start,
                end: start + raw.get().len(),
                text,
            });
        }
    }
}

/// Where `part` (a slice of `whole`) starts in `whole`.
fn offset_in(whole: &[u8], part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// Splices the edits into the body; no edits, no copy.
fn apply(body: &Bytes, mut edits: Vec<Edit>) -> Bytes {
    if edits.is_empty() {
        return body.clone();
    }
    edits.sort_by_key(|e| e.start);
    let grow: usize = edits.iter().map(|e| e.text.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grow);
    let mut at = 0;
    for edit in edits {
        if edit.start < at {
            continue; // overlapping spans cannot happen with valid JSON; be safe anyway
        }
        out.extend_from_slice(&body[at..edit.start]);
        out.extend_from_slice(edit.text.as_bytes());
        at = edit.end;
    }
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

/// A raw value that is a JSON string, decoded.
fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'_, str>>(text).ok()
}

/// The top-level fields of a job that matter here, borrowed from the body. Visiting the
/// whole object also validates that the entire body is well-formed JSON.
#[derive(Default)]
struct TopLevel<'a> {
    id: Option<&'a RawValue>,
    state: Option<&'a RawValue>,
    created_at: Option<&'a RawValue>,
    /// Every `links` member (duplicated keys are all rewritten: parsers differ on which
    /// one wins, and a link left pointing upstream would need the key).
    links: Vec<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut top = TopLevel::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    match key.as_ref() {
                        "id" => top.id = Some(value),
                        "state" => top.state = Some(value),
                        "createdAt" => top.created_at = Some(value),
                        "links" => top.links.push(value),
                        _ => {}
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

/// `{"items": ...}` of a list answer.
#[derive(Default)]
struct ListBody<'a> {
    items: Vec<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ListBody<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListBody<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list = ListBody::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    if key == "items" {
                        list.items.push(value);
                    }
                }
                Ok(list)
            }
        }
        d.deserialize_map(V)
    }
}

/// The values of a JSON object, in order, borrowed.
struct Entries<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(_key) = map.next_key::<de::IgnoredAny>()? {
                    values.push(map.next_value::<&'de RawValue>()?);
                }
                Ok(Entries(values))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom("links is an array"))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../tests/data/job-completed.json");

    fn rw() -> LinkRewriter {
        LinkRewriter::new("http://gw.local:8080/")
    }

    #[test]
    fn links_point_at_the_gateway_and_nothing_else_changes() {
        let body = Bytes::from_static(SAMPLE.as_bytes());
        let (out, facts) = rw().rewrite_job(&body).expect("job");
        let before: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let mut after: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            after["links"]["chunks"],
            "http://gw.local:8080/v2/extract/123e4567-e89b-12d3-a456-426614174000/chunks?start=1&end=20"
        );
        assert_eq!(
            after["links"]["download"],
            "http://gw.local:8080/v2/extract/123e4567-e89b-12d3-a456-426614174000/download"
        );
        after["links"] = before["links"].clone();
        assert_eq!(before, after, "only links may change");
        assert_eq!(facts.state, JobState::Completed);
        assert_eq!(
            facts.id.as_deref(),
            Some("123e4567-e89b-12d3-a456-426614174000")
        );
        assert!(facts.created_at.is_some());
        // The CDN URLs keep their exact bytes, signature included.
        assert!(out
            .windows(b"X-Amz-Signature=".len())
            .any(|w| w == b"X-Amz-Signature="));
    }

    #[test]
    fn bytes_outside_links_are_identical() {
        let body = Bytes::from_static(
            br#"{ "id":"a", "n": 1.50e3, "links" : {"chunks":"https://api.exabase.io/v2/extract/a/chunks?start=1&end=20","x":1} ,"z":"\u00e9"}"#,
        );
        let (out, _) = rw().rewrite_job(&body).expect("job");
        let expected = br#"{ "id":"a", "n": 1.50e3, "links" : {"chunks":"http://gw.local:8080/v2/extract/a/chunks?start=1&end=20","x":1} ,"z":"\u00e9"}"#;
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn nothing_to_rewrite_means_no_copy() {
        let body = Bytes::from_static(br#"{"id":"a","state":null,"links":null}"#);
        let (out, facts) = rw().rewrite_job(&body).expect("job");
        assert_eq!(out.as_ptr(), body.as_ptr());
        assert_eq!(facts.state, JobState::Pending);
    }

    #[test]
    fn non_api_and_relative_links_are_left_alone() {
        let r = rw();
        assert_eq!(r.rewrite_url("https://cdn.exabase.io/x.png?sig=1"), None);
        assert_eq!(r.rewrite_url("/v2/extract/a/download"), None);
        assert_eq!(r.rewrite_url("string"), None);
        assert_eq!(r.rewrite_url("ftp://api.exabase.io/v2/x"), None);
        assert_eq!(
            r.rewrite_url("https://api.exabase.io/v2/extract/a/download")
                .as_deref(),
            Some("http://gw.local:8080/v2/extract/a/download")
        );
    }

    #[test]
    fn not_json_or_not_an_object_is_refused() {
        for bad in [
            &b"{\"id\": \"oops"[..],
            b"[1,2]",
            b"",
            b"null",
            b"{\"a\":1} trailing",
        ] {
            assert!(
                rw().rewrite_job(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn escaped_links_are_decoded_before_rewriting() {
        let body = Bytes::from_static(
            br#"{"links":{"download":"https:\/\/api.exabase.io\/v2\/extract\/a\/download"}}"#,
        );
        let (out, _) = rw().rewrite_job(&body).expect("job");
        assert_eq!(
            &out[..],
            &br#"{"links":{"download":"http://gw.local:8080/v2/extract/a/download"}}"#[..]
        );
    }

    #[test]
    fn list_items_are_rewritten() {
        let body = Bytes::from_static(
            br#"{"items":[{"id":"a","links":{"download":"https://api.exabase.io/v2/extract/a/download"}},{"id":"b","links":null}],"nextCursor":null}"#,
        );
        let out = rw().rewrite_list(&body).expect("list");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v["items"][0]["links"]["download"],
            "http://gw.local:8080/v2/extract/a/download"
        );
        assert_eq!(v["items"][1]["links"], serde_json::Value::Null);
    }
}

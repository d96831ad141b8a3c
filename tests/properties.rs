//! Property tests of the gateway's input handling: job ids, the base header, request
//! targets and routes, and the link rewriter.
//!
//! Each property is checked against an oracle written here independently of `src/`
//! (a regex for ids, a conservative URL grammar for links), over both arbitrary input
//! and input generated to sit close to the boundary (mutated ids, URL-shaped strings),
//! because uniformly random strings almost never hit the interesting cases.
//!
//! Case counts are moderate (`CASES`) so the file stays a few seconds in a debug build;
//! raise them for a longer hunt with `PROPTEST_CASES=10000 cargo test --test properties`.

use std::sync::LazyLock;

use bytes::Bytes;
use exagate::error::ErrorKind;
use exagate::proxy::rewrite::LinkRewriter;
use exagate::proxy::route::{check_target, parse_base, parse_job_id, route, Route, BASE_HEADER};
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use regex::Regex;
use serde::de::IgnoredAny;
use serde_json::{Map, Number, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

/// The proptest config every block uses: `CASES`, overridable from the environment.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // Shrinking a tree of JSON can take long; a bounded number of steps still
        // yields a readable counter-example.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Oracles
// ---------------------------------------------------------------------------------------

/// The documented job id pattern, applied case-insensitively: the oracle for
/// `parse_job_id`.
static JOB_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        .expect("regex")
});

/// A hyphenated UUID of any version or variant: the oracle for `parse_base`, which
/// takes exactly that form and no other spelling.
static HYPHENATED_UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        .expect("regex")
});

/// A conservative grammar of absolute http(s) URLs: a plain host and optional port, a
/// path and query of unreserved, sub-delim, `:`, `@`, `/` and `%` characters, no
/// fragment. Any string it matches is unambiguously such a URL, whatever URL parser
/// reads it.
static PLAIN_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)^
        (?i:https?)://
        [A-Za-z0-9.-]+ (?: :[0-9]{1,4} )?
        (?P<path> /[A-Za-z0-9._~!$&'()*+,;=:@/%-]* )?
        (?P<query> \?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]* )?
        $",
    )
    .expect("regex")
});

/// What must become of one string in a job's `links`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkExpect {
    /// Becomes the public URL followed by this path and query.
    Rewrite(String),
    /// Stays exactly as it was.
    Keep,
    /// Outside the conservative grammar but http(s)-shaped (odd characters, a fragment,
    /// userinfo): either kept, or rewritten to the public URL + `/v2/` + something that
    /// was in the original. Whether an odd URL parses is the URL parser's business; what
    /// must never happen is a link pointed anywhere else.
    Either,
}

/// Classifies a link string independently of the rewriter.
fn expect_link(link: &str) -> LinkExpect {
    let lower = link.get(..8).unwrap_or(link).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return LinkExpect::Keep;
    }
    let Some(caps) = PLAIN_URL.captures(link) else {
        return LinkExpect::Either;
    };
    let path = caps.name("path").map_or("", |m| m.as_str());
    let query = caps.name("query").map_or("", |m| m.as_str());
    if path.starts_with("/v2/") {
        LinkExpect::Rewrite(format!("{path}{query}"))
    } else {
        LinkExpect::Keep
    }
}

/// Checks one link value of the output against the input and returns the value the
/// output must hold, for the byte-exact comparison.
fn check_link(public: &str, before: &Value, after: &Value) -> Result<Value, TestCaseError> {
    let Value::String(link) = before else {
        prop_assert_eq!(after, before, "a non-string link value changed");
        return Ok(before.clone());
    };
    match expect_link(link) {
        LinkExpect::Keep => {
            prop_assert_eq!(after, before, "a link that must stay changed");
        }
        LinkExpect::Rewrite(path_and_query) => {
            let want = Value::String(format!("{public}{path_and_query}"));
            prop_assert_eq!(after, &want, "an API link was not rewritten: {:?}", link);
        }
        LinkExpect::Either => {
            if after != before {
                let text = after.as_str().unwrap_or_default();
                let rest = text.strip_prefix(public).unwrap_or_default();
                prop_assert!(
                    rest.starts_with("/v2/") && link.contains(rest),
                    "odd link {:?} became {:?}",
                    link,
                    after
                );
            }
        }
    }
    Ok(after.clone())
}

/// Checks a job's output against its input: everything but the top-level `links` equal,
/// every link as `expect_link` says. Returns the value the output must equal.
fn check_job(public: &str, before: &Value, after: &Value) -> Result<Value, TestCaseError> {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        prop_assert_eq!(after, before, "a non-object item changed");
        return Ok(before.clone());
    };
    let mut b_rest = b.clone();
    let mut a_rest = a.clone();
    let b_links = b_rest.remove("links");
    let a_links = a_rest.remove("links");
    prop_assert_eq!(&a_rest, &b_rest, "something outside links changed");
    let mut expected = b.clone();
    match (&b_links, &a_links) {
        (None, None) => {}
        (Some(Value::Object(bl)), Some(Value::Object(al))) => {
            prop_assert_eq!(
                bl.keys().collect::<Vec<_>>(),
                al.keys().collect::<Vec<_>>(),
                "links keys changed"
            );
            let mut links = Map::new();
            for (key, bv) in bl {
                let av = &al[key];
                links.insert(key.clone(), check_link(public, bv, av)?);
            }
            expected.insert("links".into(), Value::Object(links));
        }
        (bl, al) => prop_assert_eq!(al, bl, "a links that is not an object changed"),
    }
    Ok(Value::Object(expected))
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// A valid job id in random case.
fn valid_id() -> impl Strategy<Value = String> {
    (
        "[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        any::<u64>(),
    )
        .prop_map(|(id, case_bits)| random_case(&id, case_bits))
}

/// Upper-cases the letters of `text` whose bit in `bits` is set.
fn random_case(text: &str, bits: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Characters a mutation puts in: the boundary digits of the version and variant
/// nibbles, hex and non-hex letters, separators, and a few multi-byte ones (which keep
/// a string at 36 chars but not 36 bytes, or the reverse).
fn mutation_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '0', '1', '7', '8', '9', 'a', 'b', 'c', 'f', 'A', 'B', 'C', 'F', 'g', 'G', 'z', '-',
            '_', ' ', '{', '}', '%', '/', '\0', '\u{7f}', 'é', 'Ａ', '٣', '\u{200b}',
        ]),
        any::<char>(),
    ]
}

/// A valid id with a few mutations: a character replaced, inserted or removed, hyphens
/// stripped, braces or a URN prefix added.
fn near_valid_id() -> impl Strategy<Value = String> {
    let edit = (0usize..40, mutation_char(), 0u8..6);
    (valid_id(), prop::collection::vec(edit, 0..3)).prop_map(|(id, edits)| {
        let mut chars: Vec<char> = id.chars().collect();
        for (at, c, op) in edits {
            let at = at % (chars.len() + 1);
            match op {
                0 | 1 if at < chars.len() => chars[at] = c,
                2 => chars.insert(at, c),
                3 if at < chars.len() => {
                    chars.remove(at);
                }
                4 => chars.retain(|&c| c != '-'),
                5 => {
                    chars.insert(0, '{');
                    chars.push('}');
                }
                _ => chars.splice(0..0, "urn:uuid:".chars()).for_each(drop),
            }
        }
        chars.into_iter().collect()
    })
}

/// Any string, with the interesting ones well represented.
fn id_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => valid_id(),
        4 => near_valid_id(),
        1 => "[0-9a-fA-F-]{30,40}",
        1 => any::<String>(),
    ]
}

/// A path segment for route tests: the route table's own words, ids, dot segments and
/// their encodings, empties, and noise.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "v2", "v2", "v2", "extract", "extract", "extract", "extract-settings", "upload",
            "chunks", "download", "reprocess", "webhook", "trigger", "", ".", "..", "%2e",
            "%2E%2e", "%2f", "%5C", "%00", "%0a", "%7F", "%20", "a%2fb", "\\", "v1",
        ])
        .prop_map(str::to_owned),
        3 => id_candidate(),
        1 => "[A-Za-z0-9._~%-]{0,12}",
        1 => any::<String>(),
    ]
}

/// A request path: mostly `/`-joined segments starting `/v2/extract`, sometimes anything.
fn path_candidate() -> impl Strategy<Value = String> {
    let joined = prop::collection::vec(segment(), 0..6).prop_map(|segs| {
        let mut path = String::new();
        for seg in segs {
            path.push('/');
            path.push_str(&seg);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    });
    let under_extract = (
        prop::collection::vec(segment(), 0..4),
        prop::option::of("[a-z=&%0-9]{0,20}"),
    )
        .prop_map(|(segs, query)| {
            let mut path = String::from("/v2/extract");
            for seg in segs {
                path.push('/');
                path.push_str(&seg);
            }
            if let Some(q) = query {
                path.push('?');
                path.push_str(&q);
            }
            path
        });
    // The job routes proper: an id (valid or nearly), then one of the tails the table
    // knows or nearly knows.
    let job_routes = (
        prop_oneof![2 => valid_id(), 1 => id_candidate()],
        prop::sample::select(vec![
            "",
            "/",
            "/chunks",
            "/download",
            "/reprocess",
            "/webhook/trigger",
            "/chunks/",
            "/Chunks",
            "/download/x",
            "/x",
            "//chunks",
            "/./chunks",
            "/../upload",
            "/%2e",
        ]),
        prop::option::of("[a-z=&%0-9]{0,20}"),
    )
        .prop_map(|(id, tail, query)| {
            let mut path = format!("/v2/extract/{id}{tail}");
            if let Some(q) = query {
                path.push('?');
                path.push_str(&q);
            }
            path
        });
    prop_oneof![
        8 => job_routes,
        3 => under_extract,
        2 => joined,
        1 => any::<String>(),
        1 => "/[ -~]{0,60}",
    ]
}

/// A request method, the usual ones and an extension method; mostly `GET`, as traffic is.
fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::from_bytes(b"PURGE").expect("method"),
    ])
}

/// Where rewritten links point: with and without a port, a trailing slash, a prefix.
fn public_url() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "http://127.0.0.1:8080",
        "http://gw.local:8080/",
        "https://gateway.example",
        "https://gateway.example/exabase",
    ])
    .prop_map(str::to_owned)
}

/// A URL-safe fragment of a path or query.
fn url_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,16}"
}

/// Strings a job's `links` holds, or might: API links (rewritable), CDN and other
/// hosts' links, other schemes, relative links, near misses, odd characters, anything.
fn link_string() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec!["https", "http", "HTTPS", "Http"]);
    let host = prop::sample::select(vec![
        "api.exabase.io",
        "api.exabase.io:443",
        "127.0.0.1:9999",
        "localhost",
    ]);
    let api = (
        scheme.clone(),
        host.clone(),
        prop::collection::vec(url_text(), 0..4),
        prop::option::of(url_text()),
    )
        .prop_map(|(scheme, host, segs, query)| {
            let mut url = format!("{scheme}://{host}/v2/{}", segs.join("/"));
            if let Some(q) = query {
                url.push('?');
                url.push_str(&q);
            }
            url
        });
    let documented =
        (valid_id(), 1u32..500, 1u32..500, any::<bool>()).prop_map(|(id, start, len, chunks)| {
            let id = id.to_lowercase();
            if chunks {
                format!(
                    "https://api.exabase.io/v2/extract/{id}/chunks?start={start}&end={}",
                    start + len
                )
            } else {
                format!("https://api.exabase.io/v2/extract/{id}/download")
            }
        });
    let cdn = (url_text(), "[0-9a-f]{16}").prop_map(|(name, sig)| {
        format!("https://cdn.exabase.io/files/{name}.png?X-Amz-Expires=3600&X-Amz-Signature={sig}")
    });
    let near_miss = (scheme, host, url_text()).prop_flat_map(|(scheme, host, tail)| {
        prop::sample::select(vec![
            format!("{scheme}://{host}/v1/{tail}"),
            format!("{scheme}://{host}/v2"),
            format!("{scheme}://{host}/V2/{tail}"),
            format!("{scheme}://{host}"),
            format!("{scheme}://{host}?next=/v2/{tail}"),
            format!("{scheme}://{host}/x/v2/{tail}"),
            format!("/v2/extract/{tail}"),
            format!("v2/extract/{tail}"),
            format!("//{host}/v2/{tail}"),
            format!("ftp://{host}/v2/{tail}"),
            format!("wss://{host}/v2/{tail}"),
            format!("{scheme}:/v2/{tail}"),
            format!("{scheme}:///v2/{tail}"),
            format!(" {scheme}://{host}/v2/{tail}"),
            format!("{scheme}://{host}/v2/{tail}#frag"),
            format!("{scheme}://user:pw@{host}/v2/{tail}"),
            format!("{scheme}://{host}/v2/{tail} x"),
            format!("{scheme}://{host}/v2/é{tail}"),
            format!("{scheme}://{host}/v2/\"{tail}\\"),
            format!("{scheme}://{host}/v2/{tail}\n"),
        ])
    });
    prop_oneof![
        3 => api,
        3 => documented,
        2 => cdn,
        3 => near_miss,
        1 => any::<String>(),
    ]
}

/// A JSON leaf: null, booleans, integers, finite floats, strings (arbitrary Unicode,
/// so escapes and multi-byte characters shift offsets), link-like strings.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
        link_string().prop_map(Value::String),
    ]
}

/// Object keys: the ones the rewriter looks at (at any depth, where they must not be
/// treated as top-level), and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "id", "state", "createdAt", "links", "items", "chunks", "download", "extraction",
            "nextCursor",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z]{1,8}",
        1 => any::<String>(),
    ]
}

/// A JSON tree a few levels deep.
fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One value inside `links`: mostly link strings, sometimes null, numbers or whole
/// trees (which hold link strings the rewriter must not touch: only direct values are
/// links).
fn link_member() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => link_string().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => tree(),
    ]
}

/// The `links` member of a job: usually an object of links, sometimes something else.
fn links_value() -> impl Strategy<Value = Value> {
    let link_key = prop_oneof![
        3 => prop::sample::select(vec!["chunks", "download", "self", "original"])
            .prop_map(str::to_owned),
        1 => key(),
    ];
    prop_oneof![
        6 => prop::collection::vec((link_key, link_member()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        1 => Just(Value::Null),
        1 => prop::collection::vec(link_string().prop_map(Value::String), 0..3)
            .prop_map(Value::Array),
        1 => link_string().prop_map(Value::String),
        1 => tree(),
    ]
}

/// A job-shaped object: some known fields, some arbitrary ones, usually `links`.
fn job() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![valid_id().prop_map(Value::String), leaf()]),
        prop::option::of(prop::sample::select(vec![
            "completed",
            "pending",
            "processing",
            "failed",
            "cleaned",
            "weird",
        ])),
        prop::collection::vec((key(), tree()), 0..4),
        prop::option::weighted(0.85, links_value()),
    )
        .prop_map(|(id, state, extra, links)| {
            let mut job = Map::new();
            // Arbitrary members first, so the known ones below win over a generated
            // key that happens to collide.
            for (k, v) in extra {
                job.insert(k, v);
            }
            if let Some(id) = id {
                job.insert("id".into(), id);
            }
            if let Some(state) = state {
                job.insert("state".into(), Value::from(state));
            }
            match links {
                Some(links) => {
                    job.insert("links".into(), links);
                }
                None => {
                    job.remove("links");
                }
            }
            Value::Object(job)
        })
}

/// A list answer: `{"items": [...]}` with jobs and the odd non-job, other members, and
/// sometimes an `items` that is not an array or a top-level `links` (not a job's).
fn list() -> impl Strategy<Value = Value> {
    let items = prop_oneof![
        6 => prop::collection::vec(prop_oneof![4 => job(), 1 => tree()], 0..5)
            .prop_map(Value::Array),
        1 => tree(),
    ];
    (
        items,
        prop::option::of(prop_oneof![
            Just(Value::Null),
            "[0-9]{1,4}".prop_map(Value::from)
        ]),
        prop::option::of(links_value()),
    )
        .prop_map(|(items, cursor, links)| {
            let mut list = Map::new();
            list.insert("items".into(), items);
            if let Some(cursor) = cursor {
                list.insert("nextCursor".into(), cursor);
            }
            if let Some(links) = links {
                list.insert("links".into(), links);
            }
            Value::Object(list)
        })
}

/// Copies the link strings of `want` (a checked output) into the string members of
/// `job`'s `links` (the generated input), giving the value whose serialisation the output
/// must equal byte for byte.
fn put_links(job: &mut Value, want: &Value) {
    if let (Some(Value::Object(links)), Some(Value::Object(wanted))) =
        (job.get_mut("links"), want.get("links"))
    {
        for (key, value) in links.iter_mut() {
            if let (true, Some(w)) = (value.is_string(), wanted.get(key)) {
                *value = w.clone();
            }
        }
    }
}

/// Serialises compactly or pretty-printed.
fn serialise(value: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(value).expect("serialise")
    } else {
        serde_json::to_vec(value).expect("serialise")
    }
}

/// The public URL as the rewriter uses it: without a trailing slash.
fn trimmed(public: &str) -> &str {
    public.trim_end_matches('/')
}

// ---------------------------------------------------------------------------------------
// Job ids
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// An id is accepted exactly when it matches the documented pattern; the accepted
    /// id prints as the input lower-cased; a refusal is `InvalidJobId`.
    #[test]
    fn job_id_is_accepted_exactly_when_it_matches_the_pattern(text in id_candidate()) {
        match parse_job_id(&text) {
            Ok(id) => {
                prop_assert!(JOB_ID.is_match(&text), "accepted off-pattern {:?}", text);
                prop_assert_eq!(id.hyphenated().to_string(), text.to_lowercase());
            }
            Err(e) => {
                prop_assert!(!JOB_ID.is_match(&text), "refused on-pattern {:?}", text);
                prop_assert_eq!(e.kind, ErrorKind::InvalidJobId);
            }
        }
    }

    /// Every valid id in any case is accepted and lower-cased.
    #[test]
    fn valid_ids_in_any_case_are_accepted(text in valid_id()) {
        let id = parse_job_id(&text).map_err(|e| TestCaseError::fail(e.message.into_owned()))?;
        prop_assert_eq!(id.to_string(), text.to_lowercase());
    }
}

// ---------------------------------------------------------------------------------------
// The base header
// ---------------------------------------------------------------------------------------

/// Bytes for a header value: UUID spellings and their near misses, and arbitrary bytes.
fn base_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let any_uuid = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    prop_oneof![
        3 => any_uuid.prop_map(String::into_bytes),
        1 => "[0-9a-fA-F]{32}".prop_map(String::into_bytes),
        1 => any_uuid.prop_map(|u| format!("{{{u}}}").into_bytes()),
        1 => any_uuid.prop_map(|u| format!("urn:uuid:{u}").into_bytes()),
        1 => any_uuid.prop_map(|u| format!(" {u}").into_bytes()),
        3 => near_valid_id().prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..48),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// One base header value is accepted exactly when it is a hyphenated UUID (any
    /// version), as that UUID; anything else is `InvalidBaseId`.
    #[test]
    fn base_is_accepted_exactly_when_hyphenated(bytes in base_value_bytes()) {
        // Bytes a header value cannot hold never reach the gateway: hyper refuses them.
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert(BASE_HEADER, value);
        let text = std::str::from_utf8(&bytes).ok();
        let valid = text.is_some_and(|t| HYPHENATED_UUID.is_match(t));
        match parse_base(&headers) {
            Ok(Some(base)) => {
                prop_assert!(valid, "accepted {:?}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(Some(base.to_string()), text.map(str::to_lowercase));
            }
            Ok(None) => prop_assert!(false, "a present header read as absent"),
            Err(e) => {
                prop_assert!(!valid, "refused {:?}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(e.kind, ErrorKind::InvalidBaseId);
            }
        }
    }

    /// Two values, even two equal valid ones, are refused: one request, one scope.
    #[test]
    fn repeated_base_is_refused(a in base_value_bytes(), b in base_value_bytes()) {
        let (Ok(a), Ok(b)) = (HeaderValue::from_bytes(&a), HeaderValue::from_bytes(&b)) else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.append(BASE_HEADER, a);
        headers.append(BASE_HEADER, b);
        prop_assert_eq!(
            parse_base(&headers).map_err(|e| e.kind),
            Err(ErrorKind::InvalidBaseId)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Request targets and routes
// ---------------------------------------------------------------------------------------

/// What a job route's path must look like: `/v2/extract/{id}` then `tail`, with the id
/// on-pattern and equal to the one routed.
fn assert_job_path(path: &str, id: uuid::Uuid, tail: Option<&str>) -> Result<(), TestCaseError> {
    let rest = path.strip_prefix("/v2/extract/");
    prop_assert!(rest.is_some(), "job route outside /v2/extract/: {:?}", path);
    let rest = rest.unwrap_or_default();
    let (seg, got_tail) = match rest.split_once('/') {
        Some((seg, t)) => (seg, Some(t)),
        None => (rest, None),
    };
    prop_assert!(JOB_ID.is_match(seg), "routed off-pattern id {:?}", seg);
    prop_assert_eq!(id.to_string(), seg.to_lowercase());
    if let Some(tail) = tail {
        prop_assert_eq!(got_tail, Some(tail));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// `check_target` then `route`, as the handler calls them: no panic, refusals of the
    /// right kinds, and every job route carries the id that is in its path.
    #[test]
    fn routing_never_panics_and_job_routes_have_valid_ids(
        method in method(),
        target in path_candidate(),
    ) {
        // Targets that do not parse as a URI never reach the gateway: hyper refuses them.
        let Ok(uri) = target.parse::<http::Uri>() else {
            return Ok(());
        };
        if let Err(e) = check_target(&uri) {
            prop_assert_eq!(e.kind, ErrorKind::BadRequest);
            return Ok(());
        }
        let path = uri.path();
        // What check_target promises for what it lets through.
        prop_assert!(!path.contains("//") && !path.contains('\\'), "{:?}", path);
        prop_assert!(path.split('/').all(|s| s != "." && s != ".."), "{:?}", path);
        prop_assert!(!path.to_ascii_lowercase().contains("%2e"), "{:?}", path);
        prop_assert!(!path.to_ascii_lowercase().contains("%2f"), "{:?}", path);
        let read = method == Method::GET || method == Method::HEAD;
        match route(&method, path) {
            Ok(Route::Job(id)) => {
                prop_assert!(read);
                assert_job_path(path, id, None)?;
                prop_assert_eq!(path.matches('/').count(), 3);
            }
            Ok(Route::Chunks(id)) => {
                prop_assert!(read);
                assert_job_path(path, id, Some("chunks"))?;
            }
            Ok(Route::Download(id)) => {
                prop_assert!(read);
                assert_job_path(path, id, Some("download"))?;
            }
            Ok(Route::JobAction(id)) => {
                prop_assert!(!read);
                assert_job_path(path, id, None)?;
                prop_assert!(path.matches('/').count() >= 4, "{:?}", path);
            }
            Ok(Route::Collection) => prop_assert_eq!(path, "/v2/extract"),
            Ok(Route::Upload) => prop_assert_eq!(path, "/v2/extract/upload"),
            Ok(Route::Settings) => prop_assert_eq!(path, "/v2/extract-settings"),
            Err(e) => prop_assert!(
                matches!(
                    e.kind,
                    ErrorKind::NotFound | ErrorKind::InvalidJobId | ErrorKind::MethodNotAllowed
                ),
                "{:?} for {:?}",
                e.kind,
                path
            ),
        }
    }

    /// `route` alone, on any string at all (not only what a URI parser lets through):
    /// no panic, and a job route still has an on-pattern id.
    #[test]
    fn route_on_any_string_never_panics(method in method(), path in path_candidate()) {
        if let Ok(Route::Job(id) | Route::Chunks(id) | Route::Download(id) | Route::JobAction(id)) =
            route(&method, &path)
        {
            assert_job_path(&path, id, None)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The link rewriter
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// A job, compact or pretty: the output is JSON; it equals the input outside the
    /// top-level `links`; each link is rewritten or kept as `expect_link` says; and the
    /// bytes are exactly the input's with only those link strings replaced.
    #[test]
    fn rewrite_job_changes_only_api_links(
        job in job(),
        pretty in any::<bool>(),
        public in public_url(),
    ) {
        let rewriter = LinkRewriter::new(&public);
        let public = trimmed(&public);
        let input = serialise(&job, pretty);
        let (output, facts) = rewriter
            .rewrite_job(&Bytes::from(input.clone()))
            .map_err(|e| TestCaseError::fail(format!("refused a JSON object: {e}")))?;
        let before: Value = serde_json::from_slice(&input).expect("input is JSON");
        let after: Value = serde_json::from_slice(&output)
            .map_err(|e| TestCaseError::fail(format!("output is not JSON: {e}")))?;
        let expected = check_job(public, &before, &after)?;
        // Byte-exact: serialising the generated job with the expected links in place
        // (same serialiser, same layout) must give the output byte for byte. The
        // generated value is used, not the re-parsed one, so float formatting is the
        // input's own.
        let mut exact = job.clone();
        put_links(&mut exact, &expected);
        let want = serialise(&exact, pretty);
        prop_assert_eq!(
            String::from_utf8_lossy(&output),
            String::from_utf8_lossy(&want),
            "bytes outside the rewritten links changed"
        );
        prop_assert_eq!(facts.id.as_deref(), job.get("id").and_then(Value::as_str));
    }

    /// A body that is JSON but not an object is refused, whatever it holds.
    #[test]
    fn rewrite_job_refuses_non_objects(
        value in prop_oneof![
            leaf(),
            prop::collection::vec(tree(), 0..4).prop_map(Value::Array),
        ],
        pretty in any::<bool>(),
    ) {
        let input = Bytes::from(serialise(&value, pretty));
        prop_assert!(LinkRewriter::new("http://gw").rewrite_job(&input).is_err());
        prop_assert!(LinkRewriter::new("http://gw").rewrite_list(&input).is_err());
    }

    /// A job cut short, or followed by junk, is refused (not half-rewritten).
    #[test]
    fn rewrite_job_refuses_damaged_json(
        job in job(),
        cut in any::<prop::sample::Index>(),
        junk in "[^ \t\r\n]{1,4}",
    ) {
        let input = serialise(&job, false);
        let rewriter = LinkRewriter::new("http://gw");
        let short = &input[..cut.index(input.len())];
        prop_assert!(rewriter.rewrite_job(&Bytes::copy_from_slice(short)).is_err());
        let mut long = input.clone();
        long.extend_from_slice(junk.as_bytes());
        prop_assert!(rewriter.rewrite_job(&Bytes::from(long)).is_err());
    }

    /// Arbitrary bytes, and serialised jobs with a byte flipped: no panic; accepted
    /// exactly when serde_json reads an object; an accepted body comes out as JSON that
    /// equals the input outside `links`.
    #[test]
    fn rewrite_job_on_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (job(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(job, at, b)| {
                let mut v = serialise(&job, false);
                let i = at.index(v.len());
                v[i] = b;
                v
            }),
        ],
    ) {
        let body = Bytes::from(bytes.clone());
        let rewriter = LinkRewriter::new("http://gw");
        // The reference for "is a JSON object": UTF-8 (RFC 8259 requires it, and
        // serde_json's skipping parser does not check it inside strings), then skipped
        // without converting values, because JSON puts no bound on numbers and `1e1110`
        // is valid even though a `Value` cannot hold it.
        let is_object = bytes.trim_ascii_start().first() == Some(&b'{')
            && std::str::from_utf8(&bytes)
                .is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok());
        match rewriter.rewrite_job(&body) {
            Ok((out, _)) => {
                prop_assert!(is_object, "accepted what is not a JSON object: {:?}", body);
                prop_assert!(
                    serde_json::from_slice::<IgnoredAny>(&out).is_ok(),
                    "output is not JSON: {:?}",
                    out
                );
                // Compare contents when a `Value` can hold them (numbers in range).
                if let (Ok(before), Ok(after)) = (
                    serde_json::from_slice::<Value>(&bytes),
                    serde_json::from_slice::<Value>(&out),
                ) {
                    check_job("http://gw", &before, &after)?;
                }
            }
            Err(_) => prop_assert!(!is_object, "refused a JSON object: {:?}", body),
        }
        // The list reader must be as robust.
        let listed = rewriter.rewrite_list(&body);
        prop_assert_eq!(listed.is_ok(), is_object);
    }

    /// A list answer: each item that is an object has its links handled as a job's;
    /// everything else, a top-level `links` included, is untouched; bytes exact.
    #[test]
    fn rewrite_list_changes_only_item_links(
        list in list(),
        pretty in any::<bool>(),
        public in public_url(),
    ) {
        let rewriter = LinkRewriter::new(&public);
        let public = trimmed(&public);
        let input = serialise(&list, pretty);
        let output = rewriter
            .rewrite_list(&Bytes::from(input.clone()))
            .map_err(|e| TestCaseError::fail(format!("refused a list: {e}")))?;
        let before: Value = serde_json::from_slice(&input).expect("input is JSON");
        let after: Value = serde_json::from_slice(&output)
            .map_err(|e| TestCaseError::fail(format!("output is not JSON: {e}")))?;
        let (Value::Object(b), Value::Object(a)) = (&before, &after) else {
            return Err(TestCaseError::fail("a list came out as a non-object"));
        };
        let mut b_rest = b.clone();
        let mut a_rest = a.clone();
        let b_items = b_rest.remove("items");
        let a_items = a_rest.remove("items");
        prop_assert_eq!(a_rest, b_rest, "something outside items changed");
        let mut exact = list.clone();
        match (b_items, a_items) {
            (Some(Value::Array(bi)), Some(Value::Array(ai))) => {
                prop_assert_eq!(bi.len(), ai.len());
                let Some(Value::Array(slots)) = exact.get_mut("items") else {
                    return Err(TestCaseError::fail("generated items is an array"));
                };
                for ((bj, aj), slot) in bi.iter().zip(&ai).zip(slots.iter_mut()) {
                    let want = check_job(public, bj, aj)?;
                    put_links(slot, &want);
                }
            }
            (bi, ai) => prop_assert_eq!(ai, bi, "an items that is not an array changed"),
        }
        let want = serialise(&exact, pretty);
        prop_assert_eq!(
            String::from_utf8_lossy(&output),
            String::from_utf8_lossy(&want),
            "bytes outside the rewritten links changed"
        );
    }
}

/// The oracle itself, on the cases the README names: if it were wrong, the properties
/// above would prove nothing.
#[test]
fn link_oracle_agrees_with_the_readme() {
    let id = "123e4567-e89b-12d3-a456-426614174000";
    assert_eq!(
        expect_link(&format!(
            "https://api.exabase.io/v2/extract/{id}/chunks?start=1&end=20"
        )),
        LinkExpect::Rewrite(format!("/v2/extract/{id}/chunks?start=1&end=20"))
    );
    for keep in [
        "https://cdn.exabase.io/files/x.png?X-Amz-Signature=abc",
        "/v2/extract/x/download",
        "ftp://api.exabase.io/v2/x",
        "https://api.exabase.io/v2",
        "https://api.exabase.io?x=/v2/",
        "",
    ] {
        assert_eq!(expect_link(keep), LinkExpect::Keep, "{keep}");
    }
    assert_eq!(
        expect_link("https://api.exabase.io/v2/x#f"),
        LinkExpect::Either
    );
}

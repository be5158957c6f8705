//! A string that never shows itself: tokens, client secrets, private keys and API keys; and
//! [`redact`], which takes them (and anything shaped like a credential) out of text copied from
//! elsewhere, such as a provider's error body that echoes the request.

use std::borrow::Cow;
use std::fmt;
use std::sync::{LazyLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Holds a credential. `Debug`, `Display` and `Serialize` all print `***`, so a secret that ends
/// up in a log line, an error, a plan or a state file does not leak. Read it with
/// [`Secret::expose`] only where it is sent to its own host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Holds `value`, and remembers it for [`redact`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Secret(value)
    }

    /// The secret value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Every secret value of the process (configured, or a token fetched at run time), for
/// [`redact`]: a provider or proxy that echoes the request puts them in error bodies.
static KNOWN: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Values shorter than this are not looked for: a two-letter test token would blank out every
/// word holding its letters, and no real credential is that short.
const SHORTEST_REMEMBERED: usize = 4;

fn remember(value: &str) {
    if value.len() < SHORTEST_REMEMBERED {
        return;
    }
    let Ok(mut known) = KNOWN.write() else {
        return;
    };
    if !known.iter().any(|k| k == value) {
        known.push(value.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }
}

/// What a credential is replaced with.
const REDACTED: &str = "***";

/// Names after which a value is a credential, in a query (`sig=…`), a header echoed as text
/// (`Authorization: …`) or JSON (`"access_token": "…"`). Matched without regard to case, at the
/// start of a word.
const CREDENTIAL_NAMES: [&str; 16] = [
    "authorization",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "sig",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "password",
    "api_key",
    "apikey",
    "x-api-key",
    "assertion",
];

/// Schemes after which the next word is a credential (`Bearer eyJ…`, `Basic dXNlcjpw…`).
const CREDENTIAL_SCHEMES: [&str; 2] = ["bearer", "basic"];

/// `text` with every remembered secret value and every credential-shaped value replaced by
/// `***`: for anything copied out of a response (error bodies, export failure reasons) before
/// it reaches a log line, an error, the run summary or a dead letter.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    if let Ok(known) = KNOWN.read() {
        for value in known.iter() {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), REDACTED));
            }
        }
    }
    match redact_shapes(&out) {
        Some(shaped) => Cow::Owned(shaped),
        None => out,
    }
}

/// Whether `b` can be part of a credential value: anything but what ends a value in a query,
/// a header, JSON or prose.
fn in_value(b: u8) -> bool {
    !(b.is_ascii_whitespace()
        || matches!(
            b,
            b'&' | b'"' | b'\'' | b',' | b';' | b'<' | b'>' | b'}' | b')'
        ))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// [`redact`]'s shapes: `name=value`, `name: value`, `"name": "value"` for the names of
/// [`CREDENTIAL_NAMES`] and `Bearer value`; `None` if there is none.
fn redact_shapes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let lower = lower.as_bytes();
    // Byte ranges of values to replace.
    let mut values: Vec<(usize, usize)> = Vec::new();
    let starts_word = |at: usize| at == 0 || !is_word(bytes[at - 1]);
    let value_from = |mut at: usize| {
        let start = at;
        while at < bytes.len() && in_value(bytes[at]) {
            at += 1;
        }
        (start, at)
    };
    for name in CREDENTIAL_NAMES {
        let mut from = 0;
        while let Some(found) = find(&lower[from..], name.as_bytes()) {
            let at = from + found;
            from = at + name.len();
            let end = at + name.len();
            if !starts_word(at) || bytes.get(end).is_some_and(|&b| is_word(b)) {
                continue;
            }
            // The separator: `=`, `:`, with quotes and spaces around it.
            let mut v = end;
            while v < bytes.len() && matches!(bytes[v], b'"' | b'\'' | b' ' | b'\\') {
                v += 1;
            }
            if v >= bytes.len() || !matches!(bytes[v], b'=' | b':') {
                continue;
            }
            v += 1;
            while v < bytes.len() && matches!(bytes[v], b'"' | b'\'' | b' ' | b'\\') {
                v += 1;
            }
            // `Authorization: Bearer x`: the scheme stays, the credential goes (below).
            if CREDENTIAL_SCHEMES.iter().any(|s| {
                lower[v..].starts_with(s.as_bytes()) && lower.get(v + s.len()) == Some(&b' ')
            }) {
                continue;
            }
            let (start, stop) = value_from(v);
            if stop > start {
                values.push((start, stop));
            }
        }
    }
    for scheme in CREDENTIAL_SCHEMES {
        let mut from = 0;
        while let Some(found) = find(&lower[from..], scheme.as_bytes()) {
            let at = from + found;
            from = at + scheme.len();
            let mut v = at + scheme.len();
            if !starts_word(at) || bytes.get(v) != Some(&b' ') {
                continue;
            }
            while v < bytes.len() && bytes[v] == b' ' {
                v += 1;
            }
            let (start, stop) = value_from(v);
            // A credential is one long word that does not read as prose: it holds a digit, a
            // token punctuation mark or both cases ("basic information" is prose).
            let word = &bytes[start..stop];
            let token_like = word
                .iter()
                .any(|b| b.is_ascii_digit() || b"+/=._-~".contains(b))
                || (word.iter().any(u8::is_ascii_uppercase)
                    && word.iter().any(u8::is_ascii_lowercase));
            if stop - start >= 8 && token_like {
                values.push((start, stop));
            }
        }
    }
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, stop) in values {
        if start < copied {
            // Overlaps a value already replaced.
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = stop;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "description": "secret (printed as ***)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Auth {
            token: Secret,
        }
        assert!(!format!("{:?}", Auth { token: s }).contains("hunter2"));
    }

    #[test]
    fn redacts_remembered_secrets_and_credential_shapes() {
        let _ = Secret::new("kq3-remembered-value");
        let body = r#"{"error":"denied","echo":{"headers":{"Authorization":"Bearer eyJhbGciOi.abc.def","X-Api-Key":"k-123456"},"url":"https://s3.example/f.csv?X-Amz-Signature=deadbeef&X-Amz-Date=20250101&sig=abc%2Fdef","access_token": "at-999","raw":"kq3-remembered-value"}}"#;
        let out = redact(body);
        for leaked in [
            "eyJhbGciOi",
            "k-123456",
            "deadbeef",
            "abc%2Fdef",
            "at-999",
            "kq3-remembered-value",
        ] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        assert!(out.contains("Bearer ***"), "{out}");
        assert!(
            out.contains("X-Amz-Date=20250101"),
            "other fields stay: {out}"
        );
        assert!(out.contains(r#""error":"denied""#), "{out}");
        // Prose and text without credentials pass unchanged (and uncopied).
        for text in [
            "the token expired; basic information about tokens",
            "invalid_client: client authentication failed",
            "résumé 日本語 signature of the sender",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(
            redact("Authorization: Basic dXNlcjpwYXNzd29yZA=="),
            "Authorization: Basic ***"
        );
        assert_eq!(redact("token=abc&x=1"), "token=***&x=1");
    }
}

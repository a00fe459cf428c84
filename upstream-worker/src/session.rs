//! Session data as drover carries it: a JSON object in a header.
//!
//! Parsed with serde_json. Only the top level is decoded into fields; every
//! non-string value is kept as its minified JSON text (`RawValue`), so fields the
//! worker does not understand (floats, nested objects) survive a
//! read-modify-write round trip untouched, down to how a number was spelled.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Deeper nesting than this is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// A top-level field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Decoded text, so handlers can compare and set it directly.
    Str(String),
    /// Minified JSON for everything else, written back verbatim.
    Raw(String),
}

impl Value {
    /// Lets `counter` be read without caring how it was spelled on the wire.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Raw(raw) => raw.parse().ok(),
            Value::Str(_) => None,
        }
    }
}

/// A JSON object with field order preserved, so a round trip changes only
/// what the worker meant to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatObject {
    fields: Vec<(String, Value)>,
}

/// The top level of an object, in order, each value as its raw JSON text.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push((k, v));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// Removes insignificant whitespace from valid JSON text and returns its nesting
/// depth (strings are copied as they are).
fn minify(raw: &str) -> (String, usize) {
    let mut out = String::with_capacity(raw.len());
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => continue,
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
    }
    (out, deepest)
}

impl FlatObject {
    /// Returns `None` for anything that is not exactly one JSON object, so
    /// callers can fall back to an empty session.
    pub fn parse(text: &str) -> Option<FlatObject> {
        let Fields(raw) = serde_json::from_str(text).ok()?;
        let mut obj = FlatObject::default();
        for (key, value) in raw {
            let text = value.get();
            let value = if text.starts_with('"') {
                Value::Str(serde_json::from_str(text).ok()?)
            } else {
                let (min, depth) = minify(text);
                if depth >= MAX_DEPTH {
                    return None;
                }
                Value::Raw(min)
            };
            // Last duplicate wins, as in most JSON readers.
            obj.set(&key, value);
        }
        Some(obj)
    }

    /// Unparseable or absent session data starts a fresh session instead of
    /// failing the request.
    pub fn parse_or_empty(text: Option<&str>) -> FlatObject {
        text.and_then(FlatObject::parse).unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replaces in place so the field keeps its position.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    /// Increments `counter`, treating a missing or non-integer value as 0;
    /// saturates so a hostile session cannot make the worker panic.
    pub fn incr_counter(&mut self) -> i64 {
        let next = self
            .get("counter")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .saturating_add(1);
        self.set("counter", Value::Raw(next.to_string()));
        next
    }

    /// Minified, with non-ASCII escaped, so the result is always a valid
    /// header value as well as valid JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(16 + self.fields.len() * 24);
        out.push('{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            ascii_json_string(&mut out, key);
            out.push(':');
            match value {
                Value::Str(s) => ascii_json_string(&mut out, s),
                Value::Raw(raw) => out.push_str(raw),
            }
        }
        out.push('}');
        out
    }
}

/// A JSON string with every non-ASCII character escaped (`\uXXXX`, surrogate pairs
/// beyond the BMP): serde_json writes UTF-8, which a header value built with
/// `HeaderValue::from_str` would refuse.
fn ascii_json_string(out: &mut String, s: &str) {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
}

/// Checks that `text` is a complete JSON object (nesting below the limit) so it
/// can be embedded verbatim in a JSON response without breaking it.
pub fn is_json_object(text: &str) -> bool {
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return false;
    };
    raw.get().starts_with('{') && minify(raw.get()).1 < MAX_DEPTH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_object_of_all_kinds() {
        let obj =
            FlatObject::parse(r#" { "counter" : 41, "a":"b", "t":true, "n":null, "f":-1.5e3 } "#)
                .expect("valid");
        assert_eq!(obj.get("counter").and_then(Value::as_i64), Some(41));
        assert_eq!(obj.get("a"), Some(&Value::Str("b".into())));
        assert_eq!(obj.get("t"), Some(&Value::Raw("true".into())));
        assert_eq!(obj.get("n"), Some(&Value::Raw("null".into())));
        assert_eq!(obj.get("f"), Some(&Value::Raw("-1.5e3".into())));
        assert_eq!(
            obj.to_json(),
            r#"{"counter":41,"a":"b","t":true,"n":null,"f":-1.5e3}"#
        );
    }

    #[test]
    fn incr_round_trip_preserves_other_fields() {
        let mut obj = FlatObject::parse_or_empty(Some(r#"{"counter":41,"a":"b"}"#));
        assert_eq!(obj.incr_counter(), 42);
        let json = obj.to_json();
        assert_eq!(json, r#"{"counter":42,"a":"b"}"#);
        let mut again = FlatObject::parse(&json).expect("own output parses");
        assert_eq!(again.incr_counter(), 43);
        assert_eq!(again.get("a"), Some(&Value::Str("b".into())));
    }

    #[test]
    fn incr_from_nothing_or_garbage_starts_at_one() {
        for input in [
            None,
            Some(""),
            Some("not json"),
            Some("[1]"),
            Some("{\"a\":1"),
            Some("{}x"),
        ] {
            let mut obj = FlatObject::parse_or_empty(input);
            assert_eq!(obj.incr_counter(), 1, "input {input:?}");
            assert_eq!(obj.to_json(), r#"{"counter":1}"#);
        }
        let mut weird = FlatObject::parse_or_empty(Some(r#"{"counter":"x"}"#));
        assert_eq!(weird.incr_counter(), 1);
        let mut max = FlatObject::parse_or_empty(Some(&format!(r#"{{"counter":{}}}"#, i64::MAX)));
        assert_eq!(max.incr_counter(), i64::MAX);
    }

    #[test]
    fn nested_values_survive_minified() {
        let obj = FlatObject::parse(r#"{"x": [1, {"y" : "z"}], "counter": 2}"#).expect("valid");
        assert_eq!(obj.to_json(), r#"{"x":[1,{"y":"z"}],"counter":2}"#);
    }

    #[test]
    fn string_escapes_decode_and_reencode() {
        let obj = FlatObject::parse(r#"{"k":"q\"b\\s\/\n\u00e9\ud83d\ude00x"}"#).expect("valid");
        assert_eq!(
            obj.get("k"),
            Some(&Value::Str("q\"b\\s/\n\u{e9}\u{1F600}x".into()))
        );
        // A lone surrogate is not valid JSON text for serde_json: a fresh session.
        assert_eq!(FlatObject::parse(r#"{"k":"\ud800x"}"#), None);
        let json = obj.to_json();
        assert!(json.is_ascii());
        assert_eq!(FlatObject::parse(&json), Some(obj));
    }

    #[test]
    fn set_replaces_in_place_and_appends() {
        let mut obj = FlatObject::parse(r#"{"a":"1","b":"2"}"#).expect("valid");
        obj.set("a", Value::Str("x".into()));
        obj.set("c", Value::Str("y z".into()));
        assert_eq!(obj.to_json(), r#"{"a":"x","b":"2","c":"y z"}"#);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":tru}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{a:1}",
            "{\"a\":1,}",
            "{\"a\" 1}",
        ] {
            assert_eq!(FlatObject::parse(bad), None, "{bad}");
            assert!(!is_json_object(bad), "{bad}");
        }
    }

    #[test]
    fn is_json_object_accepts_objects_only() {
        assert!(is_json_object("{}"));
        assert!(is_json_object(r#" {"a":{"b":[1,2,{"c":null}]}} "#));
        assert!(!is_json_object("[]"));
        assert!(!is_json_object("\"s\""));
        assert!(!is_json_object(""));
        assert!(!is_json_object("{} {}"));
        let deep = format!("{}{}", "{\"a\":".repeat(100), "1}".repeat(100));
        assert!(!is_json_object(&deep));
    }
}

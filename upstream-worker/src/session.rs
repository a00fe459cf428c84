//! Session data as drover carries it: a JSON object in a header.
//!
//! A hand-written parser keeps the worker free of serde. Only the top level
//! is decoded into fields; every non-string value is kept as minified JSON
//! text, so fields the worker does not understand (floats, nested objects)
//! survive a read-modify-write round trip untouched.

use crate::routes::escape_json_into;

/// Deeper nesting than this is refused rather than risking the stack on a
/// hostile header.
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

impl FlatObject {
    /// Returns `None` for anything that is not exactly one JSON object, so
    /// callers can fall back to an empty session.
    pub fn parse(text: &str) -> Option<FlatObject> {
        let mut p = Parser::new(text);
        p.ws();
        p.expect(b'{')?;
        let mut obj = FlatObject::default();
        p.ws();
        if p.eat(b'}') {
            p.ws();
            return p.at_end().then_some(obj);
        }
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = if p.peek() == Some(b'"') {
                Value::Str(p.string()?)
            } else {
                let mut raw = String::new();
                p.value(&mut raw, 1)?;
                Value::Raw(raw)
            };
            // Last duplicate wins, as in most JSON readers.
            obj.set(&key, value);
            p.ws();
            if p.eat(b'}') {
                break;
            }
            p.expect(b',')?;
        }
        p.ws();
        p.at_end().then_some(obj)
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
            escape_json_into(&mut out, key, true);
            out.push(':');
            match value {
                Value::Str(s) => escape_json_into(&mut out, s, true),
                Value::Raw(raw) => out.push_str(raw),
            }
        }
        out.push('}');
        out
    }
}

/// Checks that `text` is a complete JSON object (any depth) so it can be
/// embedded verbatim in a JSON response without breaking it.
pub fn is_json_object(text: &str) -> bool {
    let mut p = Parser::new(text);
    p.ws();
    if p.peek() != Some(b'{') {
        return false;
    }
    let mut sink = String::new();
    if p.value(&mut sink, 0).is_none() {
        return false;
    }
    p.ws();
    p.at_end()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser { src, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos == self.src.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.src.get(self.pos..self.pos + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u16::from_str_radix(digits, 16).ok()
    }

    /// Decodes a string. Lone surrogates become U+FFFD rather than an error,
    /// since they are syntactically legal JSON.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.pos;
            // Copy the run of plain characters in one go; the input is a
            // &str, so a run between ASCII delimiters is valid UTF-8.
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.src[start..self.pos]);
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let esc = self.peek()?;
                    self.pos += 1;
                    let c = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    out.push(c);
                }
                _ => return None, // raw control character
            }
        }
    }

    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.src[self.pos..].starts_with("\\u") {
            let save = self.pos;
            self.pos += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let cp = 0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                return char::from_u32(cp);
            }
            // Not a pair: leave the second escape for the next round.
            self.pos = save;
        }
        Some(char::from_u32(u32::from(hi)).unwrap_or('\u{FFFD}'))
    }

    /// Validates a string and copies its source text unchanged.
    fn raw_string(&mut self, out: &mut String) -> Option<()> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            self.pos += 1;
                            self.hex4()?;
                        }
                        _ => return None,
                    }
                }
                b if b < 0x20 => return None,
                _ => self.pos += 1,
            }
        }
        out.push_str(&self.src[start..self.pos]);
        Some(())
    }

    fn number(&mut self, out: &mut String) -> Option<()> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.require_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.require_digits()?;
        }
        out.push_str(&self.src[start..self.pos]);
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    fn literal(&mut self, word: &str, out: &mut String) -> Option<()> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            out.push_str(word);
            Some(())
        } else {
            None
        }
    }

    /// Validates any JSON value and appends it minified, so preserved fields
    /// never carry whitespace that would be awkward in a header.
    fn value(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.raw_string(out),
            b'{' => {
                self.pos += 1;
                out.push('{');
                self.ws();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        self.raw_string(out)?;
                        self.ws();
                        self.expect(b':')?;
                        out.push(':');
                        self.ws();
                        self.value(out, depth + 1)?;
                        self.ws();
                        if self.eat(b'}') {
                            break;
                        }
                        self.expect(b',')?;
                        out.push(',');
                    }
                }
                out.push('}');
                Some(())
            }
            b'[' => {
                self.pos += 1;
                out.push('[');
                self.ws();
                if !self.eat(b']') {
                    loop {
                        self.ws();
                        self.value(out, depth + 1)?;
                        self.ws();
                        if self.eat(b']') {
                            break;
                        }
                        self.expect(b',')?;
                        out.push(',');
                    }
                }
                out.push(']');
                Some(())
            }
            b't' => self.literal("true", out),
            b'f' => self.literal("false", out),
            b'n' => self.literal("null", out),
            _ => self.number(out),
        }
    }
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
        let obj =
            FlatObject::parse(r#"{"k":"q\"b\\s\/\n\u00e9\ud83d\ude00\ud800x"}"#).expect("valid");
        assert_eq!(
            obj.get("k"),
            Some(&Value::Str("q\"b\\s/\n\u{e9}\u{1F600}\u{FFFD}x".into()))
        );
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

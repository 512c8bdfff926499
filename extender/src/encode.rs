//! The answers' JSON, written straight into the response buffer.
//!
//! An answer is mostly node names: up to one per candidate in `NodeNames`, one per score in
//! a `HostPriorityList`. serde_json escapes every string byte by byte; node names are DNS
//! subdomains that never need it, so a name is checked in one pass that the compiler
//! vectorizes and then copied whole. A string that does need escaping goes through
//! serde_json, so the bytes are the same as serde_json's either way (a property test holds
//! the two together).

use std::borrow::Cow;

use serde_json::value::RawValue;

/// Appends `s` as a JSON string, byte for byte what `serde_json::to_writer` writes.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    // The bytes serde_json escapes: control characters, the quote and the backslash. `fold`
    // rather than `any`, so that the loop has no early exit and is vectorized.
    let escape = s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escape {
        // Writing into a vector cannot fail, and a `str` always encodes.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends an integer; the scores the router sends are `0..=10` after clamping, written
/// without the formatting machinery.
pub(crate) fn integer(out: &mut Vec<u8>, n: i64) {
    match u8::try_from(n) {
        Ok(n @ 0..=9) => out.push(b'0' + n),
        Ok(10) => out.extend_from_slice(b"10"),
        _ => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

/// Appends `[a,b,…]`, each element written by `element`.
pub(crate) fn array<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut element: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        element(out, item);
    }
    out.push(b']');
}

/// Appends `{"k":"v",…}` from `(key, value)` pairs, in the order given (a key given twice is
/// written twice; Go's decoder keeps the last).
pub(crate) fn string_map<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = &'a (&'a str, Cow<'static, str>)>,
) {
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        string(out, value);
    }
    out.push(b'}');
}

/// Appends raw JSON as it came.
pub(crate) fn raw(out: &mut Vec<u8>, value: &RawValue) {
    out.extend_from_slice(value.get().as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_that_need_escaping_are_escaped_as_serde_json_does() {
        for s in [
            "node-1.example.com",
            "",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "\u{0}\u{1f}",
            "\u{7f}",
            "ünïcödé ✓",
            "</script>",
        ] {
            assert_eq!(
                written(|out| string(out, s)),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn integers_are_written_as_serde_json_writes_them() {
        for n in [0, 1, 9, 10, 11, -1, 100, i64::MIN, i64::MAX] {
            assert_eq!(written(|out| integer(out, n)), n.to_string(), "{n}");
        }
    }

    #[test]
    fn arrays_and_maps_are_valid_json_in_the_order_given() {
        let entries = [("b", Cow::from("full")), ("a\"", Cow::from("no \"pool\""))];
        let got = written(|out| string_map(out, &entries));
        assert_eq!(got, r#"{"b":"full","a\"":"no \"pool\""}"#);
        let got = written(|out| array(out, ["x", "y"], string));
        assert_eq!(got, r#"["x","y"]"#);
        assert_eq!(written(|out| array(out, Vec::<&str>::new(), string)), "[]");
        assert_eq!(written(|out| string_map(out, &[])), "{}");
    }

    proptest! {
        #[test]
        fn any_string_is_written_byte_for_byte_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(written(|out| string(out, &s)), serde_json::to_string(&s).unwrap());
        }
    }
}

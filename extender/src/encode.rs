//! The answers' JSON, written straight into the response buffer.
//!
//! An answer is mostly node names: up to one per candidate in `NodeNames`, one per score in
//! a `HostPriorityList`. serde_json escapes every string byte by byte; node names are DNS
//! subdomains that never need it, so a name is checked in one pass that the compiler
//! vectorizes and then copied whole. A string that does need escaping goes through
//! serde_json, so the bytes are the same as serde_json's either way (a property test holds
//! the two together).

use std::ops::Range;
use std::sync::Arc;

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

/// Appends `"k":"v",…` (a map's entries without its braces) from `(key, value)` pairs, in
/// the order given. A value written before (the same `Arc`, or the same text among the
/// first few distinct ones) is copied from where it was written rather than escaped again:
/// a filter answer gives hundreds of nodes the same few reasons.
pub(crate) fn entries<'a>(
    out: &mut Vec<u8>,
    pairs: impl IntoIterator<Item = &'a (&'a str, Arc<str>)>,
) {
    const REMEMBERED: usize = 8;
    let mut written: Vec<(&Arc<str>, Range<usize>)> = Vec::new();
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        let before = written
            .iter()
            .find(|(v, _)| Arc::ptr_eq(v, value))
            .or_else(|| written.iter().find(|(v, _)| v == &value));
        match before {
            Some((_, range)) => {
                let range = range.clone();
                out.extend_from_within(range);
            }
            None => {
                let start = out.len();
                string(out, value);
                if written.len() < REMEMBERED {
                    written.push((value, start..out.len()));
                }
            }
        }
    }
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
    fn arrays_and_map_entries_are_valid_json_in_the_order_given() {
        let pairs = [
            ("b", Arc::from("full")),
            ("a\"", Arc::from("no \"pool\"")),
            ("c", Arc::from("no \"pool\"")),
            ("d", Arc::from("full")),
        ];
        let got = written(|out| entries(out, &pairs));
        assert_eq!(
            got,
            r#""b":"full","a\"":"no \"pool\"","c":"no \"pool\"","d":"full""#
        );
        assert_eq!(written(|out| entries(out, &[])), "");
        let got = written(|out| array(out, ["x", "y"], string));
        assert_eq!(got, r#"["x","y"]"#);
        assert_eq!(written(|out| array(out, Vec::<&str>::new(), string)), "[]");
    }

    proptest! {
        #[test]
        fn any_string_is_written_byte_for_byte_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(written(|out| string(out, &s)), serde_json::to_string(&s).unwrap());
        }

        /// Repeated values are copied, not escaped again: the map is still serde_json's, with
        /// values drawn from more than are remembered, some of them shared `Arc`s.
        #[test]
        fn map_entries_are_written_as_serde_json_writes_the_map(
            picks in proptest::collection::vec((any::<String>(), 0..12usize), 0..40),
            values in proptest::collection::vec(any::<String>(), 12),
        ) {
            let shared: Vec<Arc<str>> = values.iter().map(|v| Arc::from(v.as_str())).collect();
            let mut keys: Vec<String> = picks.iter().map(|(k, _)| k.clone()).collect();
            keys.sort();
            keys.dedup();
            let pairs: Vec<(&str, Arc<str>)> = keys
                .iter()
                .zip(&picks)
                .map(|(k, &(_, v))| {
                    // Even picks share one `Arc` per value, odd ones get a copy of the text.
                    let value = if v % 2 == 0 {
                        shared[v].clone()
                    } else {
                        Arc::from(values[v].as_str())
                    };
                    (k.as_str(), value)
                })
                .collect();
            let map: serde_json::Map<String, serde_json::Value> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(&**v)))
                .collect();
            let got = written(|out| {
                out.push(b'{');
                entries(out, &pairs);
                out.push(b'}');
            });
            prop_assert_eq!(got, serde_json::to_string(&map).unwrap());
        }
    }
}

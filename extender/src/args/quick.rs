//! The body kube-scheduler sends to a cache-capable extender, read without serde where it
//! is long.
//!
//! With `nodeCacheCapable: true` the body is `{"Pod":{…},"Nodes":null,"NodeNames":[…]}`,
//! and at 5,000 nodes the names are nearly all of it. serde_json spends some 300
//! instructions on each: a visitor call, a string parse that looks for escapes, an element
//! check, a `Cow`. Here they are split by hand, at a few instructions a byte, borrowing each
//! name from the body. The pod, a few KiB, is still decoded by serde (into the same
//! [`SlimPod`]).
//!
//! This path only ever says yes to a body it reads exactly as the serde path does, and
//! declines (`None`) anything else, for the serde path to decode or refuse with its error:
//! a key or a name with an escape or a control character, a key other than the three (in
//! the spellings [`Args`] takes), a key given twice, `Nodes` other than `null`, `NodeNames`
//! that is not an array of strings, more than [`MAX_CANDIDATES`] names, anything after the
//! object. serde_json's nesting limit (128) does not tell the two apart either: the pod's
//! fields that are read nest a few levels deep, and everything else in it is skipped
//! without one.

use std::borrow::Cow;
use std::marker::PhantomData;

use super::{Args, Capped, MAX_CANDIDATES, Name, ObjectOnly, SlimPod};

/// `text` as [`Args`], when it is the cache-capable body described above.
pub(super) fn args(text: &str) -> Option<Args<'_>> {
    let mut at = Cursor { text, at: 0 };
    at.eat(b'{')?;
    let mut pod = None;
    let mut names = None;
    let mut nodes = false;
    loop {
        let key = at.plain_string()?;
        at.eat(b':')?;
        match key {
            "Pod" | "pod" if pod.is_none() => pod = Some(at.pod()?),
            "NodeNames" | "nodeNames" | "nodenames" if names.is_none() => {
                names = Some(at.names()?);
            }
            "Nodes" | "nodes" if !nodes => {
                at.null()?;
                nodes = true;
            }
            _ => return None,
        }
        match at.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    at.skip_space();
    if at.at != text.len() {
        return None;
    }
    Some(Args {
        pod: ObjectOnly(pod?),
        nodes: None,
        node_names: Some(Capped(names?, PhantomData)),
    })
}

/// The length of the string that starts `bytes`, up to its closing quote; `None` at a
/// backslash or a control character before it, or if there is no quote.
///
/// Eight bytes at a time: a node name is 10 to 40 bytes, and a byte at a time cost more
/// than the rest of reading it.
fn plain_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().ok()?);
        let special = special_bytes(word);
        if special != 0 {
            // The lowest flagged byte is the first special one (see `special_bytes`).
            let first = at + (special.trailing_zeros() / 8) as usize;
            return (bytes.get(first) == Some(&b'"')).then_some(first);
        }
        at += 8;
    }
    for (i, &byte) in bytes.get(at..)?.iter().enumerate() {
        match byte {
            b'"' => return Some(at + i),
            b'\\' | 0..=0x1f => return None,
            _ => {}
        }
    }
    None
}

/// Flags the bytes of `word` (little-endian) that end a plain string: `"`, `\\`, and the
/// control characters below 0x20, each with its byte's high bit. The usual zero-byte test
/// (`(x - 0x01…) & !x & 0x80…`): exact for the lowest flagged byte, which is all
/// [`plain_len`] reads; a byte above a flagged one may be flagged by the borrow.
#[inline]
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word, 0x20)
}

/// A position in the body.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Skips JSON whitespace.
    fn skip_space(&mut self) {
        self.at = skip_space(self.text.as_bytes(), self.at);
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_space();
        let byte = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Consumes `byte`, after whitespace.
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// Consumes `null`, after whitespace.
    fn null(&mut self) -> Option<()> {
        self.skip_space();
        self.text.get(self.at..)?.starts_with("null").then(|| {
            self.at += 4;
        })
    }

    /// A string without escapes or control characters, borrowed, after whitespace.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.skip_space();
        let (string, after) = plain_string_at(self.text, self.at)?;
        self.at = after;
        Some(string)
    }

    /// The pod, decoded by serde from where it starts to where it ends.
    fn pod(&mut self) -> Option<SlimPod> {
        let rest = self.text.get(self.at..)?;
        let mut pods = serde_json::Deserializer::from_str(rest).into_iter::<ObjectOnly<SlimPod>>();
        let ObjectOnly(pod) = pods.next()?.ok()?;
        self.at += pods.byte_offset();
        Some(pod)
    }

    /// An array of plain strings, at most [`MAX_CANDIDATES`] of them.
    fn names(&mut self) -> Option<Vec<Name<'a>>> {
        self.eat(b'[')?;
        let text = self.text;
        let bytes = text.as_bytes();
        let mut at = skip_space(bytes, self.at);
        let mut names = Vec::new();
        if bytes.get(at) == Some(&b']') {
            self.at = at + 1;
            return Some(names);
        }
        loop {
            if names.len() == MAX_CANDIDATES {
                return None;
            }
            let (name, after) = plain_string_at(text, at)?;
            names.push(Name(Cow::Borrowed(name)));
            // Go writes `","` between names; whitespace is read too.
            at = skip_space(bytes, after);
            match bytes.get(at)? {
                b',' => at = skip_space(bytes, at + 1),
                b']' => {
                    self.at = at + 1;
                    return Some(names);
                }
                _ => return None,
            }
        }
    }
}

/// The string without escapes or control characters whose opening quote is at `at`,
/// borrowed, and the position after its closing quote.
#[inline]
fn plain_string_at(text: &str, at: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = start + plain_len(bytes.get(start..)?)?;
    // Both ends are at an ASCII quote, so on character boundaries.
    Some((text.get(start..end)?, end + 1))
}

/// The position of the first byte at or after `at` that is not JSON whitespace.
#[inline]
fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::args::Candidates;

    /// What serde makes of `text`, as the router takes it: the pod and the names.
    fn by_serde(text: &str) -> Option<(k8s_openapi::api::core::v1::Pod, Vec<String>)> {
        let mut de = serde_json::Deserializer::from_str(text);
        let ObjectOnly(args) = serde::Deserialize::deserialize(&mut de).ok()?;
        de.end().ok()?;
        parts(args)
    }

    fn by_hand(text: &str) -> Option<(k8s_openapi::api::core::v1::Pod, Vec<String>)> {
        parts(args(text)?)
    }

    fn parts(args: Args<'_>) -> Option<(k8s_openapi::api::core::v1::Pod, Vec<String>)> {
        let (pod, candidates) = args.into_parts().ok()?;
        let Candidates::Names(names) = candidates else {
            return None;
        };
        Some((pod, names.into_iter().map(Cow::into_owned).collect()))
    }

    /// The body as Go's `encoding/json` writes kube-scheduler's `ExtenderArgs` in
    /// cache-capable mode: a whole pod, managedFields and all, `Nodes` null, then the names.
    const SCHEDULER_BODY: &str = r#"{"Pod":{"metadata":{"name":"db-0","namespace":"prod","uid":"6f1c","creationTimestamp":"2026-12-07T01:00:00Z","labels":{"app":"db"},"managedFields":[{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:volumes":{"k:{\"name\":\"data\"}":{}}}}}]},"spec":{"volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"data-db-0"}},{"name":"kube-api-access","projected":{"sources":[{"serviceAccountToken":{"path":"token"}}]}}],"containers":[{"name":"db","image":"postgres:16","resources":{}}],"schedulerName":"default-scheduler"},"status":{"phase":"Pending","qosClass":"BestEffort"}},"Nodes":null,"NodeNames":["node-0001","ip-10-0-12-34.eu-west-1.compute.internal","node-0003"]}"#;

    #[test]
    fn the_body_a_cache_capable_scheduler_sends_is_read_by_hand_as_serde_reads_it() {
        let hand = by_hand(SCHEDULER_BODY).expect("the fast path reads the scheduler's body");
        assert_eq!(Some(&hand), by_serde(SCHEDULER_BODY).as_ref());
        assert_eq!(
            hand.1,
            [
                "node-0001",
                "ip-10-0-12-34.eu-west-1.compute.internal",
                "node-0003"
            ]
        );
        let volumes = hand.0.spec.and_then(|s| s.volumes).unwrap_or_default();
        assert_eq!(volumes.len(), 1, "only the claim volume: {volumes:?}");
        // Whitespace anywhere JSON allows it, other spellings and orders of the keys, and no
        // names at all are still read by hand.
        for body in [
            " {\n \"Pod\" :\t{} , \"NodeNames\" : [ \"a\" ,\r\"b\" ] } \n",
            r#"{"nodenames":["a"],"nodes":null,"pod":{"metadata":{"name":"p"}}}"#,
            r#"{"nodeNames":[],"Pod":{}}"#,
        ] {
            assert!(args(body).is_some(), "{body}");
            assert_eq!(by_hand(body), by_serde(body), "{body}");
        }
    }

    #[test]
    fn a_deeply_nested_pod_is_read_alike() {
        // Unknown values are skipped without a nesting limit by both paths; the pod's fields
        // that are read nest only a few levels deep.
        for depth in [100, 127, 128, 129, 1000] {
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let body = format!(r#"{{"Pod":{{"metadata":{{"x":{nested}}}}},"NodeNames":["a"]}}"#);
            let hand = by_hand(&body);
            assert!(hand.is_some(), "depth {depth}");
            assert_eq!(hand, by_serde(&body), "depth {depth}");
        }
    }

    #[test]
    fn names_are_borrowed_from_the_body() {
        let parsed = args(r#"{"Pod":{},"NodeNames":["a","b"]}"#).unwrap();
        let names = parsed.node_names.unwrap().0;
        assert!(names.iter().all(|n| matches!(n.0, Cow::Borrowed(_))));
    }

    #[test]
    fn what_the_fast_path_does_not_read_is_left_to_serde() {
        for body in [
            // Escapes, in a name or a key: serde unescapes them.
            r#"{"Pod":{},"NodeNames":["n\u002d1"]}"#,
            r#"{"P\u006fd":{},"NodeNames":["a"]}"#,
            // Node objects, an unknown key, a repeated key, a null or missing list.
            r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"a"}}]}}"#,
            r#"{"Pod":{},"NodeNames":["a"],"Extra":1}"#,
            r#"{"Pod":{},"pod":{},"NodeNames":["a"]}"#,
            r#"{"Pod":{},"NodeNames":null}"#,
            r#"{"Pod":{}}"#,
            // Malformed: serde says what is wrong.
            r#"{"Pod":{},"NodeNames":["a",]}"#,
            r#"{"Pod":{},"NodeNames":["a" "b"]}"#,
            r#"{"Pod":{},"NodeNames":["a"]} x"#,
            r#"{"Pod":{},"NodeNames":[1]}"#,
            "{\"Pod\":{},\"NodeNames\":[\"a\u{1}\"]}",
            r#"{"Pod":null,"NodeNames":["a"]}"#,
            r#"{"Pod":{},"Nodes":nul,"NodeNames":["a"]}"#,
            r#"{"Pod":{},"NodeNames":["a"]"#,
        ] {
            assert!(args(body).is_none(), "{body}");
        }
    }

    #[test]
    fn more_names_than_the_cap_are_left_to_serde_which_refuses_them() {
        let body = |n: usize| {
            let names = vec!["n"; n];
            serde_json::json!({"Pod": {}, "NodeNames": names}).to_string()
        };
        assert_eq!(
            by_hand(&body(MAX_CANDIDATES)).unwrap().1.len(),
            MAX_CANDIDATES
        );
        assert!(args(&body(MAX_CANDIDATES + 1)).is_none());
        assert_eq!(by_serde(&body(MAX_CANDIDATES + 1)), None);
    }

    /// The pieces bodies are made of: the pod's and the names' keys and values (the first
    /// ones those the scheduler sends), whitespace, and what may follow the object.
    const POD_KEYS: [&str; 4] = [r#""Pod""#, r#""pod""#, r#""POD""#, r#""P\u006fd""#];
    const PODS: [&str; 6] = [
        "{}",
        r#"{"metadata":{"name":"p","namespace":"n","uid":"u"},"spec":{"volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"c"}},{"name":"e","ephemeral":{}}]}}"#,
        r#"{"metadata":{"name":"p","labels":{"a":"b"}},"status":{"phase":"Pending"}}"#,
        "null",
        "[]",
        r#"{"metadata":[]}"#,
    ];
    const NAMES_KEYS: [&str; 4] = [
        r#""NodeNames""#,
        r#""nodeNames""#,
        r#""nodenames""#,
        r#""NODENAMES""#,
    ];
    const OTHERS: [&str; 6] = [
        r#""Nodes":null"#,
        r#""nodes":null"#,
        r#""Nodes":{"items":[{"metadata":{"name":"a"}}]}"#,
        r#""Nodes":nul"#,
        r#""Other":1"#,
        r#""Pod":{}"#,
    ];
    const SPACES: [&str; 4] = ["", " ", "\n\t", "\r "];
    const AFTER: [&str; 4] = ["", " \n", " x", "{}"];

    /// A name as it may appear in the array: JSON-encoded (escaped where it must be), or
    /// copied in raw, or not a string at all.
    fn name_value() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-z0-9][a-z0-9.-]{0,30}".prop_map(|n| format!("\"{n}\"")),
            2 => any::<String>().prop_map(|n| serde_json::to_string(&n).unwrap_or_default()),
            1 => any::<String>().prop_map(|n| format!("\"{n}\"")),
            1 => prop_oneof![Just("1".to_owned()), Just("null".to_owned()), Just("[\"a\"]".to_owned())],
        ]
    }

    /// A body: the pod, the names and maybe another entry, in any order, with whitespace;
    /// now and then something after it, a missing or extra comma, or the body cut short.
    fn any_body() -> impl Strategy<Value = String> {
        let pod = (
            prop_oneof![8 => Just(0), 1 => 1..POD_KEYS.len()],
            prop_oneof![6 => 0..3usize, 1 => 3..PODS.len()],
        );
        let names = (
            prop_oneof![8 => 0..3usize, 1 => Just(3)],
            proptest::option::weighted(0.95, proptest::collection::vec(name_value(), 0..12)),
        );
        let other = proptest::option::weighted(0.3, 0..OTHERS.len());
        let layout = (
            0..SPACES.len(),
            0..6usize,
            proptest::option::weighted(0.1, 0..AFTER.len()),
        );
        let damage = (proptest::option::weighted(0.1, any::<usize>()), 0..20usize);
        (pod, names, other, layout, damage).prop_map(
            |((pod_key, pod), (names_key, names), other, (space, order, after), (cut, comma))| {
                let space = SPACES[space];
                let names = match names {
                    Some(names) => format!("[{space}{}{space}]", names.join(&format!("{space},"))),
                    None => "null".to_owned(),
                };
                let mut entries = vec![
                    format!("{}{space}:{space}{}", POD_KEYS[pod_key], PODS[pod]),
                    format!("{}:{names}", NAMES_KEYS[names_key]),
                ];
                if let Some(other) = other {
                    entries.push(OTHERS[other].to_owned());
                }
                let len = entries.len();
                entries.rotate_left(order % len);
                if order >= 3 {
                    entries.swap(0, 1);
                }
                let separator = match comma {
                    0 => space.to_owned(),
                    1 => format!("{space},,"),
                    _ => format!("{space},{space}"),
                };
                let mut body = format!("{space}{{{space}{}{space}}}", entries.join(&separator));
                body.push_str(after.map_or("", |a| AFTER[a]));
                if let Some(cut) = cut {
                    let mut cut = cut % (body.len() + 1);
                    while !body.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    body.truncate(cut);
                }
                body
            },
        )
    }

    /// `plain_len` a byte at a time.
    fn plain_len_bytewise(bytes: &[u8]) -> Option<usize> {
        for (i, &byte) in bytes.iter().enumerate() {
            match byte {
                b'"' => return Some(i),
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
        None
    }

    #[test]
    fn plain_len_finds_the_first_special_byte_at_every_position() {
        // Every special byte, and bytes next to them in value, at every position of strings
        // of 0 to 40 bytes, with a second special byte after the first or not.
        let specials = [b'"', b'\\', 0, 1, 0x1f];
        let others = [
            b'a', b' ', b'!', b'#', b'[', b']', 0x20, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for len in 0..=40 {
            for at in 0..=len {
                for &first in specials.iter().chain(&others) {
                    for &after in specials.iter().chain([b'x'].iter()) {
                        let mut bytes = vec![b'n'; len + 2];
                        bytes[at] = first;
                        bytes[len + 1] = after;
                        let bytes = &bytes[..];
                        assert_eq!(plain_len(bytes), plain_len_bytewise(bytes), "{bytes:?}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// What the fast path reads, serde reads the same; what serde refuses, the fast path
        /// declines.
        #[test]
        fn plain_len_is_the_bytewise_scan(bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()], 0..48,
        )) {
            prop_assert_eq!(plain_len(&bytes), plain_len_bytewise(&bytes));
        }

        #[test]
        fn the_fast_path_reads_what_serde_reads_or_declines(text in any_body()) {
            if let Some(hand) = by_hand(&text) {
                prop_assert_eq!(Some(hand), by_serde(&text), "{}", text);
            }
        }
    }
}

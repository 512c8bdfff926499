//! Node name → position in the index's node table, packed for the extender's lookups.
//!
//! The extender looks up every candidate of every request by name: 10,000 lookups for one
//! pod's filter and prioritize at 5,000 nodes. In a `HashMap<Box<str>, usize>` each lookup
//! reads a 24-byte slot and then the name in an allocation of its own, two cache lines
//! anywhere in the heap; a profile of 16 concurrent clients had a fifth of the process's
//! CPU confirming names there. Here the table holds positions only (8 bytes a slot), and
//! the names sit back to back in one string, several to a cache line: at 5,000 nodes about
//! 200 KiB, not half a MiB, so it stays in the caches between requests.

use std::hash::BuildHasher;
use std::ops::Range;

use hashbrown::HashTable;

/// Node name → position; positions are dense (`0..len`) and follow the node table's
/// `swap_remove`.
#[derive(Debug, Default)]
pub(super) struct NodeNames {
    /// Hashes names; foldhash's fast variant, seeded per process, several times cheaper
    /// than SipHash on short keys. The names are StorageNode names, which only the agents'
    /// service account writes.
    hasher: foldhash::fast::RandomState,
    /// Positions, hashed by their name.
    table: HashTable<usize>,
    /// Every name's bytes, back to back; a removed name's stay until [`Self::compact`].
    text: String,
    /// Position → its name's bytes in `text`.
    spans: Vec<Range<usize>>,
    /// Bytes of `text` no position points at.
    garbage: usize,
}

impl NodeNames {
    /// The position of `name`.
    #[inline]
    pub(super) fn get(&self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&i| same(self.name(i), name))
            .copied()
    }

    /// How many names there are.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The name at position `i`.
    #[inline]
    pub(super) fn name(&self, i: usize) -> &str {
        name_in(&self.text, &self.spans, i)
    }

    /// Room for `more` names.
    pub(super) fn reserve(&mut self, more: usize) {
        self.spans.reserve(more);
        let (hasher, text, spans) = (&self.hasher, &self.text, &self.spans);
        self.table
            .reserve(more, |&i| hasher.hash_one(name_in(text, spans, i)));
    }

    /// Gives `name` the next position, `len()`, and returns it. The caller has checked that
    /// the name is not there ([`Self::get`]).
    pub(super) fn push(&mut self, name: &str) -> usize {
        let position = self.spans.len();
        let start = self.text.len();
        self.text.push_str(name);
        self.spans.push(start..self.text.len());
        let hash = self.hasher.hash_one(name);
        let (hasher, text, spans) = (&self.hasher, &self.text, &self.spans);
        self.table.insert_unique(hash, position, |&i| {
            hasher.hash_one(name_in(text, spans, i))
        });
        position
    }

    /// Removes `name` and returns its position; the last name takes that position, as a
    /// `Vec::swap_remove` of the node table moves the last node.
    pub(super) fn swap_remove(&mut self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        let (text, spans) = (&self.text, &self.spans);
        let entry = self
            .table
            .find_entry(hash, |&i| name_in(text, spans, i) == name)
            .ok()?;
        let (position, _) = entry.remove();
        let last = self.spans.len() - 1;
        if position != last {
            let moved = self.hasher.hash_one(self.name(last));
            if let Some(slot) = self.table.find_mut(moved, |&i| i == last) {
                *slot = position;
            }
        }
        let gone = self.spans.swap_remove(position);
        self.garbage += gone.len();
        self.compact();
        Some(position)
    }

    /// Rewrites `text` without the removed names' bytes once they are most of it.
    fn compact(&mut self) {
        if self.garbage <= self.text.len() / 2 {
            return;
        }
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for span in &mut self.spans {
            let start = text.len();
            text.push_str(self.text.get(span.clone()).unwrap_or_default());
            *span = start..text.len();
        }
        self.text = text;
        self.garbage = 0;
    }
}

/// `a == b`, with names of 8 to 32 bytes (most node names) compared a word at a time in
/// place rather than through a call to `memcmp`: a lookup confirms one name per candidate.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let words_equal = |ats: &[usize]| ats.iter().all(|&at| word(a, at) == word(b, at));
    match n {
        // Overlapping words cover every byte.
        8..=16 => words_equal(&[0, n - 8]),
        17..=32 => words_equal(&[0, 8, n - 16, n - 8]),
        _ => a == b,
    }
}

/// The name at position `i`, from the parts of a [`NodeNames`] (for the table's rehash
/// callbacks, which cannot borrow the whole).
fn name_in<'a>(text: &'a str, spans: &[Range<usize>], i: usize) -> &'a str {
    spans
        .get(i)
        .and_then(|span| text.get(span.clone()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Against a `Vec` with `swap_remove`, the node table's own discipline.
        #[test]
        fn positions_follow_a_vec_with_swap_remove(
            steps in prop::collection::vec((any::<bool>(), 0_u8..40), 0..400),
        ) {
            let mut names = NodeNames::default();
            let mut model: Vec<String> = Vec::new();
            for (add, n) in steps {
                let name = format!("node-{n}");
                let at = model.iter().position(|m| *m == name);
                match (add, at) {
                    (true, None) => {
                        prop_assert_eq!(names.push(&name), model.len());
                        model.push(name);
                    }
                    (false, Some(i)) => {
                        prop_assert_eq!(names.swap_remove(&name), Some(i));
                        model.swap_remove(i);
                    }
                    (false, None) => prop_assert_eq!(names.swap_remove(&name), None),
                    (true, Some(_)) => {}
                }
                prop_assert_eq!(names.len(), model.len());
                for (i, m) in model.iter().enumerate() {
                    prop_assert_eq!(names.get(m), Some(i));
                    prop_assert_eq!(names.name(i), m.as_str());
                }
                prop_assert!(names.garbage <= names.text.len() / 2);
            }
        }
    }

    /// `same` is `==` for every length around its word sizes, and for a difference at any
    /// position.
    #[test]
    fn same_is_equality_at_every_length_and_position() {
        for n in 0..=40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same(&a, &a.clone()), "{n}");
            assert!(!same(&a, &format!("{a}x")), "{n}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'-';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(&a, &b), "{n} bytes, differing at {at}");
            }
        }
    }

    #[test]
    fn unknown_and_prefix_names_are_not_found() {
        let mut names = NodeNames::default();
        names.reserve(2);
        names.push("node-1");
        names.push("node-10");
        assert_eq!(names.get("node-1"), Some(0));
        assert_eq!(names.get("node-10"), Some(1));
        assert_eq!(names.get("node-"), None);
        assert_eq!(names.get("node-100"), None);
        assert_eq!(names.get(""), None);
    }
}

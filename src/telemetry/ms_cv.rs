//! Microsoft correlation vectors (MS-CV): `base.n.n...`, extended once per incoming call and
//! incremented before each upstream attempt, so every upstream `MS-CV` starts with the caller's.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const V1_BASE_LEN: usize = 16;
const V2_BASE_LEN: usize = 22;
const V1_MAX_LEN: usize = 63;
const V2_MAX_LEN: usize = 127;

/// One call's correlation vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationVector {
    /// Everything before the last element, without the trailing dot.
    prefix: String,
    last: u32,
    max_len: usize,
    /// Set once the vector ends in `!`: it no longer changes.
    frozen: bool,
}

impl CorrelationVector {
    /// The vector for a new incoming call: `incoming` extended (`V` -> `V.0`) when it is a
    /// valid vector, else a new random v1 vector `base.0`.
    pub fn for_call(incoming: Option<&str>) -> Self {
        match incoming.and_then(Self::parse) {
            Some(mut cv) => {
                cv.extend();
                cv
            }
            None => Self::seed(),
        }
    }

    /// A new random v1 vector, `base.0`.
    pub fn seed() -> Self {
        let bytes: [u8; 12] = std::array::from_fn(|_| fastrand::u8(..));
        Self {
            prefix: STANDARD.encode(bytes),
            last: 0,
            max_len: V1_MAX_LEN,
            frozen: false,
        }
    }

    /// Parses `text` as a vector; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (body, frozen) = match text.strip_suffix('!') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let (base, elements) = body.split_once('.')?;
        let max_len = match base.len() {
            V1_BASE_LEN => V1_MAX_LEN,
            V2_BASE_LEN => V2_MAX_LEN,
            _ => return None,
        };
        let base_ok = base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        if !base_ok || body.len() > max_len {
            return None;
        }
        let mut last = None;
        for element in elements.split('.') {
            let digits_ok = !element.is_empty() && element.bytes().all(|b| b.is_ascii_digit());
            last = Some(element.parse::<u32>().ok().filter(|_| digits_ok)?);
        }
        let (prefix, _) = body.rsplit_once('.')?;
        Some(Self {
            prefix: prefix.to_owned(),
            last: last?,
            max_len,
            frozen,
        })
    }

    fn text_len(&self) -> usize {
        self.prefix.len() + 1 + decimal_len(self.last)
    }

    /// `V` -> `V.0`, or `V!` when that would be too long.
    pub fn extend(&mut self) {
        if self.frozen {
            return;
        }
        if self.text_len() + 2 > self.max_len {
            self.frozen = true;
            return;
        }
        self.prefix = format!("{}.{}", self.prefix, self.last);
        self.last = 0;
    }

    /// `V.n` -> `V.(n+1)`, or `V.n!` when that would be too long or overflow.
    pub fn increment(&mut self) {
        if self.frozen {
            return;
        }
        match self.last.checked_add(1) {
            Some(next) if self.prefix.len() + 1 + decimal_len(next) <= self.max_len => {
                self.last = next;
            }
            _ => self.frozen = true,
        }
    }

    /// Increments, then returns the value to send with the next upstream attempt.
    pub fn next_attempt(&mut self) -> String {
        self.increment();
        self.text()
    }

    /// The vector's text, built by hand rather than with `format!`: this runs on every
    /// upstream attempt.
    fn text(&self) -> String {
        let mut out = String::with_capacity(self.text_len() + 1);
        out.push_str(&self.prefix);
        out.push('.');
        let mut digits = [0u8; 10];
        let (mut n, mut at) = (self.last, digits.len());
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[at..].iter().for_each(|d| out.push(char::from(*d)));
        if self.frozen {
            out.push('!');
        }
        out
    }
}

impl std::fmt::Display for CorrelationVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

fn decimal_len(n: u32) -> usize {
    n.checked_ilog10().unwrap_or(0) as usize + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_vector_is_extended_then_incremented() {
        let mut cv = CorrelationVector::for_call(Some("xu2HW6SrSkyfHyFh.3"));
        assert_eq!(cv.to_string(), "xu2HW6SrSkyfHyFh.3.0");
        assert_eq!(cv.next_attempt(), "xu2HW6SrSkyfHyFh.3.1");
        assert_eq!(cv.next_attempt(), "xu2HW6SrSkyfHyFh.3.2");
    }

    #[test]
    fn invalid_incoming_vector_is_replaced_by_a_seed() {
        for bad in [
            "",
            "short.1",
            "xu2HW6SrSkyfHyFh",
            "xu2HW6SrSkyfHyFh.x",
            "xu2HW6SrSkyfHyF!.1",
        ] {
            let cv = CorrelationVector::for_call(Some(bad));
            let text = cv.to_string();
            assert_eq!(text.len(), 18, "{bad} -> {text}");
            assert!(text.ends_with(".0"));
        }
    }

    #[test]
    fn v2_vectors_are_accepted() {
        let cv = CorrelationVector::for_call(Some("KZIT1rUhNkmQBGUmbvUEXq.1"));
        assert_eq!(cv.to_string(), "KZIT1rUhNkmQBGUmbvUEXq.1.0");
    }

    #[test]
    fn too_long_vector_is_frozen_with_a_bang() {
        let long = format!("xu2HW6SrSkyfHyFh{}", ".1".repeat(23));
        assert_eq!(long.len(), 62);
        let mut cv = CorrelationVector::for_call(Some(&long));
        assert_eq!(cv.to_string(), format!("{long}!"));
        assert_eq!(cv.next_attempt(), format!("{long}!"));
        let frozen = CorrelationVector::for_call(Some("xu2HW6SrSkyfHyFh.1!"));
        assert_eq!(frozen.to_string(), "xu2HW6SrSkyfHyFh.1!");
    }

    #[test]
    fn increment_that_would_overflow_length_freezes() {
        let near = format!("xu2HW6SrSkyfHyFh{}.99", ".1".repeat(22));
        assert_eq!(near.len(), 63);
        let mut cv = CorrelationVector::parse(&near).unwrap();
        cv.increment();
        assert_eq!(cv.to_string(), format!("{near}!"));
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of vectors built well-formed (round trip, length limit, freezing, every
    //! attempt extending the caller's), and [`crate::fuzzing::ms_cv`]'s properties (shared
    //! with its fuzz target) over arbitrary text and vectors with one character changed.
    use super::*;
    use crate::fuzzing;
    use proptest::prelude::*;

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// A syntactically valid vector text: v1 or v2 base, 1..40 elements, maybe frozen.
    fn vector_text() -> impl Strategy<Value = String> {
        let base = prop_oneof![Just(V1_BASE_LEN), Just(V2_BASE_LEN)].prop_flat_map(|len| {
            proptest::collection::vec(proptest::sample::select(ALPHABET), len)
                .prop_map(|bytes| String::from_utf8(bytes).unwrap())
        });
        let elements =
            proptest::collection::vec(prop_oneof![0u32..10, 0u32..100_000, Just(u32::MAX)], 1..40);
        (base, elements, any::<bool>()).prop_map(|(base, elements, bang)| {
            let mut text = base;
            for element in elements {
                text.push('.');
                text.push_str(&element.to_string());
            }
            if bang {
                text.push('!');
            }
            text
        })
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Extend,
        Increment,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(prop_oneof![Just(Op::Extend), Just(Op::Increment)], 0..80)
    }

    fn limit(text: &str) -> usize {
        match text.split_once('.').map(|(base, _)| base.len()) {
            Some(V1_BASE_LEN) => V1_MAX_LEN,
            _ => V2_MAX_LEN,
        }
    }

    proptest! {
        #[test]
        fn parse_then_display_round_trips(text in vector_text()) {
            if let Some(cv) = CorrelationVector::parse(&text) {
                prop_assert_eq!(cv.to_string(), text.clone());
                prop_assert_eq!(CorrelationVector::parse(&cv.to_string()), Some(cv));
            } else {
                // Only over-long vectors (or elements past u32) are refused.
                prop_assert!(text.trim_end_matches('!').len() > limit(&text));
            }
        }

        #[test]
        fn length_limit_holds_after_any_operations(text in vector_text(), ops in ops()) {
            let Some(mut cv) = CorrelationVector::parse(&text) else { return Ok(()) };
            let max = limit(&text);
            for op in ops {
                match op {
                    Op::Extend => cv.extend(),
                    Op::Increment => cv.increment(),
                }
                let shown = cv.to_string();
                prop_assert!(shown.trim_end_matches('!').len() <= max, "{} > {}", shown, max);
                prop_assert!(shown.len() <= max + 1);
            }
        }

        #[test]
        fn a_terminated_vector_never_changes(text in vector_text(), ops in ops()) {
            let Some(mut cv) = CorrelationVector::parse(&text) else { return Ok(()) };
            let mut frozen_as: Option<String> = None;
            for op in ops {
                match op {
                    Op::Extend => cv.extend(),
                    Op::Increment => cv.increment(),
                }
                let shown = cv.to_string();
                if let Some(frozen) = &frozen_as {
                    prop_assert_eq!(&shown, frozen);
                } else if shown.ends_with('!') {
                    frozen_as = Some(shown);
                }
            }
        }

        #[test]
        fn extend_appends_zero_and_increment_bumps_the_last_element(
            text in vector_text(),
            op in prop_oneof![Just(Op::Extend), Just(Op::Increment)],
        ) {
            let Some(mut cv) = CorrelationVector::parse(&text) else { return Ok(()) };
            let before = cv.to_string();
            match op {
                Op::Extend => cv.extend(),
                Op::Increment => cv.increment(),
            }
            let after = cv.to_string();
            if before.ends_with('!') {
                prop_assert_eq!(after, before);
            } else if after.ends_with('!') {
                // Too long (or the element would overflow): frozen as it was.
                prop_assert_eq!(after, format!("{before}!"));
            } else {
                match op {
                    Op::Extend => prop_assert_eq!(after, format!("{before}.0")),
                    Op::Increment => {
                        let (prefix, last) = before.rsplit_once('.').unwrap();
                        let next = last.parse::<u32>().unwrap() + 1;
                        prop_assert_eq!(after, format!("{prefix}.{next}"));
                    }
                }
            }
        }

        #[test]
        fn every_attempt_vector_starts_with_the_callers(text in vector_text(), n in 1usize..20) {
            prop_assume!(CorrelationVector::parse(&text).is_some());
            let mut cv = CorrelationVector::for_call(Some(&text));
            let stem = text.trim_end_matches('!');
            for _ in 0..n {
                let sent = cv.next_attempt();
                prop_assert!(sent.starts_with(stem), "{} does not extend {}", sent, text);
                prop_assert!(CorrelationVector::parse(&sent).is_some(), "{}", sent);
            }
        }

        #[test]
        fn seeded_vectors_are_valid_v1(_n in 0..10u8) {
            let seed = CorrelationVector::seed().to_string();
            prop_assert_eq!(seed.len(), 18);
            prop_assert!(CorrelationVector::parse(&seed).is_some());
        }

        #[test]
        fn arbitrary_text_parses_without_panic(text in any::<String>()) {
            fuzzing::ms_cv(text.as_bytes());
        }

        #[test]
        fn vectors_one_character_off_parse_valid_or_not_at_all(
            text in fuzzing::one_char_off(vector_text(), &['.', '!', '0', '9', 'a', '+', '/', '-', ' ']),
        ) {
            fuzzing::ms_cv(text.as_bytes());
        }

        #[test]
        fn well_formed_vectors_meet_the_shared_properties(text in vector_text()) {
            // Extends and increments are picked by the text's own bytes.
            fuzzing::ms_cv(text.as_bytes());
        }
    }
}

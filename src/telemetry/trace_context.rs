//! W3C trace context: an incoming `traceparent` is continued, so upstream requests carry the
//! caller's trace id; a call without one starts a new trace.

/// The trace a call belongs to, and the call's own span id (its parent in the caller's trace
/// is the incoming `traceparent`'s span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// Continues `incoming` when it is a valid `traceparent`, else starts a new trace.
    pub fn for_call(incoming: Option<&str>) -> Self {
        incoming.and_then(Self::parse).unwrap_or_else(|| Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: 0,
        })
    }

    /// Parses a `traceparent` header value.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let version = hex(parts.next()?, 2)?;
        let trace_id = hex(parts.next()?, 32)?;
        let parent_id = hex(parts.next()?, 16)?;
        let flags = hex(parts.next()?, 2)?;
        let rest_ok = match version {
            0 => parts.next().is_none(),
            0xff => false,
            _ => true,
        };
        (rest_ok && trace_id != 0 && parent_id != 0).then(|| Self {
            trace_id,
            span_id: fastrand::u64(1..),
            flags: flags as u8,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        self.trace_id_hex().to_string()
    }

    /// The trace id, displayed as 32 lower-case hex digits (no allocation).
    pub fn trace_id_hex(&self) -> impl std::fmt::Display {
        Hex32(self.trace_id)
    }

    /// The call's own span id, displayed as 16 lower-case hex digits (no allocation).
    pub fn span_id_hex(&self) -> impl std::fmt::Display {
        Hex16(self.span_id)
    }

    /// A `traceparent` for one upstream attempt: this trace, a new span id.
    pub fn traceparent(&self) -> String {
        // By hand rather than `write!`: this runs on every upstream attempt, and the
        // formatting machinery cost ten times as much (callgrind).
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, self.trace_id, 32);
        out.push('-');
        push_hex(&mut out, u128::from(fastrand::u64(1..)), 16);
        out.push('-');
        push_hex(&mut out, u128::from(self.flags), 2);
        out
    }
}

/// Appends the `digits` low hex digits of `value`, lower case, zero-padded.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (4 * i)) & 0xf) as usize]));
    }
}

struct Hex32(u128);

impl std::fmt::Display for Hex32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

struct Hex16(u64);

impl std::fmt::Display for Hex16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

fn hex(text: &str, len: usize) -> Option<u128> {
    let ok = text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| u128::from_str_radix(text, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_trace_is_continued_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::for_call(Some(incoming));
        let out = ctx.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming);
        assert!(TraceContext::parse(&out).is_some());
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let fresh = TraceContext::for_call(Some("garbage")).traceparent();
        assert_eq!(fresh.len(), 55);
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::traceparent`]'s properties (shared with its fuzz target) over
    //! arbitrary text and well-formed headers with one character changed; plus that a
    //! well-formed header's fields are kept exactly.
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const HEADER: &str = "[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]{0,8})?";

    /// Well-formed headers (some with a zero id) one character off.
    fn header_one_off() -> impl Strategy<Value = String> {
        let header = prop_oneof![
            HEADER,
            "00-0{32}-[0-9a-f]{16}-01",
            "00-[0-9a-f]{32}-0{16}-01",
        ];
        fuzzing::one_char_off(header, &['-', '0', 'f', 'F', 'g', ' ', '\t'])
    }

    proptest! {
        #[test]
        fn arbitrary_text_parses_without_panic(text in any::<String>()) {
            fuzzing::traceparent(text.as_bytes());
        }

        #[test]
        fn headers_one_character_off_are_continued_or_refused(text in header_one_off()) {
            fuzzing::traceparent(text.as_bytes());
        }

        #[test]
        fn a_well_formed_header_is_continued_exactly(
            version in 0u8..0xff,
            trace_id in 1u128..,
            parent_id in 1u64..,
            flags in any::<u8>(),
        ) {
            let header = format!("{version:02x}-{trace_id:032x}-{parent_id:016x}-{flags:02x}");
            fuzzing::traceparent(header.as_bytes());
            let context = TraceContext::parse(&header).expect("a well-formed header");
            prop_assert_eq!((context.trace_id, context.flags), (trace_id, flags));
            prop_assert_ne!(context.span_id, 0);
        }
    }
}

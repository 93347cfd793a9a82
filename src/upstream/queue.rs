//! The publisher's refund event queue: an Azure Storage queue (`store-services-apis.md` 2.11)
//! whose URL and SAS the purchase host hands out. This module knows the queue's wire format
//! (its URL rule, the `QueueMessagesList` XML, the error codes) and nothing of gRPC.

use std::time::{Duration, SystemTime};

use quick_xml::events::Event;
use quick_xml::Reader;
use url::Url;

/// The domain every Azure Storage queue host ends in.
const AZURE_QUEUE_DOMAIN: &str = ".queue.core.windows.net";

/// Most messages one pull may take (Azure's limit on `numofmessages`).
pub const MAX_MESSAGES: u8 = 32;

/// How long a pulled message stays hidden from other pulls (Azure's default).
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// A queue URL the facade may follow, split into the queue's address and its SAS query
/// (no `Debug`: the SAS is a credential).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct QueueUrl {
    /// `scheme://host[:port]/path` of the queue, without a final `/`.
    queue: String,
    /// The SAS query string, without `?`.
    sas: String,
    /// The SAS signature (`sig`), unescaped: a queue error could quote it so.
    signature: String,
    /// The SAS signature as the query carries it (escaped).
    signature_escaped: String,
}

impl QueueUrl {
    /// `uri` if the facade may follow it: https to a host ending in `.queue.core.windows.net`,
    /// or a URL under `allowed` (same scheme, host and port, below its path); in both cases
    /// with no user info and no fragment. A URL from anywhere else (the Store's answer may be
    /// wrong, or tampered with) is never called: it would receive the facade's requests.
    pub fn allowed(uri: &str, allowed: &Url) -> Option<Self> {
        let url = Url::parse(uri.trim()).ok()?;
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let azure = url.scheme() == "https"
            && host.len() > AZURE_QUEUE_DOMAIN.len()
            && host.to_ascii_lowercase().ends_with(AZURE_QUEUE_DOMAIN);
        let under_allowed = url.scheme() == allowed.scheme()
            && url.host_str() == allowed.host_str()
            && url.port_or_known_default() == allowed.port_or_known_default()
            && below(url.path(), allowed.path());
        if !azure && !under_allowed {
            return None;
        }
        let sas = url.query().unwrap_or_default().to_owned();
        let signature = url
            .query_pairs()
            .find(|(name, _)| name == "sig")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let signature_escaped = sas
            .split('&')
            .find_map(|pair| pair.strip_prefix("sig="))
            .unwrap_or_default()
            .to_owned();
        let mut queue = url;
        queue.set_query(None);
        Some(Self {
            queue: queue.as_str().trim_end_matches('/').to_owned(),
            sas,
            signature,
            signature_escaped,
        })
    }

    /// `GET {queue}/messages?{sas}&numofmessages=N&visibilitytimeout=30`.
    pub fn get_messages(&self, count: u8) -> String {
        format!(
            "{}/messages?{}&numofmessages={count}&visibilitytimeout={}",
            self.queue,
            self.sas,
            VISIBILITY_TIMEOUT.as_secs()
        )
    }

    /// `DELETE {queue}/messages/{id}?{sas}&popreceipt=...`, both escaped.
    pub fn delete_message(&self, message_id: &str, pop_receipt: &str) -> String {
        let receipt: String = form_urlencoded::byte_serialize(pop_receipt.as_bytes()).collect();
        format!(
            "{}/messages/{}?{}&popreceipt={receipt}",
            self.queue,
            super::segment(message_id),
            self.sas
        )
    }

    /// The secrets the URL carries, to scrub out of everything the queue answers: the SAS
    /// query as sent, and its signature escaped and unescaped.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        [
            self.sas.as_str(),
            self.signature.as_str(),
            self.signature_escaped.as_str(),
        ]
        .into_iter()
    }

    /// The SAS signature (`sig`), unescaped.
    pub fn signature(&self) -> &str {
        &self.signature
    }
}

/// Whether `path` is `base` or below it, segment-wise.
fn below(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One message as the queue lists it (no `Debug`: its pop receipt lets anyone holding the
/// SAS delete it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct QueueMessage {
    /// `MessageId`.
    pub message_id: String,
    /// `PopReceipt` (what deletes this delivery of the message).
    pub pop_receipt: String,
    /// `InsertionTime`.
    pub insertion_time: Option<SystemTime>,
    /// `ExpirationTime`.
    pub expiration_time: Option<SystemTime>,
    /// `TimeNextVisible`.
    pub time_next_visible: Option<SystemTime>,
    /// `DequeueCount`.
    pub dequeue_count: u32,
    /// `MessageText`, unescaped.
    pub text: String,
}

/// Longest pop receipt taken (Azure's are about 30 characters).
pub const MAX_POP_RECEIPT_BYTES: usize = 1024;

/// A message id the facade sends back: a GUID, as Azure's always are. Nothing else ever
/// becomes a path segment of a DELETE: `.` or `..` there would name the queue's messages as a
/// whole (Clear Messages) or the queue itself (Delete Queue).
pub fn is_message_id(text: &str) -> bool {
    super::is_guid(text)
}

/// A pop receipt the facade sends back (in the query, escaped): not empty, not too long, no
/// control characters.
pub fn is_pop_receipt(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_POP_RECEIPT_BYTES && !text.chars().any(char::is_control)
}

/// Reads a `QueueMessagesList`; `None` when the body is not one, or a message has an id or
/// pop receipt that could not be sent back to acknowledge it ([`is_message_id`],
/// [`is_pop_receipt`]). Unknown elements are ignored.
pub fn parse_messages(body: &[u8]) -> Option<Vec<QueueMessage>> {
    let mut reader = Reader::from_reader(body);
    let mut messages = Vec::new();
    let mut current: Option<QueueMessage> = None;
    let mut field: Option<Vec<u8>> = None;
    let mut saw_list = false;
    let mut depth = 0usize;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(start) => {
                depth += 1;
                let name = start.name().as_ref().to_vec();
                match (depth, name.as_slice()) {
                    (1, b"QueueMessagesList") => saw_list = true,
                    (2, b"QueueMessage") => current = Some(QueueMessage::default()),
                    (3, _) => field = Some(name),
                    _ => {}
                }
            }
            Event::Empty(empty) if depth == 0 && empty.name().as_ref() == b"QueueMessagesList" => {
                saw_list = true;
            }
            Event::Text(text) => {
                if let (Some(message), Some(name)) = (current.as_mut(), field.as_deref()) {
                    let text = text.xml10_content().ok()?;
                    set_field(message, name, &text)?;
                }
            }
            Event::GeneralRef(reference) => {
                // An entity or character reference between text pieces: `&amp;` and the like.
                if let (Some(message), Some(name)) = (current.as_mut(), field.as_deref()) {
                    let text = match reference.resolve_char_ref().ok()? {
                        Some(c) => c.to_string(),
                        None => {
                            quick_xml::escape::resolve_predefined_entity(&reference.decode().ok()?)?
                                .to_owned()
                        }
                    };
                    set_field(message, name, &text)?;
                }
            }
            Event::CData(data) => {
                if let (Some(message), Some(name)) = (current.as_mut(), field.as_deref()) {
                    let text = std::str::from_utf8(&data).ok()?;
                    set_field(message, name, text)?;
                }
            }
            Event::End(_) => {
                match depth {
                    3 => field = None,
                    2 => {
                        // Another element beside the messages is ignored.
                        if let Some(mut message) = current.take() {
                            message.message_id = message.message_id.trim().to_owned();
                            message.pop_receipt = message.pop_receipt.trim().to_owned();
                            if !is_message_id(&message.message_id)
                                || !is_pop_receipt(&message.pop_receipt)
                            {
                                return None;
                            }
                            messages.push(message);
                        }
                    }
                    _ => {}
                }
                depth = depth.checked_sub(1)?;
            }
            Event::Eof if depth == 0 => break,
            Event::Eof => return None,
            _ => {}
        }
        buf.clear();
    }
    saw_list.then_some(messages)
}

/// Appends `text` to the field `name` of `message` (text may come in pieces around
/// references). `None` when a number or date does not read.
fn set_field(message: &mut QueueMessage, name: &[u8], text: &str) -> Option<()> {
    let date = |text: &str| httpdate::parse_http_date(text.trim()).ok();
    match name {
        b"MessageId" => message.message_id.push_str(text),
        b"PopReceipt" => message.pop_receipt.push_str(text),
        b"MessageText" => message.text.push_str(text),
        b"InsertionTime" => message.insertion_time = date(text),
        b"ExpirationTime" => message.expiration_time = date(text),
        b"TimeNextVisible" => message.time_next_visible = date(text),
        b"DequeueCount" => message.dequeue_count = text.trim().parse().ok()?,
        _ => {}
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulator() -> Url {
        Url::parse("http://127.0.0.1:8480/queue").unwrap()
    }

    #[test]
    fn only_azure_queues_over_https_or_the_configured_base_are_followed() {
        let azure = "https://acct.queue.core.windows.net:443/refunds?sv=2021&se=x&sp=rp&sig=abc%2B";
        let queue = QueueUrl::allowed(
            azure,
            &Url::parse("https://queue.core.windows.net").unwrap(),
        )
        .expect("an Azure queue over https");
        assert_eq!(
            queue.get_messages(5),
            "https://acct.queue.core.windows.net/refunds/messages?sv=2021&se=x&sp=rp&sig=abc%2B\
             &numofmessages=5&visibilitytimeout=30"
        );
        assert_eq!(queue.signature(), "abc+");
        let default = Url::parse("https://queue.core.windows.net").unwrap();
        for refused in [
            "http://acct.queue.core.windows.net/refunds?sig=a",
            "https://queue.core.windows.net.evil.example/refunds?sig=a",
            "https://acct.queue.core.windows.net.evil.example/q?sig=a",
            "https://evil.example/acct.queue.core.windows.net?sig=a",
            "https://user:pw@acct.queue.core.windows.net/q?sig=a",
            "https://acct.queue.core.windows.net/q?sig=a#frag",
            "https://.queue.core.windows.net/q",
            "file:///etc/passwd",
            "not a url",
            "http://127.0.0.1:8480/queue/refunds?sig=a",
        ] {
            assert!(
                QueueUrl::allowed(refused, &default).is_none(),
                "{refused} must not be followed"
            );
        }
        assert!(
            QueueUrl::allowed("http://127.0.0.1:8480/queue/refunds?sig=a", &emulator()).is_some()
        );
        assert!(QueueUrl::allowed("http://127.0.0.1:8480/queue?sig=a", &emulator()).is_some());
        for refused in [
            "http://127.0.0.1:8481/queue/refunds?sig=a",
            "https://127.0.0.1:8480/queue/refunds?sig=a",
            "http://127.0.0.2:8480/queue/refunds?sig=a",
            "http://127.0.0.1:8480/queueX/refunds?sig=a",
            "http://127.0.0.1:8480/other?sig=a",
        ] {
            assert!(
                QueueUrl::allowed(refused, &emulator()).is_none(),
                "{refused}"
            );
        }
    }

    #[test]
    fn delete_escapes_the_id_and_the_pop_receipt() {
        let queue = QueueUrl::allowed("http://127.0.0.1:8480/queue/q?sig=s", &emulator()).unwrap();
        assert_eq!(
            queue.delete_message("a/b?c", "AgAA+/x=="),
            "http://127.0.0.1:8480/queue/q/messages/a%2Fb%3Fc?sig=s&popreceipt=AgAA%2B%2Fx%3D%3D"
        );
    }

    #[test]
    fn messages_lists_read_as_azure_writes_them() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?>
<QueueMessagesList>
  <QueueMessage>
    <MessageId>5974b586-0df3-4e2d-ad0c-18e3892bfca2</MessageId>
    <InsertionTime>Fri, 09 Oct 2009 21:04:30 GMT</InsertionTime>
    <ExpirationTime>Fri, 16 Oct 2009 21:04:30 GMT</ExpirationTime>
    <PopReceipt>YzQ4Yzg1MDIt&amp;+/=</PopReceipt>
    <TimeNextVisible>Fri, 09 Oct 2009 23:29:20 GMT</TimeNextVisible>
    <DequeueCount>2</DequeueCount>
    <MessageText>eyJpZCI6MX0=</MessageText>
    <Future>ignored</Future>
  </QueueMessage>
  <QueueMessage><MessageId> 0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a </MessageId><PopReceipt>r2</PopReceipt><DequeueCount>1</DequeueCount><MessageText></MessageText></QueueMessage>
  <Unknown><Child>ignored</Child></Unknown>
</QueueMessagesList>"#;
        let messages = parse_messages(body).expect("a list");
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0].message_id,
            "5974b586-0df3-4e2d-ad0c-18e3892bfca2"
        );
        assert_eq!(messages[0].pop_receipt, "YzQ4Yzg1MDIt&+/=");
        assert_eq!(messages[0].dequeue_count, 2);
        assert_eq!(messages[0].text, "eyJpZCI6MX0=");
        assert_eq!(
            messages[0].insertion_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_255_122_270))
        );
        assert_eq!(messages[1].text, "");
        assert_eq!(
            messages[1].message_id,
            "0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a"
        );
        assert_eq!(
            parse_messages(b"<QueueMessagesList />").map(|m| m.len()),
            Some(0)
        );
        assert_eq!(
            parse_messages(b"<QueueMessagesList></QueueMessagesList>").map(|m| m.len()),
            Some(0)
        );
    }

    #[test]
    fn anything_else_is_not_a_messages_list() {
        for body in [
            &b""[..],
            b"{\"items\":[]}",
            b"<html><body>hi</body></html>",
            b"<QueueMessagesList><QueueMessage><MessageId>0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a</MessageId></QueueMessage></QueueMessagesList>",
            b"<QueueMessagesList><QueueMessage><MessageId>0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a</MessageId><PopReceipt>r</PopReceipt><DequeueCount>x</DequeueCount></QueueMessage></QueueMessagesList>",
            b"<QueueMessagesList><QueueMessage><MessageId>..</MessageId><PopReceipt>r</PopReceipt></QueueMessage></QueueMessagesList>",
            b"<QueueMessagesList><QueueMessage><MessageId>m</MessageId><PopReceipt>r</PopReceipt></QueueMessage></QueueMessagesList>",
            b"<QueueMessagesList><QueueMessage>",
        ] {
            assert!(parse_messages(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::refund_queue`]'s properties (shared with its fuzz target) over
    //! arbitrary bytes, message lists with arbitrary ids and texts, and event JSON with fields
    //! of any type.
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use proptest::prelude::*;

    use crate::fuzzing;

    fn list() -> impl Strategy<Value = String> {
        let message = (
            "[ -~]{0,40}",
            "[ -~]{0,40}",
            "[0-9a-zA-Z+/=]{0,60}",
            any::<u32>(),
        )
            .prop_map(|(id, receipt, text, count)| {
                format!(
                    "<QueueMessage><MessageId>{}</MessageId><PopReceipt>{}</PopReceipt>\
                     <DequeueCount>{count}</DequeueCount><MessageText>{text}</MessageText>\
                     <InsertionTime>Fri, 09 Oct 2009 21:04:30 GMT</InsertionTime></QueueMessage>",
                    quick_xml::escape::escape(&id),
                    quick_xml::escape::escape(&receipt)
                )
            });
        prop::collection::vec(message, 0..4).prop_map(|messages| {
            format!(
                "<QueueMessagesList>{}</QueueMessagesList>",
                messages.concat()
            )
        })
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[ -~]{0,30}".prop_map(serde_json::Value::from),
            "(0|1|9999|10000)[0-9]{0,3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?Z"
                .prop_map(serde_json::Value::from),
        ]
    }

    fn event_text() -> impl Strategy<Value = Vec<u8>> {
        (
            json_value(),
            json_value(),
            json_value(),
            json_value(),
            json_value(),
        )
            .prop_map(|(id, state, date, days, start)| {
                let event = serde_json::json!({
                    "id": id, "time": date,
                    "data": {"eventState": state, "purchasedDate": date, "eventDate": date,
                             "recurrenceData": {"durationInDays": days,
                                                "consumedDurationInDays": days,
                                                "durationIntervalStart": start}},
                });
                STANDARD.encode(event.to_string()).into_bytes()
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_read_or_refused_whole(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            fuzzing::refund_queue(&bytes);
        }

        #[test]
        fn generated_lists_hold(body in list()) {
            fuzzing::refund_queue(body.as_bytes());
        }

        #[test]
        fn events_of_any_field_types_hold(text in event_text()) {
            // As the message text, escaped into a list by the entry point.
            fuzzing::refund_queue(&text);
        }
    }
}

//! A Server-Sent Events reader: bytes in, whole events out, as the
//! WHATWG `text/event-stream` rules define them (enough of them for the API's
//! stream: `id`, `event` and `data` fields, comments, CRLF or LF lines).

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// Turns chunks of a stream, cut anywhere, into events.
#[derive(Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// The event being read.
    data: Vec<String>,
    id: Option<String>,
    event: Option<String>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.partial.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return None;
            }
            return Some(SseEvent {
                id: self.id.take(),
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            // A comment: the API's keep-alive.
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "data" => self.data.push(value),
            "id" => self.id = Some(value),
            "event" => self.event = Some(value),
            // `retry` and unknown fields do not matter to this client.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunk_boundaries_and_comments_are_skipped() {
        let stream = b": keep-alive\n\nid: 1-0\ndata: {\"a\":1}\n\r\nid:2-0\r\nevent: message\r\ndata: x\r\ndata: y\r\n\r\n";
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in stream.chunks(3) {
            events.extend(parser.feed(chunk));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("1-0".to_owned()),
                    event: None,
                    data: "{\"a\":1}".to_owned()
                },
                SseEvent {
                    id: Some("2-0".to_owned()),
                    event: Some("message".to_owned()),
                    data: "x\ny".to_owned()
                },
            ]
        );
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"id: 1-0\ndata: {}\n").is_empty());
        assert_eq!(parser.feed(b"\n").len(), 1);
    }
}

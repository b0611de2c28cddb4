//! Server-sent events (the WHATWG `text/event-stream` format), as far as the
//! cloud's configuration watch uses it: `event:` and `data:` fields, comment
//! lines (keep-alives), an event ending at a blank line. Fed bytes as they
//! arrive, in pieces of any size.

/// The longest line kept: the cloud's status documents are small, and a
/// server that sends an endless line must not fill the memory.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the server named none.
    pub event: String,
    pub data: String,
}

#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends no second line.
    after_cr: bool,
    overlong: bool,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Takes the next bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    if let Some(event) = self.end_line() {
                        out.push(event);
                    }
                }
                _ if self.line.len() < MAX_LINE => self.line.push(byte),
                _ => self.overlong = true,
            }
        }
        out
    }

    fn end_line(&mut self) -> Option<SseEvent> {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            return None;
        }
        if line.is_empty() {
            // An event without data is no event; its name goes with it.
            let (event, data) = (self.event.take(), self.data.take()?);
            return Some(SseEvent { event: event.unwrap_or_else(|| "message".into()), data });
        }
        let line = String::from_utf8_lossy(&line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            // id and retry: the watch reconnects on its own schedule.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": keep-alive\n\nevent: status\ndata: {\"state\":\"live\"}\n\nevent: status\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata:plain\n\n";

    #[test]
    fn events_come_out_whatever_the_pieces() {
        let expected = vec![
            SseEvent { event: "status".into(), data: "{\"state\":\"live\"}".into() },
            SseEvent { event: "status".into(), data: "{\"a\":\n1}".into() },
            SseEvent { event: "message".into(), data: "plain".into() },
        ];
        let mut whole = SseParser::default();
        assert_eq!(whole.feed(STREAM), expected);
        for size in [1, 2, 3, 7] {
            let mut parser = SseParser::default();
            let events: Vec<SseEvent> = STREAM.chunks(size).flat_map(|piece| parser.feed(piece)).collect();
            assert_eq!(events, expected, "pieces of {size}");
        }
    }

    #[test]
    fn an_endless_line_is_dropped_not_kept() {
        let mut parser = SseParser::default();
        let mut stream = b"event: status\ndata: ".to_vec();
        stream.resize(stream.len() + 3 * MAX_LINE, b'x');
        stream.extend_from_slice(b"\n\nevent: status\ndata: ok\n\n");
        let events = parser.feed(&stream);
        assert_eq!(events, vec![SseEvent { event: "status".into(), data: "ok".into() }]);
        assert!(parser.line.capacity() <= 2 * MAX_LINE);
    }
}

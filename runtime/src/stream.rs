//! Turning generated token bytes into text for a streaming callback: never a split UTF-8
//! character, and never text that turns out to start a stop string.
//!
//! Fixed capacities ([`MAX_STOP_STRINGS`] stop strings of at most [`MAX_STOP_BYTES`] bytes) are
//! part of the contract, held in `heapless` buffers; pushing a token allocates nothing.

use crate::error::{Error, Result};

/// Most stop strings a generation accepts.
pub const MAX_STOP_STRINGS: usize = 8;
/// Longest stop string, in UTF-8 bytes.
pub const MAX_STOP_BYTES: usize = 64;

/// Stop strings with their bound stated in the type.
pub type StopStrings = heapless::Vec<heapless::String<MAX_STOP_BYTES>, MAX_STOP_STRINGS>;

/// Builds [`StopStrings`] from any strings, refusing empty, too long or too many.
pub fn stop_strings<S: AsRef<str>>(items: &[S]) -> Result<StopStrings> {
    let mut out = StopStrings::new();
    for s in items {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(Error::InvalidGeneration("a stop string must not be empty".into()));
        }
        let mut h = heapless::String::new();
        h.push_str(s).map_err(|_| {
            Error::InvalidGeneration(format!("stop string {s:?} is longer than {MAX_STOP_BYTES} bytes"))
        })?;
        out.push(h)
            .map_err(|_| Error::InvalidGeneration(format!("at most {MAX_STOP_STRINGS} stop strings")))?;
    }
    Ok(out)
}

/// Bytes held back: an incomplete character plus text that may begin a stop string.
const HOLD: usize = MAX_STOP_BYTES + 4;

/// Assembles token bytes into whole characters and holds back possible stop-string prefixes.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    stops: StopStrings,
    /// Valid UTF-8 text not yet emitted (each byte may begin a stop string).
    held: heapless::Vec<u8, HOLD>,
    /// An incomplete UTF-8 sequence at the end of the last token.
    partial: heapless::Vec<u8, 4>,
    stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stops`.
    pub fn new(stops: StopStrings) -> TextStream {
        TextStream { stops, ..TextStream::default() }
    }

    /// True once a stop string was seen; the stop string itself is never emitted.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds one token's bytes; calls `emit` with text that is final. Returns true when a stop
    /// string completed.
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&str)) -> bool {
        for &b in bytes {
            if self.stopped {
                return true;
            }
            if self.partial.is_empty() && b < 0x80 {
                self.push_char(&[b], emit);
                continue;
            }
            if self.partial.push(b).is_err() {
                self.flush_invalid(emit);
                continue;
            }
            let need = match self.partial[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            if self.partial.len() == need || (self.partial.len() > 1 && (b & 0xC0) != 0x80) {
                let ch = self.partial.clone();
                self.partial.clear();
                match std::str::from_utf8(&ch) {
                    Ok(s) => self.push_char(s.as_bytes(), emit),
                    Err(_) => self.push_char("\u{FFFD}".as_bytes(), emit),
                }
            }
        }
        self.stopped
    }

    /// Emits whatever is held (end of generation); an incomplete character becomes U+FFFD.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if self.stopped {
            return;
        }
        if !self.partial.is_empty() {
            self.partial.clear();
            self.push_char("\u{FFFD}".as_bytes(), emit);
        }
        if !self.stopped {
            emit_bytes(&self.held, emit);
            self.held.clear();
        }
    }

    fn flush_invalid(&mut self, emit: &mut dyn FnMut(&str)) {
        self.partial.clear();
        self.push_char("\u{FFFD}".as_bytes(), emit);
    }

    fn push_char(&mut self, ch: &[u8], emit: &mut dyn FnMut(&str)) {
        if self.stops.is_empty() {
            emit_bytes(ch, emit);
            return;
        }
        // Make room: emit leading characters that can no longer be part of a stop string.
        while self.held.len() + ch.len() > HOLD {
            self.emit_first_char(emit);
        }
        let _ = self.held.extend_from_slice(ch);
        for stop in &self.stops {
            if self.held.ends_with(stop.as_bytes()) {
                let keep = self.held.len() - stop.len();
                emit_bytes(&self.held[..keep], emit);
                self.held.clear();
                self.stopped = true;
                return;
            }
        }
        // Emit the longest prefix that is not the start of a possible stop string.
        while !self.held.is_empty() && !self.could_start_stop() {
            self.emit_first_char(emit);
        }
    }

    /// Could some suffix of `held`, starting at its first byte, begin a stop string?
    fn could_start_stop(&self) -> bool {
        self.stops.iter().any(|s| {
            let s = s.as_bytes();
            let n = self.held.len().min(s.len());
            self.held.len() <= s.len() && self.held[..n] == s[..n]
        })
    }

    fn emit_first_char(&mut self, emit: &mut dyn FnMut(&str)) {
        let len = match self.held.first() {
            None => return,
            Some(b) if *b < 0x80 => 1,
            Some(0xC0..=0xDF) => 2,
            Some(0xE0..=0xEF) => 3,
            _ => 4,
        }
        .min(self.held.len());
        emit_bytes(&self.held[..len], emit);
        let rest = self.held.len() - len;
        self.held.copy_within(len.., 0);
        self.held.truncate(rest);
    }
}

fn emit_bytes(bytes: &[u8], emit: &mut dyn FnMut(&str)) {
    if bytes.is_empty() {
        return;
    }
    // The stream only ever holds whole characters, so this is always valid.
    if let Ok(s) = std::str::from_utf8(bytes) {
        emit(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&[u8]]) -> (Vec<String>, bool) {
        let mut s = TextStream::new(stop_strings(stops).unwrap());
        let mut out = Vec::new();
        let mut stopped = false;
        for t in tokens {
            stopped = s.push(t, &mut |x| out.push(x.to_string()));
            if stopped {
                break;
            }
        }
        s.finish(&mut |x| out.push(x.to_string()));
        (out, stopped)
    }

    #[test]
    fn split_characters_are_joined() {
        let euro = "€".as_bytes();
        let (out, _) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(out, ["a", "€", "b"]);
    }

    #[test]
    fn stop_strings_are_held_back_and_not_emitted() {
        let (out, stopped) = run(&["END"], &[b"abE", b"N", b"D", b"zz"]);
        assert!(stopped);
        assert_eq!(out.concat(), "ab");
        let (out, stopped) = run(&["END"], &[b"abE", b"Nx"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "abENx");
    }
}

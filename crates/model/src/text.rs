//! Turning tokens into text the way a client wants it: whole UTF-8 characters (a character can
//! span tokens), and nothing from a stop sequence on (held back while it might still be one).

/// Collects the bytes of token pieces and releases complete UTF-8 text.
#[derive(Debug, Default)]
pub(crate) struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// Adds bytes; returns the text that is complete so far.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).expect("checked valid"));
                    match e.error_len() {
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end (an incomplete character becomes a replacement character).
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Cuts generated text at the first stop sequence.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops, held: String::new() }
    }

    /// Adds text; returns the text that can go to the client, and whether a stop sequence ended
    /// the generation (the stop sequence itself is never returned).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail that could still become a stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_owned();
        self.held.drain(..keep);
        (out, false)
    }

    /// The text held back, when the generation ended for another reason.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let mut a = Utf8Assembler::default();
        let bytes = "é€🦀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&a.push(&[*b]));
        }
        assert_eq!(out, "é€🦀");
        assert_eq!(a.push(b"ok\xff!"), "ok\u{fffd}!");
        assert_eq!(a.push(&[0xe2, 0x82]), "");
        assert_eq!(a.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_sequences_cut_and_are_held_back_while_possible() {
        let mut m = StopMatcher::new(vec!["\nUser:".into(), "END".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" world\nUs"), (" world".into(), false), "a possible stop is held");
        assert_eq!(m.push("ually"), ("\nUsually".into(), false), "released when it is not one");
        assert_eq!(m.push(" E"), (" ".into(), false));
        assert_eq!(m.push("NDING"), ("".into(), true), "cut at the stop, which is not returned");

        let mut m = StopMatcher::new(vec!["xx".into()]);
        assert_eq!(m.push("ax"), ("a".into(), false));
        assert_eq!(m.finish(), "x");
        let mut none = StopMatcher::new(vec![]);
        assert_eq!(none.push("anything"), ("anything".into(), false));
        let mut uni = StopMatcher::new(vec!["ü".into()]);
        assert_eq!(uni.push("aéü"), ("aé".into(), true));
    }
}

//! Splits a streamed assistant turn into visible text and the tool call's body: text before
//! `<|action_start|>` is streamed as it arrives; from `<|action_start|>` on, nothing is
//! streamed (the call is reported whole once parsed). A partial `<|action_start|>` at the end
//! of a delta is held back until the next delta decides it.

use internlm2::chat::ACTION_START;

/// Streaming filter over text deltas.
#[derive(Debug, Default)]
pub(crate) struct ActionFilter {
    held: String,
    in_action: bool,
}

impl ActionFilter {
    /// Takes a delta, returns the text that can be shown now.
    pub(crate) fn push(&mut self, delta: &str) -> String {
        if self.in_action {
            return String::new();
        }
        self.held.push_str(delta);
        if let Some(at) = self.held.find(ACTION_START) {
            self.in_action = true;
            let visible = self.held[..at].to_string();
            self.held.clear();
            return visible;
        }
        let keep = partial_suffix(&self.held, ACTION_START);
        let cut = self.held.len() - keep;
        let visible = self.held[..cut].to_string();
        self.held.drain(..cut);
        visible
    }

    /// The text still held back (at the end of the turn).
    pub(crate) fn finish(&mut self) -> String {
        if self.in_action {
            String::new()
        } else {
            std::mem::take(&mut self.held)
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&len| {
            text.len() >= len
                && text.is_char_boundary(text.len() - len)
                && text.ends_with(&marker[..len])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(deltas: &[&str]) -> String {
        let mut filter = ActionFilter::default();
        let mut out: String = deltas.iter().map(|d| filter.push(d)).collect();
        out.push_str(&filter.finish());
        out
    }

    #[test]
    fn text_before_the_action_is_streamed_and_the_call_is_not() {
        assert_eq!(
            run(&["Let me ", "check.<|action_", "start|><|plugin|>\n{\"name\""]),
            "Let me check."
        );
        assert_eq!(run(&["a <|act", "ually not"]), "a <|actually not");
        assert_eq!(run(&["plain answer <|"]), "plain answer <|");
        assert_eq!(run(&["你好", "<|action_start|>", "x"]), "你好");
    }
}

//! The text the model reads after a cell, in the form InternLM2's interpreter turns use: plain
//! text, at most [`DEFAULT_MAX_CHARS`] characters (as Lagent caps it), a traceback cut to start
//! at its first error line (Lagent's rule: the first line naming an `Error` or a `Traceback`).
//!
//! Order: the cell's printed output, the value of its last expression (as a notebook shows
//! it), saved figures as `![image](file.png)` (the form of InternLM's chat-format guide), the
//! error, then notes from the host (timeouts, restarts, stopped background processes). When it
//! is too long, the error and notes are kept (the error's last lines first) and the output is
//! cut in the middle with a notice saying how much is missing: never silently.

use super::output::Segment;

/// The default cap of a result, in characters.
pub const DEFAULT_MAX_CHARS: usize = 2048;

/// Cuts a traceback to start at its first line naming an error or a traceback.
///
/// ```
/// use internlm2_agent::interpreter::cut_traceback;
/// let text = "  File \"<cell 1>\", line 1\n    print(\n         ^\nSyntaxError: '(' was never closed\n";
/// assert_eq!(cut_traceback(text), "SyntaxError: '(' was never closed\n");
/// ```
pub fn cut_traceback(error: &str) -> &str {
    let mut offset = 0;
    for line in error.split_inclusive('\n') {
        if line.contains("Error") || line.contains("Traceback") {
            return &error[offset..];
        }
        offset += line.len();
    }
    error
}

/// The collected output as text, with a notice where the collector dropped bytes (for
/// [`super::ExecOutcome::output`]).
pub(crate) fn segment_text(segment: &Segment) -> String {
    let mut text = String::from_utf8_lossy(&segment.head).into_owned();
    if segment.omitted() > 0 {
        text.push_str(&format!(
            "\n[... {} bytes of output omitted ...]\n",
            segment.omitted()
        ));
    }
    text.push_str(&String::from_utf8_lossy(&segment.tail));
    text
}

/// Shortens `text` to at most `max` characters by cutting out its middle (keeping `head_share`
/// of the room for the start), with a notice of what was cut.
pub(crate) fn clip_middle(text: &str, max: usize, head_share: f64) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_string();
    }
    let notice = |n: usize| format!("\n[... {n} characters omitted ...]\n");
    let room = max.saturating_sub(notice(total).chars().count());
    if room == 0 {
        return text.chars().take(max).collect();
    }
    let head = ((room as f64) * head_share) as usize;
    let tail = room - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(total - tail).collect();
    format!("{start}{}{end}", notice(total - head - tail))
}

/// The pieces of one cell's result.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    /// The start of the output (all of it when nothing was dropped).
    pub output_head: String,
    /// The end of the output, when the collector dropped bytes between head and tail.
    pub output_tail: String,
    /// Bytes written in all.
    pub output_bytes: u64,
    /// Whether the collector dropped bytes between head and tail.
    pub output_omitted: bool,
    pub value: Option<String>,
    pub figures: Vec<String>,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

impl Parts {
    /// The output in at most `room` characters: whole, or its start and end around a notice
    /// giving the full size.
    fn output(&self, room: usize) -> String {
        let chars = |s: &str| s.chars().count();
        if !self.output_omitted && chars(&self.output_head) <= room {
            return self.output_head.clone();
        }
        let notice = format!(
            "\n[... output truncated: {} bytes in all ...]\n",
            self.output_bytes
        );
        let avail = room.saturating_sub(chars(&notice));
        let end_text = if self.output_omitted {
            &self.output_tail
        } else {
            &self.output_head
        };
        let head = ((avail as f64) * 0.6) as usize;
        let head = head.min(chars(&self.output_head));
        let tail = (avail - head).min(chars(end_text));
        let start: String = self.output_head.chars().take(head).collect();
        let end: String = end_text.chars().skip(chars(end_text) - tail).collect();
        format!("{start}{notice}{end}")
    }
}

fn join(sections: &[String]) -> String {
    let mut out = String::new();
    for section in sections.iter().filter(|s| !s.is_empty()) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(section);
    }
    out.trim_end().to_string()
}

/// Assembles the model's text, at most `max` characters: figures, notes and the value are
/// kept; the error gets up to two thirds of the remaining room when there is output too, the
/// output the rest.
pub(crate) fn render(parts: &Parts, max: usize) -> String {
    let figures = parts
        .figures
        .iter()
        .map(|f| format!("![image]({f})"))
        .collect::<Vec<_>>()
        .join("\n");
    let value = parts
        .value
        .as_deref()
        .map(|v| clip_middle(v, max / 4, 0.7))
        .unwrap_or_default();
    let notes = parts.notes.join("\n");
    let error = parts
        .error
        .as_deref()
        .map(cut_traceback)
        .unwrap_or_default();
    let chars = |s: &str| s.chars().count();
    // One separator per section.
    let reserved = chars(&figures) + chars(&notes) + chars(&value) + 5;
    let room = max.saturating_sub(reserved);
    let output_len = chars(&parts.output_head) + chars(&parts.output_tail);
    let error_len = chars(error);
    let error_room = if output_len == 0 {
        room
    } else {
        error_len.min((room * 2 / 3).max(room.saturating_sub(output_len)))
    };
    let error = clip_middle(error, error_room, 0.3);
    let output = parts.output(room.saturating_sub(chars(&error)));
    let text = join(&[output, value, figures, error, notes]);
    // The pieces were sized to fit; a last cut guards the promise.
    if chars(&text) > max {
        clip_middle(&text, max, 0.5)
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_start_at_the_first_error_line() {
        assert_eq!(
            cut_traceback("noise\nTraceback (most recent call last):\n  x\nValueError: v"),
            "Traceback (most recent call last):\n  x\nValueError: v"
        );
        assert_eq!(cut_traceback("no marker here"), "no marker here");
    }

    #[test]
    fn sections_are_joined_in_order() {
        let parts = Parts {
            output_head: "printed\n".into(),
            value: Some("42".into()),
            figures: vec!["figure-1-1.png".into()],
            error: None,
            notes: vec!["note".into()],
            ..Parts::default()
        };
        assert_eq!(
            render(&parts, DEFAULT_MAX_CHARS),
            "printed\n42\n![image](figure-1-1.png)\nnote"
        );
        assert_eq!(render(&Parts::default(), DEFAULT_MAX_CHARS), "");
    }

    #[test]
    fn long_results_keep_the_error_and_say_what_was_cut() {
        let parts = Parts {
            output_head: "x".repeat(10_000),
            output_bytes: 10_000,
            error: Some(format!(
                "Traceback (most recent call last):\n{}ZeroDivisionError: division by zero\n",
                "  frame\n".repeat(1000)
            )),
            ..Parts::default()
        };
        let text = render(&parts, DEFAULT_MAX_CHARS);
        assert!(text.chars().count() <= DEFAULT_MAX_CHARS, "{}", text.len());
        assert!(text.starts_with("xxx"));
        assert!(text.contains("[... output truncated: 10000 bytes in all ...]"));
        assert!(text.contains("Traceback (most recent call last):"));
        assert!(text.ends_with("ZeroDivisionError: division by zero"));
    }

    #[test]
    fn output_dropped_by_the_collector_keeps_its_start_end_and_size() {
        let parts = Parts {
            output_head: "a".repeat(16_000),
            output_tail: "b".repeat(16_000),
            output_bytes: 1_000_000_000,
            output_omitted: true,
            ..Parts::default()
        };
        let text = render(&parts, DEFAULT_MAX_CHARS);
        assert!(text.chars().count() <= DEFAULT_MAX_CHARS);
        assert!(text.starts_with("aaa") && text.ends_with("bbb"), "{text}");
        assert!(text.contains("[... output truncated: 1000000000 bytes in all ...]"));
        // Even with room for everything kept, the gap is marked.
        let roomy = render(&parts, 100_000);
        assert_eq!(roomy.matches("output truncated").count(), 1);
        assert_eq!(
            roomy.chars().count(),
            32_000 + "\n[... output truncated: 1000000000 bytes in all ...]\n".len()
        );
    }

    #[test]
    fn clipping_counts_characters_not_bytes() {
        let text = "é".repeat(5000);
        let clipped = clip_middle(&text, 100, 0.5);
        assert!(clipped.chars().count() <= 100);
        assert!(clipped.contains("omitted"));
    }
}

//! Answers of math problems: the last `\boxed{...}` of a solution, and a normal form in which
//! equal answers written differently (`\dfrac{1}{2}` and `\frac12`, `5.00` and `5`, `x = 3` and
//! `3`, `90^\circ` and `90`, `\$12` and `12`) compare equal as strings.
//!
//! The rules follow the normalisation used to score MATH in the InternLM2 era (Hendrycks et
//! al.'s, as InternLM's `agent/streaming_inference.py` applies it), written anew; two of its
//! rules that damage answers (removing every `and`, turning `j` into `i`) are left out.

use std::sync::LazyLock;

use regex::Regex;

/// The content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, braces balanced.
///
/// ```
/// use internlm2_agent::math::last_boxed;
/// assert_eq!(last_boxed(r"so \boxed{1} or \boxed{\frac{1}{2}}."), Some(r"\frac{1}{2}"));
/// assert_eq!(last_boxed(r"\boxed 7$"), Some("7"));
/// assert_eq!(last_boxed("no box"), None);
/// ```
pub fn last_boxed(text: &str) -> Option<&str> {
    let start = text
        .rfind("\\boxed")
        .map(|at| at + "\\boxed".len())
        .or_else(|| text.rfind("\\fbox").map(|at| at + "\\fbox".len()))?;
    let rest = &text[start..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut depth = 1usize;
        for (at, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&body[..at]);
                    }
                }
                _ => {}
            }
        }
        None
    } else {
        // `\boxed 7`: up to the end of the inline math.
        let body = rest.trim_start();
        let end = body.find('$').unwrap_or(body.len());
        let answer = body[..end].trim();
        (!answer.is_empty()).then_some(answer)
    }
}

macro_rules! regex {
    ($name:ident, $pattern:expr) => {
        static $name: LazyLock<Regex> =
            LazyLock::new(|| Regex::new($pattern).expect("a valid pattern"));
    };
}

regex!(TRAILING_TEXT, r"\\text\{[^}]*\}$");
regex!(MBOX, r"\\mbox\{[^}]*\}");
regex!(ZEROS_INSIDE, r"(\d+)\.0+([^\d])");
regex!(ZEROS_END, r"(\d+)\.0+$");
regex!(SQRT_BARE, r"\\sqrt(\w+)");

/// `\frac12` -> `\frac{1}{2}`, `\frac1{72}` -> `\frac{1}{72}`.
fn fix_fracs(s: &str) -> String {
    let mut parts = s.split("\\frac");
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        out.push_str("\\frac");
        let chars: Vec<char> = part.chars().collect();
        if chars.first() == Some(&'{') || chars.len() < 2 {
            out.push_str(part);
            continue;
        }
        let (a, b) = (chars[0], chars[1]);
        let rest: String = chars[2..].iter().collect();
        if b == '{' {
            out.push_str(&format!("{{{a}}}{b}{rest}"));
        } else {
            out.push_str(&format!("{{{a}}}{{{b}}}{rest}"));
        }
    }
    out
}

/// `3/4` (two integers) -> `\frac{3}{4}`.
fn fix_slash(s: &str) -> String {
    let mut parts = s.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None)
            if a.parse::<i64>().is_ok_and(|n| n.to_string() == a)
                && b.parse::<i64>().is_ok_and(|n| n.to_string() == b) =>
        {
            format!("\\frac{{{a}}}{{{b}}}")
        }
        _ => s.to_string(),
    }
}

/// The normal form of an answer (see the module docs).
///
/// ```
/// use internlm2_agent::math::normalize_answer;
/// assert_eq!(normalize_answer(r"\dfrac12"), r"\frac{1}{2}");
/// assert_eq!(normalize_answer("x = 5.00"), "5");
/// assert_eq!(normalize_answer(r"90^\circ"), "90");
/// assert_eq!(normalize_answer(r"\$ 1/2"), r"\frac{1}{2}");
/// assert_eq!(normalize_answer(r"10\text{ cm}"), "10");
/// ```
pub fn normalize_answer(answer: &str) -> String {
    let mut s = answer.trim().replace('\n', "");
    while s.ends_with('.') {
        s.pop();
    }
    for (from, to) in [
        ("\\!", ""),
        ("\\\\", "\\"),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
    ] {
        s = s.replace(from, to);
    }
    let without_unit = TRAILING_TEXT.replace(&s, "").trim().to_string();
    if !without_unit.is_empty() {
        s = without_unit;
    }
    for (from, to) in [
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\text", ""),
        ("\\mathrm", ""),
        ("\\mathbf", ""),
        ("x\\in", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\ ", ""),
        (" .", " 0."),
        ("{.", "{0."),
        ("infinity", "\\infty"),
    ] {
        s = s.replace(from, to);
    }
    s = MBOX.replace_all(&s, "").into_owned();
    s = ZEROS_INSIDE.replace_all(&s, "$1$2").into_owned();
    s = ZEROS_END.replace_all(&s, "$1").into_owned();
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    // `k = 5` -> `5` when the left side is a short name.
    if let Some((lhs, rhs)) = s.split_once('=')
        && !rhs.contains('=')
        && lhs.trim().chars().count() <= 2
    {
        s = rhs.to_string();
    }
    s = SQRT_BARE.replace_all(&s, "\\sqrt{$1}").into_owned();
    s.retain(|c| !c.is_whitespace());
    s = fix_fracs(&s);
    fix_slash(&s)
}

/// Whether a predicted answer equals the reference after normalisation (numbers also compare
/// by value, so `1,000` equals `1000` and `0.50` equals `.5`).
///
/// ```
/// use internlm2_agent::math::answers_match;
/// assert!(answers_match(r"\dfrac{1}{2}", r"\frac12"));
/// assert!(answers_match("1,000", "1000"));
/// assert!(!answers_match("2", "3"));
/// ```
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    let (p, r) = (normalize_answer(predicted), normalize_answer(reference));
    if p == r {
        return true;
    }
    let number = |s: &str| s.replace(',', "").parse::<f64>().ok();
    match (number(&p), number(&r)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_answers_with_nested_braces() {
        assert_eq!(
            last_boxed(r"\boxed{\sqrt{2}+\frac{1}{3}}"),
            Some(r"\sqrt{2}+\frac{1}{3}")
        );
        assert_eq!(last_boxed(r"\fbox{4}"), Some("4"));
        assert_eq!(last_boxed(r"\boxed{unclosed"), None);
    }

    #[test]
    fn normal_forms() {
        assert_eq!(
            normalize_answer(r"\left( 3, \frac{\pi}{2} \right)"),
            r"(3,\frac{\pi}{2})"
        );
        assert_eq!(normalize_answer(r"\sqrt3"), r"\sqrt{3}");
        assert_eq!(normalize_answer("0.5"), "0.5");
        assert_eq!(normalize_answer(".5"), "0.5");
        assert_eq!(normalize_answer(r"50\%"), "50");
        assert_eq!(normalize_answer(r"\frac1{72}"), r"\frac{1}{72}");
        assert_eq!(
            normalize_answer("2.50"),
            "2.50",
            "only all-zero decimals go"
        );
        assert_eq!(normalize_answer("y = 2x + 1"), "2x+1");
        assert_eq!(normalize_answer("a = b = 3"), "a=b=3");
    }

    #[test]
    fn matching_is_by_normal_form_then_by_value() {
        assert!(answers_match("x=5", "5"));
        assert!(answers_match("0.50", ".5"));
        assert!(answers_match(r"\$12.00", "12"));
        assert!(!answers_match(r"\frac{1}{2}", r"\frac{1}{3}"));
        assert!(!answers_match("", "0"));
    }
}

//! Answer extraction and matching for the benchmarks, written to give the same results as
//! OpenCompass's post-processors in its InternLM2-chat setting (each function names the
//! OpenCompass file it follows).
//!
//! Python's `re` and Rust's `regex` agree on everything these patterns use (leftmost-first
//! alternation, lazy repetition, Unicode `\d`, `\s`, `\w`) except `$`: without `re.MULTILINE`
//! Python's `$` also matches just before a final newline, so every `$` outside a character
//! class is written `\n?\z` here. The letters a match yields do not change, because the newline
//! the Rust pattern may consume holds no option letter.

use std::sync::OnceLock;

use regex::Regex;

/// The regex of a GSM8K number: `\-?\d+\.\d+|\-?\d+` (OpenCompass
/// `opencompass/datasets/gsm8k.py`, `gsm8k_postprocess`).
fn number_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\d+\.\d+|-?\d+").expect("valid regex"))
}

/// The predicted GSM8K answer: the last number of the text before any `"Question:"`, or `None`
/// where OpenCompass returns `'NULL'`.
///
/// OpenCompass `opencompass/datasets/gsm8k.py` (2024):
/// ```text
/// text = text.split('Question:')[0]
/// numbers = re.findall(r'\-?\d+\.\d+|\-?\d+', text)
/// if not numbers: return 'NULL'
/// return numbers[-1]
/// ```
/// Commas are not removed from predictions: `"1,234"` yields `"234"`, as in OpenCompass.
///
/// ```
/// use internlm2_eval::extract::gsm8k_prediction;
/// assert_eq!(gsm8k_prediction("3 + 4 = 7\nThe answer is 7").as_deref(), Some("7"));
/// ```
pub fn gsm8k_prediction(text: &str) -> Option<String> {
    let before = text.split("Question:").next().unwrap_or_default();
    number_regex()
        .find_iter(before)
        .last()
        .map(|m| m.as_str().to_string())
}

/// The reference GSM8K answer: what follows the first `"#### "`, commas removed (OpenCompass
/// `gsm8k_dataset_postprocess`: `text.split('#### ')[1].replace(',', '')`); `None` when the
/// answer has no `"#### "`.
pub fn gsm8k_gold(answer: &str) -> Option<String> {
    // `split('#### ')[1]` is the text between the first and the second marker.
    let rest = answer.split("#### ").nth(1)?;
    Some(rest.replace(',', ""))
}

/// OpenCompass's `Gsm8kEvaluator.is_equal`: `pred == refer or abs(float(pred) - int(refer)) <
/// 1e-6`, where a reference that is not an integer (Python's `int()` raises) only matches as
/// the identical string.
pub fn gsm8k_equal(prediction: &str, gold: &str) -> bool {
    if prediction == gold {
        return true;
    }
    let (Ok(pred), Ok(gold)) = (prediction.parse::<f64>(), gold.trim().parse::<i64>()) else {
        return false;
    };
    (pred - gold as f64).abs() < 1e-6
}

/// Python's `$` (end, or before a final newline) in Rust's syntax.
const END: &str = r"\n?\z";

/// The patterns of OpenCompass's `first_option_postprocess`, in its order, with `{o}` for the
/// option class. OpenCompass `opencompass/utils/text_postprocessors.py` at b03d5dc5 (March 2024,
/// the version `configs/datasets/mmlu/mmlu_gen_4d595a.py` used for InternLM2-chat). Its missing
/// comma after the `故选` pattern joins two patterns into one; that is kept.
const OPTION_PATTERNS: &[&str] = &[
    r"答案是?\s?([{o}])",
    r"答案是?\s?：([{o}])",
    r"答案是?\s?:([{o}])",
    r"答案应该?是\s?([{o}])",
    r"答案应该?选\s?([{o}])",
    r"答案为\s?([{o}])",
    r"答案选\s?([{o}])",
    r"选择?\s?([{o}])",
    r"故选?\s?([{o}])只有选?项?\s?([{o}])\s?是?对",
    r"只有选?项?\s?([{o}])\s?是?错",
    r"只有选?项?\s?([{o}])\s?不?正确",
    r"只有选?项?\s?([{o}])\s?错误",
    r"说法不?对选?项?的?是\s?([{o}])",
    r"说法不?正确选?项?的?是\s?([{o}])",
    r"说法错误选?项?的?是\s?([{o}])",
    r"([{o}])\s?是正确的",
    r"([{o}])\s?是正确答案",
    r"选项\s?([{o}])\s?正确",
    r"所以答\s?([{o}])",
    r"所以\s?([{o}][.。$]?{END})",
    r"所有\s?([{o}][.。$]?{END})",
    r"[\s，：:,]([{o}])[。，,\.]?{END}",
    r"[\s，,：:][故即]([{o}])[。\.]?{END}",
    r"[\s，,：:]因此([{o}])[。\.]?{END}",
    r"[是为。]\s?([{o}])[。\.]?{END}",
    r"因此\s?([{o}])[。\.]?{END}",
    r"显然\s?([{o}])[。\.]?{END}",
    r"答案是\s?(\S+)(?:。|{END})",
    r"答案应该是\s?(\S+)(?:。|{END})",
    r"答案为\s?(\S+)(?:。|{END})",
    r"[Tt]he answer is ([{o}])",
    r"[Tt]he answer is option ([{o}])",
    r"[Tt]he correct answer is ([{o}])",
    r"[Tt]he correct answer is option ([{o}])",
    r"[Tt]he answer to the question is ([{o}])",
    r"^选项\s?([{o}])",
    r"^([{o}])\s?选?项",
    r"(\s|^)[{o}][\s。，,：:\.$]",
    r"(\s|^)[{o}](\s|{END})",
    r"1.\s?(.*?){END}",
    r"1.\s?([{o}])[.。$]?{END}",
    // The "cushion" patterns, tried last.
    r"([{o}]):",
    r"[{o}]",
];

/// The compiled patterns for one option string.
fn option_regexes(options: &str) -> Vec<Regex> {
    let class = regex::escape(options);
    OPTION_PATTERNS
        .iter()
        .map(|p| {
            let pattern = p.replace("{o}", &class).replace("{END}", END);
            Regex::new(&pattern).expect("the option patterns are valid")
        })
        .collect()
}

/// The first option (one of the characters of `options`, e.g. `"ABCD"`) the text names, the way
/// OpenCompass's `first_option_postprocess(text, options)` finds it: the patterns are tried in
/// order; for the first that matches anywhere, the answer is the first character of `options`
/// (in `options` order) that occurs in the whole match. `None` where OpenCompass returns `''`.
///
/// ```
/// use internlm2_eval::extract::first_option;
/// assert_eq!(first_option("The answer is C.", "ABCD"), Some('C'));
/// assert_eq!(first_option("答案是B", "ABCD"), Some('B'));
/// ```
pub fn first_option(text: &str, options: &str) -> Option<char> {
    static ABCD: OnceLock<Vec<Regex>> = OnceLock::new();
    let owned;
    let regexes = if options == "ABCD" {
        ABCD.get_or_init(|| option_regexes("ABCD"))
    } else {
        owned = option_regexes(options);
        &owned
    };
    for re in regexes {
        if let Some(m) = re.find(text) {
            let matched = m.as_str();
            if let Some(option) = options.chars().find(|&c| matched.contains(c)) {
                return Some(option);
            }
        }
    }
    None
}

/// The first upper-case character of the text (OpenCompass `first_capital_postprocess`, which
/// `mmlu_gen_a484b3.py` used in January 2024).
pub fn first_capital(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_uppercase())
}

/// The code of a HumanEval answer: the first fenced block, else the whole text.
///
/// OpenCompass `opencompass/datasets/humaneval.py` (eee5a5be, July 2024):
/// ```text
/// def humaneval_postprocess_v2(text: str) -> str:
///     blocks = re.findall(r'```\w*\n(.*?)```', text, re.DOTALL)
///     if len(blocks) >= 1:
///         text = blocks[0]
///     return text
/// ```
///
/// ```
/// use internlm2_eval::extract::first_code_block;
/// let answer = "Here it is:\n```python\ndef f():\n    return 1\n```\nDone.";
/// assert_eq!(first_code_block(answer), "def f():\n    return 1\n");
/// ```
pub fn first_code_block(text: &str) -> &str {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?s)```\w*\n(.*?)```").expect("valid regex"));
    re.captures(text)
        .and_then(|c| c.get(1))
        .map_or(text, |m| m.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_last_number_before_question() {
        let p = |t: &str| gsm8k_prediction(t);
        assert_eq!(p("So 3 * 4 = 12.\nThe answer is 12").as_deref(), Some("12"));
        // Trailing text after the answer: the last number wins, as in OpenCompass.
        assert_eq!(
            p("The answer is 18 dollars, that is 1800 cents.").as_deref(),
            Some("1800")
        );
        // "The answer is" earlier, a follow-up question later: cut at "Question:".
        assert_eq!(
            p("The answer is 18.\n\nQuestion: Tom has 5 apples and 42 pears").as_deref(),
            Some("18")
        );
        assert_eq!(p("It drops to -7 degrees").as_deref(), Some("-7"));
        assert_eq!(p("Each costs 2.50 so 3.75 in all").as_deref(), Some("3.75"));
        // A trailing period is not part of a decimal.
        assert_eq!(p("The answer is 5.").as_deref(), Some("5"));
        // Commas split numbers in predictions (gold answers have theirs removed).
        assert_eq!(p("The answer is 1,234").as_deref(), Some("234"));
        assert_eq!(p("no digits here"), None);
        assert_eq!(p("Question: 5 + 5?"), None);
        // A minus sign binds to the number; a hyphenated range keeps its second part negative.
        assert_eq!(p("pages 10-12").as_deref(), Some("-12"));
    }

    #[test]
    fn gsm8k_gold_and_tolerance() {
        assert_eq!(
            gsm8k_gold("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7").as_deref(),
            Some("7")
        );
        assert_eq!(
            gsm8k_gold("... \n#### 1,234,567").as_deref(),
            Some("1234567")
        );
        assert_eq!(gsm8k_gold("#### -3").as_deref(), Some("-3"));
        assert_eq!(gsm8k_gold("no marker"), None);

        assert!(gsm8k_equal("7", "7"));
        assert!(gsm8k_equal("7.0", "7"));
        assert!(gsm8k_equal("7.0000001", "7"));
        assert!(!gsm8k_equal("7.00001", "7"));
        assert!(gsm8k_equal("-3", "-3"));
        assert!(!gsm8k_equal("3", "-3"));
        // A prediction of "234" for the gold "1234" (the comma case above) is wrong.
        assert!(!gsm8k_equal("234", "1234"));
        // A decimal gold matches only as the same string (Python's int() raises).
        assert!(gsm8k_equal("2.5", "2.5"));
        assert!(!gsm8k_equal("2.50", "2.5"));
    }

    #[test]
    fn first_option_cases() {
        let f = |t: &str| first_option(t, "ABCD");
        assert_eq!(f("B"), Some('B'));
        assert_eq!(f("C. Paris is the capital."), Some('C'));
        assert_eq!(f("The answer is D"), Some('D'));
        assert_eq!(f("the correct answer is option A"), Some('A'));
        // Option letters in prose: "the answer is B" outranks the earlier bare "A".
        assert_eq!(
            f("I think A is tempting, but the answer is B because of the tides."),
            Some('B')
        );
        // A letter closing the text outranks them both.
        assert_eq!(f("The answer is B, not C"), Some('C'));
        // Without an answer phrase the first standalone letter wins.
        assert_eq!(f("I think A is tempting, but B is right."), Some('A'));
        // "Answer: C": the capital A of "Answer" is not a standalone option.
        assert_eq!(f("Answer: C"), Some('C'));
        // A letter just before the final newline (Python's `$`).
        assert_eq!(f("So it is C\n"), Some('C'));
        // Chinese phrasing.
        assert_eq!(f("根据题意，答案是C。"), Some('C'));
        // OpenCompass's merged "故选...是对" pattern never fires; the cushion finds B.
        assert_eq!(f("只有选项B是对的"), Some('B'));
        // The whole match is searched in option order: `1.\s?(.*?)$` on "1:Dog or Ant"
        // yields A although D comes first.
        assert_eq!(f("see 1:Dog or Ant"), Some('A'));
        // The cushion: any option letter anywhere, even inside a word.
        assert_eq!(f("Absolutely."), Some('A'));
        assert_eq!(f("no option letter here"), None);
        assert_eq!(first_option("The answer is E", "ABCDE"), Some('E'));
    }

    #[test]
    fn first_capital_cases() {
        assert_eq!(first_capital("the answer: B"), Some('B'));
        assert_eq!(first_capital("nothing"), None);
    }

    #[test]
    fn code_block_cases() {
        assert_eq!(first_code_block("```python\nx = 1\n```"), "x = 1\n");
        // The first of two blocks.
        assert_eq!(first_code_block("```\na\n```\n```\nb\n```"), "a\n");
        // No block: the text itself.
        assert_eq!(first_code_block("    return 1"), "    return 1");
        // An unterminated fence is no block.
        assert_eq!(first_code_block("```python\nx = 1"), "```python\nx = 1");
        // A fence without a newline after its language tag is no block either.
        assert_eq!(first_code_block("```python x```"), "```python x```");
    }
}

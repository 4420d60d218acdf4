//! The needle-in-a-haystack prompts, needles and the passkey variant.
//!
//! Templates (the question at the end), quoted from OpenCompass:
//! - one needle, `opencompass/datasets/needlebench/origin.py`, `position == 'End'`:
//!   ```text
//!   'You are an intelligent AI assistant skilled in answering user questions.\n'
//!   'Please keep your answers concise and clear. Do not talk about irrelevant topics or repeat '
//!   'your answers.\nThe document given to you by the user is {context}\n\n'
//!   'Now, the question is: {retrieval_question}'
//!
//!   '你是一个善于回答用户问题的智能AI助手\n'
//!   '请保持你的回答简洁清楚。不要说和下面文档中的无关的话，或重复你的回答\n'
//!   '用户现在给你的文档是{context}\n\n'
//!   '现在请问：{retrieval_question}'
//!   ```
//! - several needles, `opencompass/datasets/needlebench/parallel.py`, `position == 'End'`:
//!   ```text
//!   '...repeat your answers.\nThe document given to you by the user is {context}'
//!   '\n\nNow, the questions are: {retrieval_question}\n'
//!
//!   '...或重复你的回答\n请先仔细阅读下面的文档再依次回答最后提出的问题\n'
//!   '用户现在给你的文档是{context}\n\n现在请问：{retrieval_question}\n'
//!   ```
//! - the passkey test, LMDeploy `docs/en/advance/long_context.md` (v0.2.1):
//!   ```text
//!   task_description = 'There is an important info hidden inside a lot of irrelevant text. '
//!                      'Find it and memorize them. I will quiz you about the important information there.'
//!   information_line = f'The pass key is {pass_key}. Remember it. {pass_key} is the pass key.'
//!   final_question = 'What is the pass key? The pass key is'
//!   prompt = ' '.join([task_description, garbage_prefix, information_line, garbage_suffix, final_question])
//!   pass_key = np.random.randint(1, 50000)
//!   ```
//!   Its filler sentence (`'The grass is green. The sky is blue. The sun is yellow. Here we go.
//!   There and back again.'`) is the haystack of [`passkey_filler`].
//!
//! Needles are inserted as `'\n' + needle + '\n'`, as OpenCompass does.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The language of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// The English template.
    #[default]
    English,
    /// The Chinese template.
    Chinese,
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "en" | "english" => Ok(Self::English),
            "zh" | "chinese" => Ok(Self::Chinese),
            other => Err(format!("unknown language {other:?} (en, zh)")),
        }
    }
}

/// A fact hidden in the haystack, the question that asks for it and the keyword a correct
/// answer contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needle {
    /// The sentence inserted.
    pub needle: String,
    /// The question asked at the end.
    pub question: String,
    /// What a correct answer contains.
    pub keyword: String,
}

impl Needle {
    /// A needle from its three parts.
    pub fn new(
        needle: impl Into<String>,
        question: impl Into<String>,
        keyword: impl Into<String>,
    ) -> Self {
        Self {
            needle: needle.into(),
            question: question.into(),
            keyword: keyword.into(),
        }
    }

    /// The text inserted: the needle on a line of its own.
    pub fn inserted_text(&self) -> String {
        format!("\n{}\n", self.needle)
    }
}

/// The needles used when the user gives none (ours, written for this SDK).
pub fn default_needles(language: Language) -> Vec<Needle> {
    match language {
        Language::English => vec![
            Needle::new(
                "The secret ingredient of the lighthouse keeper's soup is smoked paprika.",
                "What is the secret ingredient of the lighthouse keeper's soup? Answer in one sentence.",
                "smoked paprika",
            ),
            Needle::new(
                "The password to the old observatory on Kestrel Hill is amber-falcon-seven.",
                "What is the password to the old observatory on Kestrel Hill?",
                "amber-falcon-seven",
            ),
            Needle::new(
                "Margot keeps her spare bicycle key inside a blue teapot in the garden shed.",
                "Where does Margot keep her spare bicycle key?",
                "blue teapot",
            ),
            Needle::new(
                "The river ferry to Calloway Island leaves every day at a quarter past nine.",
                "When does the river ferry to Calloway Island leave?",
                "quarter past nine",
            ),
        ],
        Language::Chinese => vec![
            Needle::new(
                "灯塔看守人的汤里的秘密配料是烟熏辣椒粉。",
                "灯塔看守人的汤里的秘密配料是什么？请用一句话回答。",
                "烟熏辣椒粉",
            ),
            Needle::new(
                "红隼山上旧天文台的密码是琥珀猎鹰七号。",
                "红隼山上旧天文台的密码是什么？",
                "琥珀猎鹰七号",
            ),
            Needle::new(
                "玛歌把备用的自行车钥匙放在花园小屋里的蓝色茶壶中。",
                "玛歌把备用的自行车钥匙放在哪里？",
                "蓝色茶壶",
            ),
            Needle::new(
                "去卡洛威岛的渡轮每天九点一刻出发。",
                "去卡洛威岛的渡轮每天几点出发？",
                "九点一刻",
            ),
        ],
    }
}

/// LMDeploy's filler sentence (see the module docs), repeated `times` times with spaces.
pub fn passkey_filler(times: usize) -> String {
    const GARBAGE: &str =
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
    vec![GARBAGE; times].join(" ")
}

/// The passkey needle of a seed: a key in `1..50000` (LMDeploy's range) and its lines.
pub fn passkey_needle(seed: u64) -> Needle {
    let key: u32 = StdRng::seed_from_u64(seed).random_range(1..50_000);
    Needle::new(
        format!("The pass key is {key}. Remember it. {key} is the pass key."),
        "What is the pass key? The pass key is",
        key.to_string(),
    )
}

/// The user turn asking for one needle.
pub fn single_prompt(language: Language, context: &str, question: &str) -> String {
    match language {
        Language::English => format!(
            "You are an intelligent AI assistant skilled in answering user questions.\n\
             Please keep your answers concise and clear. Do not talk about irrelevant topics or \
             repeat your answers.\nThe document given to you by the user is {context}\n\n\
             Now, the question is: {question}"
        ),
        Language::Chinese => format!(
            "你是一个善于回答用户问题的智能AI助手\n\
             请保持你的回答简洁清楚。不要说和下面文档中的无关的话，或重复你的回答\n\
             用户现在给你的文档是{context}\n\n现在请问：{question}"
        ),
    }
}

/// The user turn asking for several needles (their questions in insertion order).
pub fn multi_prompt(language: Language, context: &str, questions: &[&str]) -> String {
    match language {
        Language::English => format!(
            "You are an intelligent AI assistant skilled in answering user questions.\n\
             Please keep your answers concise and clear. Do not talk about irrelevant topics or \
             repeat your answers.\nThe document given to you by the user is {context}\n\n\
             Now, the questions are: {}\n",
            questions.join(" ")
        ),
        Language::Chinese => format!(
            "你是一个善于回答用户问题的智能AI助手\n\
             请保持你的回答简洁清楚。不要说和下面文档中的无关的话，或重复你的回答\n\
             请先仔细阅读下面的文档再依次回答最后提出的问题\n\
             用户现在给你的文档是{context}\n\n现在请问：{}\n",
            questions.join("")
        ),
    }
}

/// The passkey prompt around a haystack that holds the key (LMDeploy's layout).
pub fn passkey_prompt(context: &str) -> String {
    format!(
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize \
         them. I will quiz you about the important information there. {context} What is the \
         pass key? The pass key is"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_the_quoted_sources() {
        assert_eq!(
            single_prompt(Language::English, "CTX", "Q?"),
            "You are an intelligent AI assistant skilled in answering user questions.\n\
             Please keep your answers concise and clear. Do not talk about irrelevant topics or repeat your answers.\n\
             The document given to you by the user is CTX\n\nNow, the question is: Q?"
        );
        assert_eq!(
            single_prompt(Language::Chinese, "CTX", "Q？"),
            "你是一个善于回答用户问题的智能AI助手\n请保持你的回答简洁清楚。不要说和下面文档中的无关的话，或重复你的回答\n用户现在给你的文档是CTX\n\n现在请问：Q？"
        );
        assert!(
            multi_prompt(Language::English, "C", &["A?", "B?"]).ends_with(
                "The document given to you by the user is C\n\nNow, the questions are: A? B?\n"
            )
        );
        assert!(passkey_prompt("X").contains("information there. X What is the pass key?"));
    }

    #[test]
    fn passkeys_are_seeded_and_in_range() {
        let a = passkey_needle(3);
        assert_eq!(a, passkey_needle(3));
        let key: u32 = a.keyword.parse().unwrap();
        assert!((1..50_000).contains(&key));
        assert_eq!(
            a.needle,
            format!("The pass key is {key}. Remember it. {key} is the pass key.")
        );
        assert_ne!(passkey_needle(3).keyword, passkey_needle(4).keyword);
    }
}

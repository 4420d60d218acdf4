//! The benchmark runners on small hand-written JSONL files and a scripted model: the exact
//! prompts, extraction, judging (HumanEval through a real `python3`), records, summaries,
//! `--limit` and resumption.

mod common;

use std::path::Path;

use internlm2_eval::bench::{BenchConfig, Gsm8k, HumanEval, ItemRecord, Mmlu, Task, run_benchmark};
use internlm2_eval::exec::{CodeRunner, PythonRunner, SandboxedPython};
use internlm2_eval::prompt::{PromptFormat, Turn};
use internlm2_eval::records::read_records;

fn write(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn gsm8k_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let train = dir.join("train.jsonl");
    let shots: Vec<_> = (1..=5)
        .map(|i| {
            serde_json::json!({
                "question": format!("Shot question {i}?"),
                "answer": format!("Take {i}*2=<<{i}*2={}>>{} apples.\n#### {}", 2 * i, 2 * i, 2 * i),
            })
        })
        .collect();
    write(&train, &shots);
    let test = dir.join("test.jsonl");
    write(
        &test,
        &[
            serde_json::json!({"question": "How many? (gold 1,234)", "answer": "...\n#### 1,234"}),
            serde_json::json!({"question": "How cold? (gold -5)", "answer": "...\n#### -5"}),
            serde_json::json!({"question": "How much? (gold 4)", "answer": "...\n#### 4"}),
            serde_json::json!({"question": "Trailing? (gold 18)", "answer": "...\n#### 18"}),
        ],
    );
    (test, train)
}

#[test]
fn gsm8k_prompt_extraction_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (test, train) = gsm8k_files(dir.path());
    let task = Gsm8k::load(&test, &train).unwrap();
    // 4 shots, multi-turn, then the question.
    let turns = task.prompt(0);
    assert_eq!(turns.len(), 9);
    assert_eq!(
        turns[0],
        Turn::User("Question: Shot question 1?\nLet's think step by step\nAnswer:".into())
    );
    assert_eq!(
        turns[1],
        Turn::Assistant("Take 1*2=2 apples.\nThe answer is 2\n".into())
    );
    assert_eq!(
        turns[8],
        Turn::User("Question: How many? (gold 1,234)\nLet's think step by step\nAnswer:".into())
    );

    let mut model = common::Scripted::new(|prompt: &str, _| {
        let last = prompt.rsplit("Question: ").next().unwrap();
        if last.starts_with("How many") {
            "The answer is 1234".into() // correct
        } else if last.starts_with("How cold") {
            "It drops to -5 degrees.\n\nQuestion: what about 7?".into() // correct
        } else if last.starts_with("How much") {
            "4.0".into() // correct within 1e-6
        } else {
            "The answer is 18 dollars, or 1800 cents".into() // wrong: the last number wins
        }
    });
    let out = dir.path().join("out");
    let config = BenchConfig {
        limit: Some(3),
        ..BenchConfig::default()
    };
    let summary = run_benchmark(&mut model, &task, &config, &out).unwrap();
    assert_eq!((summary.items, summary.correct, summary.ran), (3, 3, 3));
    assert_eq!(summary.accuracy, 100.0);
    // The whole set: the fourth answer is wrong; only it runs now.
    let summary = run_benchmark(&mut model, &task, &BenchConfig::default(), &out).unwrap();
    assert_eq!((summary.items, summary.correct, summary.ran), (4, 3, 1));
    assert_eq!(summary.accuracy, 75.0);
    let records: Vec<ItemRecord> = read_records(&summary.records).unwrap();
    assert_eq!(records[0].extracted.as_deref(), Some("1234"));
    assert_eq!(records[0].gold, "1234");
    assert_eq!(records[1].extracted.as_deref(), Some("-5"));
    assert_eq!(records[3].extracted.as_deref(), Some("1800"));
    assert!(!records[3].correct);
    // The chat template with BOS around the turns.
    assert!(model.asked[0].contains(
        "<|im_start|>user\nQuestion: Shot question 1?\nLet's think step by step\nAnswer:<|im_end|>\n\
         <|im_start|>assistant\nTake 1*2=2 apples.\nThe answer is 2\n<|im_end|>\n"
    ));
    assert!(model.asked[0].ends_with("<|im_start|>assistant\n"));
    let summary_file = out.join("gsm8k_summary.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary_file).unwrap()).unwrap();
    assert_eq!(json["accuracy"], 75.0);
    // Fewer than four examples is refused.
    let few = dir.path().join("few.jsonl");
    write(
        &few,
        &[serde_json::json!({"question": "q", "answer": "#### 1"})],
    );
    assert!(Gsm8k::load(&test, &few).is_err());
    // A record without a final answer is a typed error naming its line.
    let bad = dir.path().join("bad.jsonl");
    write(
        &bad,
        &[serde_json::json!({"question": "q", "answer": "no marker"})],
    );
    let err = Gsm8k::load(&bad, &train).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:1"), "{err}");
}

#[test]
fn mmlu_per_subject_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let test = dir.path().join("test");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&test).unwrap();
    // cais/mmlu layout for one subject, lukaemon layout (subject from the file name) for the other.
    let cais = |q: &str, answer: u64| {
        serde_json::json!({"question": q, "subject": "high_school_physics",
            "choices": ["one", "two", "three", "four"], "answer": answer})
    };
    let luka = |q: &str, target: &str| serde_json::json!({"input": q, "A": "w", "B": "x", "C": "y", "D": "z", "target": target});
    write(
        &dev.join("physics_dev.jsonl"),
        &(0..5)
            .map(|i| cais(&format!("dev {i}"), i % 4))
            .collect::<Vec<_>>(),
    );
    write(
        &dev.join("anatomy_dev.jsonl"),
        &(0..6)
            .map(|i| luka(&format!("adev {i}"), "B"))
            .collect::<Vec<_>>(),
    );
    write(
        &test.join("physics_test.jsonl"),
        &[cais("p0", 2), cais("p1", 0), cais("p2", 3), cais("p3", 1)],
    );
    write(
        &test.join("anatomy_test.jsonl"),
        &[luka("a0", "C"), luka("a1", "D")],
    );
    let task = Mmlu::load(&test, &dev).unwrap();
    assert_eq!(task.items().len(), 6);
    let turns = task.prompt(0); // anatomy comes first (file order)
    assert_eq!(turns.len(), 11);
    assert_eq!(
        turns[0],
        Turn::User(
            "There is a single choice question about anatomy. Answer the question by replying A, B, C or D.\n\
             Question: adev 0\nA. w\nB. x\nC. y\nD. z\nAnswer: "
                .into()
        )
    );
    assert_eq!(turns[1], Turn::Assistant("B\n".into()));
    let physics = task.prompt(2);
    assert!(matches!(&physics[10], Turn::User(t) if t.starts_with(
        "There is a single choice question about high school physics."
    ) && t.contains("Question: p0\nA. one\nB. two\nC. three\nD. four\nAnswer: ")));

    let mut model = common::Scripted::new(|prompt: &str, _| {
        let last = prompt.rsplit("Question: ").next().unwrap();
        match &last[..2] {
            "a0" => "The answer is C.".into(),      // correct
            "a1" => "I think A is wrong; D".into(), // correct: a letter closing the answer
            "p0" => "C".into(),                     // correct
            "p1" => "Option B seems right".into(),  // wrong (gold A)
            "p2" => "答案是D".into(),               // correct
            _ => "none of these".into(),            // wrong: nothing extracted
        }
    });
    let summary = run_benchmark(
        &mut model,
        &task,
        &BenchConfig::default(),
        &dir.path().join("o"),
    )
    .unwrap();
    assert_eq!((summary.items, summary.correct), (6, 4));
    let anatomy = &summary.subjects["anatomy"];
    let physics = &summary.subjects["high_school_physics"];
    assert_eq!(
        (anatomy.items, anatomy.correct, anatomy.accuracy),
        (2, 2, 100.0)
    );
    assert_eq!(
        (physics.items, physics.correct, physics.accuracy),
        (4, 2, 50.0)
    );
    assert_eq!(summary.subject_mean, Some(75.0));
    assert!((summary.accuracy - 400.0 / 6.0).abs() < 1e-9);
    let records: Vec<ItemRecord> = read_records(&summary.records).unwrap();
    assert_eq!(records[5].extracted, None);
    assert_eq!(records[3].extracted.as_deref(), Some("B"));

    // A subject without five dev examples is refused.
    std::fs::remove_file(dev.join("physics_dev.jsonl")).unwrap();
    let err = Mmlu::load(&test, &dev).unwrap_err().to_string();
    assert!(err.contains("high_school_physics"), "{err}");
}

#[test]
fn humaneval_pass_at_1_with_a_real_interpreter() {
    let runner = PythonRunner {
        timeout: std::time::Duration::from_secs(2),
        ..PythonRunner::default()
    };
    humaneval_with(runner);
}

#[test]
fn humaneval_pass_at_1_in_the_sandboxed_interpreter() {
    let runner = SandboxedPython::start("python3", std::time::Duration::from_secs(2)).unwrap();
    humaneval_with(runner);
}

fn humaneval_with(runner: impl CodeRunner + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("humaneval.jsonl");
    let problem = |id: &str, name: &str, body: &str| {
        serde_json::json!({
            "task_id": id,
            "prompt": format!("def {name}(a, b):\n    \"\"\"{body}\"\"\"\n"),
            "canonical_solution": "",
            "test": format!("def check(f):\n    assert f(2, 3) == {}\n", if name == "add" { 5 } else { 6 }),
            "entry_point": name,
        })
    };
    write(
        &data,
        &[
            problem("HumanEval/0", "add", "Add."),
            problem("HumanEval/1", "mul", "Multiply."),
            problem("HumanEval/2", "add", "Add, slowly."),
            problem("HumanEval/3", "mul", "Multiply, body only."),
        ],
    );
    let task = HumanEval::load(&data, runner).unwrap();
    assert_eq!(
        task.prompt(0),
        [Turn::User(
            "Complete the following python code:\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n".into()
        )]
    );
    let mut model = common::Scripted::new(|prompt: &str, _| {
        if prompt.contains("Add.") {
            // The whole function in a block, with prose around it: passes.
            "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.".into()
        } else if prompt.contains("Multiply.") {
            "```python\ndef mul(a, b):\n    return a + b\n```".into() // wrong
        } else if prompt.contains("slowly") {
            "```python\ndef add(a, b):\n    while True:\n        pass\n```".into() // timeout
        } else {
            "    return a * b\n".into() // no block: the text is the completion; passes
        }
    });
    let summary = run_benchmark(
        &mut model,
        &task,
        &BenchConfig::default(),
        &dir.path().join("o"),
    )
    .unwrap();
    assert_eq!((summary.items, summary.correct), (4, 2));
    assert_eq!(summary.accuracy, 50.0);
    let records: Vec<ItemRecord> = read_records(&summary.records).unwrap();
    assert!(records[0].correct && records[3].correct);
    assert!(
        records[1].detail.contains("AssertionError"),
        "{}",
        records[1].detail
    );
    assert!(
        records[2].detail.contains("timed out"),
        "{}",
        records[2].detail
    );
    assert_eq!(
        task.program(3, "    return a * b\n"),
        "def mul(a, b):\n    \"\"\"Multiply, body only.\"\"\"\n    return a * b\n\n\
         def check(f):\n    assert f(2, 3) == 6\n\ncheck(mul)"
    );
}

#[test]
fn raw_prompts_for_base_models() {
    let dir = tempfile::tempdir().unwrap();
    let (test, train) = gsm8k_files(dir.path());
    let task = Gsm8k::load(&test, &train).unwrap();
    let mut model = common::Scripted::new(|_: &str, _| "The answer is 1234".into());
    let config = BenchConfig {
        limit: Some(1),
        format: PromptFormat::Raw,
        ..BenchConfig::default()
    };
    let summary = run_benchmark(&mut model, &task, &config, &dir.path().join("raw")).unwrap();
    assert_eq!(summary.correct, 1);
    assert!(!model.asked[0].contains("<|im_start|>"));
    assert!(
        model.asked[0]
            .contains("Answer:Take 1*2=2 apples.\nThe answer is 2\nQuestion: Shot question 2?")
    );
}

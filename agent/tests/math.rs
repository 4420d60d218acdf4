//! The MATH-with-interpreter runner on a scripted policy and the real interpreter: the
//! official prompt and turn limit, boxed-answer scoring, the JSONL reader.

mod common;

use std::io::Write;

use internlm2_agent::ScriptedGenerator;
use internlm2_agent::math::{
    MATH_INTERPRETER_PROMPT, MATH_MAX_TURNS, MathDataError, MathProblem, MathRunner, read_problems,
};

const CODE: &str = "Let me compute it.<|action_start|><|interpreter|>\n```python\nprint(sum(range(1, 101)))\n```<|action_end|>";

#[test]
fn problems_are_solved_with_the_interpreter_and_scored_on_the_boxed_answer() {
    let mut turns = vec![
        CODE.to_string(),
        "The sum is $\\boxed{5050}$.<|im_end|>".to_string(),
        // Second problem: a wrong answer.
        "It is $\\boxed{\\frac{1}{3}}$.<|im_end|>".to_string(),
    ];
    // Third problem: the model never stops calling code; the fifth turn is the last.
    turns.extend(std::iter::repeat_n(CODE.to_string(), MATH_MAX_TURNS));
    let script = ScriptedGenerator::new(turns);
    let mut runner = MathRunner::new(script, common::interpreter(10.0));
    let problems = [
        MathProblem::new(
            "What is the sum of the first 100 positive integers?",
            "5050",
        ),
        MathProblem::new("What is 1/4 + 1/4?", "\\dfrac12"),
        MathProblem::new("Loop forever.", "0"),
    ];
    let mut records = Vec::new();
    let report = runner.run(&problems, |r| records.push(r.clone())).unwrap();
    assert_eq!((report.total, report.correct, report.unanswered), (3, 1, 1));
    assert!((report.accuracy() - 1.0 / 3.0).abs() < 1e-12);

    let first = &records[0];
    assert_eq!(first.predicted.as_deref(), Some("5050"));
    assert!(first.correct);
    assert_eq!(
        (first.turns, first.tool_calls, first.finish.as_str()),
        (2, 1, "Answered")
    );
    assert_eq!(
        first.transcript,
        format!(
            "<|im_start|>system name=<|interpreter|>\n{MATH_INTERPRETER_PROMPT}<|im_end|>\n\
             <|im_start|>user\nWhat is the sum of the first 100 positive integers?<|im_end|>\n\
             <|im_start|>assistant\n{CODE}<|im_end|>\n\
             <|im_start|>environment name=<|interpreter|>\n5050<|im_end|>\n\
             <|im_start|>assistant\nThe sum is $\\boxed{{5050}}$.<|im_end|>\n"
        )
    );
    assert!(MATH_INTERPRETER_PROMPT.contains("'\\boxed{}' without any units"));

    assert_eq!(records[1].predicted.as_deref(), Some("\\frac{1}{3}"));
    assert!(!records[1].correct, "1/3 is not 1/2");
    assert!(
        records[1]
            .transcript
            .starts_with("<|im_start|>system name=<|interpreter|>")
    );
    assert!(
        !records[1].transcript.contains("5050"),
        "each problem starts afresh"
    );

    let third = &records[2];
    assert_eq!(
        (third.turns, third.tool_calls, third.finish.as_str()),
        (MATH_MAX_TURNS, 5, "TurnLimit")
    );
    assert_eq!(third.predicted, None);
    assert!(!third.correct);
}

#[test]
fn problems_are_read_from_jsonl_with_line_numbers_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("problems.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(
        file,
        "{{\"problem\": \"1+1?\", \"answer\": \"2\", \"level\": \"Level 1\"}}"
    )
    .unwrap();
    writeln!(file).unwrap();
    writeln!(file, "{{\"problem\": \"2+2?\", \"answer\": 4}}").unwrap();
    writeln!(
        file,
        "{{\"problem\": \"half?\", \"answer\": \"so $\\\\boxed{{\\\\frac12}}$\"}}"
    )
    .unwrap();
    drop(file);
    let problems = read_problems(&path).unwrap();
    assert_eq!(
        problems,
        vec![
            MathProblem::new("1+1?", "2"),
            MathProblem::new("2+2?", "4"),
            MathProblem::new("half?", "\\frac12"),
        ]
    );

    std::fs::write(
        &path,
        "{\"problem\": \"ok\", \"answer\": \"1\"}\n{\"question\": \"x\"}\n",
    )
    .unwrap();
    match read_problems(&path) {
        Err(MathDataError::Line { line, reason, .. }) => {
            assert_eq!(line, 2);
            assert!(reason.contains("problem"), "{reason}");
        }
        other => panic!("expected a line error, got {other:?}"),
    }
    assert!(matches!(
        read_problems(dir.path().join("missing.jsonl")),
        Err(MathDataError::Io { .. })
    ));
}

//! The code interpreter's notebook behaviour on a real `python3`: state, values, tracebacks,
//! refusals, output capture and caps, figures, reset.

mod common;

use internlm2_agent::{
    CodeInterpreter, ExecStatus, InterpreterConfig, InterpreterError, SandboxConfig,
};

#[test]
fn state_persists_between_calls_and_reset_clears_it() {
    let mut python = common::interpreter(10.0);
    let first = python.exec("counter = 41\nimport math").unwrap();
    assert_eq!((first.text.as_str(), first.is_error()), ("", false));
    assert_eq!(python.exec("counter + 1").unwrap().text, "42");
    assert_eq!(python.exec("math.factorial(5)").unwrap().text, "120");
    python.reset().unwrap();
    let gone = python.exec("counter").unwrap();
    assert!(gone.is_error());
    assert!(
        gone.text.starts_with("Traceback (most recent call last):"),
        "{}",
        gone.text
    );
    assert!(
        gone.text
            .ends_with("NameError: name 'counter' is not defined"),
        "{}",
        gone.text
    );
}

#[test]
fn the_last_expression_is_shown_after_the_printed_output() {
    let mut python = common::interpreter(10.0);
    let out = python
        .exec("print('hello')\nimport sys\nprint('warn', file=sys.stderr)\n{'a': [1, 2]}")
        .unwrap();
    assert_eq!(out.text, "hello\nwarn\n{'a': [1, 2]}");
    assert_eq!(out.value.as_deref(), Some("{'a': [1, 2]}"));
    // None is not shown, and `_` holds the last value, as in a notebook.
    assert_eq!(python.exec("print(1)\nNone").unwrap().text, "1");
    assert_eq!(python.exec("_['a']").unwrap().text, "[1, 2]");
    // Output of child processes is captured too.
    let child = python
        .exec("import subprocess\nsubprocess.run(['echo', 'from a child'], check=True)\nprint('after')")
        .unwrap();
    assert_eq!(child.text, "from a child\nafter", "{child:?}");
}

#[test]
fn errors_come_back_as_tracebacks_cut_at_the_first_error_line() {
    let mut python = common::interpreter(10.0);
    let syntax = python.exec("print('before')\ndef f(:\n    pass").unwrap();
    assert!(syntax.is_error());
    assert!(syntax.text.starts_with("SyntaxError: "), "{}", syntax.text);
    assert!(
        !syntax.text.contains("before"),
        "a cell that does not parse does not run"
    );

    let runtime = python.exec("print('partial output')\n1 / 0").unwrap();
    assert!(
        runtime
            .text
            .starts_with("partial output\nTraceback (most recent call last):"),
        "{}",
        runtime.text
    );
    assert!(
        runtime.text.contains("File \"<cell 2>\", line 2"),
        "{}",
        runtime.text
    );
    assert!(
        runtime.text.contains("1 / 0"),
        "the cell's source line is shown: {}",
        runtime.text
    );
    assert!(
        runtime
            .text
            .ends_with("ZeroDivisionError: division by zero")
    );
    assert!(
        !runtime.text.contains("<string>"),
        "no driver frames: {}",
        runtime.text
    );

    // The interpreter lives on after SystemExit.
    let exit = python.exec("import sys\nsys.exit(3)").unwrap();
    assert!(exit.text.contains("SystemExit: 3"), "{}", exit.text);
    assert_eq!(python.exec("2 + 2").unwrap().text, "4");
}

#[test]
fn input_and_shell_commands_are_refused_clearly() {
    let mut python = common::interpreter(10.0);
    let input = python.exec("name = input('name? ')").unwrap();
    assert!(input.is_error());
    assert!(
        input.text.contains("input() is not supported"),
        "{}",
        input.text
    );
    let stdin = python.exec("import sys\nsys.stdin.read()").unwrap();
    assert!(
        stdin.text.contains("input() is not supported"),
        "{}",
        stdin.text
    );
    let shell = python.exec("!ls -la").unwrap();
    assert!(shell.is_error());
    assert!(
        shell
            .text
            .starts_with("Shell commands (`!...`) are not supported"),
        "{}",
        shell.text
    );
    let magic = python.exec("%timeit 1 + 1").unwrap();
    assert!(magic.text.starts_with("IPython magics"), "{}", magic.text);
}

#[test]
fn long_output_is_capped_with_a_notice() {
    let mut python = common::interpreter(10.0);
    let out = python
        .exec("for i in range(2000):\n    print(f'line {i}')")
        .unwrap();
    assert!(out.text.chars().count() <= 2048, "{}", out.text.len());
    assert!(out.text.starts_with("line 0\nline 1\n"));
    assert!(
        out.text.ends_with("line 1999"),
        "the end of the output is kept"
    );
    assert!(out.text.contains("output truncated"), "{}", out.text);
    assert_eq!(
        out.output_bytes,
        (0..2000)
            .map(|i| format!("line {i}\n").len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn figures_are_saved_into_the_work_dir_or_reported_unavailable() {
    let mut python = common::interpreter(60.0);
    let Some(version) = python.info().matplotlib.clone() else {
        eprintln!("matplotlib is not installed: figures are reported unavailable");
        let out = python.exec("import matplotlib").unwrap();
        assert!(out.text.contains("ModuleNotFoundError"), "{}", out.text);
        return;
    };
    eprintln!("matplotlib {version}");
    let out = python
        .exec("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()")
        .unwrap();
    assert!(!out.is_error(), "{}", out.text);
    assert_eq!(out.figures.len(), 1, "{out:?}");
    let figure = &out.figures[0];
    assert!(figure.starts_with(python.work_dir()));
    let bytes = std::fs::read(figure).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG file");
    let name = figure.file_name().unwrap().to_str().unwrap();
    assert!(
        out.text.ends_with(&format!("![image]({name})")),
        "{}",
        out.text
    );
    // Figures are closed after being saved: the next cell reports none.
    assert!(python.exec("1").unwrap().figures.is_empty());
}

#[test]
fn the_unsandboxed_mode_runs_with_the_host_environment() {
    let mut python = common::interpreter_with(10.0, SandboxConfig::disabled());
    assert!(
        python
            .sandbox_report()
            .layers()
            .iter()
            .all(|(_, s)| *s == internlm2_agent::LayerStatus::Disabled)
    );
    let out = python
        .exec("import os\n'CARGO_MANIFEST_DIR' in os.environ")
        .unwrap();
    assert_eq!(out.text, "True");
    assert_eq!(out.status, ExecStatus::Completed);
}

#[test]
fn a_missing_python_is_a_typed_error() {
    let config = InterpreterConfig::default().with_python("python-that-does-not-exist");
    assert!(matches!(
        CodeInterpreter::start(config),
        Err(InterpreterError::PythonNotFound(_))
    ));
}

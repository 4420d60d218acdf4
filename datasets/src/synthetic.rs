//! A deterministic synthetic corpus: short stories with a fixed cast, places and objects, and
//! simple arithmetic facts, plus instruction / answer pairs over the same world. Small enough
//! to train on in minutes, structured enough that a tiny model visibly learns it: the
//! quickstart pre-trains and aligns on it, and the quantization accuracy gate measures
//! perplexity on held-out documents of it.
//!
//! ```
//! use internlm2_datasets::synthetic;
//! let docs = synthetic::generate(3, 7);
//! assert_eq!(docs, synthetic::generate(3, 7));
//! let (question, answer) = &synthetic::instructions(1, 7)[0];
//! assert!(!question.is_empty() && !answer.is_empty());
//! assert!(synthetic::degrade(answer).len() > 0);
//! ```

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 8] = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo"];
const ANIMALS: [&str; 6] = ["cat", "dog", "bird", "rabbit", "fox", "duck"];
const PLACES: [&str; 6] = ["park", "garden", "forest", "river", "beach", "farm"];
const OBJECTS: [&str; 6] = ["ball", "kite", "book", "apple", "hat", "box"];
const COLORS: [&str; 5] = ["red", "blue", "green", "yellow", "purple"];
const FEELINGS: [&str; 4] = ["happy", "sad", "tired", "excited"];

fn story(rng: &mut StdRng) -> String {
    let name = NAMES.choose(rng).expect("non-empty");
    let friend = NAMES.choose(rng).expect("non-empty");
    let animal = ANIMALS.choose(rng).expect("non-empty");
    let place = PLACES.choose(rng).expect("non-empty");
    let object = OBJECTS.choose(rng).expect("non-empty");
    let color = COLORS.choose(rng).expect("non-empty");
    let feeling = FEELINGS.choose(rng).expect("non-empty");
    match rng.random_range(0..3) {
        0 => format!(
            "Once upon a time, {name} had a {color} {object}. One day, {name} went to the {place} \
             with a little {animal}. The {animal} was {feeling}. {name} gave the {object} to the \
             {animal}, and they played together until the sun went down. The end."
        ),
        1 => format!(
            "{name} and {friend} walked to the {place}. They found a {color} {object} under a tree. \
             \"Look!\" said {friend}. A {animal} came and sat next to them. {name} felt {feeling}. \
             They took the {object} home. The end."
        ),
        _ => format!(
            "There was a {feeling} {animal} who lived near the {place}. Every morning the {animal} \
             looked for a {color} {object}. One day {name} helped the {animal} find it, and the \
             {animal} was never {feeling} again. The end."
        ),
    }
}

fn arithmetic(rng: &mut StdRng) -> String {
    let (a, b) = (rng.random_range(0..20), rng.random_range(0..20));
    match rng.random_range(0..2) {
        0 => format!("{a} plus {b} is {}.", a + b),
        _ => format!("{} minus {b} is {a}.", a + b),
    }
}

/// `n` documents, the same for the same seed.
pub fn generate(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.random_range(0..4) == 0 {
                (0..rng.random_range(3..8))
                    .map(|_| arithmetic(&mut rng))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                story(&mut rng)
            }
        })
        .collect()
}

/// A story about `name` and an `animal` at a `place` (the first template, fixed choices).
fn story_about(rng: &mut StdRng, name: &str, animal: &str) -> String {
    let place = PLACES.choose(rng).expect("non-empty");
    let object = OBJECTS.choose(rng).expect("non-empty");
    let color = COLORS.choose(rng).expect("non-empty");
    let feeling = FEELINGS.choose(rng).expect("non-empty");
    format!(
        "Once upon a time, {name} had a {color} {object}. One day, {name} went to the {place} \
         with a little {animal}. The {animal} was {feeling}. {name} gave the {object} to the \
         {animal}, and they played together until the sun went down. The end."
    )
}

/// An instruction and its ideal answer: a story request or an arithmetic question.
fn instruction(rng: &mut StdRng) -> (String, String) {
    if rng.random_range(0..3) == 0 {
        let (a, b) = (rng.random_range(0..20), rng.random_range(0..20));
        (
            format!("What is {a} plus {b}?"),
            format!("{a} plus {b} is {}.", a + b),
        )
    } else {
        let name = NAMES.choose(rng).expect("non-empty");
        let animal = ANIMALS.choose(rng).expect("non-empty");
        (
            format!("Tell me a story about {name} and a {animal}."),
            story_about(rng, name, animal),
        )
    }
}

/// `n` (instruction, answer) pairs, the same for the same seed.
pub fn instructions(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| instruction(&mut rng)).collect()
}

/// A worse answer: cut short and stuck repeating a word.
pub fn degrade(answer: &str) -> String {
    let words: Vec<&str> = answer.split(' ').collect();
    let keep = (words.len() / 2).max(1);
    let last = words[keep - 1];
    let mut out = words[..keep].join(" ");
    for _ in 0..6 {
        out.push(' ');
        out.push_str(last);
    }
    out
}

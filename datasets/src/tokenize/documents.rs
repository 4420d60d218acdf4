//! The documents a pre-training run reads: token shards written by [`pack_documents`]
//! (already tokenised, in shard order every epoch), or text — JSONL/Parquet shards with a
//! `text` field, or plain text with documents separated by a blank line — tokenised in memory
//! and shuffled per epoch.
//!
//! [`pack_documents`]: super::pack_documents

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use internlm2::Tokenizer;
use internlm2::data::{DocumentSource, InMemoryDocuments};

use super::TokenShards;
use crate::error::IoContext;
use crate::io::{list_shards, read_documents};
use crate::{DataError, Result};

/// Training documents: tokenised in memory or token shards on disk.
#[derive(Debug)]
pub enum TrainingDocuments {
    /// Tokenised text.
    Memory(InMemoryDocuments),
    /// Token shards.
    Shards(TokenShards),
}

/// What [`TrainingDocuments::open`] found.
#[derive(Debug)]
pub struct OpenedDocuments {
    /// The documents.
    pub documents: TrainingDocuments,
    /// Ids of the vocabulary they were tokenised with.
    pub vocab_size: usize,
    /// The document separator, when the tokenizer has one.
    pub eos_id: Option<u32>,
    /// Documents.
    pub count: usize,
    /// Tokens.
    pub tokens: u64,
}

impl TrainingDocuments {
    /// Opens `path`: a directory of token shards as they are; otherwise text read with
    /// [`read_texts`] and encoded with `tokenizer` (an error when none is given), shuffled per
    /// epoch with `seed`.
    pub fn open(path: &Path, tokenizer: Option<&Tokenizer>, seed: u64) -> Result<OpenedDocuments> {
        if path.is_dir()
            && let Ok(shards) = TokenShards::open(path)
        {
            let vocab = shards.vocab();
            return Ok(OpenedDocuments {
                vocab_size: vocab.vocab_size,
                eos_id: vocab.eos_id,
                count: shards.documents() as usize,
                tokens: shards.tokens(),
                documents: TrainingDocuments::Shards(shards),
            });
        }
        let tokenizer = tokenizer.ok_or_else(|| {
            DataError::config(format!(
                "{}: text needs a tokenizer (token shards do not)",
                path.display()
            ))
        })?;
        let documents: Vec<Vec<u32>> = read_texts(path)?
            .iter()
            .map(|t| tokenizer.encode(t, false))
            .collect::<std::result::Result<_, _>>()?;
        Ok(OpenedDocuments {
            vocab_size: tokenizer.vocab_size(),
            eos_id: tokenizer.eos_id(),
            count: documents.len(),
            tokens: documents.iter().map(|d| d.len() as u64).sum(),
            documents: TrainingDocuments::Memory(InMemoryDocuments::new(documents).shuffled(seed)),
        })
    }
}

/// Where a training run's tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    /// A `tokenizer.json` / `tokenizer.model` file, or a model directory holding one.
    Path(PathBuf),
    /// A byte-level BPE of this many ids, trained on the run's texts.
    TrainBpe(usize),
    /// None: the data is token shards, which carry their ids.
    None,
}

impl TokenizerSource {
    /// The first that is given: a tokenizer path, a BPE vocabulary to train, the directory of
    /// the model the run continues from.
    pub fn first_of(
        path: Option<&Path>,
        train_bpe: Option<usize>,
        model_dir: Option<&Path>,
    ) -> Self {
        match (path, train_bpe, model_dir) {
            (Some(path), _, _) => Self::Path(path.to_path_buf()),
            (None, Some(vocab), _) => Self::TrainBpe(vocab),
            (None, None, Some(dir)) => Self::Path(dir.to_path_buf()),
            (None, None, None) => Self::None,
        }
    }

    /// Loads (or trains on the texts of `data`, see [`read_texts`]) the tokenizer.
    ///
    /// ```
    /// use internlm2_datasets::tokenize::TokenizerSource;
    /// let dir = tempfile::tempdir().unwrap();
    /// let data = dir.path().join("corpus.txt");
    /// std::fs::write(&data, "the cat sat\n\nthe dog ran").unwrap();
    /// let trained = TokenizerSource::TrainBpe(300).load(&data).unwrap().unwrap();
    /// assert!(trained.vocab_size() <= 300);
    /// assert!(TokenizerSource::None.load(&data).unwrap().is_none());
    /// ```
    pub fn load(&self, data: &Path) -> Result<Option<Tokenizer>> {
        Ok(match self {
            Self::Path(path) if path.is_dir() => Some(Tokenizer::from_dir(path)?),
            Self::Path(path) => Some(Tokenizer::from_file(path)?),
            Self::TrainBpe(vocab) => Some(Tokenizer::train_bpe(read_texts(data)?.iter(), *vocab)?),
            Self::None => None,
        })
    }
}

/// The texts of `path`: the `text` field of every record of its JSONL/Parquet shards (a file
/// or a directory of them), or else the file as plain text with documents separated by a blank
/// line. No document at all is a [`DataError::Config`].
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let texts: Vec<String> = match list_shards(path) {
        Ok(files) if !files.is_empty() => {
            let mut texts = Vec::new();
            for file in files {
                for doc in read_documents(&file)? {
                    texts.push(doc?.text);
                }
            }
            texts
        }
        _ => std::fs::read_to_string(path)
            .at(path)?
            .split("\n\n")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if texts.is_empty() {
        return Err(DataError::config(format!(
            "{}: no documents",
            path.display()
        )));
    }
    Ok(texts)
}

impl DocumentSource for TrainingDocuments {
    fn len(&self) -> usize {
        match self {
            TrainingDocuments::Memory(d) => d.len(),
            TrainingDocuments::Shards(d) => DocumentSource::len(d),
        }
    }

    fn document(&self, epoch: u64, index: usize) -> Cow<'_, [u32]> {
        match self {
            TrainingDocuments::Memory(d) => d.document(epoch, index),
            TrainingDocuments::Shards(d) => d.document(epoch, index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_splits_at_blank_lines_and_needs_a_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, "one doc\n\n\n second doc \n\n").unwrap();
        assert_eq!(read_texts(&path).unwrap(), vec!["one doc", "second doc"]);
        assert!(matches!(
            TrainingDocuments::open(&path, None, 0),
            Err(DataError::Config { .. })
        ));
        let tok = Tokenizer::train_bpe(["one doc", "second doc"].iter(), 270).unwrap();
        let opened = TrainingDocuments::open(&path, Some(&tok), 0).unwrap();
        assert_eq!((opened.count, opened.documents.len()), (2, 2));
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read_texts(&path).is_err());
    }
}

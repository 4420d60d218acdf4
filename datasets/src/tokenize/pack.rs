//! Tokenising documents in parallel (order kept) and packing them into a shard.

use std::path::Path;

use internlm2::Tokenizer;
use rayon::prelude::*;

use super::{PackConfig, PackStats, ShardWriter, VocabInfo, finished_shard};
use crate::{Document, Result};

/// Tokenises `docs` and writes them as shard `name` of `out_dir`; the unit of work of the
/// pipeline's tokenise stage (one call per input shard).
///
/// Documents are encoded [`PackConfig::chunk_documents`] at a time on the rayon pool, in
/// order, with `<s>` when [`PackConfig::add_bos`]; documents with empty text are counted and
/// skipped. When shard `name` is already complete with the same settings (see
/// [`finished_shard`]) nothing is read or written and the stored statistics come back with
/// [`PackStats::resumed`] set.
///
/// ```
/// use internlm2::Tokenizer;
/// use internlm2_datasets::Document;
/// use internlm2_datasets::tokenize::{PackConfig, pack_documents};
/// let tok = Tokenizer::train_bpe(["a b c", "a b"].iter(), 280).unwrap();
/// let dir = tempfile::tempdir().unwrap();
/// let config = PackConfig::default().with_seq_len(16);
/// let docs = || vec![Document::new("a b c"), Document::new("")];
/// let first = pack_documents(&tok, docs(), &config, dir.path(), "shard").unwrap();
/// assert_eq!((first.documents, first.empty_documents, first.resumed), (1, 1, false));
/// let again = pack_documents(&tok, docs(), &config, dir.path(), "shard").unwrap();
/// assert!(again.resumed);
/// ```
pub fn pack_documents(
    tokenizer: &Tokenizer,
    docs: impl IntoIterator<Item = Document>,
    config: &PackConfig,
    out_dir: impl AsRef<Path>,
    name: &str,
) -> Result<PackStats> {
    try_pack_documents(tokenizer, docs.into_iter().map(Ok), config, out_dir, name)
}

/// [`pack_documents`] over fallible documents (a reader's iterator): the first error stops
/// packing and is returned; the shard is then left without an index.
pub fn try_pack_documents(
    tokenizer: &Tokenizer,
    docs: impl IntoIterator<Item = Result<Document>>,
    config: &PackConfig,
    out_dir: impl AsRef<Path>,
    name: &str,
) -> Result<PackStats> {
    let out_dir = out_dir.as_ref();
    let vocab = VocabInfo::of(tokenizer);
    config.validate(&vocab)?;
    if let Some(stats) = finished_shard(out_dir, name, config, &vocab)? {
        log::info!("{name}: already packed, skipped");
        return Ok(stats);
    }
    let mut writer = ShardWriter::create(out_dir, name, config, vocab)?;
    let mut docs = docs.into_iter();
    let mut chunk: Vec<Document> = Vec::with_capacity(config.chunk_documents);
    loop {
        chunk.clear();
        for doc in docs.by_ref().take(config.chunk_documents) {
            chunk.push(doc?);
        }
        if chunk.is_empty() {
            break;
        }
        let encoded: Vec<Vec<u32>> = chunk
            .par_iter()
            .map(|doc| {
                if doc.text.is_empty() {
                    Ok(Vec::new())
                } else {
                    tokenizer.encode(&doc.text, config.add_bos)
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        for tokens in &encoded {
            writer.push_document(tokens)?;
        }
    }
    writer.finish()
}

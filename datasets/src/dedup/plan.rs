//! The merge step (signature files -> [`DedupPlan`]), plan files, and the [`DedupFilter`]
//! stage that applies a plan to a shard.
//!
//! **Cluster resolution.** Documents are joined (union-find) when their exact hashes are equal
//! (`exact`) and when LSH finds them as a candidate pair whose signature-estimated Jaccard is
//! at least the threshold (`fuzzy`, see [`lsh`](super::lsh)). In every cluster of two or more
//! documents one survives: the one with the highest priority
//! ([`DedupConfig::priority_field`], a missing value ranks below every value); among equal
//! priorities the smallest id (byte-wise) survives, so the result does not depend on how the
//! corpus is split into shards or ordered. Every other member is removed, as
//! [`DupKind::Exact`] when its exact hash equals the survivor's and [`DupKind::Near`]
//! otherwise.
//!
//! **Memory of the merge**: the signature files are memory-mapped; besides them the merge holds
//! about 40 bytes per document (and 16 bytes per document of one band at a time).
//!
//! Plan file layout (little-endian): a 64-byte header (magic `IL2DDPLN`, version `u32`, shard
//! count `u32`, fingerprint `u64`, documents, clusters, exact removed, near removed and entry
//! count as `u64`), the entries sorted by (shard, id) as `kind: u8` (1 exact, 2 near),
//! `shard: u32`, `id_len: u32`, id bytes, then an xxh3-64 checksum of the entries.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::DedupConfig;
use super::lsh::link_near_duplicates;
use super::signatures::{SignatureFile, SignatureRecord};
use super::union_find::UnionFind;
use crate::error::IoContext;
use crate::{DataError, Document, Result, Stage, Verdict};

const MAGIC: &[u8; 8] = b"IL2DDPLN";
const VERSION: u32 = 1;
const HEADER: usize = 64;

/// Why a document is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DupKind {
    /// Same exact hash as the copy that survives.
    Exact,
    /// In the cluster of a near-duplicate (MinHash-LSH) that survives.
    Near,
}

impl DupKind {
    /// The drop reason used by [`DedupFilter`]: `exact_duplicate` or `near_duplicate`.
    pub fn reason(self) -> &'static str {
        match self {
            DupKind::Exact => "exact_duplicate",
            DupKind::Near => "near_duplicate",
        }
    }

    fn code(self) -> u8 {
        match self {
            DupKind::Exact => 1,
            DupKind::Near => 2,
        }
    }
}

/// Counts of a merge. `docs == kept() + exact_removed + near_removed`, and every cluster
/// keeps exactly one document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    /// Documents in all signature files.
    pub docs: u64,
    /// Clusters of two or more documents.
    pub clusters: u64,
    /// Documents removed as exact duplicates.
    pub exact_removed: u64,
    /// Documents removed as near-duplicates.
    pub near_removed: u64,
}

impl DedupStats {
    /// Documents removed.
    pub fn removed(&self) -> u64 {
        self.exact_removed + self.near_removed
    }

    /// Documents kept.
    pub fn kept(&self) -> u64 {
        self.docs - self.removed()
    }
}

/// The decision of a merge: which document ids to remove, and why.
///
/// A plan made by [`merge_signatures`] covers all shards; [`DedupPlan::for_shard`] cuts the
/// part a filter job of one shard needs (the shard index is the position of its signature file
/// in the merge's list).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DedupPlan {
    fingerprint: u64,
    shards: u32,
    stats: DedupStats,
    removed: HashMap<String, (DupKind, u32)>,
}

impl DedupPlan {
    /// Whether the document `id` is removed, and why.
    pub fn is_removed(&self, id: &str) -> Option<DupKind> {
        self.removed.get(id).map(|&(kind, _)| kind)
    }

    /// Counts of the merge (of the whole corpus, also for a [`for_shard`](Self::for_shard) plan).
    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Number of shards (signature files) merged.
    pub fn shards(&self) -> usize {
        self.shards as usize
    }

    /// Number of removal entries in this plan.
    pub fn len(&self) -> usize {
        self.removed.len()
    }

    /// Whether this plan removes nothing.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
    }

    /// The removed ids with their kind, sorted by id.
    pub fn removed(&self) -> Vec<(&str, DupKind)> {
        let mut v: Vec<_> = self
            .removed
            .iter()
            .map(|(id, &(kind, _))| (id.as_str(), kind))
            .collect();
        v.sort_unstable();
        v
    }

    /// The removals of shard `shard` only (same stats and fingerprint): what the filter job of
    /// that shard loads.
    pub fn for_shard(&self, shard: usize) -> DedupPlan {
        DedupPlan {
            fingerprint: self.fingerprint,
            shards: self.shards,
            stats: self.stats,
            removed: self
                .removed
                .iter()
                .filter(|&(_, &(_, s))| s as usize == shard)
                .map(|(id, &v)| (id.clone(), v))
                .collect(),
        }
    }

    /// Write the plan to `path` (via `<path>.tmp` and a rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut entries: Vec<_> = self.removed.iter().collect();
        entries.sort_unstable_by(|a, b| (a.1.1, a.0).cmp(&(b.1.1, b.0)));
        let mut body = Vec::new();
        for (id, &(kind, shard)) in entries {
            let id_len = u32::try_from(id.len())
                .map_err(|_| DataError::config(format!("dedup: id of {} bytes", id.len())))?;
            body.push(kind.code());
            body.extend_from_slice(&shard.to_le_bytes());
            body.extend_from_slice(&id_len.to_le_bytes());
            body.extend_from_slice(id.as_bytes());
        }
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&self.shards.to_le_bytes());
        header.extend_from_slice(&self.fingerprint.to_le_bytes());
        let s = &self.stats;
        for v in [s.docs, s.clusters, s.exact_removed, s.near_removed] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&(self.removed.len() as u64).to_le_bytes());
        debug_assert_eq!(header.len(), HEADER);
        let mut out = BufWriter::new(File::create(&tmp).at(&tmp)?);
        out.write_all(&header).at(&tmp)?;
        out.write_all(&body).at(&tmp)?;
        out.write_all(&xxh3_64(&body).to_le_bytes()).at(&tmp)?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .at(&tmp)?
            .sync_all()
            .at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)
    }

    /// Read a plan written by [`save`](Self::save); [`DataError::Corrupt`] when it is not one.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let corrupt = |message: String| DataError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let b = std::fs::read(path).at(path)?;
        if b.len() < HEADER + 8 {
            return Err(corrupt(format!(
                "{} bytes, too short for a dedup plan",
                b.len()
            )));
        }
        if &b[0..8] != MAGIC {
            return Err(corrupt("not a dedup plan (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(corrupt(format!(
                "plan format version {version}, this build reads {VERSION}"
            )));
        }
        let body = &b[HEADER..b.len() - 8];
        if xxh3_64(body) != u64_at(b.len() - 8) {
            return Err(corrupt("checksum mismatch (truncated or damaged)".into()));
        }
        let stats = DedupStats {
            docs: u64_at(24),
            clusters: u64_at(32),
            exact_removed: u64_at(40),
            near_removed: u64_at(48),
        };
        let entries = u64_at(56);
        if entries > stats.removed() || stats.removed() > stats.docs {
            return Err(corrupt("inconsistent counts".into()));
        }
        let mut removed = HashMap::with_capacity(entries as usize);
        let mut at = 0;
        while at < body.len() {
            let n = removed.len();
            let bad = || corrupt(format!("entry {n} is malformed"));
            if body.len() - at < 9 {
                return Err(bad());
            }
            let kind = match body[at] {
                1 => DupKind::Exact,
                2 => DupKind::Near,
                _ => return Err(bad()),
            };
            let shard = u32::from_le_bytes(body[at + 1..at + 5].try_into().expect("4 bytes"));
            let len =
                u32::from_le_bytes(body[at + 5..at + 9].try_into().expect("4 bytes")) as usize;
            let end = at + 9 + len;
            if end > body.len() {
                return Err(bad());
            }
            let id = std::str::from_utf8(&body[at + 9..end]).map_err(|_| bad())?;
            if removed.insert(id.to_string(), (kind, shard)).is_some() {
                return Err(bad());
            }
            at = end;
        }
        if removed.len() as u64 != entries {
            return Err(corrupt(format!(
                "header announces {entries} entries, the file holds {}",
                removed.len()
            )));
        }
        Ok(Self {
            fingerprint: u64_at(16),
            shards: u32_at(12),
            stats,
            removed,
        })
    }
}

/// Whether `a` should survive rather than `b`: higher priority (missing = lowest), then the
/// smaller id.
fn outranks(a: &SignatureRecord<'_>, b: &SignatureRecord<'_>) -> bool {
    match (a.priority, b.priority) {
        (Some(x), Some(y)) if x != y => x > y,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        _ => a.id < b.id,
    }
}

/// Merge the signature files of all shards (in shard order) into a [`DedupPlan`].
///
/// Every file must have been written with the same signature configuration as `cfg`
/// ([`DedupConfig::fingerprint`]); otherwise [`DataError::Corrupt`] names the file. Ids must
/// be unique across the corpus.
pub fn merge_signatures(cfg: &DedupConfig, files: &[PathBuf]) -> Result<DedupPlan> {
    cfg.validate()?;
    let opened: Vec<SignatureFile> = files
        .par_iter()
        .map(SignatureFile::open)
        .collect::<Result<_>>()?;
    let fingerprint = cfg.fingerprint();
    for f in &opened {
        if f.fingerprint() != fingerprint || f.num_perm() != cfg.num_perm {
            return Err(DataError::Corrupt {
                path: f.path().to_path_buf(),
                message: "written with another dedup configuration (num_perm, ngram, seed, \
                          code_aware or priority_field differ)"
                    .into(),
            });
        }
    }
    let shards = u32::try_from(opened.len())
        .map_err(|_| DataError::config("dedup: more than 2^32 signature files"))?;
    let mut starts = Vec::with_capacity(opened.len() + 1);
    let mut total = 0usize;
    for f in &opened {
        starts.push(total);
        total += f.len();
    }
    starts.push(total);
    if total >= u32::MAX as usize {
        return Err(DataError::config(format!(
            "dedup: {total} documents in one merge; at most 2^32 - 1 are supported"
        )));
    }
    // Global document g lives in file `locate(g).0` at index `locate(g).1`.
    let locate = |g: u32| {
        let f = starts.partition_point(|&s| s <= g as usize) - 1;
        (f, g as usize - starts[f])
    };
    let record = |g: u32| {
        let (f, i) = locate(g);
        opened[f].record(i)
    };

    let mut uf = UnionFind::new(total);
    if cfg.exact {
        let mut exact: Vec<(u128, u32)> = Vec::with_capacity(total);
        for (f, file) in opened.iter().enumerate() {
            exact.extend(
                file.records()
                    .enumerate()
                    .map(|(i, r)| (r.exact, (starts[f] + i) as u32)),
            );
        }
        exact.par_sort_unstable();
        for w in exact.windows(2) {
            if w[0].0 == w[1].0 {
                uf.union(w[0].1, w[1].1);
            }
        }
    }
    if cfg.fuzzy {
        let sigs: Vec<Option<&[u8]>> = opened
            .iter()
            .flat_map(|f| f.records().map(|r| r.raw_signature()))
            .collect();
        link_near_duplicates(&sigs, cfg.bands, cfg.rows, cfg.threshold, &mut uf);
    }

    // The survivor of every cluster.
    let mut best = vec![u32::MAX; total];
    for g in 0..total as u32 {
        let root = uf.find(g) as usize;
        if best[root] == u32::MAX || outranks(&record(g), &record(best[root])) {
            best[root] = g;
        }
    }
    let mut stats = DedupStats {
        docs: total as u64,
        ..DedupStats::default()
    };
    let mut removed = HashMap::new();
    for g in 0..total as u32 {
        let root = uf.find(g);
        if uf.set_size(root) < 2 {
            continue;
        }
        let keeper = best[root as usize];
        if keeper == g {
            stats.clusters += 1;
            continue;
        }
        let (rec, kept) = (record(g), record(keeper));
        let kind = if cfg.exact && rec.exact == kept.exact {
            stats.exact_removed += 1;
            DupKind::Exact
        } else {
            stats.near_removed += 1;
            DupKind::Near
        };
        removed.insert(rec.id.to_string(), (kind, locate(g).0 as u32));
    }
    Ok(DedupPlan {
        fingerprint,
        shards,
        stats,
        removed,
    })
}

/// A [`Stage`] that drops the documents a [`DedupPlan`] removes, with the reason
/// `exact_duplicate` or `near_duplicate`; documents the plan does not name pass.
#[derive(Debug, Clone)]
pub struct DedupFilter {
    plan: Arc<DedupPlan>,
}

impl DedupFilter {
    /// A filter applying `plan`.
    pub fn new(plan: Arc<DedupPlan>) -> Self {
        Self { plan }
    }

    /// The plan.
    pub fn plan(&self) -> &DedupPlan {
        &self.plan
    }
}

impl Stage for DedupFilter {
    fn name(&self) -> &str {
        "dedup"
    }

    fn apply(&self, doc: Document) -> Verdict {
        match self.plan.is_removed(&doc.id) {
            Some(kind) => Verdict::drop(doc, kind.reason()),
            None => Verdict::Keep(doc),
        }
    }
}

//! Parquet through arrow-rs: documents as rows, read one record batch at a time.
//!
//! Written files have the columns `id` (utf8), `text` (large utf8), `source`, `language`
//! (utf8, nullable), `timestamp` (int64, nullable) and `metadata` (utf8 JSON object, nullable).
//! Reading accepts any file with a `text` column: `id`, `source` (or `url`), `language` and
//! `timestamp` are used when present; a `metadata` JSON column is merged into
//! [`Document::metadata`], and every other string, integer, float or boolean column becomes a
//! metadata field of its own (so HuggingFace-style Parquet shards load as they are).

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

use super::tmp_path;
use crate::error::IoContext;
use crate::{DataError, Document, Result};

const BATCH: usize = 1024;

fn pq_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Streams documents out of a Parquet file.
pub struct ParquetReader {
    path: PathBuf,
    batches: ParquetRecordBatchReader,
    pending: VecDeque<Document>,
    /// A corrupt page ended the stream (the arrow reader repeats its error).
    failed: bool,
}

impl ParquetReader {
    /// Open `path`; fails when it is not Parquet or has no `text` column.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
        check_column_chunks(builder.metadata(), file_len).map_err(|e| pq_err(path, e))?;
        if builder.schema().field_with_name("text").is_err() {
            return Err(pq_err(path, "no `text` column"));
        }
        let batches = builder
            .with_batch_size(BATCH)
            .build()
            .map_err(|e| pq_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            batches,
            pending: VecDeque::new(),
            failed: false,
        })
    }

    fn decode(&self, batch: &RecordBatch) -> Result<Vec<Document>> {
        let rows = batch.num_rows();
        let mut docs = vec![Document::default(); rows];
        let schema = batch.schema();
        let mut have_source = false;
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let name = field.name().as_str();
            match name {
                "text" | "id" | "source" | "language" => {
                    let values = strings(column).ok_or_else(|| {
                        pq_err(&self.path, format!("`{name}` is not a string column"))
                    })?;
                    for (doc, v) in docs.iter_mut().zip(values) {
                        match name {
                            "text" => doc.text = v.unwrap_or_default(),
                            "id" => doc.id = v.unwrap_or_default(),
                            "source" => doc.source = v,
                            _ => doc.language = v,
                        }
                    }
                    have_source |= name == "source";
                }
                "timestamp" => {
                    let values = integers(column).ok_or_else(|| {
                        pq_err(&self.path, "`timestamp` is not an integer column")
                    })?;
                    for (doc, v) in docs.iter_mut().zip(values) {
                        doc.timestamp = v;
                    }
                }
                "metadata" => {
                    let values = strings(column)
                        .ok_or_else(|| pq_err(&self.path, "`metadata` is not a string column"))?;
                    for (row, (doc, v)) in docs.iter_mut().zip(values).enumerate() {
                        let Some(v) = v else { continue };
                        let map: Map<String, Value> = serde_json::from_str(&v).map_err(|e| {
                            pq_err(
                                &self.path,
                                format!("row {row}: metadata is not a JSON object: {e}"),
                            )
                        })?;
                        doc.metadata.extend(map);
                    }
                }
                _ => {
                    for (doc, v) in docs.iter_mut().zip(json_values(column)) {
                        if let Some(v) = v {
                            doc.metadata.insert(name.to_string(), v);
                        }
                    }
                }
            }
        }
        if !have_source {
            for doc in &mut docs {
                if let Some(Value::String(url)) = doc.metadata.remove("url") {
                    doc.source = Some(url);
                }
            }
        }
        Ok(docs)
    }
}

/// Checks what arrow-rs asserts instead of checking (a panic): every column chunk's start
/// and length are non-negative and lie inside the file.
fn check_column_chunks(
    metadata: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> std::result::Result<(), String> {
    for (r, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let len = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(format!(
                    "row group {r}, column {c}: chunk at {start} of {len} bytes lies outside the \
                     {file_len}-byte file"
                ));
            }
        }
    }
    Ok(())
}

fn strings(column: &ArrayRef) -> Option<Vec<Option<String>>> {
    let collect =
        |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|v| v.map(str::to_string)).collect();
    Some(match column.data_type() {
        DataType::Utf8 => collect(&mut column.as_string::<i32>().iter()),
        DataType::LargeUtf8 => collect(&mut column.as_string::<i64>().iter()),
        DataType::Utf8View => collect(&mut column.as_string_view().iter()),
        _ => return None,
    })
}

fn integers(column: &ArrayRef) -> Option<Vec<Option<i64>>> {
    Some(match column.data_type() {
        DataType::Int64 => column.as_primitive::<Int64Type>().iter().collect(),
        DataType::Int32 => column
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::UInt32 => column
            .as_primitive::<UInt32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        _ => return None,
    })
}

/// Scalar columns as JSON values; unsupported types give `None` for every row.
fn json_values(column: &ArrayRef) -> Vec<Option<Value>> {
    if let Some(s) = strings(column) {
        return s.into_iter().map(|v| v.map(Value::String)).collect();
    }
    if let Some(i) = integers(column) {
        return i.into_iter().map(|v| v.map(Value::from)).collect();
    }
    match column.data_type() {
        DataType::UInt64 => column
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(Value::from))
            .collect(),
        DataType::Float64 => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map(Value::from))
            .collect(),
        DataType::Float32 => column
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(|x| Value::from(x as f64)))
            .collect(),
        DataType::Boolean => column
            .as_boolean()
            .iter()
            .map(|v| v.map(Value::Bool))
            .collect(),
        _ => vec![None; column.len()],
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            if self.failed {
                return None;
            }
            // arrow-rs trusts some lengths inside pages (a corrupt definition-level run
            // indexes out of bounds): as a last resort, a panic there ends the stream with a
            // typed error. The reader is dropped from use right after.
            let next =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.batches.next()));
            let Ok(next) = next else {
                self.failed = true;
                return Some(Err(pq_err(
                    &self.path,
                    "corrupt page (the Parquet decoder panicked)",
                )));
            };
            match next? {
                Ok(batch) => match self.decode(&batch) {
                    Ok(docs) => self.pending.extend(docs),
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => {
                    self.failed = true;
                    return Some(Err(pq_err(&self.path, e)));
                }
            }
        }
        self.pending.pop_front().map(Ok)
    }
}

/// Writes documents to Parquet (zstd-compressed), `BATCH` rows per record batch.
pub struct ParquetWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    buffer: Vec<Document>,
    count: u64,
}

impl ParquetWriter {
    /// Create the file.
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = tmp_path(path);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::LargeUtf8, false),
            Field::new("source", DataType::Utf8, true),
            Field::new("language", DataType::Utf8, true),
            Field::new("timestamp", DataType::Int64, true),
            Field::new("metadata", DataType::Utf8, true),
        ]));
        let file = File::create(&tmp).at(&tmp)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pq_err(&tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer,
            schema,
            buffer: Vec::with_capacity(BATCH),
            count: 0,
        })
    }

    /// Append one document.
    pub fn write(&mut self, doc: &Document) -> Result<()> {
        self.buffer.push(doc.clone());
        self.count += 1;
        if self.buffer.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Documents written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let docs = std::mem::take(&mut self.buffer);
        let metadata: Vec<Option<String>> = docs
            .iter()
            .map(|d| {
                (!d.metadata.is_empty())
                    .then(|| serde_json::to_string(&d.metadata).unwrap_or_default())
            })
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.id.as_str()),
            )),
            Arc::new(LargeStringArray::from_iter_values(
                docs.iter().map(|d| d.text.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                docs.iter().map(|d| d.source.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                docs.iter().map(|d| d.language.as_deref()),
            )),
            Arc::new(Int64Array::from_iter(docs.iter().map(|d| d.timestamp))),
            Arc::new(StringArray::from_iter(
                metadata.iter().map(Option::as_deref),
            )),
        ];
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| pq_err(&self.tmp, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| pq_err(&self.tmp, e))?;
        Ok(())
    }

    /// Write the footer and rename into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.flush()?;
        self.writer.close().map_err(|e| pq_err(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).at(&self.path)?;
        Ok(self.path)
    }
}

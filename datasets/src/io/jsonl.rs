//! JSONL: one JSON [`Document`] per line, plain, gzip or zstd compressed, streamed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Compression, tmp_path};
use crate::error::IoContext;
use crate::{DataError, Document, Result};

/// Longest JSONL line read by default, in bytes: a longer line (say, a decompression bomb
/// without newlines) is a [`DataError::BadRecord`] read in bounded memory, then skipped.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// Streams documents out of a JSONL file, one line at a time (blank lines are skipped).
pub struct JsonlReader {
    path: PathBuf,
    lines: BufReader<Box<dyn Read + Send>>,
    line_no: u64,
    buf: Vec<u8>,
    max_line: usize,
    /// An I/O or decompression error ended the stream: a corrupt gzip or zstd stream
    /// repeats its error on every read, so nothing follows it.
    failed: bool,
}

impl JsonlReader {
    /// Open `path` with the given compression.
    pub fn open(path: &Path, compression: Compression) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let inner: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
            Compression::Zstd => Box::new(zstd::Decoder::new(file).at(path)?),
        };
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::with_capacity(1 << 20, inner),
            line_no: 0,
            buf: Vec::new(),
            max_line: MAX_LINE_BYTES,
            failed: false,
        })
    }

    /// Sets the longest line accepted, in bytes ([`MAX_LINE_BYTES`] by default).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line = max;
        self
    }
}

impl Iterator for JsonlReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            self.buf.clear();
            self.line_no += 1;
            let limit = self.max_line.saturating_add(1) as u64;
            // Bytes, not `read_line`: a decoder's `InvalidData` error must not pass for a
            // line that is not UTF-8 (and be retried forever).
            let read = (&mut self.lines)
                .take(limit)
                .read_until(b'\n', &mut self.buf);
            match read {
                Ok(0) => return None,
                Ok(n) if n as u64 == limit && self.buf.last() != Some(&b'\n') => {
                    self.buf = Vec::new();
                    // Drop the rest of the line without holding it.
                    if let Err(source) = self.lines.skip_until(b'\n') {
                        return Some(Err(self.io_error(source)));
                    }
                    return Some(Err(DataError::BadRecord {
                        path: self.path.clone(),
                        line: self.line_no,
                        message: format!("longer than {} bytes", self.max_line),
                    }));
                }
                Ok(_) => {}
                Err(source) => return Some(Err(self.io_error(source))),
            }
            let Ok(line) = std::str::from_utf8(&self.buf) else {
                return Some(Err(DataError::BadRecord {
                    path: self.path.clone(),
                    line: self.line_no,
                    message: "not valid UTF-8".into(),
                }));
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(line).map_err(|e| DataError::BadRecord {
                    path: self.path.clone(),
                    line: self.line_no,
                    message: e.to_string(),
                }),
            );
        }
    }
}

impl JsonlReader {
    /// The error that ends the stream.
    fn io_error(&mut self, source: std::io::Error) -> DataError {
        self.failed = true;
        DataError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

/// Writes documents as JSONL to `<path>.tmp`, renamed to `path` by [`finish`](Self::finish).
pub struct JsonlWriter {
    path: PathBuf,
    tmp: PathBuf,
    sink: Sink,
    count: u64,
    line: Vec<u8>,
}

impl JsonlWriter {
    /// Create the file with the given compression.
    pub fn create(path: &Path, compression: Compression) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp).at(&tmp)?);
        let sink = match compression {
            Compression::None => Sink::Plain(file),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Sink::Zstd(zstd::Encoder::new(file, 3).at(&tmp)?),
        };
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            sink,
            count: 0,
            line: Vec::new(),
        })
    }

    /// Append one document.
    pub fn write(&mut self, doc: &Document) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, doc).map_err(|e| DataError::BadRecord {
            path: self.path.clone(),
            line: self.count + 1,
            message: e.to_string(),
        })?;
        self.line.push(b'\n');
        let result = match &mut self.sink {
            Sink::Plain(w) => w.write_all(&self.line),
            Sink::Gzip(w) => w.write_all(&self.line),
            Sink::Zstd(w) => w.write_all(&self.line),
        };
        result.at(&self.tmp)?;
        self.count += 1;
        Ok(())
    }

    /// Documents written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finish the compressed stream, flush, and rename into place.
    pub fn finish(self) -> Result<PathBuf> {
        let file = match self.sink {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w.finish().at(&self.tmp)?,
            Sink::Zstd(w) => w.finish().at(&self.tmp)?,
        };
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.tmp)?;
        file.sync_all().at(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).at(&self.path)?;
        Ok(self.path)
    }
}

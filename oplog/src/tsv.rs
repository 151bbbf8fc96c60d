//! Writing and reading the lines of a log (the format is in the crate docs).
//!
//! The reader follows Go's `encoding/csv` with a tab separator, the reader
//! warp uses: `#` lines are comments, empty lines are skipped, a field that
//! starts with `"` is quoted (it may hold tabs and newlines; `""` is one
//! `"`), and a `"` inside an unquoted field is an error. Columns are found
//! by their header names, so files of warp itself (with or without `cat`,
//! without our range columns) read too.

use std::borrow::Cow;
use std::fmt::Write;
use std::io::BufRead;

use crate::{Record, time};

/// The header line: warp's columns, then ours.
pub const HEADER: &str = "idx\tthread\top\tclient_id\tn_objects\tbytes\tendpoint\tfile\terror\tstart\tfirst_byte\tend\tduration_ns\tcat\trange_offset\trange_length\n";

/// Appends `record` as line `idx`, newline included.
pub fn write_record(out: &mut String, idx: u64, r: &Record) {
    let _ = write!(out, "{idx}\t{}\t", r.thread);
    push_field(out, &r.op);
    out.push('\t');
    push_field(out, &r.client_id);
    let _ = write!(out, "\t{}\t{}\t", r.n_objects, r.bytes);
    push_field(out, &r.endpoint);
    out.push('\t');
    push_field(out, &r.file);
    out.push('\t');
    push_field(out, &one_line(&r.error));
    out.push('\t');
    time::format(r.start, out);
    out.push('\t');
    if let Some(t) = r.first_byte {
        time::format(t, out);
    }
    out.push('\t');
    time::format(r.end, out);
    let _ = write!(out, "\t{}\t0\t", r.duration().as_nanos());
    if let Some(offset) = r.range_offset {
        let _ = write!(out, "{offset}");
    }
    out.push('\t');
    if let Some(length) = r.range_length {
        let _ = write!(out, "{length}");
    }
    out.push('\n');
}

/// Tabs, carriage returns and newlines as spaces: an error text on one line.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains(['\t', '\r', '\n']) {
        Cow::Owned(text.replace(['\t', '\r', '\n'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// Appends `field`, quoted if Go's reader needs it to be.
fn push_field(out: &mut String, field: &str) {
    if !field.contains(['\t', '\r', '\n', '"']) {
        out.push_str(field);
        return;
    }
    out.push('"');
    out.push_str(&field.replace('"', "\"\""));
    out.push('"');
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Reading (or decompressing) failed.
    #[error("read failed after line {line}")]
    Io {
        /// The last line read whole.
        line: u64,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a record of the format.
    #[error("line {line}: {message}")]
    Bad {
        /// Its number, from 1.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Where each column is, by name.
#[derive(Debug, Clone)]
struct Columns {
    thread: usize,
    op: usize,
    client_id: Option<usize>,
    n_objects: Option<usize>,
    bytes: usize,
    endpoint: Option<usize>,
    file: usize,
    error: usize,
    start: usize,
    first_byte: Option<usize>,
    end: usize,
    range_offset: Option<usize>,
    range_length: Option<usize>,
}

impl Columns {
    fn of(header: &[String]) -> Result<Columns, String> {
        let find = |name: &str| header.iter().position(|h| h == name);
        let need = |name: &str| find(name).ok_or_else(|| format!("no {name:?} column"));
        Ok(Columns {
            thread: need("thread")?,
            op: need("op")?,
            client_id: find("client_id"),
            n_objects: find("n_objects"),
            bytes: need("bytes")?,
            endpoint: find("endpoint"),
            file: need("file")?,
            error: need("error")?,
            start: need("start")?,
            first_byte: find("first_byte"),
            end: need("end")?,
            range_offset: find("range_offset"),
            range_length: find("range_length"),
        })
    }
}

/// Reads records from the decompressed text of a log.
#[derive(Debug)]
pub struct RecordReader<R> {
    input: R,
    columns: Option<Columns>,
    line: u64,
    text: String,
    fields: Vec<String>,
}

impl<R: BufRead> RecordReader<R> {
    /// A reader of `input`, header first.
    pub fn new(input: R) -> Self {
        RecordReader {
            input,
            columns: None,
            line: 0,
            text: String::new(),
            fields: Vec::new(),
        }
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// The next record; `None` at the end.
    pub fn next_record(&mut self) -> Option<Result<Record, ParseError>> {
        loop {
            match self.next_fields() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            let Some(columns) = &self.columns else {
                match Columns::of(&self.fields) {
                    Ok(c) => self.columns = Some(c),
                    Err(message) => return Some(Err(self.bad(message))),
                }
                continue;
            };
            return Some(record(columns, &self.fields).map_err(|m| self.bad(m)));
        }
    }

    fn bad(&self, message: String) -> ParseError {
        ParseError::Bad {
            line: self.line,
            message,
        }
    }

    /// Reads the next non-comment, non-empty line (more than one when a
    /// quoted field holds newlines) into `fields`; `false` at the end.
    fn next_fields(&mut self) -> Result<bool, ParseError> {
        self.text.clear();
        loop {
            let before = self.text.len();
            let n = self
                .input
                .read_line(&mut self.text)
                .map_err(|source| ParseError::Io {
                    line: self.line,
                    source,
                })?;
            if n == 0 {
                if before == 0 {
                    return Ok(false);
                }
                return Err(self.bad("quoted field not closed at the end".into()));
            }
            self.line += 1;
            if before == 0 && (self.text.starts_with('#') || self.text.trim_end().is_empty()) {
                self.text.clear();
                continue;
            }
            match split(&self.text, &mut self.fields) {
                Ok(true) => return Ok(true),
                // A quoted field goes on on the next line.
                Ok(false) => continue,
                Err(message) => return Err(self.bad(message)),
            }
        }
    }
}

/// Splits one line (or several, for quoted newlines) into `fields`:
/// `Ok(false)` when a quoted field is still open at the end.
fn split(text: &str, fields: &mut Vec<String>) -> Result<bool, String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    fields.clear();
    let mut rest = text;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut at = quoted;
            loop {
                let Some(q) = at.find('"') else {
                    return Ok(false);
                };
                value.push_str(&at[..q]);
                at = &at[q + 1..];
                if let Some(more) = at.strip_prefix('"') {
                    value.push('"');
                    at = more;
                    continue;
                }
                break;
            }
            fields.push(value);
            match at.strip_prefix('\t') {
                Some(next) => rest = next,
                None if at.is_empty() => return Ok(true),
                None => return Err("text after a closing quote".into()),
            }
        } else {
            let (field, next) = match rest.split_once('\t') {
                Some((f, n)) => (f, Some(n)),
                None => (rest, None),
            };
            if field.contains('"') {
                return Err("bare \" in an unquoted field".into());
            }
            fields.push(field.to_owned());
            match next {
                Some(n) => rest = n,
                None => return Ok(true),
            }
        }
    }
}

/// The record in `fields`.
fn record(c: &Columns, fields: &[String]) -> Result<Record, String> {
    let get = |i: usize| {
        fields
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("{} fields, expected more than {i}", fields.len()))
    };
    let opt = |i: Option<usize>| -> Result<Option<&str>, String> {
        i.map(get).transpose().map(|v| v.filter(|s| !s.is_empty()))
    };
    let int = |name: &str, s: &str| -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{name} {s:?} is not a number"))
    };
    let when = |name: &str, s: &str| {
        time::parse(s).ok_or_else(|| format!("{name} {s:?} is not an RFC 3339 time"))
    };
    let owned = |s: Option<&str>, default: &'static str| -> Cow<'static, str> {
        s.map_or(Cow::Borrowed(default), |s| Cow::Owned(s.to_owned()))
    };
    Ok(Record {
        thread: get(c.thread)?
            .parse()
            .map_err(|_| "thread is not a number below 65536".to_owned())?,
        op: Cow::Owned(get(c.op)?.to_owned()),
        client_id: owned(opt(c.client_id)?, ""),
        n_objects: opt(c.n_objects)?.map_or(Ok(1), |s| int("n_objects", s))?,
        bytes: int("bytes", get(c.bytes)?)?,
        endpoint: owned(opt(c.endpoint)?, ""),
        file: get(c.file)?.to_owned(),
        error: get(c.error)?.to_owned(),
        start: when("start", get(c.start)?)?,
        first_byte: opt(c.first_byte)?
            .map(|s| when("first_byte", s))
            .transpose()?,
        end: when("end", get(c.end)?)?,
        range_offset: opt(c.range_offset)?
            .map(|s| int("range_offset", s))
            .transpose()?,
        range_length: opt(c.range_length)?
            .map(|s| int("range_length", s))
            .transpose()?,
    })
}

#[cfg(test)]
#[path = "tsv_tests.rs"]
mod tests;

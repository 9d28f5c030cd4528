//! Writing answers: `table`, `json`, `csv`, `ndjson`.
//!
//! Every format takes the same calls: one header, then rows of JSON values (or whole
//! events, for a listing without `--select` in `json`/`ndjson`). `csv` and `ndjson` write
//! each row as it comes; `json` streams its array; `table` has to see every row before it
//! knows the column widths, so it keeps them and draws at the end, fitted to the width it
//! was given (comfy-table wraps the widest columns). No format writes colour.

use std::io::{self, Write};
use std::str::FromStr;

use comfy_table::{presets, ColumnConstraint, ContentArrangement, Table};
use serde_json::{Map, Value};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
    Ndjson,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            other => Err(format!(
                "unknown format {other:?}: expected table, json, csv or ndjson"
            )),
        }
    }
}

/// Where an answer goes, row by row.
pub trait Sink {
    /// The column names, once, before any row.
    fn header(&mut self, headers: &[String]);
    /// One row, a value per column.
    fn row(&mut self, cells: &[Value]);
    /// Whole events, newline-terminated JSON lines.
    fn events(&mut self, lines: &[u8]);
    /// Everything was written.
    fn finish(&mut self);
    /// The first write that failed, if any (the rest are skipped after it).
    fn error(&self) -> Option<&io::Error>;
}

/// Makes the sink for `format`. `width` is the terminal's width in columns, for tables
/// (`None`: do not wrap).
pub fn sink<'a>(
    format: Format,
    out: Box<dyn Write + 'a>,
    width: Option<u16>,
) -> Box<dyn Sink + 'a> {
    let writer = Writer { out, error: None };
    match format {
        Format::Table => Box::new(TableSink {
            writer,
            width,
            headers: Vec::new(),
            rows: Vec::new(),
            events: 0,
        }),
        Format::Csv => Box::new(CsvSink {
            csv: csv::WriterBuilder::new().from_writer(writer),
        }),
        Format::Json => Box::new(JsonSink {
            writer,
            headers: Vec::new(),
            first: true,
        }),
        Format::Ndjson => Box::new(NdjsonSink {
            writer,
            headers: Vec::new(),
        }),
    }
}

/// A writer that remembers its first error and writes nothing after it (a closed pipe
/// ends the output, not the process).
struct Writer<'a> {
    out: Box<dyn Write + 'a>,
    error: Option<io::Error>,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            if let Err(error) = self.out.write_all(bytes) {
                self.error = Some(error);
            }
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(error) = self.out.flush() {
                self.error = Some(error);
            }
        }
    }
}

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf);
        match &self.error {
            Some(error) => Err(io::Error::new(error.kind(), error.to_string())),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Writer::flush(self);
        Ok(())
    }
}

/// A cell as text: strings as themselves, `null` as nothing, anything else as JSON.
pub fn cell_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

struct TableSink<'a> {
    writer: Writer<'a>,
    width: Option<u16>,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    events: u64,
}

impl Sink for TableSink<'_> {
    fn header(&mut self, headers: &[String]) {
        self.headers = headers.iter().map(|h| h.to_uppercase()).collect();
    }

    fn row(&mut self, cells: &[Value]) {
        self.rows.push(cells.iter().map(cell_text).collect());
    }

    fn events(&mut self, lines: &[u8]) {
        // A table is never asked for whole events; write them as they are.
        self.events += 1;
        self.writer.put(lines);
    }

    fn finish(&mut self) {
        if self.events == 0 {
            let text = render_table(&self.headers, &self.rows, self.width);
            self.writer.put(text.as_bytes());
            self.writer.put(b"\n");
        }
        self.writer.flush();
    }

    fn error(&self) -> Option<&io::Error> {
        self.writer.error.as_ref()
    }
}

/// A borderless table in kubectl's style, upper-case headers, fitted into `width`
/// columns when given.
pub fn render_table(headers: &[String], rows: &[Vec<String>], width: Option<u16>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    match width {
        Some(width) => {
            table.set_width(width);
            table.set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table.set_header(headers);
    for row in rows {
        table.add_row(row);
    }
    // No padding on the left, two spaces between columns, as kubectl prints.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    if let Some(width) = width {
        keep_narrow_columns_whole(&mut table, headers, rows, width);
    }
    // Padding leaves blanks at the end of every line; they help no one.
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Left to itself, comfy-table wraps every column a little when space is short, which
/// breaks timestamps and names across lines. Instead, columns up to 40 characters wide
/// are kept whole from the left (the time first) as long as every other column can still
/// get 12 characters; what is left over wraps (URIs, long names).
fn keep_narrow_columns_whole(
    table: &mut Table,
    headers: &[String],
    rows: &[Vec<String>],
    width: u16,
) {
    const PADDING: usize = 2;
    const WRAPPED: usize = 12;
    const WHOLE_UP_TO: usize = 40;
    let widest = |i: usize| {
        rows.iter()
            .filter_map(|row| row.get(i))
            .chain(headers.get(i))
            .map(|cell| cell.lines().map(|l| l.chars().count()).max().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let contents: Vec<usize> = (0..headers.len()).map(widest).collect();
    let least = |content: usize| content.min(WRAPPED) + PADDING;
    let mut needed: usize = contents.iter().map(|c| least(*c)).sum();
    for (index, content) in contents.iter().enumerate() {
        let whole = content + PADDING;
        if *content <= WHOLE_UP_TO && needed - least(*content) + whole <= usize::from(width) {
            needed = needed - least(*content) + whole;
            if let Some(column) = table.column_mut(index) {
                column.set_constraint(ColumnConstraint::ContentWidth);
            }
        }
    }
}

struct CsvSink<'a> {
    csv: csv::Writer<Writer<'a>>,
}

impl Sink for CsvSink<'_> {
    fn header(&mut self, headers: &[String]) {
        let _ = self.csv.write_record(headers);
    }

    fn row(&mut self, cells: &[Value]) {
        let _ = self.csv.write_record(cells.iter().map(cell_text));
    }

    fn events(&mut self, lines: &[u8]) {
        // A CSV answer is never asked for whole events; write them as they are.
        let _ = self
            .csv
            .write_record([String::from_utf8_lossy(lines).trim_end()]);
    }

    fn finish(&mut self) {
        let _ = self.csv.flush();
    }

    fn error(&self) -> Option<&io::Error> {
        self.csv.get_ref().error.as_ref()
    }
}

fn object(headers: &[String], cells: &[Value]) -> Value {
    let mut map = Map::with_capacity(headers.len());
    for (header, cell) in headers.iter().zip(cells) {
        map.insert(header.clone(), cell.clone());
    }
    Value::Object(map)
}

struct JsonSink<'a> {
    writer: Writer<'a>,
    headers: Vec<String>,
    first: bool,
}

impl JsonSink<'_> {
    fn separator(&mut self) {
        let separator: &[u8] = if self.first { b"[\n" } else { b",\n" };
        self.first = false;
        self.writer.put(separator);
    }
}

impl Sink for JsonSink<'_> {
    fn header(&mut self, headers: &[String]) {
        self.headers = headers.to_vec();
    }

    fn row(&mut self, cells: &[Value]) {
        self.separator();
        let text = object(&self.headers, cells).to_string();
        self.writer.put(text.as_bytes());
    }

    fn events(&mut self, lines: &[u8]) {
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.separator();
            self.writer.put(line);
        }
    }

    fn finish(&mut self) {
        let end: &[u8] = if self.first { b"[]\n" } else { b"\n]\n" };
        self.writer.put(end);
        self.writer.flush();
    }

    fn error(&self) -> Option<&io::Error> {
        self.writer.error.as_ref()
    }
}

struct NdjsonSink<'a> {
    writer: Writer<'a>,
    headers: Vec<String>,
}

impl Sink for NdjsonSink<'_> {
    fn header(&mut self, headers: &[String]) {
        self.headers = headers.to_vec();
    }

    fn row(&mut self, cells: &[Value]) {
        let mut text = object(&self.headers, cells).to_string();
        text.push('\n');
        self.writer.put(text.as_bytes());
    }

    fn events(&mut self, lines: &[u8]) {
        self.writer.put(lines);
    }

    fn finish(&mut self) {
        self.writer.flush();
    }

    fn error(&self) -> Option<&io::Error> {
        self.writer.error.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(format: Format, width: Option<u16>) -> String {
        let mut out = Vec::new();
        {
            let mut sink = sink(format, Box::new(&mut out), width);
            sink.header(&["user.username".to_owned(), "count".to_owned()]);
            sink.row(&[Value::from("bob, the \"builder\""), Value::from(3)]);
            sink.row(&[Value::Null, Value::from(1)]);
            sink.finish();
            assert!(sink.error().is_none());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_format_writes_the_same_rows() {
        assert_eq!(
            written(Format::Csv, None),
            "user.username,count\n\"bob, the \"\"builder\"\"\",3\n,1\n"
        );
        assert_eq!(
            written(Format::Ndjson, None),
            "{\"user.username\":\"bob, the \\\"builder\\\"\",\"count\":3}\n{\"user.username\":null,\"count\":1}\n"
        );
        let json: Value = serde_json::from_str(&written(Format::Json, None)).unwrap();
        assert_eq!(json[0]["count"], 3);
        assert_eq!(json[1]["user.username"], Value::Null);
        let table = written(Format::Table, None);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("USER.USERNAME") && lines[0].contains("COUNT"));
        assert!(lines[1].contains("bob, the \"builder\"") && lines[1].ends_with('3'));
    }

    #[test]
    fn a_table_fits_the_width_it_is_given() {
        let long = "x".repeat(200);
        let rendered = render_table(
            &["A".to_owned(), "B".to_owned()],
            &[vec![long.clone(), "short".to_owned()]],
            Some(60),
        );
        assert!(
            rendered.lines().all(|line| line.chars().count() <= 60),
            "{rendered}"
        );
        assert_eq!(rendered.matches('x').count(), 200);
        let unbounded = render_table(
            &["A".to_owned(), "B".to_owned()],
            &[vec![long, "s".to_owned()]],
            None,
        );
        assert!(unbounded.lines().nth(1).unwrap().len() > 200);
    }

    #[test]
    fn an_empty_json_answer_is_an_empty_array() {
        let mut out = Vec::new();
        {
            let mut sink = sink(Format::Json, Box::new(&mut out), None);
            sink.header(&["a".to_owned()]);
            sink.finish();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "[]\n");
    }
}

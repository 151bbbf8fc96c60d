use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;

fn sample() -> Record {
    let start = UNIX_EPOCH + Duration::new(1_764_584_100, 5);
    Record {
        thread: 3,
        op: Cow::Borrowed("GET"),
        client_id: Cow::Borrowed("sluiced"),
        n_objects: 1,
        bytes: 8 << 20,
        endpoint: Cow::Borrowed("s3://minio:9000"),
        file: "s3://minio:9000/bucket/train/shard-0001.tar".into(),
        error: String::new(),
        start,
        first_byte: Some(start + Duration::from_micros(1500)),
        end: start + Duration::from_millis(42),
        range_offset: Some(8 << 20),
        range_length: Some(8 << 20),
    }
}

fn line(r: &Record) -> String {
    let mut s = String::new();
    write_record(&mut s, 7, r);
    s
}

fn read_back(text: &str) -> Vec<Record> {
    let mut reader = RecordReader::new(text.as_bytes());
    let mut out = Vec::new();
    while let Some(r) = reader.next_record() {
        out.push(r.expect("parses"));
    }
    out
}

#[test]
fn columns_are_warps_in_its_order() {
    let text = line(&sample());
    let fields: Vec<&str> = text.trim_end().split('\t').collect();
    let header: Vec<&str> = HEADER.trim_end().split('\t').collect();
    assert_eq!(
        header[..14],
        [
            "idx",
            "thread",
            "op",
            "client_id",
            "n_objects",
            "bytes",
            "endpoint",
            "file",
            "error",
            "start",
            "first_byte",
            "end",
            "duration_ns",
            "cat"
        ]
    );
    assert_eq!(fields.len(), header.len());
    assert_eq!(fields[0], "7");
    assert_eq!(fields[1], "3");
    assert_eq!(fields[5], "8388608");
    assert_eq!(fields[9], "2025-12-01T10:15:00.000000005Z");
    assert_eq!(fields[10], "2025-12-01T10:15:00.001500005Z");
    assert_eq!(fields[12], "42000000");
    assert_eq!(fields[13], "0");
    assert_eq!(fields[14..], ["8388608", "8388608"]);
}

#[test]
fn round_trip_with_and_without_optional_fields() {
    let full = sample();
    let mut bare = sample();
    bare.first_byte = None;
    bare.range_offset = None;
    bare.range_length = None;
    bare.op = Cow::Borrowed("STAT");
    bare.error = "not found".into();
    let text = format!("{HEADER}{}{}", line(&full), line(&bare));
    assert_eq!(read_back(&text), [full, bare]);
}

#[test]
fn errors_go_on_one_line_and_names_stay_exact() {
    let mut r = sample();
    r.error = "first line\nsecond\tpart \"quoted\"\r\n".into();
    r.file = "s3://b/odd\tname\nwith \"quotes\"".into();
    let text = line(&r);
    // One record, one line, but for the name's own newline.
    assert_eq!(text.matches('\n').count(), 2);
    let back = read_back(&format!("{HEADER}{text}"));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].error, "first line second part \"quoted\"  ");
    assert_eq!(back[0].file, r.file);
}

#[test]
fn reads_warps_own_files() {
    // warp's header without our columns, a comment, local offsets, Go's
    // trimmed fractions and a quoted error.
    let text = "idx\tthread\top\tclient_id\tn_objects\tbytes\tendpoint\tfile\terror\tstart\tfirst_byte\tend\tduration_ns\n\
        0\t0\tPUT\tab12\t1\t1024\thttp://127.0.0.1:9000\twarp/obj1\t\t2024-01-02T03:04:05.5+01:00\t\t2024-01-02T03:04:06+01:00\t500000000\n\
        1\t1\tGET\tab12\t1\t0\thttp://127.0.0.1:9000\twarp/obj2\t\"Access \"\"denied\"\"\"\t2024-01-02T02:04:05Z\t2024-01-02T02:04:05.1Z\t2024-01-02T02:04:05.2Z\t200000000\n\
        # warp get --duration 1s\n";
    let records = read_back(text);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].duration(), Duration::from_millis(500));
    assert_eq!(records[0].range_offset, None);
    assert_eq!(records[1].error, "Access \"denied\"");
    assert_eq!(records[1].ttfb(), Some(Duration::from_millis(100)));
    assert_eq!(records[1].file, "warp/obj2");
}

#[test]
fn bad_lines_name_their_number() {
    let text = format!("{HEADER}{}0\t1\tGET\tbroken", line(&sample()));
    let mut reader = RecordReader::new(text.as_bytes());
    assert!(reader.next_record().unwrap().is_ok());
    let err = reader.next_record().unwrap().unwrap_err();
    assert!(err.to_string().starts_with("line 3:"), "{err}");
    let bare_quote = format!("{HEADER}0\t1\tGET\tc\t1\t0\te\ta\"b\t\tx\t\tx\t0\t0\t\t\n");
    let err = read_back_err(&bare_quote);
    assert!(err.contains("bare"), "{err}");
}

fn read_back_err(text: &str) -> String {
    let mut reader = RecordReader::new(text.as_bytes());
    reader.next_record().unwrap().unwrap_err().to_string()
}

proptest! {
    #[test]
    fn any_name_and_error_round_trip(
        file in "\\PC*[\t\n\"]?\\PC*",
        error in "[^\r\n\t]*",
        thread: u16,
        bytes: u64,
    ) {
        let mut r = sample();
        r.file = file;
        r.error = error;
        r.thread = thread;
        r.bytes = bytes;
        let back = read_back(&format!("{HEADER}{}", line(&r)));
        prop_assert_eq!(back, vec![r]);
    }
}

//! XML of the S3 API: a small writer for responses, and quick-xml readers
//! for the two request bodies the facade takes (CompleteMultipartUpload and
//! Delete).

use quick_xml::Reader;
use quick_xml::events::Event;

/// Builds an XML document; text is escaped.
#[derive(Debug)]
pub struct Xml(String);

impl Default for Xml {
    fn default() -> Self {
        Self::new()
    }
}

impl Xml {
    /// A document with the XML declaration.
    pub fn new() -> Self {
        Xml(String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"))
    }

    /// `<tag>`.
    pub fn open(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
    }

    /// `<tag xmlns="http://s3.amazonaws.com/doc/2006-03-01/">`.
    pub fn open_s3(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0
            .push_str(" xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    }

    /// `</tag>`.
    pub fn close(&mut self, tag: &str) {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
    }

    /// `<tag>text</tag>`.
    pub fn elem(&mut self, tag: &str, text: &str) {
        self.open(tag);
        escape_into(&mut self.0, text);
        self.close(tag);
    }

    /// Escaped text inside the element open now.
    pub fn text(&mut self, text: &str) {
        escape_into(&mut self.0, text);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.0
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry, written as references.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&format!("&#x{:X};", c as u32))
            }
            c => out.push(c),
        }
    }
}

/// Why a request body is not the XML expected.
#[derive(Debug, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct MalformedXml(String);

/// Per `item` element, the text of the elements named in `wanted` inside
/// it (`[(name, text)…]` in document order); and those outside any item.
type Fields = Vec<(String, String)>;

fn items(body: &[u8], item: &str, wanted: &[&str]) -> Result<(Vec<Fields>, Fields), MalformedXml> {
    let bad = |e: &dyn std::fmt::Display| MalformedXml(e.to_string());
    let mut reader = Reader::from_reader(body);
    let (mut all, mut outside) = (Vec::new(), Vec::new());
    let mut current: Option<Fields> = None;
    // The field being read and its text so far (text and references
    // arrive as separate events).
    let mut field: Option<(String, String)> = None;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| bad(&e))? {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name == item {
                    current = Some(Vec::new());
                } else if wanted.contains(&name.as_str()) {
                    field = Some((name, String::new()));
                }
            }
            Event::Text(t) => {
                if let Some((_, text)) = &mut field {
                    text.push_str(&t.decode().map_err(|e| bad(&e))?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, text)) = &mut field {
                    match r.resolve_char_ref().map_err(|e| bad(&e))? {
                        Some(c) => text.push(c),
                        None => {
                            let name = r.decode().map_err(|e| bad(&e))?;
                            let c = quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| MalformedXml(format!("unknown entity &{name};")))?;
                            text.push_str(c);
                        }
                    }
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                if name.as_ref() == item.as_bytes() {
                    all.extend(current.take());
                } else if let Some(pair) = field.take_if(|(n, _)| n.as_bytes() == name.as_ref()) {
                    match &mut current {
                        Some(c) => c.push(pair),
                        None => outside.push(pair),
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok((all, outside))
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The parts of a CompleteMultipartUpload body: `(PartNumber, ETag)`.
pub fn complete_parts(body: &[u8]) -> Result<Vec<(u32, String)>, MalformedXml> {
    let (parts, _) = items(body, "Part", &["PartNumber", "ETag"])?;
    parts
        .iter()
        .map(|p| {
            let n = get(p, "PartNumber")
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| MalformedXml("a Part without a valid PartNumber".into()))?;
            Ok((n, get(p, "ETag").unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The keys of a Delete body, and whether it is quiet.
pub fn delete_keys(body: &[u8]) -> Result<(Vec<String>, bool), MalformedXml> {
    let (objects, outside) = items(body, "Object", &["Key", "Quiet"])?;
    let keys = objects
        .iter()
        .map(|o| {
            get(o, "Key")
                .map(str::to_owned)
                .ok_or_else(|| MalformedXml("an Object without a Key".into()))
        })
        .collect::<Result<_, _>>()?;
    let quiet = get(&outside, "Quiet").is_some_and(|q| q.trim().eq_ignore_ascii_case("true"));
    Ok((keys, quiet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_escaped_text() {
        let mut x = Xml::new();
        x.open_s3("R");
        x.elem("Key", "a<b>&\"c\u{1}");
        x.close("R");
        let s = x.finish();
        assert!(
            s.ends_with("<Key>a&lt;b&gt;&amp;&quot;c&#x1;</Key></R>"),
            "{s}"
        );
    }

    #[test]
    fn reads_request_bodies() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <Part><ETag>"e1"</ETag><PartNumber>1</PartNumber></Part>
            <Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag></Part>
        </CompleteMultipartUpload>"#;
        assert_eq!(
            complete_parts(body).unwrap(),
            vec![(1, "\"e1\"".to_owned()), (2, "\"e2\"".to_owned())]
        );
        let body = b"<Delete><Object><Key>a&amp;b</Key></Object><Object><Key>c</Key></Object><Quiet>true</Quiet></Delete>";
        assert_eq!(
            delete_keys(body).unwrap(),
            (vec!["a&b".to_owned(), "c".to_owned()], true)
        );
        assert!(complete_parts(b"<Part><PartNumber>x</PartNumber></Part>").is_err());
        assert!(delete_keys(b"<Delete><Object></Object>").is_err());
    }
}

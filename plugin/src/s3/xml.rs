//! The S3 XML documents this read-only API answers with: a small writer
//! over `quick-xml`'s escaping, so every text node and attribute is escaped
//! in one place.

use quick_xml::escape::escape;

pub const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// An XML document built element by element.
#[derive(Debug)]
pub struct Doc {
    out: String,
    open: Vec<&'static str>,
}

impl Doc {
    /// A document whose root element is `root` (in the S3 namespace when `ns`).
    pub fn new(root: &'static str, ns: bool) -> Self {
        let mut out = String::with_capacity(1024);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        out.push_str(root);
        if ns {
            out.push_str(" xmlns=\"");
            out.push_str(NS);
            out.push('"');
        }
        out.push('>');
        Self { out, open: vec![root] }
    }

    pub fn open(&mut self, name: &'static str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.open.push(name);
        self
    }

    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self
    }

    /// `<name>text</name>`, the text escaped.
    pub fn text(&mut self, name: &'static str, text: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.out.push_str(&escape(text));
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

/// An S3 `<Error>` document.
pub fn error(code: &str, message: &str, resource: &str, request_id: &str) -> String {
    let mut d = Doc::new("Error", false);
    d.text("Code", code).text("Message", message).text("Resource", resource).text("RequestId", request_id);
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let mut d = Doc::new("R", true);
        d.open("A").text("Key", "a<b>&\"c'").close();
        let s = d.finish();
        assert!(s.ends_with("<A><Key>a&lt;b&gt;&amp;&quot;c&apos;</Key></A></R>"), "{s}");
        assert!(s.contains(NS));
    }
}

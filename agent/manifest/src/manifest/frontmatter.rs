//! Splitting a manifest into YAML front matter and Markdown body.

/// The parts of a manifest file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FrontMatter<'a> {
    pub yaml: &'a str,
    /// File line of the YAML text's first line, minus one: add it to a YAML line.
    pub offset: usize,
    pub body: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum SplitError {
    /// The first line is not `---`.
    Missing,
    /// No closing `---` line.
    Unclosed,
}

fn is_fence(line: &str) -> bool {
    line.trim_end() == "---"
}

/// The first line (after an optional byte-order mark) must be `---`; the front matter runs
/// to the next line that is `---`. Trailing spaces and `\r` on the fences are ignored.
pub(super) fn split(text: &str) -> Result<FrontMatter<'_>, SplitError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().ok_or(SplitError::Missing)?;
    if !is_fence(first) {
        return Err(SplitError::Missing);
    }
    let start = first.len();
    let mut pos = start;
    for line in lines {
        if is_fence(line) {
            return Ok(FrontMatter {
                yaml: &text[start..pos],
                offset: 1,
                body: &text[pos + line.len()..],
            });
        }
        pos += line.len();
    }
    Err(SplitError::Unclosed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        let fm = split("---\na: 1\n---\n# Body\n").unwrap();
        assert_eq!(fm.yaml, "a: 1\n");
        assert_eq!(fm.body, "# Body\n");
        let fm = split("\u{feff}--- \r\na: 1\r\n---\r\nbody").unwrap();
        assert_eq!(fm.yaml, "a: 1\r\n");
        assert_eq!(fm.body, "body");
        let fm = split("---\n---").unwrap();
        assert_eq!((fm.yaml, fm.body), ("", ""));
        assert_eq!(split("# just markdown\n"), Err(SplitError::Missing));
        assert_eq!(split(""), Err(SplitError::Missing));
        assert_eq!(split("---\na: 1\n"), Err(SplitError::Unclosed));
    }
}

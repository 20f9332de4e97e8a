//! A small YAML tree that remembers the line of every node and every mapping key.
//!
//! Built from `saphyr-parser` events. Scalars keep the text as written (no YAML 1.1 or 1.2
//! type guessing): the manifest decoder decides what a scalar means from the key it sits
//! under, so `PORT: 8080` is the string `"8080"` and `tls_passthrough: yes` is a boolean.
//! Only a plain `~`, `null`, `Null`, `NULL` or an empty value is [`Kind::Null`].
//!
//! Front matter can come from a repository the operator did not write, so nesting depth and
//! alias expansion are bounded.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Deepest nesting accepted; manifests need four levels.
const MAX_DEPTH: usize = 64;
/// Most nodes that aliases (`*name`) may copy in one document.
const MAX_ALIAS_NODES: usize = 10_000;

/// A problem in the YAML text itself. Lines are 1-based, relative to the YAML text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("{message}")]
    Syntax { line: usize, message: String },
    #[error("key `{key}` appears twice in the same mapping")]
    DuplicateKey { line: usize, key: String },
    #[error("a mapping key must be a plain string")]
    ComplexKey { line: usize },
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep { line: usize },
    #[error("aliases expand to more than {MAX_ALIAS_NODES} nodes")]
    AliasBudget { line: usize },
    #[error("more than one YAML document; the front matter holds one mapping")]
    MultipleDocuments { line: usize },
}

impl YamlError {
    /// Line in the YAML text (1-based).
    pub fn line(&self) -> usize {
        match self {
            Self::Syntax { line, .. }
            | Self::DuplicateKey { line, .. }
            | Self::ComplexKey { line }
            | Self::TooDeep { line }
            | Self::AliasBudget { line }
            | Self::MultipleDocuments { line } => *line,
        }
    }
}

pub type Result<T> = std::result::Result<T, YamlError>;

/// One node, with the line it starts on (1-based, relative to the YAML text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Null,
    /// Text as written; `plain` is false for quoted and block scalars.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique.
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

impl Kind {
    /// How the decoder names this kind in "found …" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Null => "nothing (null)",
            Self::Scalar { .. } => "a scalar",
            Self::Seq(_) => "a list",
            Self::Map(_) => "a mapping",
        }
    }
}

/// Parses one YAML document. An empty text is [`Kind::Null`].
pub fn parse(text: &str) -> Result<Node> {
    let mut builder = Builder {
        events: Parser::new_from_str(text),
        anchors: BTreeMap::new(),
        alias_nodes: 0,
    };
    builder.document()
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: BTreeMap<usize, Node>,
    alias_nodes: usize,
}

fn line_of(span: &Span) -> usize {
    span.start.line().max(1)
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span)> {
        match self.events.next() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(YamlError::Syntax {
                line: e.marker().line().max(1),
                message: e.info().to_string(),
            }),
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }

    fn document(&mut self) -> Result<Node> {
        let mut root: Option<Node> = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(YamlError::MultipleDocuments {
                            line: line_of(&span),
                        });
                    }
                    let (ev, span) = self.next()?;
                    root = Some(self.node(ev, span, 0)?);
                }
                other => {
                    // The parser always opens a document first; treat anything else as a
                    // document without a start event.
                    if root.is_some() {
                        return Err(YamlError::MultipleDocuments {
                            line: line_of(&span),
                        });
                    }
                    root = Some(self.node(other, span, 0)?);
                }
            }
        }
        Ok(root.unwrap_or(Node {
            line: 1,
            kind: Kind::Null,
        }))
    }

    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node> {
        let line = line_of(&span);
        if depth > MAX_DEPTH {
            return Err(YamlError::TooDeep { line });
        }
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                (Node { line, kind }, anchor)
            }
            Event::SequenceStart(anchor, _tag) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    match ev {
                        Event::SequenceEnd => break,
                        Event::StreamEnd => {
                            return Err(YamlError::Syntax {
                                line,
                                message: "unterminated list".into(),
                            })
                        }
                        ev => items.push(self.node(ev, span, depth + 1)?),
                    }
                }
                (
                    Node {
                        line,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _tag) => {
                let mut entries: Vec<Entry> = Vec::new();
                loop {
                    let (ev, key_span) = self.next()?;
                    let key_line = line_of(&key_span);
                    let key = match ev {
                        Event::MappingEnd => break,
                        Event::StreamEnd => {
                            return Err(YamlError::Syntax {
                                line,
                                message: "unterminated mapping".into(),
                            })
                        }
                        ev => self.node(ev, key_span, depth + 1)?,
                    };
                    let key = match key.kind {
                        Kind::Scalar { text, .. } => text,
                        _ => return Err(YamlError::ComplexKey { line: key_line }),
                    };
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span, depth + 1)?;
                    if entries.iter().any(|e| e.key == key) {
                        return Err(YamlError::DuplicateKey {
                            line: key_line,
                            key,
                        });
                    }
                    entries.push(Entry {
                        key,
                        key_line,
                        value,
                    });
                }
                (
                    Node {
                        line,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let target = self.anchors.get(&id).cloned().ok_or(YamlError::Syntax {
                    line,
                    message: "alias to an unknown anchor".into(),
                })?;
                self.alias_nodes += count(&target);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    return Err(YamlError::AliasBudget { line });
                }
                // Report problems inside an alias at the place it is used.
                return Ok(Node { line, ..target });
            }
            other => {
                return Err(YamlError::Syntax {
                    line,
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn count(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Seq(items) => items.iter().map(count).sum(),
        Kind::Map(entries) => entries.iter().map(|e| 1 + count(&e.value)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[Entry] {
        match &node.kind {
            Kind::Map(e) => e,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn lines_of_nested_and_flow_keys() {
        let text = "a: 1\nb:\n  c:\n    d: x\n  e: {f: 1,\n    g: 2}\nh: [1, 2]\n";
        let root = parse(text).unwrap();
        let top = map(&root);
        assert_eq!(
            top.iter()
                .map(|e| (e.key.as_str(), e.key_line))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 2), ("h", 7)]
        );
        let b = map(&top[1].value);
        assert_eq!((b[0].key.as_str(), b[0].key_line), ("c", 3));
        assert_eq!(map(&b[0].value)[0].key_line, 4);
        let e = map(&b[1].value);
        assert_eq!(
            e.iter()
                .map(|e| (e.key.as_str(), e.key_line))
                .collect::<Vec<_>>(),
            [("f", 5), ("g", 6)]
        );
    }

    #[test]
    fn scalars_keep_their_text() {
        let root = parse("a: 8080\nb: 'x'\nc: ~\nd:\ne: yes\n").unwrap();
        let kinds: Vec<&Kind> = map(&root).iter().map(|e| &e.value.kind).collect();
        assert_eq!(
            kinds[0],
            &Kind::Scalar {
                text: "8080".into(),
                plain: true
            }
        );
        assert_eq!(
            kinds[1],
            &Kind::Scalar {
                text: "x".into(),
                plain: false
            }
        );
        assert_eq!(kinds[2], &Kind::Null);
        assert_eq!(kinds[3], &Kind::Null);
    }

    #[test]
    fn errors_have_lines() {
        assert_eq!(
            parse("a: 1\na: 2\n").unwrap_err(),
            YamlError::DuplicateKey {
                line: 2,
                key: "a".into()
            }
        );
        assert_eq!(parse("a: 1\n b: [\n").unwrap_err().line(), 2);
        assert_eq!(
            parse("? [a]\n: 1\n").unwrap_err(),
            YamlError::ComplexKey { line: 1 }
        );
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(matches!(parse(&deep), Err(YamlError::TooDeep { .. })));
    }

    #[test]
    fn aliases_are_copied_and_bounded() {
        let root = parse("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(map(&map(&root)[1].value)[0].key, "k");
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        assert!(matches!(parse(&bomb), Err(YamlError::AliasBudget { .. })));
    }

    #[test]
    fn empty_text_is_null() {
        assert_eq!(parse("").unwrap().kind, Kind::Null);
        assert_eq!(parse("# only a comment\n").unwrap().kind, Kind::Null);
    }
}

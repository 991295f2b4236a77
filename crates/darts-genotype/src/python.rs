//! The Python genotype notation of the reference code and papers.
//!
//! Accepted (whitespace, newlines, `#` comments and trailing commas anywhere):
//!
//! ```text
//! Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
//!          reduce=[...], reduce_concat=range(2, 6))
//! Genotype(recurrent=[('relu', 0), ...], concat=range(1, 9))
//! ```
//!
//! The leading name may be any identifier (`Genotype`, `PC_DARTS_cifar = Genotype`, ...) or be
//! absent; strings may use single or double quotes; gene lists may be grouped per node
//! (`[[('a', 0), ('b', 1)], ...]`, as some repositories write them) and are flattened. A gene
//! may also name the node it feeds, FairDARTS's `('op', to, from)` (cells whose nodes have zero
//! to two inputs, [`Gene::node`]).
//! Malformed text yields a [`ParseError`] with line, column and what was expected; the parser
//! never panics.

use crate::{Gene, Genotype, RecurrentGenotype};
use std::fmt;

/// A parse error with its position (1-based line and column, 0-based byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// 0-based byte offset.
    pub offset: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Genes(Vec<Gene>),
    Ints(Vec<usize>),
}

/// Most items a list or `range` may hold: far more than any genotype (a cell of 1,000 nodes
/// has 2,000 genes), small enough that a hostile `range(0, 10**18)` is an error, not an
/// allocation.
pub const MAX_ITEMS: usize = 1 << 16;
/// Deepest nesting of lists and `list(...)` calls (a genotype needs two: genes grouped per node).
pub const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> ParseError {
        let before = &self.src[..offset.min(self.src.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ParseError {
            line,
            column,
            offset,
            message: message.into(),
        }
    }

    fn found(&self) -> String {
        match self.src[self.pos..].chars().next() {
            None => "end of input".to_string(),
            Some(c) => format!("`{c}`"),
        }
    }

    fn expected(&self, what: &str) -> ParseError {
        self.error_at(self.pos, format!("expected {what}, found {}", self.found()))
    }

    fn skip_ws(&mut self) {
        loop {
            let rest = &self.src[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with('#') {
                let end = trimmed.find('\n').unwrap_or(trimmed.len());
                self.pos += end;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.src[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.expected(&format!("`{c}`")))
        }
    }

    fn ident(&mut self) -> Option<(usize, &'a str)> {
        self.skip_ws();
        let rest = &self.src[self.pos..];
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return None;
        }
        let start = self.pos;
        self.pos += len;
        Some((start, &rest[..len]))
    }

    fn int(&mut self) -> Result<usize, ParseError> {
        self.skip_ws();
        let rest = &self.src[self.pos..];
        let len = rest
            .char_indices()
            .find(|&(_, c)| !c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return Err(self.expected("a non-negative integer"));
        }
        let v = rest[..len]
            .parse::<usize>()
            .map_err(|_| self.error_at(self.pos, "integer out of range"))?;
        self.pos += len;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.expected("a quoted operation name")),
        };
        let start = self.pos;
        self.pos += 1;
        let rest = &self.src[self.pos..];
        match rest.find([quote, '\n']) {
            Some(end) if rest[end..].starts_with(quote) => {
                let s = rest[..end].to_string();
                self.pos += end + 1;
                if s.is_empty() {
                    return Err(self.error_at(start, "empty operation name"));
                }
                Ok(s)
            }
            _ => Err(self.error_at(start, "unterminated string")),
        }
    }

    fn gene(&mut self) -> Result<Gene, ParseError> {
        self.expect('(')?;
        let op = self.string()?;
        self.expect(',')?;
        let first = self.int()?;
        // FairDARTS's `('op', to, from)`: the node the gene feeds, then its input.
        let gene = if self.eat(',') && self.peek().is_some_and(|c| c.is_ascii_digit()) {
            let input = self.int()?;
            self.eat(',');
            Gene::to(op, first, input)
        } else {
            Gene::new(op, first)
        };
        self.expect(')')?;
        Ok(gene)
    }

    /// A `[...]` list of genes (possibly nested per node) or of integers.
    fn list(&mut self) -> Result<Value, ParseError> {
        self.nested(Self::list_inner)
    }

    /// Run `f` one nesting level deeper, refusing to go past [`MAX_DEPTH`] (so a hostile input
    /// cannot overflow the stack).
    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Value, ParseError>,
    ) -> Result<Value, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_at(self.pos, format!("lists nested more than {MAX_DEPTH} deep")));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn too_many(&self, at: usize) -> ParseError {
        self.error_at(at, format!("more than {MAX_ITEMS} items"))
    }

    fn list_inner(&mut self) -> Result<Value, ParseError> {
        let at = self.pos;
        self.expect('[')?;
        let mut genes = Vec::new();
        let mut ints = Vec::new();
        loop {
            match self.peek() {
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some('(') => {
                    if !ints.is_empty() {
                        return Err(self.expected("an integer (this list holds integers)"));
                    }
                    genes.push(self.gene()?);
                }
                Some('[') => {
                    if !ints.is_empty() {
                        return Err(self.expected("an integer (this list holds integers)"));
                    }
                    let at = self.pos;
                    match self.list()? {
                        Value::Genes(g) => genes.extend(g),
                        Value::Ints(i) if i.is_empty() => {}
                        Value::Ints(_) => {
                            return Err(self.error_at(at, "nested lists may only hold genes"))
                        }
                    }
                }
                Some(c) if c.is_ascii_digit() => {
                    if !genes.is_empty() {
                        return Err(self.expected("a gene `('op', input)` (this list holds genes)"));
                    }
                    ints.push(self.int()?);
                }
                _ => return Err(self.expected("a gene `('op', input)`, an integer or `]`")),
            }
            if genes.len() + ints.len() > MAX_ITEMS {
                return Err(self.too_many(at));
            }
            if !self.eat(',') {
                self.expect(']')?;
                break;
            }
        }
        Ok(if genes.is_empty() {
            Value::Ints(ints)
        } else {
            Value::Genes(genes)
        })
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some('[') => self.list(),
            Some(c) if c.is_ascii_alphabetic() => {
                let (at, name) = self.ident().expect("peeked a letter");
                match name {
                    "range" => {
                        self.expect('(')?;
                        let a = self.int()?;
                        let b = if self.eat(',') {
                            if self.peek() == Some(')') {
                                None
                            } else {
                                Some(self.int()?)
                            }
                        } else {
                            None
                        };
                        self.eat(',');
                        self.expect(')')?;
                        let (a, b) = match b {
                            Some(b) => (a, b),
                            None => (0, a),
                        };
                        if b.saturating_sub(a) > MAX_ITEMS {
                            return Err(self.too_many(at));
                        }
                        Ok(Value::Ints((a..b).collect()))
                    }
                    "list" => {
                        self.expect('(')?;
                        let v = self.nested(Self::value)?;
                        self.expect(')')?;
                        Ok(v)
                    }
                    other => Err(self.error_at(
                        at,
                        format!("expected a list or `range(a, b)`, found `{other}`"),
                    )),
                }
            }
            _ => Err(self.expected("a list or `range(a, b)`")),
        }
    }

    /// Parse `[name [= name]] ( field=value, ... )` into (name offset, field, value) triples.
    fn fields(&mut self) -> Result<Vec<(usize, String, Value)>, ParseError> {
        // Optional `NAME =` prefix and/or constructor name.
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            self.ident();
            if self.eat('=') && self.ident().is_none() {
                return Err(self.expected("a constructor name such as `Genotype`"));
            }
        }
        self.expect('(')?;
        let mut out: Vec<(usize, String, Value)> = Vec::new();
        loop {
            if self.eat(')') {
                break;
            }
            let (at, name) = self
                .ident()
                .ok_or_else(|| self.expected("a field name such as `normal`"))?;
            if out.iter().any(|(_, n, _)| n == name) {
                return Err(self.error_at(at, format!("field `{name}` given twice")));
            }
            self.expect('=')?;
            let v = self.value()?;
            out.push((at, name.to_string(), v));
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        if self.peek().is_some() {
            return Err(self.expected("end of input"));
        }
        Ok(out)
    }
}

fn take(
    p: &Parser,
    fields: &mut Vec<(usize, String, Value)>,
    name: &str,
    want_genes: bool,
) -> Result<Value, ParseError> {
    let i = fields
        .iter()
        .position(|(_, n, _)| n == name)
        .ok_or_else(|| p.error_at(p.src.len(), format!("missing field `{name}`")))?;
    let (at, _, v) = fields.remove(i);
    match (&v, want_genes) {
        (Value::Genes(_), true) | (Value::Ints(_), false) => Ok(v),
        // An empty list parses as integers; accept it as an (empty) gene list.
        (Value::Ints(x), true) if x.is_empty() => Ok(Value::Genes(vec![])),
        (_, true) => Err(p.error_at(
            at,
            format!("field `{name}` must be a list of genes `('op', input)`"),
        )),
        (_, false) => Err(p.error_at(
            at,
            format!("field `{name}` must be a list of integers or `range(a, b)`"),
        )),
    }
}

fn genes(v: Value) -> Vec<Gene> {
    match v {
        Value::Genes(g) => g,
        Value::Ints(_) => vec![],
    }
}

fn ints(v: Value) -> Vec<usize> {
    match v {
        Value::Ints(i) => i,
        Value::Genes(_) => vec![],
    }
}

fn finish(p: &Parser, fields: &[(usize, String, Value)], known: &str) -> Result<(), ParseError> {
    match fields.first() {
        Some((at, name, _)) => {
            Err(p.error_at(*at, format!("unknown field `{name}` (expected {known})")))
        }
        None => Ok(()),
    }
}

/// Parse a convolutional genotype (`normal`, `normal_concat`, `reduce`, `reduce_concat`).
/// The structure is validated too (two genes per node, inputs from earlier states).
pub fn parse_conv(text: &str) -> Result<Genotype, ParseError> {
    let mut p = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    let mut f = p.fields()?;
    let g = Genotype {
        normal: genes(take(&p, &mut f, "normal", true)?),
        normal_concat: ints(take(&p, &mut f, "normal_concat", false)?),
        reduce: genes(take(&p, &mut f, "reduce", true)?),
        reduce_concat: ints(take(&p, &mut f, "reduce_concat", false)?),
    };
    finish(&p, &f, "normal, normal_concat, reduce, reduce_concat")?;
    g.validate()
        .map_err(|e| p.error_at(0, format!("invalid genotype: {e}")))?;
    Ok(g)
}

/// Parse a recurrent genotype (`recurrent`, `concat`).
pub fn parse_recurrent(text: &str) -> Result<RecurrentGenotype, ParseError> {
    let mut p = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    let mut f = p.fields()?;
    let g = RecurrentGenotype {
        recurrent: genes(take(&p, &mut f, "recurrent", true)?),
        concat: ints(take(&p, &mut f, "concat", false)?),
    };
    finish(&p, &f, "recurrent, concat")?;
    g.validate()
        .map_err(|e| p.error_at(0, format!("invalid genotype: {e}")))?;
    Ok(g)
}

fn fmt_genes(genes: &[Gene]) -> String {
    let items: Vec<String> = genes
        .iter()
        .map(|g| match g.node {
            Some(node) => format!("('{}', {node}, {})", g.op, g.input),
            None => format!("('{}', {})", g.op, g.input),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Concat as Python prints it: `range(a, b)` when contiguous and non-empty, else a list.
fn fmt_concat(c: &[usize]) -> String {
    let contiguous = !c.is_empty() && c.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        format!("range({}, {})", c[0], c[c.len() - 1] + 1)
    } else {
        let items: Vec<String> = c.iter().map(|x| x.to_string()).collect();
        format!("[{}]", items.join(", "))
    }
}

/// Write a convolutional genotype in the reference's notation (as its search log prints it).
pub fn to_python(g: &Genotype) -> String {
    format!(
        "Genotype(normal={}, normal_concat={}, reduce={}, reduce_concat={})",
        fmt_genes(&g.normal),
        fmt_concat(&g.normal_concat),
        fmt_genes(&g.reduce),
        fmt_concat(&g.reduce_concat)
    )
}

/// Write a recurrent genotype in the reference's notation.
pub fn recurrent_to_python(g: &RecurrentGenotype) -> String {
    format!(
        "Genotype(recurrent={}, concat={})",
        fmt_genes(&g.recurrent),
        fmt_concat(&g.concat)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DARTS_V2: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

    #[test]
    fn round_trip_python_and_json() {
        let g = parse_conv(DARTS_V2).unwrap();
        assert_eq!(g.normal.len(), 8);
        assert_eq!(g.normal[7], Gene::new("dil_conv_3x3", 2));
        let text = to_python(&g);
        assert!(text.contains("normal_concat=range(2, 6)"));
        assert_eq!(parse_conv(&text).unwrap(), g);
        let json = g.to_json();
        assert_eq!(crate::parse_conv_any(&json).unwrap(), g);
        assert_eq!(crate::parse_conv_any(&text).unwrap(), g);
    }

    #[test]
    fn multiline_assignment_comments_double_quotes_nested_and_range() {
        let src = r#"
PC_DARTS_cifar = Genotype(
    # grouped per node, double quotes, trailing commas
    normal=[[("sep_conv_3x3", 1), ("skip_connect", 0)],
            [("sep_conv_3x3", 0), ("dil_conv_3x3", 1),],],
    normal_concat=range(2, 4),
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),],
    reduce_concat=list(range(2,4)),
)
"#;
        let g = parse_conv(src).unwrap();
        assert_eq!(g.normal.len(), 4);
        assert_eq!(g.normal_concat, vec![2, 3]);
        assert_eq!(g.reduce_concat, vec![2, 3]);
        assert_eq!(g.normal[3], Gene::new("dil_conv_3x3", 1));
    }

    #[test]
    fn recurrent_round_trip() {
        let src = "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))";
        let g = parse_recurrent(src).unwrap();
        assert_eq!(g.concat, (1..9).collect::<Vec<_>>());
        assert_eq!(recurrent_to_python(&g), src);
        assert_eq!(crate::parse_recurrent_any(&g.to_json()).unwrap(), g);
    }

    fn err(src: &str) -> ParseError {
        parse_conv(src).unwrap_err()
    }

    #[test]
    fn malformed_inputs_point_at_the_problem() {
        let e = err(
            "Genotype(normal=[('sep_conv_3x3' 0)], normal_concat=[2], reduce=[], reduce_concat=[])",
        );
        assert_eq!((e.line, e.column), (1, 34));
        assert!(e.message.contains("expected `,`"), "{e}");

        let e = err("Genotype(normal=[('sep_conv_3x3, 0)])");
        assert!(e.message.contains("unterminated string"), "{e}");

        let e = err("Genotype(\n  normal=[('a', 0), ('b', 1)],\n  normal_concat=[2],\n  reduce=[('a', 0), ('b', 1)],\n  reduce_concat=[2],\n  colour=[1],\n)");
        assert_eq!(e.line, 6);
        assert!(e.message.contains("unknown field `colour`"), "{e}");

        let e = err(
            "Genotype(normal=[('a', 0), ('b', 1)], normal_concat=[2], reduce=[('a', 0), ('b', 1)])",
        );
        assert!(e.message.contains("missing field `reduce_concat`"), "{e}");

        let e =
            err("Genotype(normal=[('a', 0), 3], normal_concat=[2], reduce=[], reduce_concat=[])");
        assert!(e.message.contains("this list holds genes"), "{e}");

        let e = err("Genotype(normal=[('a', -1)])");
        assert!(e.message.contains("non-negative integer"), "{e}");

        let e = err("Genotype(normal=[('a', 0), ('b', 5)], normal_concat=[2], reduce=[('a', 0), ('b', 1)], reduce_concat=[2])");
        assert!(e.message.contains("input 5"), "{e}");

        let e = err(
            "Genotype(normal=[('a', 0)], normal_concat=[2], reduce=[('a', 0)], reduce_concat=[2])",
        );
        assert!(e.message.contains("even"), "{e}");

        let e = err("Genotype(normal=[('a', 0), ('b', 1)], normal_concat=[2], reduce=[('a', 0), ('b', 1)], reduce_concat=[2]) extra");
        assert!(e.message.contains("end of input"), "{e}");

        let e = err("Genotype(normal=[('a', 0), ('b', 1)], normal=[2])");
        assert!(e.message.contains("given twice"), "{e}");

        let e = err("Genotype(normal=foo(1))");
        assert!(e.message.contains("found `foo`"), "{e}");

        let e = err("Genotype(normal_concat=[99999999999999999999999])");
        assert!(e.message.contains("out of range"), "{e}");

        for bad in [
            "",
            "(",
            "Genotype",
            "Genotype(normal=",
            "Genotype(normal=[",
            "Genotype(normal=[(",
            "Genotype(normal=[('a'",
            "Genotype(normal=range(",
            "= Genotype()",
            "Genotype(normal=[('',0)])",
            "é(",
            "Genotype(normal=[('a', 0)],,)",
        ] {
            let e = parse_conv(bad).unwrap_err();
            assert!(e.offset <= bad.len(), "{bad}: {e}");
        }
    }

    #[test]
    fn display_has_position() {
        let e = err("Genotype(x)");
        assert_eq!(e.to_string(), "line 1, column 11: expected `=`, found `)`");
    }
}

//! containerd's filter expressions, as Walk takes them: a list of
//! filters, any of which may match; a filter is selectors joined by `,`,
//! all of which must match. A selector is a field path (`name`, `parent`,
//! `kind`, `labels.KEY` or `labels."KEY"`), alone (the field is present
//! and not empty) or with `==` / `!=` and a value, bare or quoted.
//! Regular expressions (`~=`) are refused in one line.

use crate::error::{Error, Result};
use crate::meta::{Kind, Record};

#[derive(Debug, PartialEq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, PartialEq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// Filters parsed once, matched against every snapshot.
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let parsed = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_filter(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filters(parsed))
    }

    /// No filter matches everything.
    pub fn matches(&self, name: &str, r: &Record) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|all| all.iter().all(|s| s.matches(name, r)))
    }
}

impl Selector {
    fn matches(&self, name: &str, r: &Record) -> bool {
        let value = field(&self.path, name, r);
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
        }
    }
}

fn field(path: &[String], name: &str, r: &Record) -> Option<String> {
    match path {
        [f] if f == "name" => Some(name.to_string()),
        [f] if f == "parent" => Some(r.parent.clone()),
        [f] if f == "kind" => Some(kind_name(r.kind).to_string()),
        [f, key] if f == "labels" => r.labels.get(key).cloned(),
        _ => None,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::View => "view",
        Kind::Active => "active",
        Kind::Committed => "committed",
    }
}

fn invalid(f: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("filter {f:?}: {why}"))
}

fn parse_filter(f: &str) -> Result<Vec<Selector>> {
    let mut rest = f.trim();
    let mut out = Vec::new();
    loop {
        let (sel, after) = parse_selector(rest).map_err(|why| invalid(f, &why))?;
        out.push(sel);
        match after.trim_start().strip_prefix(',') {
            Some(more) => rest = more.trim_start(),
            None if after.trim().is_empty() => return Ok(out),
            None => return Err(invalid(f, &format!("unexpected {:?}", after.trim()))),
        }
    }
}

/// One selector from the front of `s`, and what follows it.
fn parse_selector(s: &str) -> std::result::Result<(Selector, &str), String> {
    let (path, mut rest) = parse_path(s)?;
    rest = rest.trim_start();
    let op = ["==", "!=", "~="]
        .into_iter()
        .find(|op| rest.starts_with(op));
    let Some(op) = op else {
        return Ok((
            Selector {
                path,
                op: Op::Present,
            },
            rest,
        ));
    };
    if op == "~=" {
        return Err("regular expressions (~=) are not supported".into());
    }
    let (value, rest) = parse_value(rest[2..].trim_start())?;
    let op = if op == "==" {
        Op::Equal(value)
    } else {
        Op::NotEqual(value)
    };
    Ok((Selector { path, op }, rest))
}

fn parse_path(s: &str) -> std::result::Result<(Vec<String>, &str), String> {
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let (part, after) = if rest.starts_with('"') {
            parse_quoted(rest)?
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '/'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("a field name expected at {rest:?}"));
            }
            (rest[..end].to_string(), &rest[end..])
        };
        path.push(part);
        match after.strip_prefix('.') {
            Some(more) => rest = more,
            None => return Ok((path, after)),
        }
    }
}

fn parse_value(s: &str) -> std::result::Result<(String, &str), String> {
    if s.starts_with('"') {
        return parse_quoted(s);
    }
    let end = s.find(',').unwrap_or(s.len());
    Ok((s[..end].trim().to_string(), &s[end..]))
}

/// A double-quoted string with backslash escapes.
fn parse_quoted(s: &str) -> std::result::Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated quote in {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn rec(parent: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            id: 1,
            kind: Kind::Committed,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            layer: None,
        }
    }

    fn m(filters: &[&str], name: &str, r: &Record) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(name, r)
    }

    #[test]
    fn labels_names_and_kinds_select_as_containerd_says() {
        let r = rec("p", &[("containerd.io/gc.root", "x"), ("a", "1")]);
        assert!(m(&[], "n", &r));
        assert!(m(&[r#"labels."containerd.io/gc.root""#], "n", &r));
        assert!(m(&["labels.a==1"], "n", &r));
        assert!(!m(&["labels.a==2"], "n", &r));
        assert!(m(&["labels.a!=2,kind==committed"], "n", &r));
        assert!(!m(&["labels.b"], "n", &r));
        assert!(m(&["labels.b", "name==n"], "n", &r), "any filter may match");
        assert!(!m(&["name==n,parent==q"], "n", &r), "all selectors must");
        assert!(m(&[r#"name=="n""#, "parent==p"], "n", &r));
    }

    #[test]
    fn bad_filters_are_one_line() {
        for bad in ["labels.a~=x.*", "==x", r#"labels."open"#, "name==a b,"] {
            let e = Filters::parse(&[bad.to_string()]).err();
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e:?}");
        }
    }
}

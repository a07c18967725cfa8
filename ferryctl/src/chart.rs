//! ferry's chart (`charts/ferry`), rendered by ferryctl itself: no Helm binary is needed, and the same
//! templates stay installable with Helm.
//!
//! The templates keep to this subset of Helm's template language (anything else is refused with the file
//! and line, and a unit test renders every template of the chart, so the chart cannot drift out of it):
//!
//! | construct | meaning |
//! |---|---|
//! | `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`, `{{ .Release.Name }}`, `{{ .Chart.Version }}`, `{{ .Chart.AppVersion }}` | a value; a missing key is an error, not an empty string |
//! | `{{ "text" }}`, `{{ 3 }}` | literals |
//! | `{{ X \| f a }}` and `{{ f a X }}` | pipelines: `quote`, `toYaml`, `indent N`, `nindent N`, `join "sep"`, `default D` |
//! | `{{ if X }}…{{ else }}…{{ end }}` | false, 0, "", null, empty list or map are false |
//! | `{{ range X }}…{{ . }}…{{ end }}` | over a list; `.` is the element, `$.Values…` the root |
//! | `{{- … -}}` | trim whitespace before / after |
//! | `{{/* comment */}}` | nothing |

use std::fmt;

use serde_json::{Map, Value};

/// A chart that cannot be rendered, or values that cannot be used: the place, what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartError {
    /// A template outside the subset, or one that refers to a missing value.
    #[error("{file}:{line}: {what}; fix: {fix}")]
    Template {
        /// Template file.
        file: String,
        /// 1-based line of the action.
        line: usize,
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// A `--set` key that values.yaml does not have.
    #[error("--set {key}: no such value; fix: one of {known}")]
    UnknownKey {
        /// The key given.
        key: String,
        /// Keys at that level.
        known: String,
    },
    /// A value of the wrong shape or out of range.
    #[error("{key}={value:?}: {reason}; fix: {fix}")]
    BadValue {
        /// The value's key.
        key: String,
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
        /// How to fix it.
        fix: String,
    },
}

/// What templates see besides `.Values`.
#[derive(Clone, Debug)]
pub struct Release {
    /// `.Release.Name`.
    pub name: String,
    /// `.Release.Namespace`.
    pub namespace: String,
    /// `.Chart.Version` and `.Chart.AppVersion`.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Expr(Pipeline, usize),
    If(Pipeline, Vec<Node>, Vec<Node>, usize),
    Range(Pipeline, Vec<Node>, usize),
}

type Pipeline = Vec<Vec<Arg>>;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Path { root: bool, keys: Vec<String> },
    Str(String),
    Num(i64),
    Ident(String),
}

struct Action {
    body: String,
    line: usize,
}

fn err(file: &str, line: usize, what: impl Into<String>, fix: impl Into<String>) -> ChartError {
    ChartError::Template {
        file: file.into(),
        line,
        what: what.into(),
        fix: fix.into(),
    }
}

const SUBSET_FIX: &str = "keep to the subset ferryctl renders (values, quote, toYaml, indent, nindent, join, default, if/else, range; see ferryctl/src/chart.rs)";

/// Splits a template into text and actions, applying `{{-` / `-}}` trimming.
fn lex(file: &str, src: &str) -> Result<Vec<Result<String, Action>>, ChartError> {
    let mut out: Vec<Result<String, Action>> = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| err(file, line, "an action is not closed with }}", "close it"))?;
        let mut body = &after[..end];
        if let Some(b) = body.strip_prefix('-') {
            text = text.trim_end().to_string();
            body = b;
        }
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            trim_next = true;
            body = b;
        }
        line += rest[..start].matches('\n').count();
        if !text.is_empty() {
            out.push(Ok(text));
        }
        out.push(Err(Action {
            body: body.trim().to_string(),
            line,
        }));
        line += body.matches('\n').count();
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        out.push(Ok(text.to_string()));
    }
    Ok(out)
}

fn words(file: &str, line: usize, s: &str) -> Result<Vec<String>, ChartError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::from("\"");
            loop {
                match chars.next() {
                    Some('\\') => {
                        if let Some(n) = chars.next() {
                            w.push(n);
                        }
                    }
                    Some('"') => break,
                    Some(x) => w.push(x),
                    None => return Err(err(file, line, "a string is not closed", "close the quote")),
                }
            }
            out.push(w);
        } else if c == '|' {
            chars.next();
            out.push("|".into());
        } else {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() || x == '|' || x == '"' {
                    break;
                }
                w.push(x);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn parse_pipeline(file: &str, line: usize, s: &str) -> Result<Pipeline, ChartError> {
    let mut cmds: Pipeline = vec![vec![]];
    for w in words(file, line, s)? {
        if w == "|" {
            cmds.push(vec![]);
            continue;
        }
        let arg = if let Some(lit) = w.strip_prefix('"') {
            Arg::Str(lit.to_string())
        } else if let Ok(n) = w.parse::<i64>() {
            Arg::Num(n)
        } else if w == "." {
            Arg::Path {
                root: false,
                keys: vec![],
            }
        } else if let Some(p) = w.strip_prefix("$.") {
            Arg::Path {
                root: true,
                keys: p.split('.').map(str::to_string).collect(),
            }
        } else if let Some(p) = w.strip_prefix('.') {
            Arg::Path {
                root: false,
                keys: p.split('.').map(str::to_string).collect(),
            }
        } else if ["quote", "toYaml", "indent", "nindent", "join", "default"].contains(&w.as_str()) {
            Arg::Ident(w)
        } else {
            return Err(err(
                file,
                line,
                format!("`{w}` is not in the template subset"),
                SUBSET_FIX,
            ));
        };
        cmds.last_mut().expect("one command").push(arg);
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err(err(file, line, "an empty pipeline stage", "remove the stray |"));
    }
    Ok(cmds)
}

/// An open block while parsing: its nodes so far, the action that opened it (none at the root), and the
/// `then` branch once an `else` was seen.
type Frame = (Vec<Node>, Option<Action>, Option<Vec<Node>>);

fn parse(file: &str, src: &str) -> Result<Vec<Node>, ChartError> {
    let tokens = lex(file, src)?;
    let mut stack: Vec<Frame> = vec![(vec![], None, None)];
    for t in tokens {
        match t {
            Ok(text) => stack.last_mut().expect("root").0.push(Node::Text(text)),
            Err(a) => {
                let (kw, rest) = a.body.split_once(char::is_whitespace).unwrap_or((&a.body, ""));
                match kw {
                    _ if a.body.starts_with("/*") => {
                        if !a.body.ends_with("*/") {
                            return Err(err(file, a.line, "a comment is not closed with */", "close it"));
                        }
                    }
                    "if" | "range" => stack.push((vec![], Some(a), None)),
                    "else" => {
                        let top = stack.last_mut().expect("root");
                        if !rest.trim().is_empty()
                            || top.2.is_some()
                            || !top.1.as_ref().is_some_and(|o| o.body.starts_with("if"))
                        {
                            return Err(err(
                                file,
                                a.line,
                                "`else` outside an `if` (or `else if`)",
                                SUBSET_FIX,
                            ));
                        }
                        top.2 = Some(std::mem::take(&mut top.0));
                    }
                    "end" => {
                        let (body, open, then) = stack.pop().expect("root");
                        let Some(open) = open else {
                            return Err(err(file, a.line, "`end` without `if` or `range`", "remove it"));
                        };
                        let (okw, orest) = open
                            .body
                            .split_once(char::is_whitespace)
                            .unwrap_or((&open.body, ""));
                        let p = parse_pipeline(file, open.line, orest)?;
                        let node = match (okw, then) {
                            ("if", Some(then)) => Node::If(p, then, body, open.line),
                            ("if", None) => Node::If(p, body, vec![], open.line),
                            (_, _) => Node::Range(p, body, open.line),
                        };
                        stack.last_mut().expect("root").0.push(node);
                    }
                    "define" | "template" | "include" | "with" | "block" | "tpl" | "required" | "lookup" => {
                        return Err(err(
                            file,
                            a.line,
                            format!("`{kw}` is not in the template subset"),
                            SUBSET_FIX,
                        ));
                    }
                    _ if a.body.contains(":=") || a.body.starts_with('$') && !a.body.starts_with("$.") => {
                        return Err(err(
                            file,
                            a.line,
                            "template variables are not in the subset",
                            SUBSET_FIX,
                        ));
                    }
                    _ => {
                        let p = parse_pipeline(file, a.line, &a.body)?;
                        stack.last_mut().expect("root").0.push(Node::Expr(p, a.line));
                    }
                }
            }
        }
    }
    let (nodes, open, _) = stack.pop().expect("root");
    if let Some(open) = open {
        return Err(err(file, open.line, "this block has no `end`", "add {{ end }}"));
    }
    if !stack.is_empty() {
        return Err(err(file, 0, "unbalanced blocks", "match every if/range with end"));
    }
    Ok(nodes)
}

struct Scope<'a> {
    root: &'a Value,
    dot: &'a Value,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn to_yaml(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        _ => serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    }
}

fn lookup(
    file: &str,
    line: usize,
    scope: &Scope<'_>,
    root: bool,
    keys: &[String],
) -> Result<Value, ChartError> {
    let mut v = if root { scope.root } else { scope.dot };
    let mut walked = String::new();
    for k in keys {
        walked.push('.');
        walked.push_str(k);
        v = v.get(k).ok_or_else(|| {
            err(
                file,
                line,
                format!("{walked} is not set"),
                "add it to values.yaml (every value the chart uses has a default there)",
            )
        })?;
    }
    Ok(v.clone())
}

fn eval(file: &str, line: usize, p: &Pipeline, scope: &Scope<'_>) -> Result<Value, ChartError> {
    let mut piped: Option<Value> = None;
    for cmd in p {
        let mut args: Vec<Value> = Vec::new();
        for a in &cmd[1..] {
            args.push(match a {
                Arg::Path { root, keys } => lookup(file, line, scope, *root, keys)?,
                Arg::Str(s) => Value::String(s.clone()),
                Arg::Num(n) => Value::from(*n),
                Arg::Ident(f) => {
                    return Err(err(file, line, format!("`{f}` used as an argument"), SUBSET_FIX));
                }
            });
        }
        if let Some(v) = piped.take() {
            args.push(v);
        }
        let value = match &cmd[0] {
            Arg::Ident(f) => call(file, line, f, &args)?,
            first => {
                if !args.is_empty() {
                    return Err(err(
                        file,
                        line,
                        "a value cannot take arguments",
                        "pipe it into a function",
                    ));
                }
                match first {
                    Arg::Path { root, keys } => lookup(file, line, scope, *root, keys)?,
                    Arg::Str(s) => Value::String(s.clone()),
                    Arg::Num(n) => Value::from(*n),
                    Arg::Ident(_) => unreachable!("matched above"),
                }
            }
        };
        piped = Some(value);
    }
    Ok(piped.unwrap_or(Value::Null))
}

fn call(file: &str, line: usize, f: &str, args: &[Value]) -> Result<Value, ChartError> {
    let want = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(err(
                file,
                line,
                format!("`{f}` takes {n} argument(s), got {}", args.len()),
                SUBSET_FIX,
            ))
        }
    };
    let width = |v: &Value| {
        v.as_u64().map(|n| n as usize).ok_or_else(|| {
            err(
                file,
                line,
                format!("`{f}` needs a number"),
                "give the indent width first",
            )
        })
    };
    Ok(match f {
        "quote" => {
            want(1)?;
            Value::String(serde_json::to_string(&text_of(&args[0])).expect("a string serialises"))
        }
        "toYaml" => {
            want(1)?;
            Value::String(to_yaml(&args[0]))
        }
        "indent" | "nindent" => {
            want(2)?;
            let pad = " ".repeat(width(&args[0])?);
            let body = text_of(&args[1])
                .lines()
                .map(|l| format!("{pad}{l}"))
                .collect::<Vec<_>>()
                .join("\n");
            Value::String(if f == "nindent" { format!("\n{body}") } else { body })
        }
        "join" => {
            want(2)?;
            let list = args[1]
                .as_array()
                .ok_or_else(|| err(file, line, "`join` needs a list", "join a list value"))?;
            Value::String(
                list.iter()
                    .map(text_of)
                    .collect::<Vec<_>>()
                    .join(&text_of(&args[0])),
            )
        }
        "default" => {
            want(2)?;
            if truthy(&args[1]) {
                args[1].clone()
            } else {
                args[0].clone()
            }
        }
        other => {
            return Err(err(
                file,
                line,
                format!("`{other}` is not in the template subset"),
                SUBSET_FIX,
            ));
        }
    })
}

fn exec(file: &str, nodes: &[Node], scope: &Scope<'_>, out: &mut String) -> Result<(), ChartError> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(p, line) => out.push_str(&text_of(&eval(file, *line, p, scope)?)),
            Node::If(p, then, otherwise, line) => {
                let branch = if truthy(&eval(file, *line, p, scope)?) {
                    then
                } else {
                    otherwise
                };
                exec(file, branch, scope, out)?;
            }
            Node::Range(p, body, line) => {
                let v = eval(file, *line, p, scope)?;
                let items = match &v {
                    Value::Array(a) => a.clone(),
                    Value::Null => vec![],
                    _ => {
                        return Err(err(
                            file,
                            *line,
                            "`range` over something that is not a list",
                            "range over a list value",
                        ));
                    }
                };
                for item in &items {
                    exec(
                        file,
                        body,
                        &Scope {
                            root: scope.root,
                            dot: item,
                        },
                        out,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The `ferry_…` metric names a PromQL expression reads (pure): what the dashboard needs served.
#[cfg(test)]
pub fn metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ferry_") {
        // only at the start of a name, not inside another word
        let starts_name = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if starts_name {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Renders one template with `values` (the merged values) for `release`.
pub fn render(file: &str, template: &str, values: &Value, release: &Release) -> Result<String, ChartError> {
    let nodes = parse(file, template)?;
    let root = serde_json::json!({
        "Values": values,
        "Release": { "Name": release.name, "Namespace": release.namespace },
        "Chart": { "Name": "ferry", "Version": release.version, "AppVersion": release.version },
    });
    let mut out = String::new();
    exec(
        file,
        &nodes,
        &Scope {
            root: &root,
            dot: &root,
        },
        &mut out,
    )?;
    Ok(out)
}

/// Applies one `--set key.path=value` to `values`: the key must exist in values.yaml, and the value takes
/// the type of its default (a bool, a number, a list as `a,b`, or a string).
pub fn apply_set(values: &mut Value, set: &str) -> Result<(), ChartError> {
    let (key, raw) = set.split_once('=').ok_or_else(|| ChartError::BadValue {
        key: set.into(),
        value: String::new(),
        reason: "no `=`".into(),
        fix: "--set key.path=value".into(),
    })?;
    let mut v = &mut *values;
    for part in key.split('.') {
        let known = v
            .as_object()
            .map(|o| {
                o.keys()
                    .map(|k| format!("{}{k}", prefix(key, part)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        v = match v
            .as_object_mut()
            .and_then(|o: &mut Map<String, Value>| o.get_mut(part))
        {
            Some(next) => next,
            None => {
                return Err(ChartError::UnknownKey {
                    key: key.into(),
                    known,
                });
            }
        };
    }
    let bad = |reason: &str, fix: &str| ChartError::BadValue {
        key: key.into(),
        value: raw.into(),
        reason: reason.into(),
        fix: fix.into(),
    };
    *v = match v {
        Value::Bool(_) => Value::Bool(raw.parse().map_err(|_| bad("not a bool", "true or false"))?),
        Value::Number(_) => Value::from(
            raw.parse::<i64>()
                .map_err(|_| bad("not a whole number", "a number such as 2"))?,
        ),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.trim().into()))
                .collect(),
        ),
        Value::Object(_) => return Err(bad("is a group of values", "set one of its keys (key.sub=value)")),
        _ => Value::String(raw.into()),
    };
    Ok(())
}

fn prefix(key: &str, part: &str) -> String {
    let idx = key.find(part).unwrap_or(0);
    key[..idx].to_string()
}

impl Release {
    /// ferry's release in `namespace`, at this ferryctl's version (the chart's version).
    pub fn ferry(namespace: &str) -> Self {
        Self {
            name: "ferry".into(),
            namespace: namespace.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {} ({})", self.name, self.namespace, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rel() -> Release {
        Release::ferry("ferry-system")
    }

    fn r(t: &str, v: Value) -> Result<String, ChartError> {
        render("t.yaml", t, &v, &rel())
    }

    #[test]
    fn values_pipelines_and_trimming() {
        let v = json!({"a": {"b": "x", "n": 3, "list": ["p", "q"], "map": {"k": 1}}});
        assert_eq!(
            r("v={{ .Values.a.b }} n={{ .Values.a.n }}", v.clone()).unwrap(),
            "v=x n=3"
        );
        assert_eq!(r("{{ .Values.a.b | quote }}", v.clone()).unwrap(), "\"x\"");
        assert_eq!(r("{{ quote .Values.a.n }}", v.clone()).unwrap(), "\"3\"");
        assert_eq!(r("{{ join \",\" .Values.a.list }}", v.clone()).unwrap(), "p,q");
        assert_eq!(r("{{ .Values.a.list | join \",\" }}", v.clone()).unwrap(), "p,q");
        assert_eq!(
            r("x:{{ toYaml .Values.a.map | nindent 2 }}", v.clone()).unwrap(),
            "x:\n  k: 1"
        );
        assert_eq!(
            r("{{ .Release.Namespace }}/{{ .Chart.Version }}", v.clone()).unwrap(),
            "ferry-system/0.1.0"
        );
        assert_eq!(r("a\n  {{- .Values.a.b }}\n", v.clone()).unwrap(), "ax\n");
        assert_eq!(r("a {{ .Values.a.b -}}  \n b", v.clone()).unwrap(), "a xb");
        assert_eq!(r("{{ \"\" | default \"d\" }}", v.clone()).unwrap(), "d");
        assert_eq!(r("{{/* a comment */}}ok", v).unwrap(), "ok");
    }

    #[test]
    fn if_else_and_range() {
        let v = json!({"on": true, "off": false, "zero": 0, "empty": "", "list": ["a", "b"], "none": []});
        assert_eq!(
            r("{{ if .Values.on }}y{{ else }}n{{ end }}", v.clone()).unwrap(),
            "y"
        );
        for k in ["off", "zero", "empty", "none"] {
            assert_eq!(
                r(
                    &format!("{{{{ if .Values.{k} }}}}y{{{{ else }}}}n{{{{ end }}}}"),
                    v.clone()
                )
                .unwrap(),
                "n",
                "{k}"
            );
        }
        assert_eq!(
            r(
                "{{- range .Values.list }}\n- {{ . }} of {{ $.Release.Name }}{{ end }}",
                v.clone()
            )
            .unwrap(),
            "\n- a of ferry\n- b of ferry"
        );
        assert_eq!(r("{{ range .Values.none }}x{{ end }}", v).unwrap(), "");
    }

    #[test]
    fn anything_outside_the_subset_is_refused_with_file_line_and_fix() {
        let v = json!({"a": 1});
        for (t, what) in [
            ("x\n{{ include \"ferry.labels\" . }}", "`include`"),
            ("{{ define \"x\" }}{{ end }}", "`define`"),
            ("{{ with .Values.a }}{{ end }}", "`with`"),
            ("{{ $x := 1 }}", "variables"),
            ("{{ .Values.a | upper }}", "`upper`"),
            ("{{ if .Values.a }}", "no `end`"),
            ("{{ end }}", "without"),
            ("{{ .Values.missing }}", ".Values.missing is not set"),
            ("{{ .Values.a", "not closed"),
        ] {
            let e = r(t, v.clone()).unwrap_err();
            let s = e.to_string();
            assert!(
                s.starts_with("t.yaml:") && s.contains(what) && s.contains("fix:"),
                "{t:?}: {s}"
            );
        }
        let e = r("a\nb\n{{ include \"x\" . }}", v).unwrap_err();
        assert!(e.to_string().starts_with("t.yaml:3:"), "{e}");
    }

    #[test]
    fn set_keeps_the_defaults_type_and_refuses_unknown_keys_and_bad_values() {
        let mut v = json!({"agent": {"replicas": 2, "enabled": true, "image": "x", "podCIDRs": ["a"]}});
        apply_set(&mut v, "agent.replicas=3").unwrap();
        apply_set(&mut v, "agent.enabled=false").unwrap();
        apply_set(&mut v, "agent.image=ferry.dev/ferry:0.2.0").unwrap();
        apply_set(&mut v, "agent.podCIDRs=10.244.0.0/16,fd00::/56").unwrap();
        assert_eq!(
            v,
            json!({"agent": {"replicas": 3, "enabled": false, "image": "ferry.dev/ferry:0.2.0",
                             "podCIDRs": ["10.244.0.0/16", "fd00::/56"]}})
        );
        let e = apply_set(&mut v, "agent.replica=3").unwrap_err();
        assert!(matches!(e, ChartError::UnknownKey { .. }));
        assert!(e.to_string().contains("agent.replicas"), "{e}");
        assert!(
            apply_set(&mut v, "agent.replicas=three")
                .unwrap_err()
                .to_string()
                .contains("not a whole number")
        );
        assert!(apply_set(&mut v, "agent=1").is_err());
        assert!(
            apply_set(&mut v, "agent.replicas")
                .unwrap_err()
                .to_string()
                .contains("no `=`")
        );
    }
}

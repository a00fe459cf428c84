//! A strict checker of the Prometheus text exposition format (0.0.4), used when promtool
//! is not installed: syntax of every line, one TYPE/HELP per family before its samples,
//! contiguous families, no duplicate series, histogram bucket consistency, and promtool's
//! naming lints (counters end in `_total`, only counters do, no `quantile` label outside
//! summaries, base units).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !n.starts_with("__")
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse::<f64>().ok(),
    }
}

/// Parses `name{a="b",...} value`; returns (name, labels, value).
type Labels = Vec<(String, String)>;
/// Per histogram family, per label set without `le`: (buckets as (le, count), _count).
type Histograms = HashMap<String, HashMap<String, (Vec<(f64, f64)>, Option<f64>)>>;

fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let (name_end, has_labels) = match line.find(['{', ' ']) {
        Some(i) => (i, line.as_bytes()[i] == b'{'),
        None => return Err("no value".into()),
    };
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name `{name}`"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if has_labels {
        let b = rest.as_bytes();
        let mut i = 1;
        loop {
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let eq = rest[i..].find('=').ok_or("label without =")? + i;
            let lname = &rest[i..eq];
            if !valid_label_name(lname) {
                return Err(format!("invalid label name `{lname}`"));
            }
            if b.get(eq + 1) != Some(&b'"') {
                return Err("label value must be quoted".into());
            }
            let mut j = eq + 2;
            let mut value = String::new();
            loop {
                match b.get(j) {
                    None => return Err("unterminated label value".into()),
                    Some(b'\\') => {
                        match b.get(j + 1) {
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            Some(b'n') => value.push('\n'),
                            _ => return Err("bad escape in label value".into()),
                        }
                        j += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        let ch = rest[j..].chars().next().ok_or("utf-8")?;
                        value.push(ch);
                        j += ch.len_utf8();
                    }
                }
            }
            labels.push((lname.to_string(), value));
            i = j + 1;
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after label".into()),
            }
        }
        rest = &rest[i..];
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected one space before the value")?;
    let mut parts = rest.split(' ');
    let value = parts.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("bad value `{value}`"))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp `{ts}`"))?;
    }
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((name.to_string(), labels, value))
}

/// Checks `text`; returns every problem found (empty = valid).
pub fn check(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    // Histogram: family → labels-without-le → (buckets (le, count), count)
    let mut hist: Histograms = HashMap::new();
    let family_of = |name: &str, types: &HashMap<String, String>| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if matches!(
                    types.get(base).map(|s| s.as_str()),
                    Some("histogram" | "summary")
                ) {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    };
    for (n, line) in text.lines().enumerate() {
        let ln = n + 1;
        let mut p = |m: String| problems.push(format!("line {ln}: {m}: {line}"));
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let kw = it.next().unwrap_or("");
            let name = it.next().unwrap_or("").to_string();
            let arg = it.next().unwrap_or("");
            if kw != "HELP" && kw != "TYPE" {
                continue; // a comment
            }
            if !valid_metric_name(&name) {
                p(format!("invalid metric name `{name}`"));
                continue;
            }
            if current.as_deref() != Some(&name) {
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                if finished.contains(&name) {
                    p(format!("family `{name}` appears twice"));
                }
                current = Some(name.clone());
            }
            if kw == "HELP" {
                if !helps.insert(name.clone()) {
                    p(format!("second HELP for `{name}`"));
                }
                if arg.is_empty() {
                    p(format!("empty HELP for `{name}`"));
                }
            } else {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    p(format!("unknown type `{arg}`"));
                }
                if types.insert(name.clone(), arg.to_string()).is_some() {
                    p(format!("second TYPE for `{name}`"));
                }
                let is_counter = arg == "counter";
                if is_counter && !name.ends_with("_total") {
                    p(format!("counter `{name}` should end in _total"));
                }
                if !is_counter && name.ends_with("_total") {
                    p(format!("non-counter `{name}` should not end in _total"));
                }
                for bad in ["_ms", "_milliseconds", "_kb", "_mb", "_percent"] {
                    if name.ends_with(bad) || name.contains(&format!("{bad}_")) {
                        p(format!("`{name}` is not in base units"));
                    }
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = match parse_sample(line) {
            Ok(s) => s,
            Err(e) => {
                p(e);
                continue;
            }
        };
        let family = family_of(&name, &types);
        if current.as_deref() != Some(&family) {
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            if finished.contains(&family) {
                p(format!("samples of `{family}` are not contiguous"));
            }
            current = Some(family.clone());
        }
        let ty = types.get(&family).cloned();
        if ty.is_none() {
            p(format!("sample of `{family}` without a TYPE line"));
        }
        let mut keyed: Vec<_> = labels.clone();
        keyed.sort();
        let mut seen_names = HashSet::new();
        for (k, _) in &labels {
            if !seen_names.insert(k) {
                p(format!("label `{k}` repeated"));
            }
        }
        if !series.insert(format!("{name}{keyed:?}")) {
            p("duplicate series".into());
        }
        let ty = ty.unwrap_or_default();
        if ty != "summary" && labels.iter().any(|(k, _)| k == "quantile") {
            p("non-summary metrics should not have a `quantile` label".into());
        }
        if ty == "counter" && (value < 0.0 || value.is_nan()) {
            p("counter value must be >= 0".into());
        }
        if ty == "histogram" {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone());
            let rest: Vec<_> = keyed.iter().filter(|(k, _)| k != "le").cloned().collect();
            let entry = hist
                .entry(family.clone())
                .or_default()
                .entry(format!("{rest:?}"))
                .or_default();
            if name.ends_with("_bucket") {
                match le.as_deref().and_then(parse_value) {
                    Some(b) => entry.0.push((b, value)),
                    None => p("bucket without a valid `le`".into()),
                }
            } else if name.ends_with("_count") {
                entry.1 = Some(value);
            }
        } else if labels.iter().any(|(k, _)| k == "le") {
            p("`le` label outside a histogram".into());
        }
    }
    for (family, by_labels) in hist {
        for (labels, (buckets, count)) in by_labels {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, c) in &buckets {
                if le <= last.0 || c < last.1 {
                    problems.push(format!("{family}{labels}: buckets not increasing"));
                }
                last = (le, c);
            }
            if last.0 != f64::INFINITY {
                problems.push(format!("{family}{labels}: no +Inf bucket"));
            } else if count != Some(last.1) {
                problems.push(format!(
                    "{family}{labels}: _count differs from the +Inf bucket"
                ));
            }
        }
    }
    problems
}

/// promtool, if installed (PATH, `PROMTOOL`, or the copy `.ci/run` unpacks under target/).
pub fn promtool() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return Some(p.into());
    }
    let unpacked =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/promtool/usr/bin/promtool");
    if unpacked.exists() {
        return Some(unpacked);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.exists())
    })
}

#[test]
fn strict_parser_rejects_what_promtool_rejects() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert!(check(ok).is_empty(), "{:?}", check(ok));
    for bad in [
        "# TYPE a counter\na 1\n",
        "# TYPE a_total gauge\na_total 1\n",
        "# TYPE g gauge\ng{quantile=\"0.5\"} 1\n",
        "# TYPE g gauge\ng 1\ng 2\n",
        "# TYPE g gauge\ng{x=1} 1\n",
        "# TYPE g gauge\ng abc\n",
        "# TYPE g gauge\ng 1\n# TYPE f gauge\nf 1\ng{a=\"b\"} 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
        "g 1\n",
        "# TYPE latency_ms gauge\nlatency_ms 1\n",
    ] {
        assert!(!check(bad).is_empty(), "accepted: {bad}");
    }
}

/// Runs `promtool check metrics` on `text` when promtool is installed; `Ok(false)` when it
/// is not (then only [`check`] applies), `Err` with its output when it rejects the text.
pub fn promtool_check(text: &str) -> Result<bool, String> {
    use std::io::Write;
    let Some(tool) = promtool() else {
        return Ok(false);
    };
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", tool.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(format!(
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

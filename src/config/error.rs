//! Config errors that tell the operator where the problem is and what is accepted.

use std::fmt;

/// One problem in a config file. `line` is 1-based when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the key (`workers.count`, `upstreams[1].weight`), or a pseudo-field
    /// such as `(file)`, `(yaml)` or `${VAR}`.
    pub field: String,
    /// 1-based line in the file; `None` until `config::parse` finds it with [`locate`], or
    /// when the key cannot be found.
    pub line: Option<usize>,
    /// What is wrong and, where there is a range or a set, what is accepted.
    pub message: String,
}

/// Everything wrong with one file, reported together so one `drover -t` run shows it all.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file's path as displayed, prefixed to every issue.
    pub file: String,
    /// Every problem found, in the order found; at least one.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match issue.line {
                Some(line) => write!(
                    f,
                    "{}:{}: {}: {}",
                    self.file, line, issue.field, issue.message
                )?,
                None => write!(f, "{}: {}: {}", self.file, issue.field, issue.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Finds the 1-based line of a dotted field path (`workers.count`, `upstreams[1].weight`)
/// in YAML text by following indentation. Good enough for the block-style files drover
/// documents; returns `None` rather than guessing when the shape is unusual.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let mut parents: Vec<(String, Option<usize>)> = Vec::new();
    for part in path.split('.') {
        match part.find('[') {
            Some(open) => {
                let idx = part[open + 1..part.len().saturating_sub(1)].parse().ok()?;
                parents.push((part[..open].to_string(), Some(idx)));
            }
            None => parents.push((part.to_string(), None)),
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut min_indent: isize = -1;
    let mut found = None;
    for (key, index) in parents {
        let mut hit = None;
        for (n, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            if n > start && indent <= min_indent && found.is_some() {
                break;
            }
            let bare = trimmed.trim_start_matches("- ");
            let key_indent = indent + (trimmed.len() - bare.len()) as isize;
            if bare.starts_with(&format!("{key}:")) && key_indent > min_indent {
                hit = Some((n, key_indent));
                break;
            }
        }
        let (n, indent) = hit?;
        found = Some(n + 1);
        start = n + 1;
        min_indent = indent;
        if let Some(want) = index {
            let mut seen = 0usize;
            let mut item_line = None;
            for (m, line) in lines.iter().enumerate().skip(start) {
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let ind = (line.len() - trimmed.len()) as isize;
                if ind < indent || (ind == indent && !trimmed.starts_with('-')) {
                    break;
                }
                if trimmed.starts_with('-') {
                    if seen == want {
                        item_line = Some((m, ind));
                        break;
                    }
                    seen += 1;
                }
            }
            let (m, ind) = item_line?;
            found = Some(m + 1);
            // Keys of the item sit on the dash line or deeper; search from the dash line.
            start = m;
            min_indent = ind;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen: 1\nworkers:\n  # comment\n  count: 3\n  restart_backoff:\n    max: 2s\nupstreams:\n  - address: a\n    weight: 1\n  - address: b\n    weight: 0\nhealth_check:\n  count: 9\n";

    #[test]
    fn locates_nested_fields() {
        assert_eq!(locate(TEXT, "listen"), Some(1));
        assert_eq!(locate(TEXT, "workers.count"), Some(4));
        assert_eq!(locate(TEXT, "workers.restart_backoff.max"), Some(6));
        assert_eq!(locate(TEXT, "health_check.count"), Some(13));
    }

    #[test]
    fn locates_list_items() {
        assert_eq!(locate(TEXT, "upstreams[1].weight"), Some(11));
        assert_eq!(locate(TEXT, "upstreams[0].address"), Some(8));
        assert_eq!(locate(TEXT, "upstreams[5].weight"), None);
    }

    #[test]
    fn display_names_file_line_and_field() {
        let e = ConfigError {
            file: "d.yaml".into(),
            issues: vec![ConfigIssue {
                field: "workers.count".into(),
                line: Some(4),
                message: "must be at most 256".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "d.yaml:4: workers.count: must be at most 256"
        );
    }
}

//! The environment a worker starts with (PHP-FPM's `clear_env = yes`): not drover's
//! whole environment, which holds drover's own secrets (`DROVER_ADMIN_TOKEN`,
//! `SESSION_SECRET`, ...), but
//! 1. the variables of [`ALLOWED`] that drover has (locale, time zone, search path,
//!    user and home, temporary folder),
//! 2. plus those `workers.inherit_env` names,
//! 3. minus every variable the config file read through `${VAR}` (even if 1 or 2
//!    name it: what the file consumed is drover's),
//! 4. then `workers.env` (or a deploy's `env`) as written,
//! 5. then drover's own `WORKER_ID`, `PORT`, `BIND`, `DROVER_PARENT_PID` and, when the
//!    worker metrics socket is on, `DROVER_METRICS_SOCKET` (its path).

use crate::config::env_name_matches;
use std::collections::BTreeSet;
use std::ffi::OsString;

/// Inherited when drover has them; `LC_*` is every locale category.
pub const ALLOWED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
];

/// The inherited part (steps 1 to 3) of `vars` (drover's environment).
pub fn inherited(
    vars: impl Iterator<Item = (OsString, OsString)>,
    inherit: &[String],
    withheld: &BTreeSet<String>,
) -> Vec<(OsString, OsString)> {
    vars.filter(|(name, _)| {
        let Some(name) = name.to_str() else {
            return false;
        };
        let allowed = ALLOWED.iter().any(|p| env_name_matches(p, name))
            || inherit.iter().any(|p| env_name_matches(p, name));
        allowed && !withheld.contains(name)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[(OsString, OsString)]) -> Vec<&str> {
        v.iter().filter_map(|(n, _)| n.to_str()).collect()
    }

    #[test]
    fn passes_the_allow_list_and_inherit_env_but_never_what_the_config_read() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "de_DE"),
            ("DROVER_ADMIN_TOKEN", "secret"),
            ("SESSION_SECRET", "secret"),
            ("APP_MODE", "prod"),
            ("APP_DB_PASSWORD", "pw"),
            ("TZ", "UTC"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let withheld: BTreeSet<String> = ["APP_DB_PASSWORD", "TZ"].map(String::from).into();
        let got = inherited(vars.clone().into_iter(), &["APP_*".into()], &withheld);
        assert_eq!(names(&got), ["PATH", "LANG", "LC_TIME", "APP_MODE"]);
        let got = inherited(vars.into_iter(), &[], &BTreeSet::new());
        assert_eq!(names(&got), ["PATH", "LANG", "LC_TIME", "TZ"]);
    }
}

//! The Prometheus exposition formats `/metrics` speaks (the control plane's and the model
//! service's): OpenMetrics 1.0, what `prometheus-client` writes and Prometheus asks for, and
//! the classic text format 0.0.4 made from it, for `promtool check metrics`, curl and older
//! scrapers. Which one a request gets follows its `Accept` header, as Prometheus' own Go client
//! chooses.

use std::collections::HashSet;

/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper that sent `accept` takes OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The classic text format of an OpenMetrics exposition: a counter's family is named with its
/// `_total` (as its samples are), `unknown` is `untyped`, and what the classic format has no
/// word for (`# UNIT`, `_created` samples, `# EOF`) is left out.
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_owned() };
                let tail = if prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                let sample = line.split(['{', ' ']).next().unwrap_or("");
                if sample.strip_suffix("_created").is_some_and(|family| counters.contains(family)) {
                    continue;
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_the_classic_text_format() {
        let om = "# HELP cf_requests HTTP requests.\n# TYPE cf_requests counter\ncf_requests_total{route=\"/a\"} 1\ncf_requests_created{route=\"/a\"} 1.7e9\n\
                  # HELP cf_lag_seconds Lag.\n# TYPE cf_lag_seconds histogram\n# UNIT cf_lag_seconds seconds\ncf_lag_seconds_sum 0.5\n\
                  cf_lag_seconds_count 1\ncf_lag_seconds_bucket{le=\"+Inf\"} 1\n# HELP cf_odd Odd.\n# TYPE cf_odd unknown\ncf_odd 2\n# EOF\n";
        let text = classic(om);
        assert_eq!(
            text,
            "# HELP cf_requests_total HTTP requests.\n# TYPE cf_requests_total counter\ncf_requests_total{route=\"/a\"} 1\n\
             # HELP cf_lag_seconds Lag.\n# TYPE cf_lag_seconds histogram\ncf_lag_seconds_sum 0.5\ncf_lag_seconds_count 1\n\
             cf_lag_seconds_bucket{le=\"+Inf\"} 1\n# HELP cf_odd Odd.\n# TYPE cf_odd untyped\ncf_odd 2\n"
        );
        assert!(wants_openmetrics(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }
}

//! The Prometheus and Grafana files Warren ships under `deploy/` work with the Prometheus we test
//! with (Debian's 2.42): promtool checks both scrape configs and every rule file, runs every
//! rule unit test, and parses every expression of the Grafana dashboard; every alert has a unit
//! test that sees it fire and one that sees it stay quiet; and every metric the rules and the
//! dashboard name is one Warren exports or records. The promtool tests need `promtool` (Debian
//! package prometheus): they skip with the reason otherwise, and fail under `CI=true`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use warren_tests::require;

/// `deploy/prometheus` in this checkout.
fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// The Grafana dashboard.
fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/warren-fleet.json")
}

/// The scrape configs, relative to [`prometheus_dir`] (their `rule_files` are relative to them).
const CONFIGS: [&str; 2] = ["site.yml", "central.yml"];

/// For [`require`]: why not, unless `promtool` runs.
fn promtool() -> Option<String> {
    match Command::new("promtool").arg("--version").output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "`promtool --version` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => Some(format!(
            "needs `promtool` (Debian package prometheus): {error}"
        )),
    }
}

/// Runs `promtool ARGS` in `dir`; the test fails with promtool's output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {} (in {}) failed:\n{}{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The files of `dir` whose names end with `suffix`, as paths relative to [`prometheus_dir`],
/// sorted. Fails when there is none: an empty directory would make the checks vacuous.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(prometheus_dir().join(dir))
        .unwrap_or_else(|e| panic!("read deploy/prometheus/{dir}: {e}"))
        .map(|entry| entry.expect("read directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_owned))
        .filter(|name| name.ends_with(suffix))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *{suffix} in deploy/prometheus/{dir}");
    found
}

fn read(relative: &str) -> String {
    let path = prometheus_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The rule files.
fn rule_files() -> Vec<String> {
    files("rules", ".yml")
}

/// The promtool unit-test files.
fn rule_test_files() -> Vec<String> {
    files("tests", "_test.yml")
}

/// The values of `- KEY: VALUE` items in a rule file (`alert`, `record`). The rule files are
/// ours and write one rule per `- alert:` or `- record:` line, so no YAML parser is needed.
fn rule_items(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("- {key}:");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .map(|value| value.trim().to_owned())
        .collect()
}

#[test]
fn scrape_configs_pass_promtool_check_config() {
    if !require("scrape_configs_pass_promtool_check_config", [promtool()]) {
        return;
    }
    let mut args = vec!["check", "config"];
    args.extend(CONFIGS);
    run_promtool(&prometheus_dir(), &args);
}

#[test]
fn rule_files_pass_promtool_check_rules() {
    if !require("rule_files_pass_promtool_check_rules", [promtool()]) {
        return;
    }
    let rules = rule_files();
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    run_promtool(&prometheus_dir(), &args);
}

#[test]
fn rule_unit_tests_pass() {
    if !require("rule_unit_tests_pass", [promtool()]) {
        return;
    }
    for test_file in rule_test_files() {
        run_promtool(&prometheus_dir(), &["test", "rules", &test_file]);
    }
}

/// Alert names with a unit-test case expecting them to fire, and those with one expecting
/// silence (`exp_alerts: []`), from promtool test files.
fn tested_alerts(test_texts: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for text in test_texts {
        let mut alert: Option<&str> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("alertname:") {
                alert = Some(name.trim());
            } else if let (Some(name), Some(rest)) = (alert, line.strip_prefix("exp_alerts:")) {
                if rest.trim() == "[]" {
                    quiet.insert(name.to_owned());
                } else {
                    firing.insert(name.to_owned());
                }
                alert = None;
            }
        }
    }
    (firing, quiet)
}

/// Every alert is unit-tested firing and not firing, and every recording rule is evaluated by
/// a `promql_expr_test`.
#[test]
fn every_rule_has_unit_tests() {
    let test_texts: Vec<String> = rule_test_files().iter().map(|f| read(f)).collect();
    let (firing, quiet) = tested_alerts(&test_texts);
    let tested_records: BTreeSet<String> = test_texts
        .iter()
        .flat_map(|text| rule_items(text, "expr"))
        .collect();
    for rule_file in rule_files() {
        let text = read(&rule_file);
        for alert in rule_items(&text, "alert") {
            assert!(
                firing.contains(&alert),
                "{rule_file}: no test sees {alert} fire"
            );
            assert!(
                quiet.contains(&alert),
                "{rule_file}: no test sees {alert} stay quiet"
            );
        }
        for record in rule_items(&text, "record") {
            assert!(
                tested_records.contains(&record),
                "{rule_file}: no promql_expr_test evaluates {record}"
            );
        }
    }
}

/// The dashboard, parsed.
fn dashboard() -> serde_json::Value {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is no JSON: {e}", path.display()))
}

/// Every string under an `expr` key, depth first.
fn collect_exprs(value: &serde_json::Value, exprs: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(item, exprs),
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| collect_exprs(item, exprs));
        }
        _ => {}
    }
}

/// The series selector of each query variable (`label_values(SELECTOR, LABEL)`).
fn variable_selectors(dashboard: &serde_json::Value) -> Vec<String> {
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array");
    variables
        .iter()
        .filter(|variable| variable["type"] == "query")
        .map(|variable| {
            let query = variable["query"]["query"]
                .as_str()
                .unwrap_or_else(|| panic!("variable {} has no query", variable["name"]));
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(..)"));
            let (selector, _label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("variable query {query:?} names no label"));
            selector.trim().to_owned()
        })
        .collect()
}

/// Every PromQL expression of the dashboard: panels' targets and variables' selectors.
fn dashboard_exprs() -> Vec<String> {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    exprs.extend(variable_selectors(&dashboard));
    assert!(!exprs.is_empty(), "the dashboard has no expression");
    exprs
}

/// `expr` with Grafana's variables replaced by values PromQL parses: `$__rate_interval` by a
/// duration, every other `$name` or `${name}` by a word (they all stand inside label matchers).
fn without_grafana_variables(expr: &str) -> String {
    let expr = expr.replace("$__rate_interval", "5m");
    let mut plain = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            plain.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.by_ref().take_while(|&c| c != '}').for_each(drop);
        } else {
            while chars
                .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                .is_some()
            {}
        }
        plain.push('x');
    }
    plain
}

/// A rule file with one recording rule per expression, for `promtool check rules` to parse
/// (promtool has no offline expression check of its own).
fn rule_file_of(exprs: &[String]) -> String {
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (idx, expr) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(&without_grafana_variables(expr)).expect("a string");
        file.push_str(&format!(
            "      - record: dashboard_expr_{idx}\n        expr: {quoted}\n"
        ));
    }
    file
}

#[test]
fn dashboard_expressions_parse() {
    if !require("dashboard_expressions_parse", [promtool()]) {
        return;
    }
    let exprs = dashboard_exprs();
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("dashboard.yml"), rule_file_of(&exprs))
        .expect("write dashboard.yml");
    let output = Command::new("promtool")
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(dir.path())
        .output()
        .expect("run promtool");
    let listing: Vec<String> = exprs
        .iter()
        .enumerate()
        .map(|(idx, expr)| format!("dashboard_expr_{idx}: {expr}"))
        .collect();
    assert!(
        output.status.success(),
        "a dashboard expression does not parse:\n{}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        listing.join("\n")
    );
}

#[test]
fn dashboard_takes_its_data_source_and_scope_from_variables() {
    let dashboard = dashboard();
    let names: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array")
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    for name in ["DS_PROMETHEUS", "site", "node", "service"] {
        assert!(
            names.contains(name),
            "the dashboard has no ${name} variable"
        );
    }
    let mut uids = Vec::new();
    collect_datasource_uids(&dashboard["panels"], &mut uids);
    assert!(!uids.is_empty(), "no panel names a data source");
    for uid in uids {
        assert_eq!(uid, "${DS_PROMETHEUS}", "a panel names a fixed data source");
    }
}

/// The `uid` of every `datasource` object, depth first.
fn collect_datasource_uids(value: &serde_json::Value, uids: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                if key == "datasource" {
                    uids.push(item["uid"].as_str().unwrap_or_default().to_owned());
                } else {
                    collect_datasource_uids(item, uids);
                }
            }
        }
        serde_json::Value::Array(items) => {
            items
                .iter()
                .for_each(|item| collect_datasource_uids(item, uids));
        }
        _ => {}
    }
}

/// The metric names Warren's control nodes and agents export, listed here so that this test
/// needs no cluster. The same check against a live one (the names a central Prometheus holds
/// after scraping and federating real `warren` processes) is in `cli/tests/prometheus.rs`, so a
/// renamed metric fails there even if this list is updated with it.
fn exported_metric_names() -> BTreeSet<&'static str> {
    let all_nodes = [
        "warren_build_info",
        "warren_cert_expiry_timestamp_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ];
    let control = [
        "warren_ca_expiry_timestamp_seconds",
        "warren_raft_term",
        "warren_raft_is_leader",
        "warren_raft_has_leader",
        "warren_raft_applied_index",
        "warren_raft_commit_index",
        "warren_raft_last_log_index",
        "warren_raft_leader_changes_total",
        "warren_raft_apply_duration_seconds",
        "warren_raft_proposal_duration_seconds",
        "warren_raft_voters",
        "warren_raft_quorum_ack_age_seconds",
        "warren_service_replicas_desired",
        "warren_service_replicas_running",
        "warren_service_replicas_healthy",
        "warren_control_agent_connected",
        "warren_control_agent_last_contact_age_seconds",
        "warren_control_agent_ready",
        "warren_api_requests_total",
        "warren_api_request_duration_seconds",
        "warren_scheduler_replicas",
        "warren_scheduler_unschedulable_replicas",
        "warren_control_nodes",
    ];
    let agent = [
        "warren_agent_service_workloads",
        "warren_agent_service_restarts_total",
        "warren_agent_link_up",
        "warren_agent_link_last_contact_age_seconds",
        "warren_agent_workloads",
        "warren_agent_workload_restarts_total",
        "warren_agent_cache_corrupt_total",
        "warren_agent_revision_lag",
        "warren_dns_queries_total",
    ];
    all_nodes.into_iter().chain(control).chain(agent).collect()
}

/// The words of `text` that look like metric names: runs of `[A-Za-z0-9_:]`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| !word.is_empty())
}

/// `text` without its YAML comment lines (prose, where a name may stand for a pattern).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `name` is an exported metric, or a histogram's series of one.
fn is_exported(name: &str, exported: &BTreeSet<&str>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| exported.contains(base))
        })
}

/// Every `warren_*` and `process_*` name in the rule files and the dashboard's expressions is
/// exported by Warren, and every `warren:*` name is recorded by a rule file.
#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let exported = exported_metric_names();
    let rule_texts: Vec<String> = rule_files().iter().map(|f| read(f)).collect();
    let recorded: BTreeSet<String> = rule_texts
        .iter()
        .flat_map(|text| rule_items(text, "record"))
        .collect();
    let mut sources: Vec<String> = rule_texts.iter().map(|t| without_comments(t)).collect();
    sources.extend(dashboard_exprs());
    let mut unknown = BTreeSet::new();
    for text in &sources {
        for word in words(text) {
            let known = if word.starts_with("warren:") {
                recorded.contains(word)
            } else if word.starts_with("warren_") || word.starts_with("process_") {
                is_exported(word, &exported)
            } else {
                true
            };
            if !known {
                unknown.insert(word.to_owned());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names neither exported nor recorded: {unknown:?}"
    );
}

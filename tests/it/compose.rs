//! docker-compose.yml cannot be run here (no Docker engine): check that it parses and that
//! every BOOKREC__ key it sets is a real config key with a valid value.

use std::collections::HashMap;

use bookrec::config::Config;

/// A YAML scalar as compose passes it to a process: a string as it is, anything else (a
/// number, a boolean) as its YAML text.
pub fn yaml_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .expect("yaml")
            .trim()
            .to_string(),
    }
}

/// The variables of `.env.example`, as `docker compose` reads them from `.env`.
pub fn env_example() -> HashMap<String, String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"))
        .expect(".env.example at the repo root");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Compose's interpolation: `${NAME}`, `${NAME:-default}`, `${NAME:?message}` (a missing
/// NAME is an error), `$$` for a literal `$`.
pub fn interpolate(value: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("closing brace");
            let expr = &body[..end];
            let (name, fallback) = match expr.find(':') {
                Some(c) => (&expr[..c], Some(&expr[c + 1..])),
                None => (expr, None),
            };
            let v = match (vars.get(name), fallback) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) if f.starts_with('-') => f[1..].to_string(),
                (None, Some(f)) if f.starts_with('?') => {
                    panic!(
                        "${{{name}}} is required ({}) and .env.example lacks it",
                        &f[1..]
                    )
                }
                _ => panic!("${{{name}}}: not in .env.example and no default"),
            };
            out.push_str(&v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn compose_env_keys_are_real_config_keys() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml at the repo root");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    // the services share their settings through `<<: *anchor` merge keys
    doc.apply_merge().expect("merge keys");
    let vars = env_example();
    let services = doc["services"].as_mapping().expect("services");
    let mut checked = 0;
    for (name, service) in services {
        let env = &service["environment"];
        let pairs: Vec<(String, String)> = match env {
            serde_yaml::Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| (k.as_str().expect("string key").to_string(), yaml_text(v)))
                .collect(),
            serde_yaml::Value::Sequence(s) => s
                .iter()
                .filter_map(|v| v.as_str())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        for (k, v) in pairs
            .into_iter()
            .filter(|(k, _)| k.starts_with("BOOKREC__"))
        {
            let v = interpolate(&v, &vars);
            Config::load_with_env(None, vec![(k.clone(), v.clone())]).unwrap_or_else(|e| {
                panic!("service {name:?}: {k}={v} is not a valid config key/value: {e}")
            });
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "the compose file configures bookrec through BOOKREC__ keys"
    );
}

/// Every `"bookrec_…"` string literal under src/: the metric names the binaries register.
fn registered_metric_names() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for part in text.split('"').skip(1).step_by(2) {
                    if part.starts_with("bookrec_")
                        && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        out.insert(part.to_string());
                    }
                }
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out
}

#[test]
fn the_dashboard_and_prometheus_watch_what_the_services_expose() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let datasources: serde_yaml::Value = serde_yaml::from_str(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource YAML");
    let uid = datasources["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/bookrec.json")).expect("JSON");
    for key in ["uid", "title", "schemaVersion", "panels", "time"] {
        assert!(!dash[key].is_null(), "dashboard field {key}");
    }
    let names = registered_metric_names();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "the figures an operator watches");
    let mut ids = std::collections::BTreeSet::new();
    let mut watched = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "{title}: id unique"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_i64().is_some(), "{title}: gridPos.{k}");
        }
        assert_eq!(
            p["datasource"]["uid"], uid,
            "{title}: the provisioned datasource"
        );
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("bookrec_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(
                    names.contains(base),
                    "{title}: {word} is not a metric any service registers"
                );
                watched.insert(base.to_string());
            }
        }
    }
    for needed in [
        "bookrec_collect_accepted_total",
        "bookrec_collect_rejected_total",
        "bookrec_collect_spool_depth_records",
        "bookrec_land_lag_records",
        "bookrec_land_files_total",
        "bookrec_stream_freshness_seconds",
        "bookrec_stream_late_total",
        "bookrec_schedule_run_seconds",
        "bookrec_schedule_runs_total",
        "bookrec_model_validation_ndcg",
        "bookrec_model_version",
        "bookrec_serve_request_seconds",
        "bookrec_serve_backend_errors_total",
    ] {
        assert!(watched.contains(needed), "the dashboard shows {needed}");
    }

    // Prometheus scrapes each bookrec service on the port the compose file gives it
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("compose YAML");
    doc.apply_merge().expect("merge keys");
    let prom: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml")).expect("prometheus YAML");
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    assert_eq!(jobs.len(), 5, "collect, land, stream, schedule, serve");
    for job in jobs {
        let target = job["static_configs"][0]["targets"][0]
            .as_str()
            .expect("target");
        let (service, port) = target.split_once(':').expect("host:port");
        let s = &doc["services"][service];
        assert!(!s.is_null(), "{target}: no service {service}");
        let text = serde_yaml::to_string(s).expect("yaml");
        assert!(
            text.contains(&format!("0.0.0.0:{port}")),
            "{target}: {service} does not listen on 0.0.0.0:{port}:\n{text}"
        );
        let health = serde_yaml::to_string(&s["healthcheck"]["test"]).expect("yaml");
        assert!(
            health.contains("bookrec") && health.contains("probe"),
            "{service}: a health check with `bookrec probe`"
        );
    }
}

/// The file's services and, per service, its `depends_on` as (service, condition).
pub fn dependencies(doc: &serde_yaml::Value) -> HashMap<String, Vec<(String, String)>> {
    let services = doc["services"].as_mapping().expect("services");
    services
        .iter()
        .map(|(name, s)| {
            let name = name.as_str().expect("name").to_string();
            let deps = match &s["depends_on"] {
                serde_yaml::Value::Mapping(m) => m
                    .iter()
                    .map(|(d, c)| {
                        let cond = c["condition"].as_str().unwrap_or("service_started");
                        (d.as_str().expect("name").to_string(), cond.to_string())
                    })
                    .collect(),
                serde_yaml::Value::Sequence(seq) => seq
                    .iter()
                    .map(|d| {
                        let d = d.as_str().expect("name").to_string();
                        (d, "service_started".to_string())
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (name, deps)
        })
        .collect()
}

/// Every `depends_on` names a service of the file, with a condition that service can meet:
/// `service_healthy` needs a health check, `service_completed_successfully` a one-shot
/// service (`restart: "no"`), and the graph has no cycle (compose would refuse it).
#[test]
fn every_dependency_is_one_its_target_can_meet() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("compose file");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    doc.apply_merge().expect("merge keys");
    let deps = dependencies(&doc);
    let mut checked = 0;
    for (name, list) in &deps {
        for (target, condition) in list {
            let t = &doc["services"][target.as_str()];
            assert!(
                !t.is_null(),
                "{name} depends on {target}, which is not a service"
            );
            match condition.as_str() {
                "service_healthy" => assert!(
                    !t["healthcheck"]["test"].is_null(),
                    "{name} waits for {target} to be healthy, but {target} has no health check"
                ),
                "service_completed_successfully" => assert_eq!(
                    t["restart"].as_str(),
                    Some("no"),
                    "{name} waits for {target} to complete, but {target} is restarted"
                ),
                "service_started" => {}
                other => panic!("{name} → {target}: unknown condition {other}"),
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 15,
        "the file's services wait for what they need: {checked}"
    );
    // no cycle: repeatedly remove services whose dependencies are all removed
    let mut left: Vec<&String> = deps.keys().collect();
    while !left.is_empty() {
        let before = left.len();
        let done: Vec<String> = deps.keys().filter(|n| !left.contains(n)).cloned().collect();
        left.retain(|n| !deps[*n].iter().all(|(d, _)| done.contains(d)));
        assert!(left.len() < before, "a depends_on cycle among {left:?}");
    }
    // the long-running bookrec services wait for the one-shot init
    for s in ["collect", "land", "stream", "schedule", "serve"] {
        assert!(
            deps[s]
                .iter()
                .any(|(d, c)| d == "init" && c == "service_completed_successfully"),
            "{s} starts after init"
        );
    }
}

//! docker-compose.yml cannot be run here (no Docker engine): check that it parses and that
//! every BOOKREC__ key it sets is a real config key with a valid value.

use bookrec::config::Config;

#[test]
fn compose_env_keys_are_real_config_keys() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml at the repo root");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    let services = doc["services"].as_mapping().expect("services");
    let mut checked = 0;
    for (name, service) in services {
        let env = &service["environment"];
        let pairs: Vec<(String, String)> = match env {
            serde_yaml::Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .expect("yaml")
                            .trim()
                            .to_string(),
                    };
                    (k.as_str().expect("string key").to_string(), v)
                })
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

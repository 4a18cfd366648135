//! What can be checked of `docker/` without a Docker engine: the YAML parses, every file the
//! compose file and the Dockerfile reference exists, the worker is health-checked through
//! `/readyz`, RabbitMQ gets the consistent-hash plugin, and the dashboard only queries metrics
//! the worker exports. (`scripts/test.sh` also builds the binary with the Dockerfile's flags.)

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

/// `services.<name>` of the compose file, with YAML merge keys (`<<`) applied.
fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "compose.yml has no service {name}");
    s
}

/// A key of a mapping, looking through one level of `<<` merges.
fn key<'a>(map: &'a Yaml, k: &str) -> &'a Yaml {
    let direct = &map[k];
    if !direct.is_badvalue() {
        return direct;
    }
    &map["<<"][k]
}

#[test]
fn the_compose_stack_parses_and_references_only_files_that_exist() {
    let docker = repo().join("docker");
    let compose = yaml(&docker.join("compose.yml"));

    // The build: context and Dockerfile.
    let build = &service(&compose, "migrate")["build"];
    let context = docker.join(build["context"].as_str().expect("a build context"));
    assert!(
        context.join("Cargo.toml").is_file(),
        "the context is the repository root"
    );
    assert!(
        context
            .join(build["dockerfile"].as_str().expect("a dockerfile"))
            .is_file()
    );

    // Every bind mount's source, relative to docker/.
    let mut mounts = 0;
    for (_, svc) in compose["services"].as_hash().expect("services") {
        for volume in key(svc, "volumes").as_vec().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            if let Some(source) = spec.strip_prefix("./") {
                let source = source.split(':').next().expect("a source");
                assert!(docker.join(source).exists(), "{spec} is missing");
                mounts += 1;
            }
        }
    }
    assert!(mounts >= 4, "{mounts} bind mounts");

    // Three workers, each health-checked through /readyz by the binary itself, and a rush.
    for worker in ["worker-1", "worker-2", "worker-3"] {
        let svc = service(&compose, worker);
        let test: Vec<&str> = key(svc, "healthcheck")["test"]
            .as_vec()
            .expect("a healthcheck")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(test[..3], ["CMD", "seatrush", "healthcheck"], "{worker}");
        let env = key(svc, "environment");
        assert!(
            key(env, "SEATRUSH_HTTP_ADDR").as_str().is_some(),
            "{worker}"
        );
    }
    let rush: Vec<&str> = service(&compose, "rush")["command"]
        .as_vec()
        .expect("a command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(rush[..2], ["rush", "--external"]);

    // RabbitMQ gets the plugin seatrush's exchange needs, by configuration.
    let plugins =
        std::fs::read_to_string(docker.join("rabbitmq/enabled_plugins")).expect("plugins");
    assert!(plugins.contains("rabbitmq_consistent_hash_exchange"));

    // The other YAML files parse.
    for file in [
        "prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/seatrush.yml",
    ] {
        assert!(!yaml(&docker.join(file)).is_badvalue(), "{file}");
    }
}

#[test]
fn the_dockerfile_copies_what_exists_and_builds_locked_release() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).expect("Dockerfile");
    let mut copied = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: missing");
            copied += 1;
        }
    }
    assert!(copied >= 4, "{copied} files copied");
    assert!(
        dockerfile.contains("RUN cargo build --release --locked --bin seatrush"),
        "scripts/test.sh runs this same build"
    );
    let test_script = std::fs::read_to_string(repo().join("scripts/test.sh")).expect("test.sh");
    assert!(test_script.contains("cargo build --release --locked --bin seatrush"));
    assert!(
        dockerfile.contains("USER seatrush"),
        "runs as a non-root user"
    );
}

#[test]
fn the_dashboard_queries_only_metrics_the_worker_exports() {
    let path = repo().join("docker/grafana/dashboards/seatrush.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let mut seen = std::collections::BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| seatrush_core::telemetry::metrics::ALL.contains(b))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                seatrush_core::telemetry::metrics::ALL.contains(&base.as_str()),
                "{name} in `{expr}` is not exported"
            );
            seen.insert(base);
        }
    }
    // Everything but the promotions counter is on the dashboard.
    assert!(
        seen.len() >= seatrush_core::telemetry::metrics::ALL.len() - 1,
        "{seen:?}"
    );
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(expr) if k == "expr" => out.push(expr.to_owned()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `seatrush_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("seatrush_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

//! Issue 7, show 2: the deployment files cannot drift from the code. Every variable that
//! docker-compose.yml or a rendered Kubernetes overlay sets for a role is one the binary reads
//! for that role, and each role's settings are complete: `parley <role> --check-config`, given
//! exactly that environment, accepts it. The files are read with the real tools `./dev test`
//! installs (the compose parser, `kubectl kustomize`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::parley;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(relative: &str) -> PathBuf {
    root().join(".dev").join(relative)
}

async fn run(program: PathBuf, args: &[&str]) -> Vec<u8> {
    let out = tokio::process::Command::new(&program)
        .args(args)
        .current_dir(root())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} (./dev test installs it): {e}", program.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What a secret reference stands for when the configuration is checked.
fn placeholder(name: &str) -> String {
    match name {
        "DATABASE_URL" => "postgres://parley@postgres/parley".into(),
        _ => "a-placeholder-secret-of-32-bytes!".into(),
    }
}

/// `role`, given exactly `env`, starts (its settings are complete and valid) and reads every
/// variable it is given. OpenTelemetry's standard `OTEL_*` variables are read by the exporter
/// library as well as by Parley, so any of them is allowed.
async fn check(source: &str, role: &str, env: &BTreeMap<String, String>) {
    let out = parley()
        .arg(role)
        .arg("--check-config")
        .env_remove("LOG_FORMAT")
        .envs(env)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{source}: the {role} role does not start with the variables it is given: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let read: Vec<&str> = report["read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in env.keys() {
        assert!(
            read.contains(&name.as_str()) || name.starts_with("OTEL_"),
            "{source}: the {role} role is given {name}, which it never reads (it reads {read:?})"
        );
    }
}

#[tokio::test]
async fn docker_compose_gives_each_role_exactly_what_it_reads() {
    let json = run(
        tool("venv/bin/docker-compose"),
        &["-f", "docker-compose.yml", "config", "--format", "json"],
    )
    .await;
    let compose: Value = serde_json::from_slice(&json).unwrap();
    let mut checked = Vec::new();
    for (name, service) in compose["services"].as_object().unwrap() {
        if service["image"] != "parley:local" {
            continue;
        }
        let role = service["command"][0].as_str().unwrap();
        let env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        check(&format!("docker-compose.yml {name}"), role, &env).await;
        checked.push(role.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["auth", "gateway", "gateway", "migrate", "persistence"]
    );
}

#[tokio::test]
async fn the_kubernetes_overlays_give_each_role_exactly_what_it_reads() {
    for overlay in ["dev", "prod"] {
        let yaml = run(
            tool("tools/kubectl"),
            &["kustomize", &format!("deploy/k8s/overlays/{overlay}")],
        )
        .await;
        // YAML to JSON with the PyYAML the tools' venv has.
        let mut convert = tokio::process::Command::new(tool("venv/bin/python"))
            .args([
                "-c",
                "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let mut stdin = convert.stdin.take().unwrap();
        stdin.write_all(&yaml).await.unwrap();
        drop(stdin);
        let docs: Vec<Value> =
            serde_json::from_slice(&convert.wait_with_output().await.unwrap().stdout).unwrap();

        let config_maps: BTreeMap<&str, &Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .map(|d| (d["metadata"]["name"].as_str().unwrap(), &d["data"]))
            .collect();
        let mut checked = Vec::new();
        for doc in docs
            .iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        {
            let name = doc["metadata"]["name"].as_str().unwrap();
            for container in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
            {
                let role = container["args"][0].as_str().unwrap();
                let mut env = BTreeMap::new();
                for from in container["envFrom"].as_array().into_iter().flatten() {
                    let cm = from["configMapRef"]["name"].as_str().unwrap();
                    let data = config_maps.get(cm).unwrap_or_else(|| {
                        panic!("{overlay}: {name} names a missing ConfigMap {cm}")
                    });
                    for (k, v) in data.as_object().unwrap() {
                        env.insert(k.clone(), v.as_str().unwrap().to_owned());
                    }
                }
                for var in container["env"].as_array().into_iter().flatten() {
                    let k = var["name"].as_str().unwrap().to_owned();
                    let v = match var["value"].as_str() {
                        Some(v) => v.to_owned(),
                        None => placeholder(&k),
                    };
                    env.insert(k, v);
                }
                check(&format!("overlay {overlay}: {name}"), role, &env).await;
                checked.push(role.to_owned());
            }
        }
        checked.sort();
        assert_eq!(
            checked,
            ["auth", "gateway", "migrate", "persistence"],
            "{overlay}"
        );
    }
}

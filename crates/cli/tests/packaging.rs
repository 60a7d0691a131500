//! Packaging: the default config names every setting with its default, the systemd
//! units carry their hardening and restart policy, and the Debian package (built with
//! `cargo deb`) installs with `dpkg -i`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `[section]` -> lines of that section (comments kept, so `# key = ...` counts).
fn sections(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') && !l.starts_with("[[") {
            current = l[1..l.find(']').unwrap()].trim().to_owned();
            continue;
        }
        out.entry(current.clone()).or_default().push(l.to_owned());
    }
    out
}

#[test]
fn default_config_names_every_setting_with_its_default() {
    let path = root().join("packaging/branchline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = branchline_config::Config::parse(&text, &path).unwrap();
    assert_eq!(parsed, branchline_config::Config::default());
    // Every key of every table is named (settings without a default are commented).
    let defaults = serde_json::to_value(branchline_config::Config::default()).unwrap();
    let sections = sections(&text);
    let mut checked = 0;
    fn walk(
        prefix: &str,
        v: &serde_json::Value,
        sections: &BTreeMap<String, Vec<String>>,
        checked: &mut usize,
    ) {
        for (k, v) in v.as_object().unwrap() {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_object() {
                walk(&name, v, sections, checked);
                continue;
            }
            let lines = sections
                .get(prefix)
                .unwrap_or_else(|| panic!("no [{prefix}] in packaging/branchline.toml"));
            let named = lines.iter().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.strip_prefix(k.as_str())
                    .is_some_and(|r| r.trim_start().starts_with('='))
            });
            assert!(named, "packaging/branchline.toml does not name {name}");
            *checked += 1;
        }
    }
    walk("", &defaults, &sections, &mut checked);
    assert!(checked > 30, "only {checked} settings checked");
}

/// (section, key) -> values, from a unit file.
fn unit(name: &str) -> BTreeMap<(String, String), Vec<String>> {
    let text = std::fs::read_to_string(root().join("packaging/systemd").join(name)).unwrap();
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not KEY=VALUE: {l}"));
        out.entry((section.clone(), k.trim().to_owned()))
            .or_default()
            .push(v.trim().to_owned());
    }
    out
}

fn one<'a>(u: &'a BTreeMap<(String, String), Vec<String>>, s: &str, k: &str) -> &'a str {
    u.get(&(s.to_owned(), k.to_owned()))
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("no {k}= in [{s}]"))
}

#[test]
fn systemd_units_are_hardened_and_restart() {
    for (name, role, data) in [
        (
            "branchline-server.service",
            "server",
            "/var/lib/branchline-server",
        ),
        ("branchline-client.service", "client", "/var/lib/branchline"),
    ] {
        let u = unit(name);
        let exec = one(&u, "Service", "ExecStart");
        assert!(exec.starts_with("/usr/bin/branchline "), "{name}: {exec}");
        assert!(
            exec.contains(&format!(" {role} --data-dir {data}")),
            "{name}: {exec}"
        );
        assert!(exec.contains("--config /etc/branchline/branchline.toml"));
        assert_eq!(one(&u, "Service", "NoNewPrivileges"), "yes", "{name}");
        assert_eq!(one(&u, "Service", "PrivateTmp"), "yes", "{name}");
        assert_eq!(one(&u, "Service", "ProtectSystem"), "strict", "{name}");
        assert_eq!(one(&u, "Service", "ReadWritePaths"), data, "{name}");
        assert_eq!(
            format!("/var/lib/{}", one(&u, "Service", "StateDirectory")),
            data,
            "{name}"
        );
        assert_eq!(one(&u, "Service", "Restart"), "on-failure", "{name}");
        assert_eq!(one(&u, "Service", "User"), "branchline", "{name}");
        assert_eq!(one(&u, "Install", "WantedBy"), "multi-user.target");
        assert!(one(&u, "Unit", "Description").starts_with("Branchline"));
    }
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the package with `cargo deb` (from the dev profile's binary),
/// installs it with `dpkg -i`, checks what it put where, has `systemd-analyze verify`
/// check the units when systemd runs this machine, and purges it again.
/// Needs root and `cargo deb` (`cargo install cargo-deb --locked`, which `.ci/run`
/// does as root); it fails, saying so, when cargo-deb is missing.
#[test]
#[ignore = "needs root: dpkg -i"]
fn deb_installs_with_dpkg() {
    assert!(
        have("cargo", &["deb", "--version"]),
        "cargo-deb is not installed: cargo install cargo-deb --locked (.ci/run does as root)"
    );
    // The dev profile: the binary the tests already built, so no release build here
    // (`cargo deb -p branchline` makes the release package the same way).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("cargo")
        .current_dir(root())
        .args(["deb", "-p", "branchline", "--locked", "--profile", "dev"])
        .arg("--output")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deb = deb.lines().last().unwrap().trim().to_owned();
    assert!(deb.ends_with(".deb"), "cargo deb printed {deb}");
    let out = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    assert!(
        out.status.success(),
        "dpkg -i {deb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = || -> Result<(), String> {
        for f in [
            "/usr/bin/branchline",
            "/etc/branchline/branchline.toml",
            "/lib/systemd/system/branchline-server.service",
            "/lib/systemd/system/branchline-client.service",
            "/usr/share/doc/branchline/README.md",
        ] {
            if !Path::new(f).exists() {
                return Err(format!("{f} not installed"));
            }
        }
        if !have("getent", &["passwd", "branchline"]) {
            return Err("no branchline user".into());
        }
        let v = Command::new("/usr/bin/branchline")
            .arg("--version")
            .output()
            .map_err(|e| e.to_string())?;
        if !String::from_utf8_lossy(&v.stdout).starts_with("branchline ") {
            return Err(format!("branchline --version: {v:?}"));
        }
        // The installed config is the defaults.
        let c = Command::new("/usr/bin/branchline")
            .args([
                "--config",
                "/etc/branchline/branchline.toml",
                "connector",
                "--help",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !c.status.success() {
            return Err(format!("the installed config: {c:?}"));
        }
        let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        if pid1.trim() == "systemd" && have("systemd-analyze", &["--version"]) {
            let v = Command::new("systemd-analyze")
                .args([
                    "verify",
                    "/lib/systemd/system/branchline-server.service",
                    "/lib/systemd/system/branchline-client.service",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            if !v.status.success() {
                return Err(format!(
                    "systemd-analyze verify: {}",
                    String::from_utf8_lossy(&v.stderr)
                ));
            }
        } else {
            println!(
                "systemd is not PID 1 here: the unit files' keys are checked by systemd_units_are_hardened_and_restart"
            );
        }
        Ok(())
    };
    let result = installed();
    let purge = Command::new("dpkg")
        .args(["-P", "branchline"])
        .output()
        .unwrap();
    result.unwrap();
    assert!(purge.status.success(), "dpkg -P: {purge:?}");
}

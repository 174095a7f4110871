//! The cluster file's parsing and validation, on the example file and broken variants.

use super::*;

pub const EXAMPLE: &str = include_str!("../../../docs/cluster.example.toml");

#[test]
fn the_example_cluster_file_is_valid() {
    let c = Cluster::parse(EXAMPLE, "cluster.example.toml").unwrap();
    assert_eq!(c.nodes.len(), 4);
    assert_eq!(c.policy.failure_threshold, 3);
    let Some(BootProvider::Command { attach, .. }) = c.node("node-2").map(|n| &n.boot) else {
        panic!("node-2 has a command provider");
    };
    // The attach command boots the node into rescue: a one-time boot device, then power.
    let script = attach.join(" ");
    assert!(
        script.contains("bootdev pxe") && script.contains("power on"),
        "{script}"
    );
    let Some(BootProvider::Redfish { ca_file, .. }) = c.node("node-1").map(|n| &n.boot) else {
        panic!("node-1 has a redfish provider");
    };
    assert_eq!(
        ca_file.as_deref(),
        Some(Path::new("/etc/lazarus/bmc-ca.pem"))
    );
    // node-4's fencing arms the seed's rescue entry for one boot, then shuts the node down.
    let Some(BootProvider::Command { power_off, .. }) = c.node("node-4").map(|n| &n.boot) else {
        panic!("node-4 has a command provider");
    };
    let script = power_off.as_ref().expect("node-4 can be fenced").join(" ");
    assert!(
        script.contains("lazarus rescue once") && script.contains("power off"),
        "{script}"
    );
}

#[test]
fn the_api_is_a_socket_and_tcp_only_with_a_token() {
    let c = Cluster::parse(EXAMPLE, "cluster.example.toml").unwrap();
    let api = &c.controller.api;
    assert_eq!(api.socket, Path::new(DEFAULT_API_SOCKET));
    assert_eq!(api.group.as_deref(), Some("lazarus"));
    assert_eq!((api.listen, &api.token_file), (None, &None));
    let tcp = EXAMPLE
        .replacen("# listen = ", "listen = ", 1)
        .replacen("# token_file = ", "token_file = ", 1)
        .replacen("# hosts = ", "hosts = ", 1);
    let c = Cluster::parse(&tcp, "cluster.toml").unwrap();
    assert_eq!(
        c.controller.api.listen,
        Some("127.0.0.1:7470".parse().unwrap())
    );
    assert_eq!(c.controller.api.hosts, ["ctl.example.net:7470"]);

    let e = err(&EXAMPLE.replacen("# listen = ", "listen = ", 1));
    assert!(
        e.contains("controller.api.listen") && e.contains("token_file") && !e.contains('\n'),
        "{e}"
    );
    let e = err(&EXAMPLE.replacen("# token_file = ", "token_file = ", 1));
    assert!(e.contains("controller.api.token_file"), "{e}");
    let e = err(&EXAMPLE.replacen("socket = \"/run/", "socket = \"run/", 1));
    assert!(
        e.contains("controller.api.socket") && e.contains("absolute"),
        "{e}"
    );
    // The old form, a TCP address without a token, is refused by name.
    let old = EXAMPLE.replacen(
        "[controller.api]\nsocket = \"/run/lazarus/api.sock\"\ngroup",
        "api = \"127.0.0.1:7470\"\n# group",
        1,
    );
    let e = err(&old);
    assert!(
        e.contains("controller.api") && e.contains("127.0.0.1:7470"),
        "{e}"
    );
}

#[test]
fn per_repair_media_placeholders_need_the_rescue_section() {
    let c = Cluster::parse(EXAMPLE, "cluster.example.toml").unwrap();
    assert_eq!(
        c.node("node-1").unwrap().repair_media(),
        ["{rescue_iso_url}"]
    );
    assert!(c.node("node-2").unwrap().repair_media().is_empty());
    let rescue = c
        .controller
        .media
        .as_ref()
        .unwrap()
        .rescue
        .as_ref()
        .unwrap();
    assert_eq!(rescue.ttl, Duration::from_secs(15 * 60));
    assert!(rescue.cmdline.contains("lazarus.controller="));
    // Without [controller.media.rescue], nothing could fill the placeholder.
    let start = EXAMPLE.find("[controller.media.rescue]").unwrap();
    let end = EXAMPLE[start..].find("ttl = ").unwrap() + start;
    let end = EXAMPLE[end..].find('\n').unwrap() + end;
    let bad = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
    let e = err(&bad);
    assert!(
        e.contains("nodes[0].boot")
            && e.contains("{rescue_iso_url}")
            && e.contains("[controller.media.rescue]")
            && !e.contains('\n'),
        "{e}"
    );
    // A command provider may name the kernel and initramfs for iPXE.
    let ipxe = EXAMPLE.replacen(
        "detach = [\"ipmitool\"",
        "detach = [\"echo\", \"{rescue_kernel_url}\", \"{rescue_initrd_url}\"]\nx = [\"ipmitool\"",
        1,
    );
    assert!(err(&ipxe).contains("x"), "an unknown key is refused");
}

#[test]
fn a_command_provider_has_no_reset_key() {
    let bad = EXAMPLE.replacen(
        "provider = \"command\"",
        "provider = \"command\"\nreset = [\"true\"]",
        1,
    );
    let e = err(&bad);
    assert!(e.contains("reset"), "{e}");
}

fn err(text: &str) -> String {
    Cluster::parse(text, "cluster.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_the_file_line_and_key() {
    let bad = EXAMPLE.replacen("role = \"standby\"", "role = \"stanby\"", 1);
    let e = err(&bad);
    assert!(
        e.starts_with("cluster.toml:") && e.contains("nodes[3].role") && e.contains("stanby"),
        "{e}"
    );
    let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
    assert!(bad.lines().nth(line - 1).unwrap().contains("stanby"), "{e}");

    let e = err(&EXAMPLE.replacen("image = \"worker\"", "image = \"nope\"", 1));
    assert!(
        e.contains("nodes[0].image") && e.contains("no image \"nope\""),
        "{e}"
    );
    let e = err(&EXAMPLE.replacen("name = \"node-2\"", "name = \"node-1\"", 1));
    assert!(e.contains("named twice"), "{e}");
    let e = err(&EXAMPLE.replacen("failure_threshold = 3", "failure_threshold = 0", 1));
    assert!(e.contains("policy.failure_threshold"), "{e}");
    let e = err(&EXAMPLE.replacen("health_interval = \"5s\"", "health_interval = \"soon\"", 1));
    assert!(e.contains("policy.health_interval"), "{e}");
    let e = err(&EXAMPLE.replacen("[controller]", "[controler]", 1));
    assert!(e.contains("controler"), "{e}");
    let e = err("this is not toml");
    assert!(e.starts_with("cluster.toml:1:"), "{e}");
}

#[test]
fn a_redfish_bmc_needs_https_unless_insecure_http() {
    let plain = EXAMPLE.replacen(
        "endpoint = \"https://10.71.0.11\"",
        "endpoint = \"http://10.71.0.11\"",
        1,
    );
    let e = err(&plain);
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.starts_with("cluster.toml:")
            && e.contains("nodes[0].boot.endpoint")
            && e.contains("node-1")
            && e.contains("insecure_http = true"),
        "{e}"
    );
    let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
    assert!(
        plain
            .lines()
            .nth(line - 1)
            .unwrap()
            .contains("http://10.71"),
        "{e}"
    );
    let allowed = plain.replacen(
        "provider = \"redfish\"",
        "provider = \"redfish\"\ninsecure_http = true",
        1,
    );
    let c = Cluster::parse(&allowed, "cluster.toml").unwrap();
    assert!(matches!(
        c.nodes[0].boot,
        BootProvider::Redfish {
            insecure_http: true,
            ..
        }
    ));

    let e = err(&EXAMPLE.replacen(
        "endpoint = \"https://10.71.0.11\"",
        "endpoint = \"https://10.71.0.11/redfish/v1\"",
        1,
    ));
    assert!(
        e.contains("nodes[0].boot.endpoint") && e.contains("no user, path"),
        "{e}"
    );
    let e = err(&EXAMPLE.replacen(
        "provider = \"redfish\"",
        "provider = \"redfish\"\ninsecure = true",
        1,
    ));
    assert!(
        e.contains("nodes[0].boot.ca_file") && e.contains("contradict"),
        "{e}"
    );
    let e = err(&EXAMPLE.replacen(
        "system = \"/redfish/v1/Systems/1\"",
        "system = \"https://elsewhere/redfish/v1/Systems/1\"",
        1,
    ));
    assert!(
        e.contains("nodes[0].boot.system") && e.contains("a path on the BMC"),
        "{e}"
    );
}

#[test]
fn a_disk_named_only_by_size_or_path_needs_allow_weak_selector() {
    let weak = EXAMPLE.replacen(
        "disk = { serial = \"S45NNA0M100001\" }",
        "disk = { size = 960197124096 }",
        1,
    );
    let e = err(&weak);
    assert!(
        e.contains("nodes[0].disk") && e.contains("allow_weak_selector"),
        "{e}"
    );
    let allowed = weak.replacen(
        "disk = { size = 960197124096 }",
        "disk = { size = 960197124096 }\nallow_weak_selector = true",
        1,
    );
    let c = Cluster::parse(&allowed, "cluster.toml").unwrap();
    assert!(c.nodes[0].allow_weak_selector);
}

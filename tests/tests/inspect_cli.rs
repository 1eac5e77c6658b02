//! `atmosphere invite inspect`: the real binary, as a person or an outside test calls it.
//! Checks the CLI contract: `--json` prints exactly the normalised invite on one line, the
//! readable form shows every path, and a bad link exits 2 with a one-line reason.

use atmosphere_tests::bin_path;
use std::io::Write;
use std::process::{Command, Output, Stdio};

const SPEC_V2_LINK: &str = r#"atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={"local":"ws://192.168.86.237:11451","public":"ws://73.45.123.89:11451","relay":"wss://relay.atmosphere.io/mesh/abc123"}"#;

fn inspect(args: &[&str]) -> Output {
    Command::new(bin_path())
        .args(["invite", "inspect"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run atmosphere")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn json_output_is_exactly_the_contract_for_the_original_design_link() {
    let o = inspect(&[SPEC_V2_LINK, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"version\":2,\"token\":\"ATM-XXX\",\"mesh_name\":\"Home\",\"mesh_id\":null,\"endpoints\":{\"local\":\"ws://192.168.86.237:11451\",\"public\":\"ws://73.45.123.89:11451\",\"relay\":\"wss://relay.atmosphere.io/mesh/abc123\"}}\n"
    );
}

#[test]
fn json_output_for_v1_and_web_links_has_nulls_for_missing_paths() {
    let o = inspect(&[
        "--json",
        "atmosphere://join?token=ATM-XXX&mesh=NAME&endpoint=ws://73.45.123.89:11451",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version":1,"token":"ATM-XXX","mesh_name":"NAME","mesh_id":null,
            "endpoints":{"local":null,"public":"ws://73.45.123.89:11451","relay":null}})
    );

    // A web link as the host generates it (encoded mesh with special characters).
    let web = "http://192.168.86.237:11451/join#token=ATM-ABC&mesh=Tom%20%26%20Jerry%20%231&endpoints=%7B%22local%22:%22ws://192.168.86.237:11451%22,%22public%22:null,%22relay%22:null%7D";
    let o = inspect(&[web, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"version\":2,\"token\":\"ATM-ABC\",\"mesh_name\":\"Tom & Jerry #1\",\"mesh_id\":null,\"endpoints\":{\"local\":\"ws://192.168.86.237:11451\",\"public\":null,\"relay\":null}}\n"
    );
}

#[test]
fn readable_summary_lists_every_path() {
    let link = r#"atmosphere://join?token=ATM-XXX&mesh=Home%20Mesh&endpoints={"local":"ws://192.168.86.237:11451","relay":null}"#;
    let o = inspect(&[link]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("v2"), "{out}");
    assert!(out.contains("ATM-XXX"), "{out}");
    assert!(out.contains("Home Mesh"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
            .to_string()
    };
    assert!(
        line("local:").ends_with("ws://192.168.86.237:11451"),
        "{out}"
    );
    assert!(line("public:").ends_with('—'), "{out}");
    assert!(line("relay:").ends_with('—'), "{out}");
}

#[test]
fn bad_links_exit_2_with_a_one_line_reason() {
    for (link, reason) in [
        (
            r#"atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={"local":"http://192.168.86.237:11451"}"#,
            "endpoints.local: only ws:// and wss://",
        ),
        (
            "atmosphere://join?token=ATM-XXX&mesh=Home&endpoints={...}",
            "endpoints: not valid endpoint JSON",
        ),
        (
            "atmosphere://join?mesh=Home&endpoint=ws://10.0.0.2:1",
            "no token",
        ),
        ("ftp://join?token=ATM-XXX", "unsupported link scheme"),
        ("", "empty"),
        (
            "atmosphere://join?token=ATM-X&mesh=%FF&endpoint=ws://10.0.0.2:1",
            "mesh: bad percent-encoding",
        ),
    ] {
        for json in [false, true] {
            let mut args = vec![link];
            if json {
                args.push("--json");
            }
            let o = inspect(&args);
            assert_eq!(o.status.code(), Some(2), "{link:?}: {}", stderr(&o));
            assert!(o.stdout.is_empty(), "{link:?}: stdout {}", stdout(&o));
            let err = stderr(&o);
            assert_eq!(err.lines().count(), 1, "{link:?}: {err:?}");
            assert!(err.starts_with("error: "), "{err:?}");
            assert!(err.contains(reason), "{link:?}: {err:?} lacks {reason:?}");
        }
    }
}

#[test]
fn huge_link_is_refused_not_processed() {
    let huge = format!(
        "atmosphere://join?token=ATM-X&mesh=M&endpoint=ws://10.0.0.2:1&pad={}",
        "a".repeat(20_000)
    );
    let o = inspect(&[&huge]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("limit"), "{}", stderr(&o));
}

#[test]
fn link_can_come_from_stdin() {
    let mut child = Command::new(bin_path())
        .args(["invite", "inspect", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SPEC_V2_LINK}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("{\"version\":2,\"token\":\"ATM-XXX\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_summary_names_the_mesh_id_the_host_must_prove() {
    let id = "yu3ed7b77d4tkz2nk4hgmx776e";
    let link =
        format!("atmosphere://join?token=ATM-XXX&mesh=Home&id={id}&endpoint=ws://10.0.0.2:11451");
    let o = inspect(&[&link]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("mesh id: {id} (the host must prove it)")),
        "{}",
        stdout(&o)
    );
    let o = inspect(&[&link, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["mesh_id"], id);
    // A link without one says what that means.
    let o = inspect(&[SPEC_V2_LINK]);
    assert!(stdout(&o).contains("mesh id: —"), "{}", stdout(&o));
}

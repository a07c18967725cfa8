//! `kubectl exec`, `cp`, `attach` and `port-forward` on a pod offloaded to c2's real node, through c1's
//! apiserver and the virtual node's kubelet API (issue 16), with the same done on c2 directly side by side
//! for the figures.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use sha2::Digest;

use super::{kubectl, running};

/// The offloaded pod's twin on c2.
const REMOTE_NS: &str = "web-consumer-c1";

pub async fn exec_attach_cp_port_forward(k1: &kube::Client, kc1: &Path, kc2: &Path) {
    let web: Api<Pod> = Api::namespaced(k1.clone(), "web");
    let image = ferry_e2e::image::WORKLOAD_IMAGE;
    let shell: Pod = serde_json::from_value(json!({
        "metadata": {"name": "shell"},
        "spec": {"nodeName": "ferry-provider-c2", "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}],
            "containers": [
                {"name": "sh", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "100000"]},
                // reads its stdin: what `kubectl attach -i` sends it
                {"name": "e", "image": image, "imagePullPolicy": "Never", "stdin": true,
                 "command": ["sh", "-c", "while read l; do echo \"got $l\"; done"]},
                // 10 MB of random bytes and their checksum over HTTP on 8080
                {"name": "srv", "image": image, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1M count=10 2>/dev/null && sha256sum /tmp/www/blob | cut -d' ' -f1 > /tmp/www/sum && exec httpd -f -p 8080 -h /tmp/www"]}]}
    }))
    .unwrap();
    web.create(&Default::default(), &shell).await.unwrap();
    running(&web, "shell").await;
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-n", "web", "shell", "-c", "sh", "--"];
        all.extend(args);
        kubectl(kc1, &all)
    };

    // a command: stdout, stderr and the exit code come back
    let (ok, out, err) = exec(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let code = exit_code(kc1, &["sh", "-c", "exit 7"]);
    assert!(
        !ok && out == "out\n" && err.contains("err") && code == Some(7),
        "exec: {out:?} {err:?} exit {code:?}"
    );
    // the same over a WebSocket (what apiservers from 1.29 on speak to kubectl, and may pass to a kubelet)
    websocket_exec(k1).await;
    // a TTY (`-it`, under a pseudo-terminal from `script`): the shell sees a terminal, its exit code
    // comes back
    let tty = Command::new("script")
        .args([
            "-qec",
            "kubectl exec -it -n web shell -c sh -- sh -c 'tty; exit 5'",
            "/dev/null",
        ])
        .env("KUBECONFIG", kc1)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let tty_out = String::from_utf8_lossy(&tty.stdout);
    assert!(
        tty.status.code() == Some(5) && tty_out.contains("/dev/pts/"),
        "exec -it: {:?} {tty_out:?} {}",
        tty.status,
        String::from_utf8_lossy(&tty.stderr)
    );
    // stdin piped in
    let mut piped = Command::new("kubectl")
        .env("KUBECONFIG", kc1)
        .args([
            "exec", "-i", "-n", "web", "shell", "-c", "sh", "--", "sh", "-c", "wc -c",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    piped.stdin.take().unwrap().write_all(&[b'x'; 100_000]).unwrap();
    let o = piped.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "100000",
        "exec -i with 100000 bytes"
    );
    // a container that is not there: the provider's refusal, as kubectl prints it
    let (ok, _, err) = kubectl(kc1, &["exec", "-n", "web", "shell", "-c", "nope", "--", "true"]);
    assert!(!ok && err.contains("nope"), "exec -c nope: {err}");

    // kubectl cp to and from the pod (tar over exec's stdin and stdout)
    let dir = std::env::temp_dir().join(format!("ferry-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let up = dir.join("up.bin");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&up, &data).unwrap();
    let (ok, _, err) = kubectl(
        kc1,
        &["cp", up.to_str().unwrap(), "web/shell:/tmp/up.bin", "-c", "sh"],
    );
    assert!(ok, "kubectl cp to the pod: {err}");
    let (ok, out, err) = exec(&["sha256sum", "/tmp/up.bin"]);
    let local_sum = hex::encode(sha2::Sha256::digest(&data));
    assert!(
        ok && out.starts_with(&local_sum),
        "the copied file's sum: {out} {err} (local {local_sum})"
    );
    let down = dir.join("down.bin");
    let (ok, _, err) = kubectl(
        kc1,
        &["cp", "web/shell:/tmp/up.bin", down.to_str().unwrap(), "-c", "sh"],
    );
    assert!(ok, "kubectl cp from the pod: {err}");
    assert!(
        std::fs::read(&down).unwrap() == data,
        "the file copied back differs"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // attach: a line sent to the container's stdin comes back from its stdout
    let mut attach = Command::new("kubectl")
        .env("KUBECONFIG", kc1)
        .args(["attach", "-i", "-n", "web", "shell", "-c", "e"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to = attach.stdin.take().unwrap();
    let from = attach.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(from)
            .lines()
            .map_while(Result::ok)
            .find(|l| l == "got hello-over-attach")
    });
    // the attach streams take a moment: say it until heard (the reader stops at the first answer)
    let t = Instant::now();
    while !lines.is_finished() && t.elapsed() < Duration::from_secs(30) {
        let _ = to.write_all(b"hello-over-attach\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = attach.kill();
    let _ = attach.wait();
    assert!(
        lines.join().unwrap().is_some(),
        "kubectl attach -i: the container's answer did not come back"
    );

    // the first byte of an exec, through c1 and on c2 directly (5 each, medians)
    let first_byte = |kc: &Path, ns: &str| {
        let t = Instant::now();
        let mut c = Command::new("kubectl")
            .env("KUBECONFIG", kc)
            .args(["exec", "-n", ns, "shell", "-c", "sh", "--", "echo", "x"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut b = [0u8; 1];
        c.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
        let at = t.elapsed().as_secs_f64();
        let _ = c.wait();
        at
    };
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        via.push(first_byte(kc1, "web"));
        direct.push(first_byte(kc2, REMOTE_NS));
    }
    let (v, d) = (median(via), median(direct));
    eprintln!(
        "kubectl exec, first byte: {v:.3}s through the virtual node vs {d:.3}s on c2 directly (ratio {:.2})",
        v / d
    );

    // port-forward: 10 MB, checksummed, through c1 and on c2 directly
    let (_, sum, _) = kubectl(
        kc1,
        &[
            "exec",
            "-n",
            "web",
            "shell",
            "-c",
            "srv",
            "--",
            "cat",
            "/tmp/www/sum",
        ],
    );
    let sum = sum.trim().to_string();
    assert_eq!(sum.len(), 64, "the server's checksum: {sum:?}");
    let mut rates = Vec::new();
    for (kc, ns) in [(kc1, "web"), (kc2, REMOTE_NS)] {
        let mut pf = Command::new("kubectl")
            .env("KUBECONFIG", kc)
            .args(["port-forward", "-n", ns, "pod/shell", ":8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(pf.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        // "Forwarding from 127.0.0.1:NNNNN -> 8080"
        let port: u16 = first
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward said {first:?}"));
        let t = Instant::now();
        let body = http_get(port, "/blob");
        let secs = t.elapsed().as_secs_f64();
        let _ = pf.kill();
        let _ = pf.wait();
        assert_eq!(body.len(), 10 << 20, "port-forward ({ns}): the body's length");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&body)),
            sum,
            "port-forward ({ns}): the body's checksum"
        );
        rates.push(body.len() as f64 / secs / 1e6);
    }
    eprintln!(
        "kubectl port-forward, 10 MB checksummed: {:.1} MB/s through the virtual node vs {:.1} MB/s on c2 directly (ratio {:.2})",
        rates[0],
        rates[1],
        rates[0] / rates[1]
    );
    let _ = web.delete("shell", &Default::default()).await;
}

/// An exec of `web/shell` over a WebSocket (`v4.channel.k8s.io`) through c1's apiserver, which passes the
/// upgrade to the virtual node's kubelet API, which passes it to c2's apiserver: stdout, stderr and the
/// exit code come back on their channels.
async fn websocket_exec(k1: &kube::Client) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::process::id().to_be_bytes().repeat(4),
    );
    let req = http::Request::get(
        "/api/v1/namespaces/web/pods/shell/exec?container=sh&stdout=true&stderr=true&command=sh&command=-c&command=echo%20ws-out%3B%20echo%20ws-err%20%3E%262%3B%20exit%203",
    )
    .header("connection", "Upgrade")
    .header("upgrade", "websocket")
    .header("sec-websocket-version", "13")
    .header("sec-websocket-key", &key)
    .header("sec-websocket-protocol", "v4.channel.k8s.io")
    .body(kube::client::Body::empty())
    .unwrap();
    let res = k1.send(req).await.unwrap();
    assert_eq!(
        res.status(),
        101,
        "the WebSocket exec was not switched: {:?}",
        res.headers()
    );
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v4.channel.k8s.io")
    );
    assert!(res.headers().contains_key("sec-websocket-accept"));
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    // server frames: unmasked; binary data frames start with their channel (1 stdout, 2 stderr, 3 error)
    let mut channels: [Vec<u8>; 4] = Default::default();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            if io.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = match head[1] & 0x7f {
                126 => io.read_u16().await.unwrap() as usize,
                127 => io.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.unwrap();
            match head[0] & 0x0f {
                0x8 => {
                    // close: answer it (masked, empty), and the exchange is over
                    let _ = io.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
                    break;
                }
                0x1 | 0x2 if !payload.is_empty() && (payload[0] as usize) < channels.len() => {
                    channels[payload[0] as usize].extend_from_slice(&payload[1..]);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the WebSocket exec did not end within 30s");
    let text = |c: usize| String::from_utf8_lossy(&channels[c]).to_string();
    assert_eq!((text(1).as_str(), text(2).as_str()), ("ws-out\n", "ws-err\n"));
    let status: serde_json::Value = serde_json::from_slice(&channels[3]).unwrap_or_default();
    assert_eq!(
        (
            status["reason"].as_str(),
            status["details"]["causes"][0]["message"].as_str()
        ),
        (Some("NonZeroExitCode"), Some("3")),
        "the error channel: {}",
        text(3)
    );
}

/// The exit code of `kubectl exec` of `cmd` in the pod `web/shell`.
fn exit_code(kc: &Path, cmd: &[&str]) -> Option<i32> {
    Command::new("kubectl")
        .env("KUBECONFIG", kc)
        .args(["exec", "-n", "web", "shell", "-c", "sh", "--"])
        .args(cmd)
        .output()
        .unwrap()
        .status
        .code()
}

/// The body of `GET path` from 127.0.0.1:`port` (HTTP/1.0, read to the end).
fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    assert!(all.starts_with(b"HTTP/1.0 200") || all.starts_with(b"HTTP/1.1 200"));
    all.split_off(at + 4)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

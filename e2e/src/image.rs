//! Container images without a registry: the lab writes OCI image-layout archives itself (a tar of
//! `oci-layout`, `index.json` and `blobs/sha256/…`, one uncompressed layer) for `ctr images import`.
//! Everything is fixed (mtime 0, uid/gid 0, sorted entries), so the same inputs give the same bytes and
//! the same image ID.
//!
//! Images: [`pause`] (the static pause binary built by `scripts/provision.sh`), [`workload`] (Debian's
//! static busybox, with `sh`, `httpd`, `nc`, `wget` and friends as links: an nginx-like server and a
//! curl-like client) and [`ferry`] (ferry's binaries, stripped, with the C libraries they link).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The name the lab's pause image is imported as (the kubelet's `--pod-infra-container-image`).
pub const PAUSE_IMAGE: &str = "ferry.dev/lab/pause:3.4.1";
/// The name the lab's workload image is imported as.
pub const WORKLOAD_IMAGE: &str = "ferry.dev/lab/busybox:1.35";
/// The name ferry's own image is imported as (the chart's default image for the lab).
pub const FERRY_IMAGE: &str = concat!("ferry.dev/ferry:", env!("CARGO_PKG_VERSION"));
/// ferry's binaries, all in [`FERRY_IMAGE`] under `/usr/bin`.
pub const FERRY_BINARIES: &[&str] = &["ferry-agent", "ferry-gateway", "ferry-dns", "ferryctl"];
/// The host tools the gateway's apply layer runs (iproute2's `ip`, `nft`), copied from this machine into
/// ferry's image under `/usr/sbin` with the libraries they link.
pub const FERRY_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/nft"];

/// The busybox applets the workload image links (`/bin/<applet> -> busybox`).
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "echo",
    "env",
    "hostname",
    "httpd",
    "id",
    "ls",
    "mkdir",
    "nc",
    "nslookup",
    "ping",
    "ps",
    "rm",
    "sleep",
    "tail",
    "true",
    "false",
    "wget",
    "date",
    "grep",
    "head",
    "touch",
    "test",
    "ip",
    "timeout",
    "md5sum",
    "tar",
    "sha256sum",
    "wc",
    "dd",
    "cut",
    "tty",
    "stat",
];

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path inside the image, no leading `/`.
        path: String,
    },
    /// A regular file.
    File {
        /// Path inside the image.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the image.
        path: String,
        /// Where it points.
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    // NUL-terminated, zero-padded octal, as ustar wants
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[field.len() - 1] = 0;
}

fn header(path: &str, mode: u32, size: u64, kind: u8, link: &str) -> Result<[u8; 512]> {
    if path.len() > 100 || link.len() > 100 {
        bail!("tar entry {path:?}: names longer than 100 bytes are not written here; fix: a shorter path");
    }
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // the checksum is taken with its own field as spaces
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A tar archive of `entries`, sorted by path, with fixed owners and times.
pub fn tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut out = Vec::new();
    for e in sorted {
        match e {
            Entry::Dir { path } => out.extend(header(&format!("{path}/"), 0o755, 0, b'5', "")?),
            Entry::Symlink { path, target } => out.extend(header(path, 0o777, 0, b'2', target)?),
            Entry::File { path, mode, data } => {
                out.extend(header(path, *mode, data.len() as u64, b'0', "")?);
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    // two zero blocks end the archive
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI image-layout archive of one layer made of `entries`, named `name` (`registry/repo:tag`), with
/// this entrypoint.
pub fn oci_archive(name: &str, entries: &[Entry], entrypoint: &[&str]) -> Result<Vec<u8>> {
    let layer = tar(entries)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "ferry-lab image"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    }))?;
    let mut entries = vec![
        Entry::File {
            path: "oci-layout".into(),
            mode: 0o644,
            data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        },
        Entry::File {
            path: "index.json".into(),
            mode: 0o644,
            data: index,
        },
        Entry::Dir { path: "blobs".into() },
        Entry::Dir {
            path: "blobs/sha256".into(),
        },
    ];
    for blob in [layer, config, manifest] {
        let hex = digest(&blob).trim_start_matches("sha256:").to_string();
        entries.push(Entry::File {
            path: format!("blobs/sha256/{hex}"),
            mode: 0o644,
            data: blob,
        });
    }
    tar(&entries)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "reading {}; fix: run scripts/provision.sh (make deps)",
            path.display()
        )
    })
}

/// The pause image: `/pause` only.
pub fn pause(pause_binary: &Path) -> Result<Vec<u8>> {
    let entries = vec![Entry::File {
        path: "pause".into(),
        mode: 0o755,
        data: read(pause_binary)?,
    }];
    oci_archive(PAUSE_IMAGE, &entries, &["/pause"])
}

/// The workload image: static busybox as `/bin/busybox`, its applets as links, and the directories a
/// container expects.
pub fn workload(busybox: &Path) -> Result<Vec<u8>> {
    let mut entries: Vec<Entry> = ["bin", "dev", "etc", "proc", "sys", "tmp", "var", "var/www"]
        .iter()
        .map(|d| Entry::Dir { path: d.to_string() })
        .collect();
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: read(busybox)?,
    });
    entries.push(Entry::File {
        path: "etc/passwd".into(),
        mode: 0o644,
        data: b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
    });
    entries.push(Entry::File {
        path: "var/www/index.html".into(),
        mode: 0o644,
        data: b"ferry lab workload\n".to_vec(),
    });
    for a in APPLETS {
        entries.push(Entry::Symlink {
            path: format!("bin/{a}"),
            target: "busybox".into(),
        });
    }
    oci_archive(WORKLOAD_IMAGE, &entries, &["/bin/sh"])
}

/// The shared libraries `binary` loads (from `ldd`), as absolute paths on this machine, the loader
/// included.
pub fn shared_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    anyhow::ensure!(
        out.status.success(),
        "ldd {}: not a dynamic executable",
        binary.display()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        .filter_map(|l| {
            let l = l.split(" (0x").next()?.trim();
            let path = l.rsplit("=> ").next()?.trim();
            path.starts_with('/').then(|| std::path::PathBuf::from(path))
        })
        .collect())
}

/// ferry's image: each binary of `bin_dir` named in [`FERRY_BINARIES`], stripped of symbols, in
/// `/usr/bin`, and the gateway's tools ([`FERRY_TOOLS`]) in `/usr/sbin`, with the C libraries they all link
/// at the paths the loader looks for (symlinks followed). The container runs as any user the pod asks
/// for; the image has no shell.
pub fn ferry(bin_dir: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let mut entries: Vec<Entry> = ["etc", "tmp", "usr", "usr/bin", "usr/sbin"]
        .iter()
        .map(|d| Entry::Dir { path: d.to_string() })
        .collect();
    entries.push(Entry::File {
        path: "etc/passwd".into(),
        mode: 0o644,
        data: b"root:x:0:0:root:/:/usr/bin/ferryctl\nferry:x:65532:65532:ferry:/:/usr/bin/ferryctl\n"
            .to_vec(),
    });
    let mut libs = std::collections::BTreeSet::new();
    std::fs::create_dir_all(scratch)?;
    for b in FERRY_BINARIES {
        let src = bin_dir.join(b);
        let stripped = scratch.join(b);
        let out = std::process::Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&src)
            .output()
            .context("running strip (binutils)")?;
        anyhow::ensure!(
            out.status.success(),
            "strip {}: {}; fix: cargo build --workspace --bins (make build)",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        libs.extend(shared_libraries(&src)?);
        entries.push(Entry::File {
            path: format!("usr/bin/{b}"),
            mode: 0o755,
            data: std::fs::read(&stripped)?,
        });
        let _ = std::fs::remove_file(&stripped);
    }
    for tool in FERRY_TOOLS {
        let path = Path::new(tool);
        let data = std::fs::read(path)
            .with_context(|| format!("reading {tool}; fix: apt-get install iproute2 nftables (make deps)"))?;
        libs.extend(shared_libraries(path)?);
        entries.push(Entry::File {
            path: tool.trim_start_matches('/').to_string(),
            mode: 0o755,
            data,
        });
    }
    let mut dirs = std::collections::BTreeSet::new();
    for lib in libs {
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        let real = std::fs::canonicalize(&lib)?;
        let real_rel = real.to_string_lossy().trim_start_matches('/').to_string();
        for p in [&rel, &real_rel] {
            let mut d = Path::new(p).parent();
            while let Some(dir) = d.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(dir.to_string_lossy().to_string());
                d = dir.parent();
            }
        }
        if real_rel != rel {
            entries.push(Entry::Symlink {
                path: rel,
                target: format!("/{real_rel}"),
            });
        }
        if !entries.iter().any(|e| e.path() == real_rel) {
            entries.push(Entry::File {
                path: real_rel,
                mode: 0o755,
                data: read(&real)?,
            });
        }
    }
    for d in dirs {
        if !entries.iter().any(|e| e.path() == d) {
            entries.push(Entry::Dir { path: d });
        }
    }
    oci_archive(FERRY_IMAGE, &entries, &["/usr/bin/ferry-agent"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a tar back: (name, type, link, data) per entry; checks every header's checksum.
    fn untar(mut t: &[u8]) -> Vec<(String, u8, String, Vec<u8>)> {
        let mut out = Vec::new();
        while t.len() >= 512 && t[..512].iter().any(|&b| b != 0) {
            let h = &t[..512];
            let field = |r: std::ops::Range<usize>| {
                String::from_utf8_lossy(&h[r])
                    .trim_end_matches(['\0', ' '])
                    .to_string()
            };
            let mut copy = h.to_vec();
            copy[148..156].copy_from_slice(b"        ");
            let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
            assert_eq!(u32::from_str_radix(&field(148..154), 8).unwrap(), sum);
            let size = u64::from_str_radix(&field(124..135), 8).unwrap() as usize;
            let data = t[512..512 + size].to_vec();
            out.push((field(0..100), h[156], field(157..257), data));
            t = &t[512 + size.div_ceil(512) * 512..];
        }
        assert_eq!(t.len(), 1024, "two zero blocks end the archive");
        out
    }

    #[test]
    fn shared_libraries_lists_the_loader_and_libc_of_a_dynamic_binary_and_refuses_a_static_one() {
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(libs.iter().all(|l| l.is_absolute()), "{libs:?}");
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(
            !libs.iter().any(|l| l.to_string_lossy().contains("vdso")),
            "{libs:?}"
        );
        assert!(
            shared_libraries(Path::new("/bin/busybox")).is_err(),
            "busybox-static is static"
        );
    }

    #[test]
    fn tar_entries_are_sorted_padded_and_checksummed() {
        let t = tar(&[
            Entry::File {
                path: "b/file".into(),
                mode: 0o644,
                data: b"hello".to_vec(),
            },
            Entry::Dir { path: "b".into() },
            Entry::Symlink {
                path: "a".into(),
                target: "b/file".into(),
            },
        ])
        .unwrap();
        assert_eq!(t.len() % 512, 0);
        let e = untar(&t);
        assert_eq!(e[0], ("a".into(), b'2', "b/file".into(), vec![]));
        assert_eq!(e[1], ("b/".into(), b'5', String::new(), vec![]));
        assert_eq!(e[2], ("b/file".into(), b'0', String::new(), b"hello".to_vec()));
        assert!(
            tar(&[Entry::Dir {
                path: "x".repeat(101)
            }])
            .is_err()
        );
    }

    #[test]
    fn an_oci_archive_is_a_valid_layout_whose_digests_match_and_is_reproducible() {
        let entries = [Entry::File {
            path: "pause".into(),
            mode: 0o755,
            data: vec![7; 1000],
        }];
        let a = oci_archive("ferry.dev/lab/x:1", &entries, &["/pause"]).unwrap();
        assert_eq!(
            a,
            oci_archive("ferry.dev/lab/x:1", &entries, &["/pause"]).unwrap()
        );
        let files = untar(&a);
        let get = |name: &str| files.iter().find(|f| f.0 == name).unwrap().3.clone();
        let layout: serde_json::Value = serde_json::from_slice(&get("oci-layout")).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let blob = |d: &serde_json::Value| {
            let b = get(&format!(
                "blobs/sha256/{}",
                d["digest"].as_str().unwrap().trim_start_matches("sha256:")
            ));
            assert_eq!(digest(&b), d["digest"].as_str().unwrap());
            assert_eq!(b.len() as u64, d["size"].as_u64().unwrap());
            b
        };
        let index: serde_json::Value = serde_json::from_slice(&get("index.json")).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], "ferry.dev/lab/x:1");
        let manifest: serde_json::Value = serde_json::from_slice(&blob(m)).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        let layer = blob(&manifest["layers"][0]);
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(untar(&layer)[0].3, vec![7; 1000]);
    }
}

//! `ferry-lab heap FILE`: what a dhat heap profile (`ferry-agent` built with `--features dhat-heap`, file
//! `FERRY_DHAT_FILE`) says: the heap at its peak and at the end, and the allocation sites that held the
//! most at the peak, each named by its first frame in ferry's code (and its first frame at all).

use serde::Serialize;
use serde_json::Value;

/// One allocation site.
#[derive(Debug, Serialize, PartialEq)]
pub struct Site {
    /// Bytes it held at the heap's peak.
    pub bytes_at_peak: u64,
    /// Blocks it held then.
    pub blocks_at_peak: u64,
    /// Bytes it held at the end.
    pub bytes_at_end: u64,
    /// Its first frame in ferry's crates (`ferry_…`), if any.
    pub ferry_frame: Option<String>,
    /// Its first frame below the allocator.
    pub frame: String,
}

/// The profile's figures.
#[derive(Debug, Serialize, PartialEq)]
pub struct HeapSummary {
    /// Bytes live at the peak (dhat's t-gmax).
    pub bytes_at_peak: u64,
    /// Blocks live then.
    pub blocks_at_peak: u64,
    /// Bytes live at the end.
    pub bytes_at_end: u64,
    /// The sites that held the most at the peak, most first.
    pub top: Vec<Site>,
}

/// A frame as dhat wrote it (`0xADDR: function (file:line:col)`), without the address.
fn frame_text(f: &str) -> String {
    f.split_once(": ").map_or(f, |(_, r)| r).to_string()
}

/// The summary of a dhat-rs profile (file version 2), with the `top` sites by bytes at the peak.
pub fn summarize(profile: &Value, top: usize) -> Result<HeapSummary, String> {
    let pps = profile["pps"]
        .as_array()
        .ok_or("no \"pps\": not a dhat heap profile (dhatFileVersion 2)")?;
    let frames: Vec<&str> = profile["ftbl"]
        .as_array()
        .ok_or("no \"ftbl\": not a dhat heap profile")?
        .iter()
        .map(|f| f.as_str().unwrap_or_default())
        .collect();
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let mut sites: Vec<Site> = pps
        .iter()
        .map(|pp| {
            let fs: Vec<String> = pp["fs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| frames.get(i.as_u64()? as usize))
                        .map(|f| frame_text(f))
                        .collect()
                })
                .unwrap_or_default();
            let below_alloc = |f: &&String| {
                !f.starts_with("[root]")
                    && !["alloc::", "dhat::", "<dhat::", "core::", "__rust", "<alloc::"]
                        .iter()
                        .any(|p| f.starts_with(p))
            };
            Site {
                bytes_at_peak: n(pp, "gb"),
                blocks_at_peak: n(pp, "gbk"),
                bytes_at_end: n(pp, "eb"),
                ferry_frame: fs
                    .iter()
                    .find(|f| f.starts_with("ferry_") || f.starts_with("<ferry_"))
                    .cloned(),
                frame: fs
                    .iter()
                    .find(below_alloc)
                    .or(fs.first())
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    let sum = |f: fn(&Site) -> u64, s: &[Site]| s.iter().map(f).sum();
    let (bytes_at_peak, blocks_at_peak, bytes_at_end) = (
        sum(|s| s.bytes_at_peak, &sites),
        sum(|s| s.blocks_at_peak, &sites),
        sum(|s| s.bytes_at_end, &sites),
    );
    sites.sort_by_key(|s| std::cmp::Reverse(s.bytes_at_peak));
    sites.truncate(top);
    Ok(HeapSummary {
        bytes_at_peak,
        blocks_at_peak,
        bytes_at_end,
        top: sites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sites_are_summed_ranked_and_named_by_their_ferry_frame() {
        let p = json!({
            "dhatFileVersion": 2,
            "ftbl": [
                "[root]",
                "0x1: alloc::alloc::alloc (alloc.rs:1:1)",
                "0x2: serde_json::de::from_slice (de.rs:2:2)",
                "0x3: ferry_virtual_kubelet::pods::reconcile (pods.rs:3:3)",
                "0x4: kube_runtime::reflector::store::Writer::apply (store.rs:4:4)"
            ],
            "pps": [
                {"tb": 900, "tbk": 9, "gb": 100, "gbk": 1, "eb": 0, "ebk": 0, "fs": [1, 2, 3]},
                {"tb": 5000, "tbk": 50, "gb": 4000, "gbk": 40, "eb": 3000, "ebk": 30, "fs": [1, 4]}
            ]
        });
        let s = summarize(&p, 1).unwrap();
        assert_eq!(
            (s.bytes_at_peak, s.blocks_at_peak, s.bytes_at_end),
            (4100, 41, 3000)
        );
        assert_eq!(s.top.len(), 1, "cut to the top 1");
        assert_eq!(s.top[0].bytes_at_peak, 4000);
        assert_eq!(s.top[0].ferry_frame, None);
        assert!(
            s.top[0].frame.starts_with("kube_runtime::reflector"),
            "{:?}",
            s.top[0]
        );
        let all = summarize(&p, 10).unwrap();
        assert_eq!(
            all.top[1].ferry_frame.as_deref(),
            Some("ferry_virtual_kubelet::pods::reconcile (pods.rs:3:3)")
        );
        assert!(summarize(&json!({"x": 1}), 5).unwrap_err().contains("pps"));
    }
}

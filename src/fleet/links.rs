//! KV-transfer links between pools, for prefill/decode disaggregation: a fleet file's
//! `[links.NAME]` tables, checked against its pools, and the table of resolved links a
//! driver looks a (prefill pool, decode pool) pair up in. Pairs not listed get the
//! documented default below.
//!
//! ```toml
//! [links.ascend-to-h20]
//! from = "ascend"          # a prefill pool
//! to = "h20"               # a decode or mixed pool
//! bandwidth_gbps = 142     # per prefill backend, shared by its concurrent transfers
//! latency_us = 500         # fixed cost of one transfer
//! staging_gbps = 200       # host-memory hop (device → DRAM → RDMA), pipelined
//! layerwise = true         # send each layer's KV as the prefill computes it
//! ```
//!
//! Defaults and their sources:
//! - `bandwidth_gbps = 142`: one 200 Gb/s RoCE NIC per accelerator (the low end of the
//!   200–400 Gb/s usual inside a cluster) at the 71% of line rate Mooncake's transfer
//!   engine reached for vLLM P/D (1P1D, Qwen3-8B: 142.25 GB/s peak of ~200 GB/s on 8×RoCE;
//!   kvcache-ai.github.io/Mooncake/performance/vllm-v1-support-benchmark.html).
//! - `latency_us = 500`: the intercept of the same table (146 MB in 1.50 ms, 290 MB in
//!   2.51 ms: ~0.49 ms plus ~143 GB/s).
//! - Pools of different vendors (Ascend → NVIDIA) default to a staging hop, as Mooncake's
//!   Heterogeneous Ascend Transport (910B prefill, H20 decode) needs: KV is gathered in
//!   HBM into 8 MB blocks, copied to host DRAM and written over RDMA to the GPU, the copy
//!   pipelined with the RDMA writes (kvcache-ai/Mooncake,
//!   docs/source/design/transfer-engine/heterogeneous_ascend.md). Modelled as a pipeline:
//!   the slower of the two stages sets the rate, and the first 8 MB block's copy adds to
//!   the latency. `staging_gbps = 200` (25 GB/s, a PCIe 4.0 x16 device-to-host copy) is an
//!   `estimate`: no public figure for the 910B's D2H copy rate was found.

use super::membership::PoolConfig;
use crate::engine::Role;
use serde::Deserialize;

/// Default link bandwidth, Gb/s (see the module docs for the source).
pub const DEFAULT_BANDWIDTH_GBPS: f64 = 142.0;
/// Default fixed latency of one transfer, µs.
pub const DEFAULT_LATENCY_US: f64 = 500.0;
/// Default host-memory staging rate where a transfer needs one, Gb/s (`estimate`).
pub const DEFAULT_STAGING_GBPS: f64 = 200.0;
/// Block a staged transfer copies to host memory before the first RDMA write (Mooncake's
/// Heterogeneous Ascend Transport aggregates into 8 MB blocks).
pub const STAGING_BLOCK_BYTES: f64 = 8.0 * 1024.0 * 1024.0;

/// One `[links.NAME]` table as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub from: String,
    pub to: String,
    pub bandwidth_gbps: Option<f64>,
    pub latency_us: Option<f64>,
    /// Host-memory hop rate; `0` turns off the default staging between vendors.
    pub staging_gbps: Option<f64>,
    #[serde(default)]
    pub layerwise: bool,
}

/// A resolved link from one pool to another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Rate one prefill backend's transfers share, bytes per nanosecond (the slower of
    /// the network and, when staged, the host copy).
    pub bytes_per_ns: f64,
    /// Fixed time added to every transfer: the link's latency plus, when staged, the
    /// first block's copy.
    pub latency_ns: u64,
    pub staged: bool,
    /// Layer-wise overlap: all but the last layer's KV can move while the prefill runs.
    pub layerwise: bool,
}

impl Link {
    fn new(
        bandwidth_gbps: f64,
        latency_us: f64,
        staging_gbps: Option<f64>,
        layerwise: bool,
    ) -> Link {
        let net = bandwidth_gbps / 8.0; // GB/s = bytes per ns
        let (rate, extra) = match staging_gbps {
            Some(s) if s > 0.0 => {
                let copy = s / 8.0;
                (net.min(copy), STAGING_BLOCK_BYTES / copy)
            }
            _ => (net, 0.0),
        };
        Link {
            bytes_per_ns: rate,
            latency_ns: (latency_us * 1e3 + extra).round() as u64,
            staged: matches!(staging_gbps, Some(s) if s > 0.0),
            layerwise,
        }
    }

    /// Time to move `bytes` over this link alone (no other transfer sharing it).
    pub fn alone_ns(&self, bytes: f64) -> u64 {
        self.latency_ns + (bytes / self.bytes_per_ns).ceil() as u64
    }

    /// Bytes still to send once a prefill of `prefill_ns` has ended: with layer-wise
    /// overlap, whatever the link could carry during the prefill, but at least the last
    /// layer's share (computed by the last step).
    pub fn exposed_bytes(&self, bytes: f64, layers: u32, prefill_ns: u64) -> f64 {
        if !self.layerwise {
            return bytes;
        }
        let last = bytes / f64::from(layers.max(1));
        (bytes - self.bytes_per_ns * prefill_ns as f64).max(last)
    }
}

/// The link for every ordered pair of pools, by pool index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkTable {
    pools: usize,
    links: Vec<Link>,
}

impl LinkTable {
    /// Links for `pools`: the listed ones, defaults for the rest. Errors name the field
    /// (`links.NAME.from`, …) and what is wrong with it.
    pub fn resolve(
        pools: &[PoolConfig],
        specs: &[(String, LinkSpec)],
    ) -> Result<LinkTable, (String, String)> {
        let n = pools.len();
        let mut links = Vec::with_capacity(n * n);
        for a in pools {
            for b in pools {
                let staging =
                    (a.perf.chip.vendor != b.perf.chip.vendor).then_some(DEFAULT_STAGING_GBPS);
                links.push(Link::new(
                    DEFAULT_BANDWIDTH_GBPS,
                    DEFAULT_LATENCY_US,
                    staging,
                    false,
                ));
            }
        }
        let mut seen = vec![false; n * n];
        let index = |name: &str| pools.iter().position(|p| p.name == name);
        for (name, s) in specs {
            let field = |f: &str| format!("links.{name}.{f}");
            let known = || {
                pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let from = index(&s.from).ok_or_else(|| {
                (
                    field("from"),
                    format!("unknown pool `{}`; pools: {}", s.from, known()),
                )
            })?;
            let to = index(&s.to).ok_or_else(|| {
                (
                    field("to"),
                    format!("unknown pool `{}`; pools: {}", s.to, known()),
                )
            })?;
            if pools[from].role != Role::Prefill {
                return Err((
                    field("from"),
                    format!(
                        "pool `{}` is {}; KV links start at a prefill pool",
                        s.from,
                        pools[from].role.as_str()
                    ),
                ));
            }
            if !pools[to].role.serves_whole() {
                return Err((
                    field("to"),
                    format!(
                        "pool `{}` is a prefill pool; KV links end at a decode or mixed pool",
                        s.to
                    ),
                ));
            }
            if std::mem::replace(&mut seen[from * n + to], true) {
                return Err((
                    field("to"),
                    format!("a second link from `{}` to `{}`", s.from, s.to),
                ));
            }
            let bw = s.bandwidth_gbps.unwrap_or(DEFAULT_BANDWIDTH_GBPS);
            if !(bw.is_finite() && bw > 0.0) {
                return Err((
                    field("bandwidth_gbps"),
                    format!("must be a positive number of Gb/s, got {bw}"),
                ));
            }
            let lat = s.latency_us.unwrap_or(DEFAULT_LATENCY_US);
            if !(lat.is_finite() && (0.0..=1e7).contains(&lat)) {
                return Err((
                    field("latency_us"),
                    format!("must be between 0 and 10,000,000 µs, got {lat}"),
                ));
            }
            let staging = match s.staging_gbps {
                Some(g) if !(g.is_finite() && g >= 0.0) => {
                    return Err((
                        field("staging_gbps"),
                        format!("must be 0 (none) or a positive number of Gb/s, got {g}"),
                    ))
                }
                Some(g) => Some(g),
                None => (pools[from].perf.chip.vendor != pools[to].perf.chip.vendor)
                    .then_some(DEFAULT_STAGING_GBPS),
            };
            links[from * n + to] = Link::new(bw, lat, staging, s.layerwise);
        }
        Ok(LinkTable { pools: n, links })
    }

    /// Every pair on one link (tests, and sweeps over link speed).
    pub fn uniform(pools: usize, link: Link) -> LinkTable {
        LinkTable {
            pools,
            links: vec![link; pools * pools],
        }
    }

    /// Explicit links for `pools` pools, row-major by (from, to).
    pub fn from_links(pools: usize, links: Vec<Link>) -> LinkTable {
        assert_eq!(links.len(), pools * pools, "one link per ordered pair");
        LinkTable { pools, links }
    }

    /// A link of `bandwidth_gbps` and `latency_us`, unstaged.
    pub fn link(bandwidth_gbps: f64, latency_us: f64) -> Link {
        Link::new(bandwidth_gbps, latency_us, None, false)
    }

    /// The link from pool `from` to pool `to` (indices into the fleet's pools).
    pub fn between(&self, from: usize, to: usize) -> Link {
        self.links[from * self.pools + to]
    }

    pub fn pools(&self) -> usize {
        self.pools
    }
}

/// Checks a fleet's roles: every prefill pool needs somewhere to hand off to, and a decode
/// pool needs a prefill pool to hand off to it (else it only ever gets whole requests and
/// runs as a mixed pool under another name). Returns the offending pool's name.
pub fn check_roles(pools: &[PoolConfig]) -> Result<(), (String, String)> {
    let decodes = pools.iter().any(|p| p.role.serves_whole());
    let prefill = pools.iter().find(|p| p.role == Role::Prefill);
    match prefill {
        Some(p) if !decodes => Err((
            p.name.clone(),
            format!(
                "prefill pool `{}` has nowhere to hand its KV off: the fleet needs a decode or mixed pool",
                p.name
            ),
        )),
        None => match pools.iter().find(|p| p.role == Role::Decode) {
            Some(d) => Err((
                d.name.clone(),
                format!(
                    "decode pool `{}` would get no hand-offs: the fleet has no prefill pool, so it \
                     would serve whole requests as a mixed pool (make it mixed, or add a prefill pool)",
                    d.name
                ),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The daemon's simulated backends run every role; a pool of real engines (endpoints)
/// serves whole requests only, since a real engine's KV cannot be handed over by the
/// daemon. Returns the first pool that breaks this, and why, so `dujiang serve` refuses
/// the fleet instead of silently serving it as mixed. Also checks [`check_roles`].
pub fn check_simulated_roles(pools: &[PoolConfig]) -> Result<(), (String, String)> {
    check_roles(pools)?;
    if let Some(p) = pools
        .iter()
        .find(|p| p.role != Role::Mixed && p.upstream.is_some())
    {
        return Err((
            p.name.clone(),
            format!(
                "pool `{}` is {} and proxies real engines: prefill/decode roles run on \
                 simulated backends only (real engines serve whole requests, role mixed)",
                p.name,
                p.role.as_str()
            ),
        ));
    }
    // A hand-off needs a simulated backend to decode on: real engines take none.
    let simulated_decode = pools
        .iter()
        .any(|p| p.role.serves_whole() && p.upstream.is_none());
    match pools.iter().find(|p| p.role == Role::Prefill) {
        Some(p) if !simulated_decode => Err((
            p.name.clone(),
            format!(
                "prefill pool `{}` has nowhere to hand its KV off: real engines take no \
                 hand-offs, so the fleet needs a simulated decode or mixed pool",
                p.name
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetSpec;
    use crate::profile::Catalogue;

    const PD: &str = r#"name = "pd"
model = "llama-3-8b"

[pools.ascend]
chip = "ascend-910b"
count = 2
role = "prefill"

[pools.h20]
chip = "h20"
count = 2
role = "decode"

[pools.h20b]
chip = "h20"
count = 1

[links.fast]
from = "ascend"
to = "h20b"
bandwidth_gbps = 400
latency_us = 20
staging_gbps = 0
layerwise = true
"#;

    fn resolve(src: &str) -> Result<(Vec<PoolConfig>, LinkTable), crate::config::ConfigError> {
        let spec = FleetSpec::parse(src, "pd.toml")?;
        let pools = spec.resolve(&Catalogue::embedded())?;
        let links = spec.link_table(&pools)?;
        Ok((pools, links))
    }

    #[test]
    fn roles_default_to_mixed_and_links_to_the_documented_figures() {
        let (pools, links) = resolve(PD).unwrap();
        let roles: Vec<Role> = pools.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Prefill, Role::Decode, Role::Mixed]);
        // Ascend → H20 by default: staged through host memory; the 142 Gb/s network is
        // the slower stage of the pipeline (the copy runs at 200).
        let d = links.between(0, 1);
        assert!(d.staged && !d.layerwise);
        assert!((d.bytes_per_ns - 142.0 / 8.0).abs() < 1e-12);
        // 500 µs + one 8 MiB block copied at 25 GB/s (335.5 µs).
        assert_eq!(d.latency_ns, 500_000 + 335_544);
        // Same vendor: no staging.
        assert!(!links.between(1, 2).staged);
        let f = links.between(0, 2);
        assert!(!f.staged && f.layerwise);
        assert_eq!(f.latency_ns, 20_000);
        assert!((f.bytes_per_ns - 50.0).abs() < 1e-12);
        // 1 GB alone on the fast link: 20 µs + 20 ms.
        assert_eq!(f.alone_ns(1e9), 20_000 + 20_000_000);
        // Layer-wise: what the prefill's 10 ms could not carry, at least one layer's worth.
        assert_eq!(f.exposed_bytes(1e9, 32, 10_000_000), 5e8);
        assert_eq!(f.exposed_bytes(1e9, 32, 1_000_000_000), 1e9 / 32.0);
        assert_eq!(d.exposed_bytes(1e9, 32, 1_000_000_000), 1e9);
    }

    #[test]
    fn bad_roles_and_links_name_file_line_and_field() {
        let err = resolve(&PD.replace("to = \"h20b\"", "to = \"h30\"")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("links.fast.to"));
        assert!(err.to_string().starts_with("pd.toml:20:"), "{err}");
        assert!(err.message.contains("unknown pool `h30`"), "{err}");

        let err = resolve(&PD.replace("from = \"ascend\"", "from = \"h20\"")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("links.fast.from"));
        assert!(err.message.contains("start at a prefill pool"), "{err}");

        let err = resolve(&PD.replace("bandwidth_gbps = 400", "bandwidth_gbps = 0")).unwrap_err();
        assert!(err.to_string().starts_with("pd.toml:21:"), "{err}");

        let err = resolve(
            &PD.replace("role = \"decode\"", "role = \"prefill\"")
                .replace(
                    "[pools.h20b]\nchip = \"h20\"\ncount = 1\n",
                    "[pools.h20b]\nchip = \"h20\"\ncount = 1\nrole = \"prefill\"\n",
                ),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("pools.ascend.role"));
        assert!(err.to_string().starts_with("pd.toml:7:"), "{err}");
        assert!(err.message.contains("nowhere to hand its KV off"), "{err}");

        let (mut pools, _) = resolve(PD).unwrap();
        assert!(check_simulated_roles(&pools).is_ok());
        pools[0].upstream = Some(std::sync::Arc::new(crate::fleet::upstream::UpstreamSpec {
            endpoints: vec!["http://127.0.0.1:8000/v1".into()],
            served_model: "m".into(),
            metrics: None,
        }));
        let (pool, why) = check_simulated_roles(&pools).unwrap_err();
        assert_eq!(pool, "ascend");
        assert!(why.contains("simulated backends only"), "{why}");
        // Prefill simulated, every decode side a real engine: nowhere to hand off.
        let upstream = pools[0].upstream.take();
        for p in &mut pools[1..] {
            p.role = Role::Mixed;
            p.upstream = upstream.clone();
        }
        let (pool, why) = check_simulated_roles(&pools).unwrap_err();
        assert_eq!(pool, "ascend");
        assert!(why.contains("real engines take no hand-offs"), "{why}");

        // Decode pools and no prefill pool: the decode pool would run as mixed.
        let err = resolve(&PD.replace("role = \"prefill\"", "role = \"mixed\"")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("pools.h20.role"));
        assert!(err.to_string().starts_with("pd.toml:12:"), "{err}");
        assert!(
            err.message
                .contains("decode pool `h20` would get no hand-offs"),
            "{err}"
        );
        // Only decode pools: the same.
        let only_decode = PD
            .replace("role = \"prefill\"", "role = \"decode\"")
            .replace("count = 1\n", "count = 1\nrole = \"decode\"\n");
        let err = resolve(&only_decode).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("pools.ascend.role"), "{err}");
        assert!(err.message.contains("has no prefill pool"), "{err}");

        let err =
            FleetSpec::parse(&PD.replace("\"decode\"", "\"decoder\""), "pd.toml").unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(err.message.contains("decoder"), "{err}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;
    use crate::fleet::FleetSpec;
    use crate::profile::Catalogue;

    #[test]
    fn the_shipped_disaggregated_fleet_resolves_with_its_staged_link() {
        let src = include_str!("../../config/fleets/pd-910b-h20.toml");
        let spec = FleetSpec::parse(src, "pd-910b-h20.toml").unwrap();
        let pools = spec.resolve(&Catalogue::embedded()).unwrap();
        assert_eq!(
            pools.iter().map(|p| p.role).collect::<Vec<_>>(),
            [Role::Prefill, Role::Decode]
        );
        let links = spec.link_table(&pools).unwrap();
        // The file restates the defaults: same link as an unlisted 910B → H20 pair.
        assert_eq!(
            links.between(0, 1),
            LinkTable::resolve(&pools, &[]).unwrap().between(0, 1)
        );
        assert!(links.between(0, 1).staged);
    }
}

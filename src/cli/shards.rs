//! The check both `plan merge` and `replay merge` make before adding shards up: the files
//! given are the shards of one run, each there once, none missing.

use crate::trace::Shard;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Checks that `parts` (each one's shard and inputs, read from the same-indexed `paths`)
/// are the whole of one sharded run: every part has the first one's inputs and shard
/// count, and each index `0..count` is there exactly once. `other_inputs` words the
/// inputs mismatch after the path, e.g. "a replay of other inputs than". Returns the count.
pub(crate) fn check_whole<I: PartialEq>(
    parts: &[(Shard, &I)],
    paths: &[PathBuf],
    other_inputs: &str,
) -> Result<u32> {
    let Some(&(first, first_inputs)) = parts.first() else {
        bail!("no shards given");
    };
    let count = first.count;
    // A set of the indices given, not a flag per shard: a corrupted count near 2^32 would
    // ask for gigabytes.
    let mut seen = std::collections::BTreeSet::new();
    for (&(shard, inputs), path) in parts.iter().zip(paths) {
        if inputs != first_inputs {
            bail!(
                "{}: {other_inputs} {} (every shard must run the same command but --shard)",
                path.display(),
                paths[0].display()
            );
        }
        if shard.count != count {
            bail!(
                "{}: shard of {} parts, but {} is a shard of {count}",
                path.display(),
                shard.count,
                paths[0].display(),
            );
        }
        if shard.index >= count {
            bail!(
                "{}: shard {}/{count} out of range",
                path.display(),
                shard.index
            );
        }
        if !seen.insert(shard.index) {
            bail!(
                "{}: shard {}/{count} given twice",
                path.display(),
                shard.index
            );
        }
    }
    // The first index not given; at most parts.len() + 1 steps, as the set is that small.
    if let Some(missing) = (0..count).find(|i| !seen.contains(i)) {
        bail!(
            "shard {missing}/{count} is missing ({} of {count} given)",
            parts.len()
        );
    }
    Ok(count)
}

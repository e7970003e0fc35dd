//! `--shard i/n`: a deterministic partition of scenes by a hash of the scene id (never by
//! position, so adding or dropping scenes moves no other scene between shards), and the merge of
//! shard outputs back into the unsharded files.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use mirrorsim_data::scenes::SceneRecord;
use mirrorsim_distill::records::{read_jsonl, write_jsonl};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("--shard {text:?}: expected i/n, e.g. 0/4"))?;
        let index: usize = index
            .trim()
            .parse()
            .map_err(|_| format!("--shard {text:?}: {index:?} is not a shard index"))?;
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| format!("--shard {text:?}: {count:?} is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "--shard {text:?}: the index must be below the count (0 ≤ i < n)"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}-of-{}", self.index, self.count)
    }
}

impl Shard {
    pub fn contains(&self, scene_id: &str) -> bool {
        shard_of(scene_id, self.count) == self.index
    }

    /// `rationales.strong.jsonl` → `rationales.strong.shard-i-of-n.jsonl`.
    pub fn file_name(&self, unsharded: &str) -> String {
        match unsharded.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}.{self}.{ext}"),
            None => format!("{unsharded}.{self}"),
        }
    }
}

/// The shard of a scene: the first 8 bytes of sha256(id), modulo `count`.
pub fn shard_of(scene_id: &str, count: usize) -> usize {
    let digest = Sha256::digest(scene_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(head) % count as u64) as usize
}

/// Records that belong to one scene.
pub trait PerScene {
    fn scene_id(&self) -> &str;
}

impl PerScene for mirrorsim_distill::RationaleRecord {
    fn scene_id(&self) -> &str {
        &self.scene_id
    }
}

impl PerScene for mirrorsim_distill::ScoreRecord {
    fn scene_id(&self) -> &str {
        &self.scene_id
    }
}

/// Concatenates `dir/<unsharded with shard suffix>` for every shard of `count` into
/// `dir/<unsharded>`, in the order of `scenes`. Every shard file must exist, hold only scenes of
/// its own shard, and together they must cover every scene exactly once.
pub fn merge_shard_files<T: PerScene + Serialize + DeserializeOwned>(
    dir: &Path,
    unsharded: &str,
    count: usize,
    scenes: &[SceneRecord],
    what: &str,
) -> anyhow::Result<PathBuf> {
    let mut by_scene: HashMap<String, Vec<T>> = HashMap::new();
    let mut source_of: HashMap<String, PathBuf> = HashMap::new();
    for index in 0..count {
        let shard = Shard { index, count };
        let path = dir.join(shard.file_name(unsharded));
        if !path.exists() {
            bail!(
                "cannot merge {unsharded}: shard {index} of {count} is missing ({} does not exist)",
                path.display()
            );
        }
        let records: Vec<T> = read_jsonl(&path, what)?;
        let mut seen_here = HashSet::new();
        for record in records {
            let id = record.scene_id().to_owned();
            if !shard.contains(&id) {
                bail!(
                    "{}: scene {id} belongs to shard {} of {count}, not {index}",
                    path.display(),
                    shard_of(&id, count)
                );
            }
            if seen_here.insert(id.clone()) {
                if let Some(other) = source_of.insert(id.clone(), path.clone()) {
                    bail!(
                        "scene {id} appears in both {} and {}",
                        other.display(),
                        path.display()
                    );
                }
            }
            by_scene.entry(id).or_default().push(record);
        }
    }
    let mut merged = Vec::new();
    for scene in scenes {
        let records = by_scene.remove(&scene.id).with_context(|| {
            format!(
                "cannot merge {unsharded}: scene {} (shard {} of {count}) is in no shard file",
                scene.id,
                shard_of(&scene.id, count)
            )
        })?;
        merged.extend(records);
    }
    if let Some(extra) = by_scene.keys().min() {
        bail!(
            "cannot merge {unsharded}: {} holds scene {extra}, which is not among the pipeline's scenes",
            source_of
                .get(extra)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let out = dir.join(unsharded);
    write_jsonl(&out, &merged)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_shard_specs() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("1-4".parse::<Shard>().is_err());
    }

    #[test]
    fn partition_is_by_id_and_covers_every_scene_once() {
        let ids: Vec<String> = (0..500).map(|i| format!("ml-train-{i}")).collect();
        let mut sizes = [0usize; 3];
        for id in &ids {
            let owners: Vec<usize> = (0..3)
                .filter(|&index| Shard { index, count: 3 }.contains(id))
                .collect();
            assert_eq!(owners.len(), 1, "{id} must be in exactly one shard");
            sizes[owners[0]] += 1;
            assert_eq!(shard_of(id, 3), owners[0]);
        }
        assert_eq!(sizes.iter().sum::<usize>(), 500);
        // sha256 spreads 500 ids evenly enough that no shard gets under a fifth.
        assert!(sizes.iter().all(|&s| s > 100), "{sizes:?}");
        assert_eq!(
            Shard { index: 0, count: 2 }.file_name("rationales.strong.jsonl"),
            "rationales.strong.shard-0-of-2.jsonl"
        );
    }
}

//! What a received pack holds, for the fast forwarding path: the object ids in its index, and
//! which of them the pushed tips reach. An object no pushed ref reaches was never scanned, so
//! a pack carrying one must not go upstream as it is.

use std::collections::HashSet;

use git2::{ObjectType, Oid, Repository};

#[derive(Debug, thiserror::Error)]
pub enum PackCheckError {
    #[error("not a version 2 pack index")]
    BadIndex,
    #[error("git: {0}")]
    Git(String),
}

type Result<T> = std::result::Result<T, PackCheckError>;

/// The object ids listed in a version 2 `.idx` file.
pub fn index_ids(idx: &[u8]) -> Result<Vec<Oid>> {
    const HEADER: usize = 8 + 256 * 4;
    if idx.len() < HEADER || idx[..8] != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
        return Err(PackCheckError::BadIndex);
    }
    let count = u32::from_be_bytes([idx[1028], idx[1029], idx[1030], idx[1031]]) as usize;
    let table = idx
        .get(HEADER..HEADER + count.checked_mul(20).ok_or(PackCheckError::BadIndex)?)
        .ok_or(PackCheckError::BadIndex)?;
    table
        .chunks_exact(20)
        .map(|raw| Oid::from_bytes(raw).map_err(|_| PackCheckError::BadIndex))
        .collect()
}

/// Removes from `fresh` every object reachable from `tips`. Only objects in `fresh` are
/// descended into: the others are in the mirror, whose objects reach only mirror objects.
pub fn strike_reachable(q: &Repository, tips: &[Oid], fresh: &mut HashSet<Oid>) -> Result<()> {
    let git = |e: git2::Error| PackCheckError::Git(e.message().to_string());
    let mut stack: Vec<Oid> = tips.iter().copied().filter(|t| fresh.remove(t)).collect();
    while let Some(id) = stack.pop() {
        let obj = q.find_object(id, None).map_err(git)?;
        let visit = |child: Oid, stack: &mut Vec<Oid>, fresh: &mut HashSet<Oid>| {
            if fresh.remove(&child) {
                stack.push(child);
            }
        };
        match obj.kind() {
            Some(ObjectType::Tag) => {
                if let Some(tag) = obj.as_tag() {
                    visit(tag.target_id(), &mut stack, fresh);
                }
            }
            Some(ObjectType::Commit) => {
                if let Some(c) = obj.as_commit() {
                    visit(c.tree_id(), &mut stack, fresh);
                    for p in c.parent_ids() {
                        visit(p, &mut stack, fresh);
                    }
                }
            }
            Some(ObjectType::Tree) => {
                if let Some(t) = obj.as_tree() {
                    for e in t.iter() {
                        match e.kind() {
                            // Nothing to reach from a blob: no need to read it.
                            Some(ObjectType::Blob) => {
                                fresh.remove(&e.id());
                            }
                            // Gitlinks name commits of other repositories.
                            Some(ObjectType::Commit) => {}
                            _ => visit(e.id(), &mut stack, fresh),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn index_ids_reads_v2_and_refuses_junk() {
        let mut idx = vec![0xff, b't', b'O', b'c', 0, 0, 0, 2];
        let ids = [[1u8; 20], [2u8; 20]];
        for i in 0..256 {
            let n: u32 = if i < 1 {
                0
            } else if i < 2 {
                1
            } else {
                2
            };
            idx.extend(n.to_be_bytes());
        }
        for id in &ids {
            idx.extend_from_slice(id);
        }
        let got = index_ids(&idx).unwrap();
        assert_eq!(
            got,
            vec![
                Oid::from_bytes(&ids[0]).unwrap(),
                Oid::from_bytes(&ids[1]).unwrap()
            ]
        );
        assert!(index_ids(&idx[..idx.len() - 1]).is_err());
        assert!(index_ids(b"PACK").is_err());
    }

    #[test]
    fn strike_leaves_unreachable_objects() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"reachable").unwrap();
        let stray = repo.blob(b"not reachable").unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("f", blob, 0o100_644).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let c = repo.commit(None, &sig, &sig, "m", &tree, &[]).unwrap();
        let mut fresh: HashSet<Oid> = [c, tree.id(), blob, stray].into_iter().collect();
        strike_reachable(&repo, &[c], &mut fresh).unwrap();
        assert_eq!(fresh.into_iter().collect::<Vec<_>>(), vec![stray]);
    }
}

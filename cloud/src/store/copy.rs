//! Copying every document from one backend into another (`ferry-cloud
//! migrate`: a sled folder into an empty PostgreSQL database), then checking
//! that the target holds exactly what the source holds.

use super::backend::{Backend, BackendError, Batch, Collection};

/// Documents per commit while copying.
const PAGE: usize = 500;

/// How many documents of each collection were copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub per_collection: Vec<(Collection, u64)>,
}

impl Copied {
    pub fn total(&self) -> u64 {
        self.per_collection.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the {} collection differs after copying: {detail}", collection.name())]
    Differs { collection: Collection, detail: String },
}

/// Copies every collection of `from` into `to`, page by page.
pub fn copy_all(from: &dyn Backend, to: &dyn Backend) -> Result<Copied, CopyError> {
    let mut copied = Copied::default();
    for collection in Collection::ALL {
        let mut count = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = from.scan(collection, &[], after.as_deref(), PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            count += page.len() as u64;
            let batch = page.into_iter().fold(Batch::default(), |b, (k, v)| b.put(collection, k, v));
            to.commit(batch)?;
        }
        copied.per_collection.push((collection, count));
    }
    Ok(copied)
}

/// Checks that `to` holds exactly the documents of `from`, key by key.
pub fn compare_all(from: &dyn Backend, to: &dyn Backend) -> Result<u64, CopyError> {
    let mut compared = 0;
    for collection in Collection::ALL {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let source = from.scan(collection, &[], after.as_deref(), PAGE)?;
            let target = to.scan(collection, &[], after.as_deref(), PAGE)?;
            if source != target {
                let first = source
                    .iter()
                    .zip(&target)
                    .position(|(a, b)| a != b)
                    .unwrap_or(source.len().min(target.len()));
                let detail = match (source.get(first), target.get(first)) {
                    (Some((k, _)), _) => format!("at key {}", hex::encode(k)),
                    (None, Some((k, _))) => format!("the target has an extra key {}", hex::encode(k)),
                    (None, None) => "the pages differ".to_string(),
                };
                return Err(CopyError::Differs { collection, detail });
            }
            let Some(last) = source.last() else { break };
            after = Some(last.0.clone());
            compared += source.len() as u64;
        }
    }
    Ok(compared)
}

//! Which scopes each job was seen in. A delivery carries no base id, so the gateway
//! primes only the scopes it saw the job in (a create through it, a lookup), never a
//! guessed one.
//!
//! With `state.dir` the records are journaled there (`scopes.jsonl`, one line per job and
//! scope first seen), so a restart, `kill -9` included, still knows the jobs it saw: a
//! job that runs across a deploy is still primed when its completion arrives.

use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use uuid::Uuid;

use crate::cache::envelope::now_ms;
use crate::cache::Scope;
use crate::shared::keys;

/// Most scopes kept per job (a job lives in one; a few more are apps asking it in the
/// wrong scope, which the upstream answers 404 and which are never recorded).
const MAX_SCOPES: usize = 4;

/// Jobs remembered; an account's quota allows far fewer jobs a day.
const MAX_JOBS: u64 = 500_000;

/// How long a job is remembered after it was first seen: past its 24 h retention.
const REMEMBER: Duration = Duration::from_secs(25 * 3600);

/// Name of the journal in `state.dir`.
pub const JOURNAL: &str = "scopes.jsonl";

/// The scopes of recently seen jobs.
pub struct Scopes {
    seen: moka::sync::Cache<Uuid, Arc<[Scope]>>,
    journal: Option<Mutex<Journal>>,
}

struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
}

/// One journal line.
#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    job: Uuid,
    scope: String,
    /// When it was first seen (Unix ms).
    at: u64,
}

impl Default for Scopes {
    fn default() -> Self {
        Scopes {
            seen: moka::sync::Cache::builder()
                .max_capacity(MAX_JOBS)
                .time_to_live(REMEMBER)
                .build(),
            journal: None,
        }
    }
}

impl Scopes {
    /// The scopes journaled in `dir` (an unreadable journal is logged and the gateway
    /// goes on remembering in memory only); in memory only without one.
    pub fn open(dir: Option<&Path>) -> Scopes {
        let mut scopes = Scopes::default();
        let Some(dir) = dir else { return scopes };
        let path = dir.join(JOURNAL);
        let oldest = now_ms().saturating_sub(u64::try_from(REMEMBER.as_millis()).unwrap_or(0));
        if let Ok(file) = File::open(&path) {
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                // A torn last line (a kill mid-write) is skipped.
                let Ok(line) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                if let Some(scope) = keys::parse_scope(&line.scope).filter(|_| line.at >= oldest) {
                    scopes.remember(line.job, scope);
                }
            }
        }
        match scopes.rewrite(&path) {
            Ok(journal) => scopes.journal = Some(Mutex::new(journal)),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot journal job scopes in the state directory: they are kept in memory only")
            }
        }
        scopes
    }

    /// Records that `job` exists in `scope` (the upstream answered it there).
    pub fn record(&self, job: Uuid, scope: Scope) {
        if self.seen.get(&job).is_some_and(|s| s.contains(&scope)) {
            return;
        }
        if self.remember(job, scope) {
            self.append(job, scope);
        }
    }

    /// Adds `scope` to `job`'s; whether it was new.
    fn remember(&self, job: Uuid, scope: Scope) -> bool {
        let mut added = false;
        self.seen
            .entry(job)
            .and_upsert_with(|current| match current {
                Some(entry) => {
                    let mut scopes = entry.into_value().to_vec();
                    if !scopes.contains(&scope) {
                        if scopes.len() >= MAX_SCOPES {
                            scopes.remove(0);
                        }
                        scopes.push(scope);
                        added = true;
                    }
                    Arc::from(scopes)
                }
                None => {
                    added = true;
                    Arc::from(vec![scope])
                }
            });
        added
    }

    fn append(&self, job: Uuid, scope: Scope) {
        let Some(journal) = &self.journal else { return };
        let mut journal = journal.lock().unwrap_or_else(PoisonError::into_inner);
        let line = Line {
            job,
            scope: keys::scope(scope),
            at: now_ms(),
        };
        let Ok(mut text) = serde_json::to_vec(&line) else {
            return;
        };
        text.push(b'\n');
        match journal.file.write_all(&text) {
            Ok(()) => journal.lines += 1,
            Err(e) => tracing::warn!(error = %e, "could not journal a job's scope"),
        }
        // Grown well past what it describes: written again from memory.
        let live = usize::try_from(self.seen.entry_count()).unwrap_or(usize::MAX);
        if journal.lines > 100_000 && journal.lines > 3 * live {
            let path = journal.path.clone();
            match self.rewrite(&path) {
                Ok(fresh) => *journal = fresh,
                Err(e) => tracing::warn!(error = %e, "could not compact the scopes journal"),
            }
        }
    }

    /// Writes what is remembered as a fresh journal at `path` (a temporary file renamed
    /// over it), open for appending.
    fn rewrite(&self, path: &Path) -> std::io::Result<Journal> {
        let temporary = path.with_extension("jsonl.tmp");
        let mut text = Vec::new();
        let mut lines = 0;
        let at = now_ms();
        for (job, scopes) in self.seen.iter() {
            for scope in scopes.iter() {
                let line = Line {
                    job: *job,
                    scope: keys::scope(*scope),
                    at,
                };
                text.extend(serde_json::to_vec(&line)?);
                text.push(b'\n');
                lines += 1;
            }
        }
        let mut out = super::outbox::open_private(&temporary, true)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: super::outbox::open_private(path, false)?,
            lines,
        })
    }

    /// The scopes `job` was seen in; empty for a job never seen.
    pub fn of(&self, job: Uuid) -> Vec<Scope> {
        self.seen.get(&job).map(|s| s.to_vec()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_accumulate_without_repeats() {
        let scopes = Scopes::default();
        let (job, base) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(scopes.of(job).is_empty());
        scopes.record(job, Scope::Base(base));
        scopes.record(job, Scope::Base(base));
        scopes.record(job, Scope::Workspace);
        assert_eq!(scopes.of(job), vec![Scope::Base(base), Scope::Workspace]);
    }

    #[test]
    fn the_journal_brings_them_back() {
        let dir = tempfile::tempdir().expect("dir");
        let (job, base) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let scopes = Scopes::open(Some(dir.path()));
            scopes.record(job, Scope::Base(base));
            scopes.record(job, Scope::Legacy(base));
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .expect("journal");
        file.write_all(b"{\"job\":\"torn").expect("torn");
        let scopes = Scopes::open(Some(dir.path()));
        assert_eq!(scopes.of(job), vec![Scope::Base(base), Scope::Legacy(base)]);
    }
}

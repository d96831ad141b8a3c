//! Deliveries waiting, done or given up, per subscriber; durable in `state.dir`.
//!
//! The store is a map in memory and a journal beside it (`webhooks.jsonl`): every change
//! appends the delivery's new state as one JSON line, so a process killed at any moment
//! (`kill -9` included) finds every delivery it had accepted when it starts again, at
//! worst with a torn last line, which is skipped. The journal is rewritten whole (to a
//! temporary file, then renamed) when it grows well past what it describes. Delivered
//! entries stay until their give-up time: they are what makes a duplicate event a no-op.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its next attempt (or in one).
    Pending,
    /// A 2xx came back.
    Delivered,
    /// Given up: past its job's life, or its subscriber answered 410.
    Failed,
}

impl Status {
    /// The name used in the admin routes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
        }
    }
}

/// One event for one subscriber.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// `dlv_` + hex, from the event and the subscriber.
    pub id: String,
    /// The subscriber's name.
    pub subscriber: String,
    /// The event's id (`webhook-id`).
    pub event: String,
    /// The event's type.
    pub kind: String,
    /// The job it is about.
    pub job: Uuid,
    /// The body, fixed when the event happened: every attempt sends the same bytes.
    pub payload: String,
    /// Where it is.
    pub status: Status,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it was accepted (Unix ms).
    pub created_at: u64,
    /// When the next attempt is due (Unix ms).
    pub next_at: u64,
    /// No attempt after this (Unix ms): the job's data is gone by then.
    pub give_up_at: u64,
    /// The last attempt's outcome (`200`, `500`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
}

/// Why an operator's retry was not taken.
#[derive(Debug, Clone)]
pub enum RetryRefused {
    /// No delivery of that id.
    Unknown,
    /// It was delivered: resending it needs `replay`.
    Delivered,
    /// It is due already or being attempted: nothing to change (not an error to the
    /// operator).
    Due(Box<Delivery>),
}

impl Delivery {
    /// This delivery made due at `now` by an operator: one more attempt at least, even
    /// past its job's life. A delivered one only with `replay`, so that retries sent
    /// twice (a double click, a script run again) do not send it twice.
    pub fn retried(mut self, now: u64, replay: bool) -> Result<Delivery, RetryRefused> {
        if self.status == Status::Delivered && !replay {
            return Err(RetryRefused::Delivered);
        }
        if self.status == Status::Pending && self.next_at <= now {
            // Due already, or being attempted (a claim leaves its due time as it was):
            // another retry changes nothing, so retries sent at once send it once.
            return Err(RetryRefused::Due(Box::new(self)));
        }
        self.status = Status::Pending;
        self.next_at = now;
        self.give_up_at = self.give_up_at.max(now + 60_000);
        Ok(self)
    }
}

/// `dlv_` + 24 hex digits of SHA-256 of `event|subscriber`.
pub fn delivery_id(event: &str, subscriber: &str) -> String {
    let digest = crate::auth::sha256(format!("{event}|{subscriber}").as_bytes());
    format!("dlv_{}", &hex::encode(digest)[..24])
}

/// One journal line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    /// A delivery's new state.
    Put(Delivery),
    /// A delivery forgotten (past its give-up time).
    Forget(String),
    /// A subscriber disabled (410) or enabled again.
    Disabled { name: String, disabled: bool },
}

/// The outbox.
pub struct Outbox {
    book: Mutex<Book>,
}

struct Book {
    deliveries: HashMap<String, Delivery>,
    /// Claimed by an attempt under way.
    in_flight: HashSet<String>,
    disabled: HashSet<String>,
    journal: Option<Journal>,
}

struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
}

/// Name of the journal in `state.dir`.
pub const JOURNAL: &str = "webhooks.jsonl";

impl Outbox {
    /// An outbox kept in memory only (no `state.dir`).
    pub fn in_memory() -> Outbox {
        Outbox {
            book: Mutex::new(Book {
                deliveries: HashMap::new(),
                in_flight: HashSet::new(),
                disabled: HashSet::new(),
                journal: None,
            }),
        }
    }

    /// The outbox journaled in `dir`, with what an earlier process left there.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        let path = dir.join(JOURNAL);
        let mut deliveries = HashMap::new();
        let mut disabled = HashSet::new();
        match File::open(&path) {
            Ok(file) => {
                for line in std::io::BufReader::new(file).lines() {
                    let Ok(line) = line else { break };
                    // A torn last line (the process died mid-write) is skipped.
                    match serde_json::from_str::<Record>(&line) {
                        Ok(Record::Put(d)) => {
                            deliveries.insert(d.id.clone(), d);
                        }
                        Ok(Record::Forget(id)) => {
                            deliveries.remove(&id);
                        }
                        Ok(Record::Disabled { name, disabled: on }) => {
                            if on {
                                disabled.insert(name);
                            } else {
                                disabled.remove(&name);
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut book = Book {
            deliveries,
            in_flight: HashSet::new(),
            disabled,
            journal: None,
        };
        book.compact_to(&path)?;
        if !book.deliveries.is_empty() {
            tracing::info!(
                deliveries = book.deliveries.len(),
                "webhook deliveries read back from the state directory"
            );
        }
        Ok(Outbox {
            book: Mutex::new(book),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts a delivery unless one of the same id exists (a duplicate event).
    pub fn offer(&self, delivery: Delivery) -> bool {
        let mut book = self.book();
        if book.deliveries.contains_key(&delivery.id) {
            return false;
        }
        book.write(&Record::Put(delivery.clone()));
        book.deliveries.insert(delivery.id.clone(), delivery);
        true
    }

    /// Claims up to `max` of `subscriber`'s pending deliveries due at `now`, oldest due
    /// first, for attempts; each stays claimed until [`finish`](Self::finish).
    pub fn claim(&self, subscriber: &str, now: u64, max: usize) -> Vec<Delivery> {
        let mut book = self.book();
        let Book {
            deliveries,
            in_flight,
            ..
        } = &mut *book;
        let mut due: Vec<&Delivery> = deliveries
            .values()
            .filter(|d| {
                d.subscriber == subscriber
                    && d.status == Status::Pending
                    && d.next_at <= now
                    && !in_flight.contains(&d.id)
            })
            .collect();
        due.sort_by_key(|d| d.next_at);
        let claimed: Vec<Delivery> = due.into_iter().take(max).cloned().collect();
        for d in &claimed {
            in_flight.insert(d.id.clone());
        }
        claimed
    }

    /// Attempts under way for `subscriber`.
    pub fn in_flight(&self, subscriber: &str) -> usize {
        let book = self.book();
        book.in_flight
            .iter()
            .filter(|id| {
                book.deliveries
                    .get(*id)
                    .is_some_and(|d| d.subscriber == subscriber)
            })
            .count()
    }

    /// Records an attempt's result and lets the claim go.
    pub fn finish(&self, delivery: Delivery) {
        let mut book = self.book();
        book.in_flight.remove(&delivery.id);
        book.write(&Record::Put(delivery.clone()));
        book.deliveries.insert(delivery.id.clone(), delivery);
    }

    /// Makes a delivery due now (an operator's retry), whatever its status; `None` for an
    /// unknown id.
    pub fn retry_now(&self, id: &str, now: u64, replay: bool) -> Result<Delivery, RetryRefused> {
        let mut book = self.book();
        let delivery = book
            .deliveries
            .get(id)
            .cloned()
            .ok_or(RetryRefused::Unknown)?
            .retried(now, replay)?;
        book.write(&Record::Put(delivery.clone()));
        book.deliveries
            .insert(delivery.id.clone(), delivery.clone());
        Ok(delivery)
    }

    /// Deliveries, newest first, filtered by status and subscriber.
    pub fn list(&self, status: Option<Status>, subscriber: Option<&str>) -> Vec<Delivery> {
        let book = self.book();
        let mut list: Vec<Delivery> = book
            .deliveries
            .values()
            .filter(|d| status.is_none_or(|s| d.status == s))
            .filter(|d| subscriber.is_none_or(|s| d.subscriber == s))
            .cloned()
            .collect();
        list.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        list
    }

    /// How many deliveries are in each status, for `subscriber` or all.
    pub fn counts(&self, subscriber: Option<&str>) -> [(Status, usize); 3] {
        let book = self.book();
        let mut counts = [
            (Status::Pending, 0),
            (Status::Delivered, 0),
            (Status::Failed, 0),
        ];
        for d in book.deliveries.values() {
            if subscriber.is_some_and(|s| d.subscriber != s) {
                continue;
            }
            for (status, n) in &mut counts {
                if *status == d.status {
                    *n += 1;
                }
            }
        }
        counts
    }

    /// Disables (a 410) or enables (an operator) a subscriber; returns whether it changed.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> bool {
        let mut book = self.book();
        let changed = if disabled {
            book.disabled.insert(name.to_owned())
        } else {
            book.disabled.remove(name)
        };
        if changed {
            book.write(&Record::Disabled {
                name: name.to_owned(),
                disabled,
            });
        }
        changed
    }

    /// Whether a subscriber is disabled.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.book().disabled.contains(name)
    }

    /// Forgets deliveries past their give-up time that are not pending (their dedupe
    /// window is over), and compacts the journal when it has grown.
    pub fn prune(&self, now: u64) {
        let mut book = self.book();
        let gone: Vec<String> = book
            .deliveries
            .values()
            .filter(|d| d.status != Status::Pending && d.give_up_at < now)
            .map(|d| d.id.clone())
            .collect();
        for id in gone {
            book.deliveries.remove(&id);
            book.write(&Record::Forget(id));
        }
        let live = book.deliveries.len() + book.disabled.len();
        if let Some(path) = book
            .journal
            .as_ref()
            .filter(|j| j.lines > 4096 && j.lines > 4 * live)
            .map(|j| j.path.clone())
        {
            if let Err(e) = book.compact_to(&path) {
                tracing::warn!(error = %e, "could not compact the webhook journal");
            }
        }
    }
}

impl Book {
    /// Appends a record; a failed write is logged and the delivery stays in memory (the
    /// relay keeps working; only its durability is lost).
    fn write(&mut self, record: &Record) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        match journal.file.write_all(&line) {
            Ok(()) => journal.lines += 1,
            Err(e) => {
                tracing::warn!(error = %e, path = %journal.path.display(), "could not write the webhook journal")
            }
        }
    }

    /// Writes what the book holds as a fresh journal at `path` and appends from there.
    fn compact_to(&mut self, path: &Path) -> std::io::Result<()> {
        let temporary = path.with_extension("jsonl.tmp");
        let mut out = open_private(&temporary, true)?;
        let mut lines = 0;
        let mut text = Vec::new();
        for name in &self.disabled {
            text.extend(serde_json::to_vec(&Record::Disabled {
                name: name.clone(),
                disabled: true,
            })?);
            text.push(b'\n');
            lines += 1;
        }
        for d in self.deliveries.values() {
            text.extend(serde_json::to_vec(&Record::Put(d.clone()))?);
            text.push(b'\n');
            lines += 1;
        }
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)?;
        let file = open_private(path, false)?;
        self.journal = Some(Journal {
            path: path.to_path_buf(),
            file,
            lines,
        });
        Ok(())
    }
}

/// Opens for appending (or truncates), readable by the gateway's user only (the
/// journals of `state.dir`).
pub(super) fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if truncate {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, next_at: u64) -> Delivery {
        Delivery {
            id: id.into(),
            subscriber: "billing".into(),
            event: "evt_1".into(),
            kind: "extract.job.completed".into(),
            job: Uuid::new_v4(),
            payload: "{}".into(),
            status: Status::Pending,
            attempts: 0,
            created_at: 1,
            next_at,
            give_up_at: 10_000,
            last_outcome: None,
        }
    }

    #[test]
    fn the_journal_brings_back_what_was_pending_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let outbox = Outbox::open(dir.path()).expect("open");
            assert!(outbox.offer(delivery("a", 5)));
            assert!(!outbox.offer(delivery("a", 5)), "a duplicate is refused");
            assert!(outbox.offer(delivery("b", 5)));
            let mut claimed = outbox.claim("billing", 10, 1);
            assert_eq!(claimed.len(), 1);
            let mut done = claimed.remove(0);
            done.status = Status::Delivered;
            outbox.finish(done);
            outbox.set_disabled("billing", true);
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .expect("journal");
        file.write_all(b"{\"put\":{\"id\":\"torn").expect("torn");
        let outbox = Outbox::open(dir.path()).expect("reopen");
        let counts = outbox.counts(None);
        assert_eq!(counts[0], (Status::Pending, 1));
        assert_eq!(counts[1], (Status::Delivered, 1));
        assert!(outbox.is_disabled("billing"));
        assert_eq!(outbox.claim("billing", 10, 8).len(), 1);
        assert!(outbox.claim("billing", 10, 8).is_empty(), "claimed once");
    }
}

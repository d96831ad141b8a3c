//! What the gateway tells subscribers: one event per job and terminal state.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::{JobState, Scope};

/// A job reached a terminal state, in one scope.
#[derive(Debug, Clone)]
pub struct Event {
    /// `evt_` + 32 hex digits, from the job and the state alone: the same for the API's
    /// retries, for `webhook/trigger` replays and for a lookup that sees the same state.
    pub id: String,
    /// `extract.job.completed`, `.failed` or `.cleaned`.
    pub kind: &'static str,
    /// The job.
    pub job: Uuid,
    /// Its state.
    pub state: JobState,
    /// The scope it was seen in.
    pub scope: Scope,
    /// The job's `createdAt`: deliveries stop 24 h after it (the job is gone by then).
    pub created_at: Option<OffsetDateTime>,
    /// `webhook` (a delivery from the API) or `lookup` (the gateway saw it upstream).
    pub source: &'static str,
}

impl Event {
    /// The event for `job` in `state`, if that state is one subscribers hear of.
    pub fn of(
        job: Uuid,
        state: JobState,
        scope: Scope,
        created_at: Option<OffsetDateTime>,
        source: &'static str,
    ) -> Option<Event> {
        let kind = match state {
            JobState::Completed => "extract.job.completed",
            JobState::Failed => "extract.job.failed",
            JobState::Cleaned => "extract.job.cleaned",
            _ => return None,
        };
        Some(Event {
            id: event_id(job, state),
            kind,
            job,
            state,
            scope,
            created_at,
            source,
        })
    }

    /// The delivery body: thin (the app fetches the job through the gateway, a hit, and
    /// gets links that are live when it asks).
    pub fn payload(&self, at: OffsetDateTime) -> String {
        let timestamp = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let (base, workspace) = match self.scope {
            Scope::Workspace => (None, None),
            Scope::Base(id) => (Some(id), None),
            Scope::Legacy(id) => (None, Some(id)),
        };
        let mut data = serde_json::json!({
            "id": self.job,
            "state": self.state.as_str(),
            "baseId": base,
            "source": self.source,
        });
        if let (Some(workspace), Some(map)) = (workspace, data.as_object_mut()) {
            map.insert("workspaceId".into(), serde_json::json!(workspace));
        }
        serde_json::json!({
            "type": self.kind,
            "timestamp": timestamp,
            "data": data,
        })
        .to_string()
    }
}

/// `evt_` + the first 32 hex digits of SHA-256 of `job|state`.
pub fn event_id(job: Uuid, state: JobState) -> String {
    let digest = crate::auth::sha256(format!("{job}|{}", state.as_str()).as_bytes());
    format!("evt_{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_job_and_state_only() {
        let job = Uuid::new_v4();
        let a = Event::of(job, JobState::Completed, Scope::Workspace, None, "webhook").expect("a");
        let b = Event::of(
            job,
            JobState::Completed,
            Scope::Base(Uuid::new_v4()),
            None,
            "lookup",
        )
        .expect("b");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, event_id(job, JobState::Failed));
        assert!(Event::of(job, JobState::Pending, Scope::Workspace, None, "lookup").is_none());
        let body: serde_json::Value =
            serde_json::from_str(&b.payload(OffsetDateTime::now_utc())).expect("json");
        assert_eq!(body["type"], "extract.job.completed");
        assert_eq!(body["data"]["id"], job.to_string());
        assert!(body["data"]["baseId"].is_string());
    }
}

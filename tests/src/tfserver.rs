//! The subset of the Testflinger server the `multi` connector talks to
//! (reference §4.6): jobs are submitted, move through their states on
//! their own, get a device when allocated, and can be cancelled.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/job` (job JSON with `job_queue`) | 200 `{"job_id"}`; 400 without a queue |
//! | `GET /v1/job/<id>` | the submitted job |
//! | `GET /v1/result/<id>` | `{"job_state", "device_info", ...}`; 404 for unknown jobs |
//! | `POST /v1/result/<id>` (JSON) | merged into the result (an agent reporting; `job_state` included) |
//! | `POST /v1/job/<id>/action` `{"action": "cancel"}` | 200; 400 when the job already ended or the action is unknown |
//!
//! A job in a configured queue goes `waiting` → `provision` (half-way) →
//! `allocated` after the queue's `allocate_after`, with the next of the
//! queue's devices as `device_info`. A queue can instead never allocate,
//! or end its jobs in another state (`cancelled`, `complete`). Jobs in
//! unknown queues stay `waiting`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::web::{Reply, Request, WebServer};

/// What a queue does with its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBehaviour {
    /// Allocate a device after `allocate_after`.
    Allocate,
    /// Jobs wait forever.
    Never,
    /// Jobs end in this state after `allocate_after`.
    EndIn(String),
}

/// A queue of devices.
#[derive(Debug, Clone)]
pub struct Queue {
    /// `device_info` of the devices, handed out in turn.
    pub devices: Vec<Value>,
    pub allocate_after: Duration,
    pub behaviour: QueueBehaviour,
}

impl Queue {
    /// A queue allocating `devices` (device_info objects) after `after`.
    pub fn allocating(devices: Vec<Value>, after: Duration) -> Self {
        Queue {
            devices,
            allocate_after: after,
            behaviour: QueueBehaviour::Allocate,
        }
    }
}

struct Job {
    data: Value,
    queue: String,
    created: Instant,
    /// Set by a cancel or a posted result; wins over the timeline.
    fixed_state: Option<String>,
    device_info: Option<Value>,
    results: serde_json::Map<String, Value>,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, Job>,
    queues: BTreeMap<String, Queue>,
    handed: BTreeMap<String, usize>,
    next: u64,
    actions: Vec<(String, String)>,
}

impl State {
    /// The job's state now (allocating a device when it is time).
    fn job_state(&mut self, id: &str) -> Option<String> {
        let job = self.jobs.get(id)?;
        if let Some(s) = &job.fixed_state {
            return Some(s.clone());
        }
        let Some(queue) = self.queues.get(&job.queue).cloned() else {
            return Some("waiting".into());
        };
        let elapsed = job.created.elapsed();
        let state = match &queue.behaviour {
            QueueBehaviour::Never => "waiting".to_string(),
            _ if elapsed < queue.allocate_after / 2 => "waiting".into(),
            _ if elapsed < queue.allocate_after => "provision".into(),
            QueueBehaviour::EndIn(s) => s.clone(),
            QueueBehaviour::Allocate => {
                if job.device_info.is_none() {
                    let n = self.handed.entry(job.queue.clone()).or_insert(0);
                    let info = queue
                        .devices
                        .get(*n % queue.devices.len().max(1))
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    *n += 1;
                    if let Some(job) = self.jobs.get_mut(id) {
                        job.device_info = Some(info);
                    }
                }
                "allocated".into()
            }
        };
        Some(state)
    }
}

/// A running Testflinger server subset; stops when dropped.
pub struct TfServer {
    web: WebServer,
    state: Arc<Mutex<State>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_reply(status: u16, value: Value) -> Reply {
    Reply::Full {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: bytes::Bytes::from(value.to_string()),
    }
}

impl TfServer {
    /// Starts a server on `ip` (any free port) with `queues`.
    pub fn start(ip: &str, queues: BTreeMap<String, Queue>) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            queues,
            next: 0,
            ..Default::default()
        }));
        let st = state.clone();
        let web = WebServer::start(ip, move |r| handle(&st, r))?;
        Ok(TfServer { web, state })
    }

    /// `http://ip:port` (for `testflinger_server`).
    pub fn url(&self) -> String {
        self.web.url()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.web.requests()
    }

    /// Adds (or replaces) a job `id` fixed in `state` (a parent job).
    pub fn add_job(&self, id: &str, state: &str) {
        lock(&self.state).jobs.insert(
            id.to_string(),
            Job {
                data: json!({"job_id": id}),
                queue: String::new(),
                created: Instant::now(),
                fixed_state: Some(state.to_string()),
                device_info: None,
                results: serde_json::Map::new(),
            },
        );
    }

    /// Sets the state of job `id` (if it exists).
    pub fn set_state(&self, id: &str, state: &str) {
        if let Some(job) = lock(&self.state).jobs.get_mut(id) {
            job.fixed_state = Some(state.to_string());
        }
    }

    /// The state of job `id` now.
    pub fn job_state(&self, id: &str) -> Option<String> {
        lock(&self.state).job_state(id)
    }

    /// Submitted jobs (id, data), in order of submission.
    pub fn jobs(&self) -> Vec<(String, Value)> {
        lock(&self.state)
            .jobs
            .iter()
            .filter(|(_, j)| !j.queue.is_empty())
            .map(|(id, j)| (id.clone(), j.data.clone()))
            .collect()
    }

    /// Actions (job id, action) received, in order.
    pub fn actions(&self) -> Vec<(String, String)> {
        lock(&self.state).actions.clone()
    }
}

fn handle(state: &Arc<Mutex<State>>, r: &Request) -> Reply {
    let path = r.path_only().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut st = lock(state);
    match (r.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "job"]) => {
            let Ok(mut data) = serde_json::from_slice::<Value>(&r.body) else {
                return json_reply(400, json!({"message": "the job must be JSON"}));
            };
            let Some(queue) = data
                .get("job_queue")
                .and_then(Value::as_str)
                .map(String::from)
            else {
                return json_reply(400, json!({"message": "job_queue is required"}));
            };
            st.next += 1;
            // Sortable, UUID-shaped ids.
            let id = format!("00000000-0000-4000-8000-{:012x}", st.next);
            data["job_id"] = json!(id);
            st.jobs.insert(
                id.clone(),
                Job {
                    data,
                    queue,
                    created: Instant::now(),
                    fixed_state: None,
                    device_info: None,
                    results: serde_json::Map::new(),
                },
            );
            json_reply(200, json!({"job_id": id}))
        }
        ("GET", ["v1", "job", id]) => match st.jobs.get(*id) {
            Some(j) => json_reply(200, j.data.clone()),
            None => json_reply(404, json!({"message": "Job not found"})),
        },
        ("GET", ["v1", "result", id]) => {
            let Some(job_state) = st.job_state(id) else {
                return json_reply(404, json!({"message": "Job not found"}));
            };
            let job = &st.jobs[*id];
            let mut out = job.results.clone();
            out.insert("job_state".into(), json!(job_state));
            if let Some(info) = &job.device_info {
                out.insert("device_info".into(), info.clone());
            }
            json_reply(200, Value::Object(out))
        }
        ("POST", ["v1", "result", id]) => {
            let Ok(Value::Object(update)) = serde_json::from_slice::<Value>(&r.body) else {
                return json_reply(400, json!({"message": "the result must be a JSON object"}));
            };
            let Some(job) = st.jobs.get_mut(*id) else {
                return json_reply(404, json!({"message": "Job not found"}));
            };
            for (k, v) in update {
                if k == "job_state" {
                    job.fixed_state = v.as_str().map(String::from);
                }
                if k == "device_info" {
                    job.device_info = Some(v.clone());
                }
                job.results.insert(k, v);
            }
            json_reply(200, json!({}))
        }
        ("POST", ["v1", "job", id, "action"]) => {
            let action = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.get("action").and_then(Value::as_str).map(String::from))
                .unwrap_or_default();
            let id = id.to_string();
            st.actions.push((id.clone(), action.clone()));
            let Some(current) = st.job_state(&id) else {
                return json_reply(404, json!({"message": "Job not found"}));
            };
            if action != "cancel" {
                return json_reply(
                    400,
                    json!({"message": format!("invalid action {action:?}")}),
                );
            }
            if matches!(current.as_str(), "cancelled" | "complete" | "completed") {
                return json_reply(
                    400,
                    json!({"message": format!("The job is already {current}; it cannot be cancelled")}),
                );
            }
            if let Some(job) = st.jobs.get_mut(&id) {
                job.fixed_state = Some("cancelled".into());
            }
            json_reply(200, json!({}))
        }
        _ => json_reply(
            404,
            json!({"message": format!("no route {} {path}", r.method)}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn call(server: &TfServer, method: &str, path: &str, body: &str) -> (u16, Value) {
        let addr = server.web.addr();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn wait_for(server: &TfServer, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = call(server, "GET", &format!("/v1/result/{id}"), "");
            if v["job_state"] == want {
                return v;
            }
            assert!(Instant::now() < deadline, "{id}: {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn jobs_are_allocated_cancelled_and_refused() {
        let mut queues = BTreeMap::new();
        queues.insert(
            "rpi4".to_string(),
            Queue::allocating(
                vec![
                    json!({"device_ip": "127.0.5.1"}),
                    json!({"device_ip": "127.0.5.2"}),
                ],
                Duration::from_millis(200),
            ),
        );
        queues.insert(
            "dead".to_string(),
            Queue {
                devices: vec![],
                allocate_after: Duration::from_millis(50),
                behaviour: QueueBehaviour::EndIn("cancelled".into()),
            },
        );
        let server = TfServer::start("127.0.0.1", queues).unwrap();
        server.add_job("parent", "provision");
        let job = json!({"job_queue": "rpi4", "allocate_data": {"allocate": true}, "parent_job_id": "parent"});
        let (status, a) = call(&server, "POST", "/v1/job", &job.to_string());
        assert_eq!(status, 200);
        let a = a["job_id"].as_str().unwrap().to_string();
        let (_, b) = call(&server, "POST", "/v1/job", &job.to_string());
        let b = b["job_id"].as_str().unwrap().to_string();
        assert_eq!(
            call(&server, "GET", &format!("/v1/result/{a}"), "").1["job_state"],
            "waiting"
        );
        let ra = wait_for(&server, &a, "allocated");
        let rb = wait_for(&server, &b, "allocated");
        assert_eq!(ra["device_info"]["device_ip"], "127.0.5.1");
        assert_eq!(rb["device_info"]["device_ip"], "127.0.5.2");
        assert_eq!(
            call(&server, "GET", "/v1/result/parent", "").1["job_state"],
            "provision"
        );
        assert_eq!(
            call(&server, "GET", &format!("/v1/job/{a}"), "").1["parent_job_id"],
            "parent"
        );

        let cancel = r#"{"action": "cancel"}"#;
        assert_eq!(
            call(&server, "POST", &format!("/v1/job/{a}/action"), cancel).0,
            200
        );
        assert_eq!(server.job_state(&a).unwrap(), "cancelled");
        assert_eq!(
            call(&server, "POST", &format!("/v1/job/{a}/action"), cancel).0,
            400
        );
        assert_eq!(
            call(
                &server,
                "POST",
                &format!("/v1/job/{b}/action"),
                r#"{"action":"x"}"#
            )
            .0,
            400
        );
        assert_eq!(call(&server, "POST", "/v1/job/nope/action", cancel).0, 404);
        assert_eq!(call(&server, "GET", "/v1/result/nope", "").0, 404);
        assert_eq!(
            call(&server, "POST", "/v1/job", r#"{"no": "queue"}"#).0,
            400
        );

        let (_, c) = call(&server, "POST", "/v1/job", r#"{"job_queue": "dead"}"#);
        wait_for(&server, c["job_id"].as_str().unwrap(), "cancelled");
        let (_, d) = call(&server, "POST", "/v1/job", r#"{"job_queue": "unknown"}"#);
        let d = d["job_id"].as_str().unwrap().to_string();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.job_state(&d).unwrap(), "waiting");
        assert_eq!(
            call(
                &server,
                "POST",
                &format!("/v1/result/{d}"),
                r#"{"job_state": "complete"}"#
            )
            .0,
            200
        );
        assert_eq!(server.job_state(&d).unwrap(), "complete");
        assert_eq!(server.jobs().len(), 4);
        assert_eq!(server.actions().len(), 4);
    }
}

//! A scripted Kubernetes API server for the source's tests: each request
//! for Services or EndpointSlices is answered, in order, with the reply a
//! test queued for that resource, and the objects and watch events it serves
//! are built here.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use http::{Method, Request, Response};
use kube::{client::Body, Client};
use serde_json::{json, Value};
use tokio::{sync::mpsc, task::JoinHandle};
use tower_test::mock::{self, Handle, SendResponse};

use super::KubernetesSource;
use crate::source::{Update, SERVICE_NAME_LABEL};

/// How long a test waits for an update before failing.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Resource {
    Services,
    Slices,
}

impl Resource {
    fn path(self) -> &'static str {
        match self {
            Self::Services => "/api/v1/services",
            Self::Slices => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    fn of_path(path: &str) -> Self {
        [Self::Services, Self::Slices]
            .into_iter()
            .find(|resource| resource.path() == path)
            .unwrap_or_else(|| panic!("unexpected request path {path}"))
    }

    /// `apiVersion` and `kind` of a list of this resource.
    fn list_type(self) -> (&'static str, &'static str) {
        match self {
            Self::Services => ("v1", "ServiceList"),
            Self::Slices => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }

    /// kube-proxy's filters, expected on every list and watch.
    fn selectors(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Self::Services => (
                Some("!service.kubernetes.io/service-proxy-name"),
                Some("spec.clusterIP!=None"),
            ),
            Self::Slices => (Some("!service.kubernetes.io/headless"), None),
        }
    }
}

/// The mock API server's answer to the next request for a resource.
pub(super) enum Reply {
    /// A list request, answered with `items` at resource version `version`.
    List {
        version: &'static str,
        items: Vec<Value>,
    },
    /// A watch from resource version `from`, answered with `events`, after
    /// which the connection closes.
    Watch {
        from: &'static str,
        events: Vec<Value>,
    },
    /// A watch from `from` that fails before any response (connection refused).
    Refuse { from: &'static str },
}

pub(super) struct MockApi {
    script: mpsc::UnboundedSender<(Resource, Reply)>,
    server: JoinHandle<()>,
}

impl MockApi {
    pub(super) fn start() -> (Self, Client) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (script, replies) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(handle, replies));
        (Self { script, server }, Client::new(service, "default"))
    }

    /// Queues the answer to the next request for `resource`; requests
    /// without an answer yet stay pending.
    pub(super) fn reply(&self, resource: Resource, reply: Reply) {
        self.script
            .send((resource, reply))
            .expect("mock API server stopped");
    }

    pub(super) async fn update(&mut self, source: &mut KubernetesSource) -> Update {
        tokio::select! {
            update = source.next() => update,
            stopped = &mut self.server => panic!("mock API server stopped: {stopped:?}"),
            () = tokio::time::sleep(PATIENCE) => panic!("no update within {PATIENCE:?}"),
        }
    }

    /// Fails if `source` reports anything before every task is idle.
    pub(super) async fn assert_quiet(&mut self, source: &mut KubernetesSource) {
        tokio::select! {
            update = source.next() => panic!("unexpected update {update:?}"),
            stopped = &mut self.server => panic!("mock API server stopped: {stopped:?}"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

type Pending = (Request<Body>, SendResponse<Response<Body>>);

/// Pairs requests with scripted replies, per resource, in order.
async fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    mut script: mpsc::UnboundedReceiver<(Resource, Reply)>,
) {
    let mut requests: HashMap<Resource, VecDeque<Pending>> = HashMap::new();
    let mut replies: HashMap<Resource, VecDeque<Reply>> = HashMap::new();
    loop {
        tokio::select! {
            Some((request, respond)) = handle.next_request() => {
                let resource = Resource::of_path(request.uri().path());
                requests.entry(resource).or_default().push_back((request, respond));
            }
            Some((resource, reply)) = script.recv() => {
                replies.entry(resource).or_default().push_back(reply);
            }
            else => return,
        }
        for resource in [Resource::Services, Resource::Slices] {
            let waiting = requests.entry(resource).or_default();
            let ready = replies.entry(resource).or_default();
            while !waiting.is_empty() && !ready.is_empty() {
                if let (Some((request, respond)), Some(reply)) =
                    (waiting.pop_front(), ready.pop_front())
                {
                    answer(resource, &request, respond, reply);
                }
            }
        }
    }
}

fn answer(
    resource: Resource,
    request: &Request<Body>,
    respond: SendResponse<Response<Body>>,
    reply: Reply,
) {
    let uri = request.uri();
    assert_eq!(request.method(), Method::GET, "{uri}");
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |key: &str| query.get(key).map(String::as_str);
    let (labels, fields) = resource.selectors();
    assert_eq!(param("labelSelector"), labels, "{uri}");
    assert_eq!(param("fieldSelector"), fields, "{uri}");
    let assert_watch_from = |version: &str| {
        assert_eq!(param("watch"), Some("true"), "expected a watch: {uri}");
        assert_eq!(param("resourceVersion"), Some(version), "{uri}");
    };
    match reply {
        Reply::List { version, items } => {
            assert_eq!(param("watch"), None, "expected a list: {uri}");
            let (api_version, kind) = resource.list_type();
            let list = json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"resourceVersion": version},
                "items": items,
            });
            respond.send_response(Response::new(Body::from(list.to_string().into_bytes())));
        }
        Reply::Watch { from, events } => {
            assert_watch_from(from);
            let lines: String = events.iter().map(|event| format!("{event}\n")).collect();
            respond.send_response(Response::new(Body::from(lines.into_bytes())));
        }
        Reply::Refuse { from } => {
            assert_watch_from(from);
            respond.send_error("connection refused");
        }
    }
}

pub(super) fn service(namespace: &str, name: &str, cluster_ip: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "uid": format!("svc-{namespace}-{name}"),
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "selector": {"app": name},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
            "sessionAffinity": "None",
        },
    })
}

/// An EndpointSlice with one ready endpoint, labelled for `service` if any.
pub(super) fn slice(
    namespace: &str,
    name: &str,
    service: Option<&str>,
    address: &str,
    version: &str,
) -> Value {
    let mut labels = json!({
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    });
    if let Some(service) = service {
        labels[SERVICE_NAME_LABEL] = json!(service);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "labels": labels,
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{
            "addresses": [address],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": format!("{name}-pod")},
        }],
    })
}

pub(super) fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// What the API server sends when a watch's resource version was compacted.
pub(super) fn gone() -> Value {
    event(
        "ERROR",
        json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": "The resourceVersion for the provided watch is too old.",
            "reason": "Expired",
            "code": 410,
        }),
    )
}

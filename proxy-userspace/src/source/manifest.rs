//! Manifest source: Kubernetes YAML as `kubectl apply -f` takes it: a file or
//! a directory of `.yaml`/`.yml`/`.json` files, each possibly holding several
//! `---`-separated documents or a `kind: List`.
//!
//! Each document is parsed on its own, so one broken document is reported and
//! skipped while the others still load.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::SystemTime,
};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::{
    block_yaml,
    cluster_ip::{self, ServiceCidrs},
    group,
    objects::{Name, Object},
    Objects, Rejection, RejectionKind, Scope, Update,
};

/// Objects read from manifests, plus the documents that could not be used.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    pub rejections: Vec<Rejection>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read manifests at {path}: {source}")]
pub struct ManifestError {
    path: PathBuf,
    source: io::Error,
}

/// What identifies the content of the manifest path without reading it:
/// changes when a file is added, removed, resized or rewritten.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The manifest files under `path`, in a stable order.
fn manifest_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    if !fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path)? {
        let file = entry?.path();
        let is_manifest = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if is_manifest && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

pub fn fingerprint(path: &Path) -> Result<Fingerprint, ManifestError> {
    let error = |source| ManifestError {
        path: path.to_path_buf(),
        source,
    };
    manifest_files(path)
        .map_err(error)?
        .into_iter()
        .map(|file| {
            let meta = fs::metadata(&file).map_err(error)?;
            Ok((file, meta.len(), meta.modified().ok()))
        })
        .collect()
}

/// Reads every manifest under `path`.
pub fn load(path: &Path) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    let files = manifest_files(path).map_err(|source| ManifestError {
        path: path.to_path_buf(),
        source,
    })?;
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| ManifestError {
            path: file.clone(),
            source,
        })?;
        parse_stream(&file.display().to_string(), &text, &mut loaded);
    }
    Ok(loaded)
}

/// Splits a YAML stream at `---` document markers, keeping each document's
/// starting line for error messages. The documents are slices of `text`:
/// a large manifest is not copied.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        let bare = bare.strip_suffix('\r').unwrap_or(bare);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

/// Documents per thread below which one thread parses a stream: YAML
/// takes tens of microseconds a document, a thread about as much.
const MIN_DOCUMENTS_PER_THREAD: usize = 64;

/// Parses a multi-document YAML stream from `origin` into `loaded`. The
/// documents are independent, so a large stream is parsed on every CPU
/// (YAML parsing is most of an agent's start on 30,000 Services), the
/// objects and rejections kept in document order.
pub fn parse_stream(origin: &str, text: &str, loaded: &mut Loaded) {
    let documents = split_documents(text);
    let parts = crate::parallel::map_chunks(&documents, MIN_DOCUMENTS_PER_THREAD, |chunk| {
        let mut part = Loaded::default();
        for (line, document) in chunk {
            parse_document(&format!("{origin}:{line}"), document, &mut part);
        }
        part
    });
    for part in parts {
        loaded.append(part);
    }
}

fn parse_document(at: &str, document: &str, loaded: &mut Loaded) {
    if decode_directly(document, &mut loaded.objects) {
        return;
    }
    let value = block_yaml::from_str::<Value>(document)
        .or_else(|_| serde_norway::from_str::<Value>(document));
    match value {
        Ok(Value::Null) => {}
        Ok(value) => add_object(at, value, loaded),
        Err(error) => loaded.rejections.push(Rejection::new(
            format!("document at {at}"),
            RejectionKind::InvalidDocument,
            format!("not valid YAML: {error}"),
        )),
    }
}

/// Decodes a Service, EndpointSlice or Endpoints document straight from
/// its text into its type, when its `apiVersion` and `kind` can be read
/// off its lines (top-level keys in block style with plain values, as
/// kubectl and people write them): building the generic YAML tree first
/// took as long again as the parse itself. Whether the document was
/// decoded and added; any doubt or failure leaves it to the general path,
/// which names the object and the reason.
fn decode_directly(document: &str, objects: &mut Objects) -> bool {
    match plain_kind(document) {
        Some(DocumentKind::Service) => decode_text(document).map(|s| objects.services.push(s)),
        Some(DocumentKind::EndpointSlice) => {
            decode_text(document).map(|s| objects.endpoint_slices.push(s))
        }
        Some(DocumentKind::Endpoints) => decode_text(document).map(|e| objects.endpoints.push(e)),
        _ => None,
    }
    .is_some()
}

/// The kind of a document whose `apiVersion` and `kind` are top-level keys
/// in block style, each once, with plain values. A line at column 0 that
/// is not a comment is a top-level key (a block scalar's lines are
/// indented), unless the document is in flow style, which is left alone.
fn plain_kind(document: &str) -> Option<DocumentKind> {
    let (mut api_version, mut kind) = (None, None);
    for line in document.lines() {
        if line.starts_with(['{', '[', '"', '\'', '?', '&', '*', '!', '%']) {
            return None;
        }
        let (slot, rest) = if let Some(rest) = line.strip_prefix("apiVersion:") {
            (&mut api_version, rest)
        } else if let Some(rest) = line.strip_prefix("kind:") {
            (&mut kind, rest)
        } else {
            continue;
        };
        let value = rest.trim();
        let plain = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./-".contains(&b));
        if !plain || slot.replace(value).is_some() {
            return None;
        }
    }
    match (api_version?, kind?) {
        ("v1", "Service") => Some(DocumentKind::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(DocumentKind::EndpointSlice),
        ("v1", "Endpoints") => Some(DocumentKind::Endpoints),
        _ => None,
    }
}

/// `document` decoded as `T`, if it decodes and is named: by the fast
/// reader of the YAML kubectl and people write, else by the YAML parser.
fn decode_text<T: DeserializeOwned + Object>(document: &str) -> Option<Arc<T>> {
    let object = block_yaml::from_str(document)
        .ok()
        .or_else(|| serde_norway::from_str(document).ok())?;
    named(object).ok()
}

impl Loaded {
    /// Adds `other`'s objects and rejections after this one's.
    fn append(&mut self, mut other: Loaded) {
        let objects = &mut self.objects;
        objects.services.append(&mut other.objects.services);
        objects
            .endpoint_slices
            .append(&mut other.objects.endpoint_slices);
        objects.endpoints.append(&mut other.objects.endpoints);
        self.rejections.append(&mut other.rejections);
    }
}

fn field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// `Kind namespace/name (origin)`, as far as the document tells.
fn describe(value: &Value, at: &str) -> String {
    let kind = field(value, &["kind"]).unwrap_or("object");
    let namespace = field(value, &["metadata", "namespace"]).unwrap_or("default");
    let name = field(value, &["metadata", "name"]).unwrap_or("<unnamed>");
    format!("{kind} {namespace}/{name} ({at})")
}

/// What a document is, by its `apiVersion` and `kind`.
enum DocumentKind {
    Service,
    EndpointSlice,
    Endpoints,
    List,
    Unnamed,
    /// Deployments, ConfigMaps, ...: not ours to proxy.
    Other,
}

fn add_object(at: &str, value: Value, loaded: &mut Loaded) {
    let api_version = field(&value, &["apiVersion"]).unwrap_or_default();
    let kind = match (api_version, field(&value, &["kind"]).unwrap_or_default()) {
        ("v1", "Service") => DocumentKind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => DocumentKind::EndpointSlice,
        ("v1", "Endpoints") => DocumentKind::Endpoints,
        (_, "List") => DocumentKind::List,
        ("", _) | (_, "") => DocumentKind::Unnamed,
        _ => DocumentKind::Other,
    };
    // Named before decoding: decoding takes the document, so no copy of it
    // is made. A list is not named: its items are.
    let object = match kind {
        DocumentKind::List | DocumentKind::Other => String::new(),
        _ => describe(&value, at),
    };
    let objects = &mut loaded.objects;
    let result = match kind {
        DocumentKind::Service => decode(value).map(|s| objects.services.push(s)),
        DocumentKind::EndpointSlice => decode(value).map(|s| objects.endpoint_slices.push(s)),
        DocumentKind::Endpoints => decode(value).map(|e| objects.endpoints.push(e)),
        DocumentKind::List => {
            if let Value::Mapping(mut list) = value {
                if let Some(Value::Sequence(items)) = list.remove("items") {
                    for item in items {
                        add_object(at, item, loaded);
                    }
                }
            }
            Ok(())
        }
        DocumentKind::Unnamed => Err("missing apiVersion or kind".to_string()),
        DocumentKind::Other => Ok(()),
    };
    if let Err(reason) = result {
        loaded.rejections.push(Rejection::new(
            object,
            RejectionKind::InvalidDocument,
            reason,
        ));
    }
}

fn decode<T: DeserializeOwned + Object>(value: Value) -> Result<Arc<T>, String> {
    let object = serde_norway::from_value(value).map_err(|e| format!("invalid object: {e}"))?;
    named(object)
}

/// A decoded object, if it is named, as `kubectl apply` takes it.
fn named<T: Object>(mut object: T) -> Result<Arc<T>, String> {
    let metadata = object.metadata_mut();
    if metadata.name.as_deref().unwrap_or_default().is_empty() {
        return Err("metadata.name is missing".to_string());
    }
    // `kubectl apply` puts objects without a namespace into "default".
    metadata
        .namespace
        .get_or_insert_with(|| Name::new("default"));
    metadata.resource_version = None;
    Ok(Arc::new(object))
}

/// The first read of the manifests, on a thread of its own: what it saw
/// and what it made of it.
type FirstRead = JoinHandle<(Option<Fingerprint>, Result<Option<Update>, ManifestError>)>;

/// Re-reads the manifests when their fingerprint changes.
pub struct ManifestWatch {
    path: PathBuf,
    service_cidr: ServiceCidrs,
    last: Option<Fingerprint>,
    /// Begun at start, so parsing a large manifest overlaps the datapath's
    /// load; the first poll takes its result.
    first_read: Option<FirstRead>,
}

impl ManifestWatch {
    /// Starts reading the manifests at once, in the background.
    pub fn start(path: PathBuf, service_cidr: ServiceCidrs) -> Self {
        let mut reader = Self {
            path: path.clone(),
            service_cidr,
            last: None,
            first_read: None,
        };
        // Without a thread, the first poll reads in place instead.
        let first_read = std::thread::Builder::new()
            .name("manifests".to_string())
            .spawn(move || {
                let update = reader.poll();
                (reader.last, update)
            })
            .ok();
        Self {
            path,
            service_cidr,
            last: None,
            first_read,
        }
    }

    /// Everything the manifests hold if anything changed since the last
    /// call (always on the first), with clusterIPs allocated where the
    /// manifests have none.
    pub fn poll(&mut self) -> Result<Option<Update>, ManifestError> {
        if let Some(first_read) = self.first_read.take() {
            match first_read.join() {
                Ok((last, update)) => {
                    self.last = last;
                    return update;
                }
                // Reading does not panic; were it to, the panic goes on.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let now = fingerprint(&self.path)?;
        if self.last.as_ref() == Some(&now) {
            return Ok(None);
        }
        let mut loaded = load(&self.path)?;
        cluster_ip::allocate(&mut loaded.objects.services, self.service_cidr);
        self.last = Some(now);
        let (services, mut rejections) = group(loaded.objects);
        rejections.splice(0..0, loaded.rejections);
        Ok(Some(Update {
            scope: Scope::Full,
            services,
            rejections,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ServiceName;

    fn parse(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        parse_stream("test.yaml", text, &mut loaded);
        loaded
    }

    #[test]
    fn reads_kubectl_output_and_defaults_namespace() {
        let loaded = parse(include_str!(
            "../../../tests/fixtures/kubectl-nodeport-web.yaml"
        ));
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let service = &loaded.objects.services[0];
        assert_eq!(service.metadata.name.as_deref(), Some("web"));
        assert_eq!(service.metadata.namespace.as_deref(), Some("default"));
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(
            spec.cluster_ip, None,
            "kubectl leaves clusterIP to the API server"
        );
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 80);
    }

    #[test]
    fn one_bad_document_does_not_hide_the_others() {
        let loaded = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n\
             ---\nkind: Service\napiVersion: v1\nmetadata: {name: broken\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: prod}\n\
             spec: {ports: [{port: notanumber}]}\n\
             ---\n# only a comment\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1}\n\
             addressType: IPv4\nendpoints: []\n",
        );
        let names: Vec<_> = loaded
            .objects
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(loaded.objects.endpoint_slices.len(), 1);
        assert_eq!(loaded.rejections.len(), 2, "{:?}", loaded.rejections);
        assert!(loaded.rejections[0].object.contains("test.yaml:6"));
        assert!(loaded.rejections[0].reason.contains("not valid YAML"));
        assert_eq!(
            loaded.rejections[1].object, "Service prod/c (test.yaml:10)",
            "names the object"
        );
        assert_eq!(loaded.rejections[1].kind, RejectionKind::InvalidDocument);
        assert_eq!(
            loaded.rejections[1].reason,
            "invalid object: invalid type: string \"notanumber\", expected i32"
        );
    }

    #[test]
    fn a_long_stream_parsed_on_every_cpu_keeps_its_order_and_lines() {
        // Enough documents for several threads; every tenth is broken.
        let documents = 40 * MIN_DOCUMENTS_PER_THREAD;
        let text: String = (0..documents)
            .map(|i| match i % 10 {
                9 => format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}\n"),
                _ => format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"),
            })
            .collect::<Vec<_>>()
            .join("---\n");
        let loaded = parse(&text);
        let names: Vec<String> = loaded
            .objects
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..documents)
            .filter(|i| i % 10 != 9)
            .map(|i| format!("s{i}"))
            .collect();
        assert_eq!(names, expected);
        // Document i starts on line 4i + 1 (three lines and a marker each).
        let lines: Vec<String> = loaded.rejections.iter().map(|r| r.object.clone()).collect();
        let expected: Vec<String> = (0..documents)
            .filter(|i| i % 10 == 9)
            .map(|i| format!("document at test.yaml:{}", 4 * i + 1))
            .collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn the_kind_is_read_off_the_lines_only_when_they_leave_no_doubt() {
        let kind = |text: &str| plain_kind(text).map(|k| matches!(k, DocumentKind::Service));
        assert_eq!(
            kind("apiVersion: v1\nkind: Service\nmetadata: {}\n"),
            Some(true)
        );
        assert_eq!(kind("# c\nkind: Service\r\napiVersion: v1\r\n"), Some(true));
        assert_eq!(
            kind("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"),
            Some(false)
        );
        // Left to the general path: flow style and JSON, quoted or
        // commented values, a key twice, kinds not ours, lists.
        for text in [
            "{apiVersion: v1, kind: Service}\n",
            "{\n\"apiVersion\": \"v1\",\n\"kind\": \"Service\"\n}\n",
            "apiVersion: \"v1\"\nkind: Service\n",
            "apiVersion: v1\nkind: Service # the web\n",
            "apiVersion: v1\nkind: Service\nkind: Service\n",
            "apiVersion: apps/v1\nkind: Deployment\n",
            "apiVersion: v1\nkind: List\nitems: []\n",
            "kind: Service\n",
            "? apiVersion\n: v1\nkind: Service\n",
        ] {
            assert!(plain_kind(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn decoding_directly_gives_what_the_general_path_gives() {
        for text in [
            include_str!("../../../tests/fixtures/kubectl-nodeport-web.yaml"),
            include_str!("../../../tests/fixtures/kubectl-clusterip-x.yaml"),
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: x-1\n  \
             labels: {kubernetes.io/service-name: x}\naddressType: IPv4\nports: [{name: h, port: 80}]\n\
             endpoints:\n- addresses: [10.0.0.1, 10.0.0.9]\n  conditions: {ready: true}\n  nodeName: n1\n",
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext, namespace: db}\n\
             subsets: [{addresses: [{ip: 192.168.1.5}], ports: [{port: 5432}]}]\n",
        ] {
            let mut direct = Objects::default();
            assert!(decode_directly(text, &mut direct), "{text}");
            let mut general = Loaded::default();
            add_object("test.yaml:1", serde_norway::from_str(text).unwrap(), &mut general);
            assert!(general.rejections.is_empty());
            assert_eq!(format!("{direct:?}"), format!("{:?}", general.objects));
        }
        // A number where a string belongs fails either way, so the general
        // path names the object and the reason.
        let numbered = "apiVersion: v1\nkind: Service\nmetadata: {name: 123}\n";
        assert!(!decode_directly(numbered, &mut Objects::default()));
        let labelled = "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {v: 2}}\n";
        assert!(!decode_directly(labelled, &mut Objects::default()));
        let loaded = parse(labelled);
        assert_eq!(loaded.rejections.len(), 1);
        assert!(loaded.objects.services.is_empty());
    }

    #[test]
    fn reads_lists_and_legacy_endpoints_and_ignores_other_kinds() {
        let loaded = parse(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: Endpoints, metadata: {name: ext}, subsets: []}\n\
             - {apiVersion: apps/v1, kind: Deployment, metadata: {name: web}}\n",
        );
        assert!(loaded.rejections.is_empty());
        assert_eq!(loaded.objects.endpoints.len(), 1);
        assert!(loaded.objects.services.is_empty());
    }

    #[test]
    fn object_without_name_or_kind_is_rejected() {
        let loaded = parse("apiVersion: v1\nkind: Service\nspec: {}\n---\nfoo: bar\n");
        assert_eq!(loaded.rejections.len(), 2);
        assert!(loaded.rejections[0].reason.contains("metadata.name"));
        assert!(loaded.rejections[1].reason.contains("apiVersion or kind"));
    }

    #[test]
    fn directory_is_read_in_order_and_fingerprint_tracks_changes() {
        let dir = std::env::temp_dir().join(format!("kxdp-manifest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let service = |name: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{}}\n")
        };
        fs::write(dir.join("b.yaml"), service("b")).unwrap();
        fs::write(dir.join("a.yml"), service("a")).unwrap();
        fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let before = fingerprint(&dir).unwrap();
        let loaded = load(&dir).unwrap();
        let names: Vec<_> = loaded
            .objects
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let mut watch = ManifestWatch::start(dir.clone(), "10.96.0.0/16".parse().unwrap());
        let first = watch.poll().unwrap().expect("first poll loads");
        assert_eq!(first.scope, Scope::Full);
        let ip = first.services[&ServiceName::new("default", "a")]
            .service
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_ref()
            .unwrap()
            .to_string();
        assert!(ip.starts_with("10.96."), "allocated {ip}");
        assert!(
            watch.poll().unwrap().is_none(),
            "unchanged since the background read"
        );
        fs::write(dir.join("c.json"), "{}").unwrap();
        assert_ne!(fingerprint(&dir).unwrap(), before);
        assert!(watch.poll().unwrap().is_some(), "a new file is a change");
        fs::remove_dir_all(&dir).unwrap();
        assert!(load(&dir).is_err());
    }
}

//! Which namespaces the operator watches: the whole cluster (the default), or only the
//! namespaces named with `--watch-namespace` (the chart's `watchNamespaces`), where the
//! ServiceAccounts hold Roles instead of ClusterRoles.
//!
//! Kubernetes has no watch across a list of namespaces, so [`Scope::watch`] runs one
//! watch per namespace and merges them into one stream that behaves like a single watch:
//! one initial listing (`Init` … `InitDone` once every namespace has listed), then changes.
//! A namespace that re-lists later (its watch expired) is replayed as `Apply` and `Delete`
//! events, so a reflector over the merged stream never forgets the other namespaces.
//!
//! ```text
//!  watch ns a ─┐
//!  watch ns b ─┼─▶ merge (one Init…InitDone, later re-lists as Apply/Delete) ─▶ reflector
//!  watch ns c ─┘
//! ```

use std::collections::{HashMap, HashSet};

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use kube::runtime::watcher::{Event, Result as WatchResult};
use kube::{Api, Client, Resource};

/// The namespaces the operator reads and writes ClientIdentities, ProtectedRoutes,
/// Enrollments and their Secrets in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (ClusterRoles).
    #[default]
    Cluster,
    /// Only these namespaces (Roles per namespace); never empty.
    Namespaces(Vec<String>),
}

impl Scope {
    /// `Cluster` for no namespaces; duplicates removed, order kept.
    pub fn from_namespaces(namespaces: impl IntoIterator<Item = String>) -> Self {
        let mut seen = HashSet::new();
        let list: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect();
        if list.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(list)
        }
    }

    /// One `Api` per watched namespace (one for the whole cluster).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => vec![Api::all(client.clone())],
            Scope::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// Whether objects in `namespace` are in scope.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::Cluster => true,
            Scope::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }

    /// One watch over the scope: `watch` is called with each namespace's `Api` (it adds
    /// the watcher config and backoff), and the streams are merged as described above.
    pub fn watch<K, T, S>(
        &self,
        client: &Client,
        watch: impl Fn(Api<K>) -> S,
    ) -> BoxStream<'static, WatchResult<Event<T>>>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
        T: Resource + Clone + Send + 'static,
        S: Stream<Item = WatchResult<Event<T>>> + Send + 'static,
    {
        let mut streams: Vec<S> = self.apis(client).into_iter().map(watch).collect();
        if streams.len() == 1 {
            return streams.remove(0).boxed();
        }
        merge(streams).boxed()
    }
}

/// An object's place: (namespace, name).
type Key = (Option<String>, String);

fn key<T: Resource>(obj: &T) -> Key {
    (
        obj.meta().namespace.clone(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// What the merge remembers about one namespace's watch.
struct Part<T> {
    /// Every object it reported, to replay a later re-list as deletions.
    known: HashMap<Key, T>,
    /// Objects seen in the re-list under way (after the first listing).
    relisting: Option<HashSet<Key>>,
    /// Its first listing is complete.
    listed: bool,
}

/// Merges per-namespace watches (see the module documentation).
pub fn merge<T, S>(streams: Vec<S>) -> impl Stream<Item = WatchResult<Event<T>>> + Send
where
    T: Resource + Clone + Send + 'static,
    S: Stream<Item = WatchResult<Event<T>>> + Send + 'static,
{
    let count = streams.len();
    let tagged = futures_util::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |e| (i, e)).boxed()),
    );
    let mut parts: Vec<Part<T>> = (0..count)
        .map(|_| Part {
            known: HashMap::new(),
            relisting: None,
            listed: false,
        })
        .collect();
    let mut initial = true;
    let start = futures_util::stream::iter([Ok(Event::Init)]);
    let merged = tagged.flat_map(move |(i, event)| {
        let out = step(&mut parts[..], &mut initial, i, event);
        futures_util::stream::iter(out)
    });
    start.chain(merged)
}

/// The merged events for event `event` of namespace watch `i`.
fn step<T: Resource + Clone>(
    parts: &mut [Part<T>],
    initial: &mut bool,
    i: usize,
    event: WatchResult<Event<T>>,
) -> Vec<WatchResult<Event<T>>> {
    let event = match event {
        Ok(event) => event,
        Err(e) => return vec![Err(e)],
    };
    let part = &mut parts[i];
    match event {
        Event::Init => {
            if part.listed {
                part.relisting = Some(HashSet::new());
            }
            Vec::new()
        }
        Event::InitApply(obj) => {
            let k = key(&obj);
            part.known.insert(k.clone(), obj.clone());
            match &mut part.relisting {
                Some(seen) => {
                    seen.insert(k);
                    vec![Ok(Event::Apply(obj))]
                }
                None => vec![Ok(Event::InitApply(obj))],
            }
        }
        Event::InitDone => {
            if let Some(seen) = part.relisting.take() {
                // Gone while this namespace's watch was down.
                let gone: Vec<Key> = part
                    .known
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                return gone
                    .into_iter()
                    .filter_map(|k| part.known.remove(&k))
                    .map(|obj| Ok(Event::Delete(obj)))
                    .collect();
            }
            part.listed = true;
            if *initial && parts.iter().all(|p| p.listed) {
                *initial = false;
                return vec![Ok(Event::InitDone)];
            }
            Vec::new()
        }
        Event::Apply(obj) => {
            part.known.insert(key(&obj), obj.clone());
            vec![Ok(if *initial {
                Event::InitApply(obj)
            } else {
                Event::Apply(obj)
            })]
        }
        Event::Delete(obj) => {
            part.known.remove(&key(&obj));
            vec![Ok(Event::Delete(obj))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// The merged events, as "kind ns/name".
    fn describe(events: Vec<WatchResult<Event<ConfigMap>>>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e.unwrap() {
                Event::Init => "Init".to_owned(),
                Event::InitDone => "InitDone".to_owned(),
                Event::InitApply(o) => format!("InitApply {}", key(&o).1),
                Event::Apply(o) => format!("Apply {}", key(&o).1),
                Event::Delete(o) => format!("Delete {}", key(&o).1),
            })
            .collect()
    }

    fn parts(n: usize) -> Vec<Part<ConfigMap>> {
        (0..n)
            .map(|_| Part {
                known: HashMap::new(),
                relisting: None,
                listed: false,
            })
            .collect()
    }

    #[test]
    fn one_listing_completes_only_when_every_namespace_listed() {
        let mut p = parts(2);
        let mut initial = true;
        let mut out = Vec::new();
        for (i, e) in [
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (1, Event::Init),
            (0, Event::InitDone),
            // A change in a listed namespace while another still lists: part of the listing.
            (0, Event::Apply(cm("a", "y"))),
            (1, Event::InitApply(cm("b", "z"))),
            (1, Event::InitDone),
            (1, Event::Apply(cm("b", "w"))),
        ] {
            out.extend(step(&mut p, &mut initial, i, Ok(e)));
        }
        assert_eq!(
            describe(out),
            [
                "InitApply x",
                "InitApply y",
                "InitApply z",
                "InitDone",
                "Apply w"
            ]
        );
    }

    #[test]
    fn a_later_relist_of_one_namespace_keeps_the_others_and_replays_deletions() {
        let mut p = parts(2);
        let mut initial = true;
        let mut run = |events: Vec<(usize, Event<ConfigMap>)>| {
            let mut out = Vec::new();
            for (i, e) in events {
                out.extend(step(&mut p, &mut initial, i, Ok(e)));
            }
            describe(out)
        };
        run(vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitApply(cm("a", "gone"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitApply(cm("b", "z"))),
            (1, Event::InitDone),
        ]);
        // Namespace a's watch expires and lists again: "gone" was deleted meanwhile.
        let replay = run(vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitDone),
        ]);
        assert_eq!(replay, ["Apply x", "Delete gone"]);
    }

    #[tokio::test]
    async fn the_merged_stream_starts_with_one_init() {
        let a = futures_util::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "x"))),
            Ok(Event::InitDone),
        ]);
        let b = futures_util::stream::iter(vec![Ok(Event::Init), Ok(Event::InitDone)]);
        let out: Vec<_> = merge(vec![a.boxed(), b.boxed()]).collect().await;
        assert_eq!(describe(out), ["Init", "InitApply x", "InitDone"]);
    }

    #[test]
    fn no_namespaces_is_the_whole_cluster() {
        assert_eq!(Scope::from_namespaces(Vec::new()), Scope::Cluster);
        assert_eq!(
            Scope::from_namespaces(["home".into(), " home ".into(), "lab".into()]),
            Scope::Namespaces(vec!["home".into(), "lab".into()])
        );
    }
}

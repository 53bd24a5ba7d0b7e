//! Keeps every ACME route's certificate: one task per route orders when
//! [`schedule::next_order`] says so and writes the result to the state directory, where
//! the file source picks it up (a new snapshot; open connections keep theirs).
//!
//! ```text
//!  accepted configs ──▶ routes with serverCertificate.acme ──▶ one task per route
//!     task: read certificate + attempts ──▶ sleep until due ──▶ mark attempt ──▶ order
//!           ──▶ certificate.pem (file source reloads) | attempts.json (backoff)
//! ```
//! Accounts are shared per directory and created once (under that directory's lock), then
//! reused from `acme/accounts/`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{Account, AccountCredentials, NewAccount};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{RetryAfter, Wait, directory_client};
use super::order::{self, Issued, Responders};
use super::problem::Failure;
use super::schedule::{self, Attempts};
use super::store::{AcmeStore, StoredAccount};
use crate::resources::AcmeChallenge;
use crate::sources::{Config, name_of};
use crate::state::StateDir;
use crate::telemetry::{AcmeOrderLabels, Metrics, RouteLabels};

/// The longest one order may take, all polling included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest opening or registering an account may take (a directory that accepts
/// connections and never answers must not stall its routes for good).
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest sleep before looking at the disk and the clock again (a suspended laptop,
/// a clock set right, a certificate file replaced by hand).
const RECHECK: Duration = Duration::from_secs(3600);

/// What one ACME route needs, from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeRoute {
    pub name: String,
    pub hosts: Vec<String>,
    pub directory: String,
    pub email: String,
    pub challenge: AcmeChallenge,
    /// The private CA of the directory's HTTPS certificate (resolved against the config's
    /// directory).
    pub ca_file: Option<PathBuf>,
}

/// The ACME routes of `config`.
pub fn acme_routes(config: &Config) -> Vec<AcmeRoute> {
    let base = config.path.parent().unwrap_or(std::path::Path::new(""));
    config
        .routes
        .iter()
        .filter_map(|route| {
            let acme = route.spec.server_certificate.acme.as_ref()?;
            Some(AcmeRoute {
                name: name_of(&route.metadata).to_owned(),
                hosts: route.spec.hosts.clone(),
                directory: acme.directory_url().trim().to_owned(),
                email: acme.email.trim().to_owned(),
                challenge: acme.challenge,
                ca_file: acme.ca_file.as_deref().map(|f| base.join(f.trim())),
            })
        })
        .collect()
}

/// An account and the Retry-After notes of its HTTP client.
type Shared = Arc<(Account, RetryAfter)>;
/// Directory URL, caFile, email.
type AccountKey = (String, Option<PathBuf>, String);
/// A directory's accounts. Its lock is held while an account is opened or registered
/// there: one directory never gets two accounts, and a slow directory holds up only its
/// own routes.
type Slot = Arc<Mutex<HashMap<AccountKey, Shared>>>;

fn account_key(route: &AcmeRoute) -> AccountKey {
    (
        route.directory.clone(),
        route.ca_file.clone(),
        route.email.clone(),
    )
}

/// Orders and renews the certificates of ACME routes.
pub struct Manager {
    store: AcmeStore,
    responders: Responders,
    metrics: Arc<Metrics>,
    /// Whether a plain-HTTP listener serves http-01 answers (`--http-listen`).
    http01_served: bool,
    /// Open accounts by directory URL, then by [`AccountKey`] (a new contact is sent to
    /// the CA once).
    accounts: std::sync::Mutex<HashMap<String, Slot>>,
}

impl Manager {
    pub fn new(state: StateDir, responders: Responders, metrics: Arc<Metrics>) -> Self {
        Manager {
            store: AcmeStore::new(state),
            responders,
            metrics,
            http01_served: false,
            accounts: std::sync::Mutex::default(),
        }
    }

    /// Whether `--http-listen` serves the http-01 answers; without it, an http-01 route
    /// fails at once with the fix instead of spending an order the CA cannot validate.
    pub fn serving_http01(mut self, served: bool) -> Self {
        self.http01_served = served;
        self
    }

    /// Follows the accepted configs until `shutdown`: a task per ACME route, restarted when
    /// the route's ACME settings or hosts change, stopped when it goes.
    pub async fn run(self, mut configs: watch::Receiver<Config>, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut running: HashMap<String, (AcmeRoute, JoinHandle<()>)> = HashMap::new();
        loop {
            let wanted = acme_routes(&configs.borrow_and_update());
            running.retain(|_, (route, task)| {
                let keep = wanted.contains(route);
                if !keep {
                    task.abort();
                }
                keep
            });
            for route in wanted {
                if !running.contains_key(&route.name) {
                    let task = tokio::spawn(this.clone().keep_certificate(route.clone()));
                    running.insert(route.name.clone(), (route, task));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = configs.changed() => if changed.is_err() { break },
            }
        }
        for (_, task) in running.into_values() {
            task.abort();
        }
    }

    /// One route, forever: wait until an order is due, order, record the outcome.
    async fn keep_certificate(self: Arc<Self>, route: AcmeRoute) {
        let name = route.name.as_str();
        loop {
            let held = self.store.held(name, &route.hosts);
            let attempts = self.store.attempts(name);
            self.metrics
                .acme_failures
                .get_or_create(&RouteLabels {
                    route: name.to_owned(),
                })
                .set(i64::from(attempts.failures));
            let due = schedule::next_order(held.as_ref(), &attempts);
            if let Ok(wait) = due.duration_since(SystemTime::now())
                && !wait.is_zero()
            {
                if attempts.failures > 0 {
                    tracing::info!(
                        route = name,
                        "next ACME order in {}s, after {} failed: {}",
                        wait.as_secs(),
                        attempts.failures,
                        attempts.last_problem.as_deref().unwrap_or("?")
                    );
                }
                tokio::time::sleep(wait.min(RECHECK)).await;
                continue;
            }
            // Written first: if this process dies mid-order, the next start backs off.
            let now = SystemTime::now();
            if let Err(e) = self
                .store
                .save_attempts(name, &schedule::before_order(&attempts, now))
            {
                tracing::error!(
                    route = name,
                    "{e}; not ordering a certificate until it can be saved"
                );
                tokio::time::sleep(schedule::backoff(attempts.failures + 1)).await;
                continue;
            }
            self.attempt(&route, held.is_some_and(|h| h.usable(now)), &attempts)
                .await;
        }
    }

    async fn attempt(&self, route: &AcmeRoute, serving: bool, attempts: &Attempts) {
        let name = route.name.as_str();
        tracing::info!(
            route = name,
            hosts = ?route.hosts,
            directory = %route.directory,
            challenge = ?route.challenge,
            "ordering a certificate"
        );
        let ready = if route.challenge == AcmeChallenge::Http01 && !self.http01_served {
            Err((
                Failure::new(
                    "config",
                    "`challenge: http-01` needs the plain-HTTP listener: start the gate with \
                     --http-listen 0.0.0.0:80 (reachable from the internet as port 80), or \
                     use `challenge: tls-alpn-01`",
                ),
                None,
            ))
        } else {
            self.account(route).await
        };
        let (outcome, wait) = match ready {
            Ok(shared) => {
                let (account, retry_after) = &*shared;
                let result = tokio::time::timeout(
                    ORDER_TIMEOUT,
                    order::order(account, &route.hosts, route.challenge, &self.responders),
                )
                .await;
                let outcome = match result {
                    Ok(Ok(issued)) => Ok(issued),
                    Ok(Err(e)) => Err(Failure::from_error(
                        &e,
                        &route.directory,
                        &route.hosts,
                        route.challenge,
                    )),
                    Err(_) => Err(Failure::timed_out(&route.directory)),
                };
                (outcome, retry_after.take())
            }
            Err((failure, wait)) => (Err(failure), wait),
        };
        let outcome = outcome.map_err(|failure| match wait {
            Some(w) if matches!(failure.kind.as_str(), "internal" | "unreachable") => {
                Failure::asked_to_wait(&route.directory, w.status, w.until)
            }
            _ => failure,
        });
        let retry_after = wait.map(|w: Wait| w.until);
        if let Err(failure) = &outcome
            && failure.kind == "accountDoesNotExist"
        {
            self.forget_account(route).await;
        }
        let outcome = outcome.and_then(|issued| self.save(route, &issued));
        // Persisted before it is reported: whoever reads the metric finds the backoff on disk.
        let next = match &outcome {
            Ok(()) => Attempts::default(),
            Err(failure) => schedule::after_failure(
                attempts,
                SystemTime::now(),
                retry_after,
                &failure.to_string(),
            ),
        };
        if let Err(e) = self.store.save_attempts(name, &next) {
            tracing::error!(route = name, "{e}");
        }
        let result = match &outcome {
            Ok(()) => "issued".to_owned(),
            Err(f) => f.kind.clone(),
        };
        self.metrics
            .acme_orders
            .get_or_create(&AcmeOrderLabels {
                route: name.to_owned(),
                result,
            })
            .inc();
        if let Err(failure) = outcome {
            let until = if serving {
                "the current certificate keeps serving"
            } else {
                "the route is not served until a certificate is issued"
            };
            let wait = next
                .not_before
                .map(schedule::from_unix)
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .map_or(0, |d| d.as_secs());
            tracing::error!(
                route = name,
                problem = %failure.kind,
                "ACME order for {} failed: {}; {until}; next try in {wait}s",
                route.hosts.join(", "),
                failure.message,
            );
        }
    }

    /// Saves a new certificate where the file source reads it.
    fn save(&self, route: &AcmeRoute, issued: &Issued) -> Result<(), Failure> {
        self.store
            .save_certificate(&route.name, &issued.key_pem, &issued.chain_pem)
            .map_err(|e| Failure::new("internal", format!("cannot save the certificate: {e}")))?;
        let held = self.store.held(&route.name, &route.hosts);
        let until = held.map(|h| humantime::format_rfc3339_seconds(h.not_after).to_string());
        let renew = held.map(|h| humantime::format_rfc3339_seconds(h.renew_at()).to_string());
        tracing::info!(
            route = route.name,
            hosts = ?route.hosts,
            valid_until = until.as_deref().unwrap_or("?"),
            renew_at = renew.as_deref().unwrap_or("?"),
            "certificate issued by {}",
            route.directory
        );
        Ok(())
    }

    fn slot(&self, directory: &str) -> Slot {
        let mut slots = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(directory.to_owned()).or_default().clone()
    }

    /// The account for the route's directory: cached, else loaded from disk, else
    /// registered (once, however many routes ask at the same time). A failure comes with
    /// the wait the CA asked for, if it did.
    async fn account(&self, route: &AcmeRoute) -> Result<Shared, (Failure, Option<Wait>)> {
        let key = account_key(route);
        let slot = self.slot(&route.directory);
        let mut accounts = slot.lock().await;
        if let Some(shared) = accounts.get(&key) {
            return Ok(shared.clone());
        }
        let retry_after = RetryAfter::default();
        let http = directory_client(route.ca_file.as_deref(), retry_after.clone())
            .map_err(|m| (Failure::new("config", m), None))?;
        let opened = tokio::time::timeout(
            ACCOUNT_TIMEOUT,
            self.open_account(route, Account::builder_with_http(http)),
        )
        .await
        .unwrap_or_else(|_| Err(Failure::timed_out(&route.directory)));
        match opened {
            Ok(account) => {
                let shared = Arc::new((account, retry_after));
                accounts.insert(key, shared.clone());
                Ok(shared)
            }
            Err(failure) => Err((failure, retry_after.take())),
        }
    }

    /// Drops an account the CA no longer knows (a reset test CA, a deactivated account):
    /// its file is set aside, and the next try registers a new one.
    async fn forget_account(&self, route: &AcmeRoute) {
        let slot = self.slot(&route.directory);
        slot.lock().await.remove(&account_key(route));
        match self.store.retire_account(&route.directory) {
            Ok(Some(kept)) => tracing::warn!(
                directory = %route.directory,
                "the CA does not know the stored ACME account; kept it as {} and registering \
                 a new one at the next try",
                kept.display()
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(directory = %route.directory, "{e}"),
        }
    }

    /// The stored account for the route's directory, else a new one (saved).
    async fn open_account(
        &self,
        route: &AcmeRoute,
        builder: instant_acme::AccountBuilder,
    ) -> Result<Account, Failure> {
        let fail = |e: instant_acme::Error| {
            Failure::from_error(&e, &route.directory, &route.hosts, route.challenge)
        };
        let stored = self
            .store
            .load_account(&route.directory)
            .map_err(|e| Failure::new("config", e.to_string()))?;
        let account = match stored {
            Some(stored) => {
                let saved = stored.credentials.clone();
                let credentials: AccountCredentials = serde_json::from_value(stored.credentials)
                    .map_err(|e| {
                        Failure::new(
                            "config",
                            format!(
                                "{}: not ACME account credentials ({e}); restore it or delete \
                                 it to register a new account",
                                self.store.account_path(&route.directory).display()
                            ),
                        )
                    })?;
                let account = builder.from_credentials(credentials).await.map_err(fail)?;
                if stored.email != route.email {
                    // The address the CA writes to follows the config.
                    let contact = format!("mailto:{}", route.email);
                    account.update_contacts(&[&contact]).await.map_err(fail)?;
                    self.store
                        .save_account(&StoredAccount {
                            directory: stored.directory,
                            email: route.email.clone(),
                            credentials: saved,
                        })
                        .map_err(|e| Failure::new("internal", e.to_string()))?;
                    tracing::info!(
                        directory = %route.directory,
                        "the ACME account's contact is now {}",
                        route.email
                    );
                }
                account
            }
            None => {
                let contact = format!("mailto:{}", route.email);
                let new = NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, route.directory.clone(), None)
                    .await
                    .map_err(fail)?;
                let credentials = serde_json::to_value(&credentials)
                    .map_err(|e| Failure::new("internal", e.to_string()))?;
                self.store
                    .save_account(&StoredAccount {
                        directory: route.directory.clone(),
                        email: route.email.clone(),
                        credentials,
                    })
                    .map_err(|e| Failure::new("internal", e.to_string()))?;
                tracing::info!(
                    directory = %route.directory,
                    account = account.id(),
                    "registered an ACME account"
                );
                account
            }
        };
        Ok(account)
    }
}

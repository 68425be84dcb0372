//! The response cache as the server uses it: fills and lookups, scopes,
//! context fingerprints, the guard, TTL and stale entries on a paused
//! clock, eviction and invalidation. Scenarios that involve the store run
//! on both backends: embedded, and PostgreSQL with pgvector (a database of
//! their own on the server `scripts/pgvector.sh` starts), where two caches
//! over one database stand for two keel processes.
//!
//! Questions are embedded by the hashing embedder (shared words), so the
//! tests need no model; thresholds are set for it.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use keel_cache::{CacheSettings, HitKind, ResponseCache, Scope};
use keel_core::chat::{ChatCompletion, ChatRequest};
use keel_embed::HashingEmbedder;
use keel_limits::Clock;
use keel_vector::{EmbeddedOptions, EmbeddedStore, PgVectorStore, VectorStore};
use serde_json::{Value, json};

enum Backend {
    Embedded(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    async fn postgres() -> Backend {
        let url = keel_vector::testing::scratch_database("keel_cache_test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Backend::Postgres(url)
    }

    /// A store over the backend's data; on PostgreSQL each call is a new
    /// pool, as another process would have.
    async fn open(&self) -> VectorStore {
        match self {
            Backend::Embedded(dir) => {
                let mut options = EmbeddedOptions::new(dir.path());
                options.fsync = false;
                VectorStore::Embedded(EmbeddedStore::open(options).await.unwrap())
            }
            Backend::Postgres(url) => {
                VectorStore::Postgres(PgVectorStore::connect(url).await.unwrap())
            }
        }
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn embedded() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::Backend::Embedded(dir)).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::postgres().await).await;
            }
        }
    };
}

fn settings() -> CacheSettings {
    CacheSettings {
        // Hashing vectors of paraphrases share fewer words than MiniLM's
        // agree in meaning.
        threshold: 0.5,
        ..CacheSettings::default()
    }
}

async fn cache_on(backend: &Backend, settings: CacheSettings, clock: Clock) -> ResponseCache {
    ResponseCache::new(
        settings,
        backend.open().await,
        Some(Arc::new(HashingEmbedder::new(256))),
        clock,
    )
}

fn request(messages: Value) -> ChatRequest {
    serde_json::from_value(json!({"model": "m", "messages": messages, "temperature": 0})).unwrap()
}

fn ask(question: &str) -> ChatRequest {
    request(json!([
        {"role": "system", "content": "You answer geography questions."},
        {"role": "user", "content": question},
    ]))
}

fn answer(text: &str) -> ChatCompletion {
    serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    }))
    .unwrap()
}

fn tenant(id: &str) -> Scope {
    Scope {
        tenant: id.to_owned(),
        user: None,
    }
}

/// Fills the answer to `request` in `scope`.
async fn fill(cache: &ResponseCache, request: &ChatRequest, scope: &Scope, text: &str) {
    let mut probe = cache.probe(request, scope).unwrap();
    let stored = cache
        .fill(&mut probe, &answer(text), 30, (20, 5))
        .await
        .unwrap();
    assert!(stored.is_some(), "a complete answer is stored");
}

/// The text of the hit for `request` in `scope`, and how it hit.
async fn lookup(
    cache: &ResponseCache,
    request: &ChatRequest,
    scope: &Scope,
) -> Option<(HitKind, String)> {
    let mut probe = cache.probe(request, scope).unwrap();
    let hit = cache.lookup(&mut probe).await.unwrap()?;
    let text = hit.entry.response.choices[0].message.content_text();
    Some((hit.kind, text))
}

async fn exact_and_semantic_hits(backend: Backend) {
    let cache = cache_on(&backend, settings(), Clock::system()).await;
    let t1 = tenant("t1");
    let q = ask("What is the capital of France?");
    assert_eq!(lookup(&cache, &q, &t1).await, None);
    fill(&cache, &q, &t1, "Paris.").await;
    assert_eq!(
        lookup(&cache, &q, &t1).await,
        Some((HitKind::Exact, "Paris.".into()))
    );
    let paraphrase = ask("What is the capital city of France?");
    assert_eq!(
        lookup(&cache, &paraphrase, &t1).await,
        Some((HitKind::Semantic, "Paris.".into()))
    );
}
both!(exact_and_semantic_hits);

async fn tenants_never_share_entries(backend: Backend) {
    let cache = cache_on(&backend, settings(), Clock::system()).await;
    let q = ask("What is the capital of France?");
    fill(&cache, &q, &tenant("t1"), "Paris.").await;
    // The same request, a paraphrase, and the very same words in another
    // tenant: none of them may see t1's answer.
    for question in [
        "What is the capital of France?",
        "What is the capital city of France?",
        "What is the capital of France",
    ] {
        assert_eq!(lookup(&cache, &ask(question), &tenant("t2")).await, None);
    }
    // A tenant whose id starts like another's is another tenant too.
    assert_eq!(lookup(&cache, &q, &tenant("t")).await, None);
    assert_eq!(lookup(&cache, &q, &tenant("t10")).await, None);
}
both!(tenants_never_share_entries);

#[tokio::test]
async fn users_are_kept_apart_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded(dir);
    let per_user = CacheSettings {
        per_user: true,
        ..settings()
    };
    let cache = cache_on(&backend, per_user, Clock::system()).await;
    let q = ask("What is the capital of France?");
    let alice = Scope {
        tenant: "t1".into(),
        user: Some("alice".into()),
    };
    let bob = Scope {
        tenant: "t1".into(),
        user: Some("bob".into()),
    };
    fill(&cache, &q, &alice, "Paris.").await;
    assert!(lookup(&cache, &q, &alice).await.is_some());
    assert_eq!(lookup(&cache, &q, &bob).await, None);
    assert_eq!(lookup(&cache, &q, &tenant("t1")).await, None);
}

async fn a_different_context_is_a_miss(backend: Backend) {
    let cache = cache_on(&backend, settings(), Clock::system()).await;
    let t1 = tenant("t1");
    let question = "What is the capital of France?";
    fill(&cache, &ask(question), &t1, "Paris.").await;

    let other_system = request(json!([
        {"role": "system", "content": "Answer only in French."},
        {"role": "user", "content": question},
    ]));
    let no_system = request(json!([{"role": "user", "content": question}]));
    let earlier_turns = request(json!([
        {"role": "system", "content": "You answer geography questions."},
        {"role": "user", "content": "Let's talk about Texas."},
        {"role": "assistant", "content": "Sure, ask away."},
        {"role": "user", "content": question},
    ]));
    let mut hotter = ask(question);
    hotter.temperature = Some(0.7);
    let mut other_model = ask(question);
    other_model.model = "m2".into();
    let mut with_tools = ask(question);
    with_tools.tools = Some(vec![json!({"type": "function", "function": {"name": "f"}})]);
    for (what, request) in [
        ("system prompt", other_system),
        ("no system prompt", no_system),
        ("earlier turns", earlier_turns),
        ("temperature", hotter),
        ("model", other_model),
        ("tools", with_tools),
    ] {
        assert_eq!(lookup(&cache, &request, &t1).await, None, "{what} differs");
    }
}
both!(a_different_context_is_a_miss);

#[tokio::test]
async fn earlier_turns_that_differ_never_hit_even_when_the_last_matches() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded(dir);
    // Even a cache that would call anything similar a hit.
    let loose = CacheSettings {
        threshold: 0.01,
        guard: false,
        ..settings()
    };
    let cache = cache_on(&backend, loose, Clock::system()).await;
    let t1 = tenant("t1");
    let conversation = |earlier: &str| {
        request(json!([
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Now do the same for the second one."},
        ]))
    };
    fill(
        &cache,
        &conversation("Translate file A"),
        &t1,
        "A, translated.",
    )
    .await;
    for earlier in [
        "Translate file B",
        "Delete file A",
        "translate file a please",
    ] {
        assert_eq!(lookup(&cache, &conversation(earlier), &t1).await, None);
    }
    assert!(
        lookup(&cache, &conversation("Translate file A"), &t1)
            .await
            .is_some()
    );
}

async fn the_guard_vetoes_near_misses(backend: Backend) {
    let loose = CacheSettings {
        threshold: 0.3,
        ..settings()
    };
    let cache = cache_on(&backend, loose.clone(), Clock::system()).await;
    let t1 = tenant("t1");
    fill(
        &cache,
        &ask("What is the capital of France?"),
        &t1,
        "Paris.",
    )
    .await;
    fill(
        &cache,
        &ask("How do I open a file in Python?"),
        &t1,
        "open()",
    )
    .await;
    fill(&cache, &ask("Refund orders over 50 dollars"), &t1, "Done.").await;
    for (near_miss, veto) in [
        ("What is the capital of Spain?", "entities"),
        ("How do I close a file in Python?", "opposite"),
        ("How do I not open a file in Python?", "negation"),
        ("Refund orders over 500 dollars", "numbers"),
    ] {
        let mut probe = cache.probe(&ask(near_miss), &t1).unwrap();
        let hit = cache.lookup(&mut probe).await.unwrap();
        assert!(hit.is_none(), "{near_miss:?} must not hit");
        assert!(
            probe.vetoes.contains(&veto),
            "{near_miss:?}: vetoes {:?}, expected {veto}",
            probe.vetoes
        );
    }

    // Without the guard, the same questions would have been served wrong
    // answers: the guard is what stops them.
    let unguarded = ResponseCache::new(
        CacheSettings {
            guard: false,
            ..loose
        },
        backend.open().await,
        Some(Arc::new(HashingEmbedder::new(256))),
        Clock::system(),
    );
    let wrong = lookup(&unguarded, &ask("What is the capital of Spain?"), &t1).await;
    assert_eq!(wrong, Some((HitKind::Semantic, "Paris.".into())));
}
both!(the_guard_vetoes_near_misses);

#[tokio::test(start_paused = true)]
async fn entries_expire_then_serve_only_as_stale_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded(dir);
    let s = CacheSettings {
        ttl: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(600),
        ..settings()
    };
    let cache = cache_on(&backend, s, Clock::anchored(1_700_000_000_000)).await;
    let t1 = tenant("t1");
    let q = ask("What is the capital of France?");
    let paraphrase = ask("What is the capital city of France?");
    fill(&cache, &q, &t1, "Paris.").await;

    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(lookup(&cache, &q, &t1).await.is_some());
    assert!(lookup(&cache, &paraphrase, &t1).await.is_some());

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(lookup(&cache, &q, &t1).await, None, "past its TTL");
    assert_eq!(lookup(&cache, &paraphrase, &t1).await, None);
    for request in [&q, &paraphrase] {
        let mut probe = cache.probe(request, &t1).unwrap();
        let stale = cache.stale(&mut probe).await.unwrap().unwrap();
        assert_eq!(stale.kind, HitKind::Stale);
        assert_eq!(stale.entry.age_secs(cache.now_ms()), 61);
    }
    assert_eq!(
        cache.sweep("t1").await.unwrap(),
        0,
        "still kept for stale use"
    );

    tokio::time::advance(Duration::from_secs(600)).await;
    let mut probe = cache.probe(&q, &t1).unwrap();
    assert_eq!(cache.stale(&mut probe).await.unwrap(), None);
    assert_eq!(cache.sweep("t1").await.unwrap(), 1, "the sweep deletes it");
}

#[tokio::test(start_paused = true)]
async fn each_tenant_keeps_its_newest_entries_up_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded(dir);
    let s = CacheSettings {
        max_entries: 3,
        ..settings()
    };
    let cache = cache_on(&backend, s, Clock::anchored(1_700_000_000_000)).await;
    let questions: Vec<ChatRequest> = (1..=5)
        .map(|i| ask(&format!("Question number {i}")))
        .collect();
    for q in &questions {
        fill(&cache, q, &tenant("t1"), "answer").await;
        fill(&cache, q, &tenant("t2"), "answer").await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    fill(&cache, &questions[0], &tenant("t3"), "answer").await;
    assert_eq!(cache.sweep("t1").await.unwrap(), 2);
    assert_eq!(cache.sweep("t3").await.unwrap(), 0);
    for (i, q) in questions.iter().enumerate() {
        let kept = lookup(&cache, q, &tenant("t1")).await.is_some();
        assert_eq!(kept, i >= 2, "question {} kept: {kept}", i + 1);
        // The other tenant's bound is its own.
        assert!(lookup(&cache, q, &tenant("t2")).await.is_some());
    }
    assert!(lookup(&cache, &questions[0], &tenant("t3")).await.is_some());
}

async fn invalidation_by_model_and_tenant(backend: Backend) {
    let cache = cache_on(&backend, settings(), Clock::system()).await;
    let q = ask("What is the capital of France?");
    let mut q2 = q.clone();
    q2.model = "m2".into();
    for t in ["t1", "t2"] {
        fill(&cache, &q, &tenant(t), "Paris.").await;
        fill(&cache, &q2, &tenant(t), "Paris!").await;
    }
    assert_eq!(cache.tenants().await.unwrap(), vec!["t1", "t2"]);

    assert_eq!(cache.invalidate("t1", Some("m2")).await.unwrap(), Some(1));
    assert!(lookup(&cache, &q, &tenant("t1")).await.is_some());
    assert_eq!(lookup(&cache, &q2, &tenant("t1")).await, None);
    assert!(lookup(&cache, &q2, &tenant("t2")).await.is_some());

    assert_eq!(cache.invalidate("t2", None).await.unwrap(), None);
    assert_eq!(lookup(&cache, &q, &tenant("t2")).await, None);
    assert_eq!(lookup(&cache, &q2, &tenant("t2")).await, None);
    assert!(lookup(&cache, &q, &tenant("t1")).await.is_some());
    assert_eq!(
        cache.invalidate("never-cached", None).await.unwrap(),
        Some(0)
    );

    // Filled again after a whole-tenant invalidation, it works as before.
    fill(&cache, &q, &tenant("t2"), "Paris.").await;
    assert!(lookup(&cache, &q, &tenant("t2")).await.is_some());
}
both!(invalidation_by_model_and_tenant);

/// Two caches over one PostgreSQL database stand for two keel processes:
/// an answer one stores, the other serves; an invalidation through one
/// holds for the other.
#[tokio::test]
async fn processes_share_entries_on_postgres() {
    let backend = Backend::postgres().await;
    let a = cache_on(&backend, settings(), Clock::system()).await;
    let b = cache_on(&backend, settings(), Clock::system()).await;
    let t1 = tenant("t1");
    let q = ask("What is the capital of France?");
    fill(&a, &q, &t1, "Paris.").await;
    assert_eq!(
        lookup(&b, &q, &t1).await,
        Some((HitKind::Exact, "Paris.".into()))
    );
    assert_eq!(
        lookup(&b, &ask("What is the capital city of France?"), &t1).await,
        Some((HitKind::Semantic, "Paris.".into()))
    );
    assert_eq!(a.invalidate("t1", Some("m")).await.unwrap(), Some(1));
    assert_eq!(lookup(&b, &q, &t1).await, None);

    // A whole tenant dropped by one process: the other, which had seen its
    // collection, finds nothing and can fill it again.
    fill(&b, &q, &t1, "Paris.").await;
    assert_eq!(a.invalidate("t1", None).await.unwrap(), None);
    assert_eq!(lookup(&b, &q, &t1).await, None);
    fill(&b, &q, &t1, "Paris!").await;
    assert_eq!(
        lookup(&a, &q, &t1).await,
        Some((HitKind::Exact, "Paris!".into()))
    );
}

#[tokio::test]
async fn only_complete_answers_of_cool_requests_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_on(&Backend::Embedded(dir), settings(), Clock::system()).await;
    let t1 = tenant("t1");
    let mut hot = ask("Write a poem");
    hot.temperature = Some(1.2);
    assert!(
        cache.probe(&hot, &t1).is_err(),
        "hot requests are not cached"
    );

    let q = ask("Write a haiku");
    let mut probe = cache.probe(&q, &t1).unwrap();
    let mut cut = answer("An old silent pond");
    cut.choices[0].finish_reason = Some("length".into());
    assert_eq!(cache.fill(&mut probe, &cut, 1, (1, 1)).await.unwrap(), None);
    assert_eq!(lookup(&cache, &q, &t1).await, None);
}

#[tokio::test]
async fn an_exact_only_cache_needs_no_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Embedded(dir);
    let cache = ResponseCache::new(settings(), backend.open().await, None, Clock::system());
    let t1 = tenant("t1");
    let q = ask("What is the capital of France?");
    fill(&cache, &q, &t1, "Paris.").await;
    assert_eq!(
        lookup(&cache, &q, &t1).await,
        Some((HitKind::Exact, "Paris.".into()))
    );
    assert_eq!(
        lookup(&cache, &ask("What is the capital city of France?"), &t1).await,
        None
    );
}

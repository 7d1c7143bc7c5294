"""Configuration, read once from the environment into a typed object that is
passed down. Command-line flags of each service override a few fields."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

DEFAULT_GRPC_WORKERS = 128
# Base models a training request may name: prefixes of hub ids and store URIs
# ("*" allows any hub id). The default covers the built-in templates' bases,
# weights kept in the store, and the sentence-transformers encoders.
# Any hub id or store base by default (the mission: "any Hugging Face model"); a
# deployment narrows it, e.g. "store://base-models/,EleutherAI/".
DEFAULT_BASE_MODELS_ALLOWED = ("*",)
# Where Hugging Face libraries find a hub token: scrubbed from every log line.
HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    # Refused rather than read as False: a typo must not turn auth off.
    raise ValueError(f"environment variable {name} must be one of on/off, true/false, yes/no, 1/0, got {raw!r}")


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None


N = TypeVar("N", int, float)


def _at_least(env: dict[str, str], name: str, default: N, read: Callable[[dict[str, str], str, N], N]) -> N:
    """A count or amount that cannot be negative (read by _int or _float)."""
    value = read(env, name, default)
    if value < 0:
        raise ValueError(f"environment variable {name} must be 0 or more, got {value}")
    return value


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ValueError(f"environment variable {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _prefixes(env: dict[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _device(env: dict[str, str]) -> str:
    from .devices import check_spec  # no torch import: spelling only

    device = env.get("TEXTFT_INFERENCE_DEVICE", "").strip().lower() or "auto"
    dtype = env.get("TEXTFT_INFERENCE_DTYPE", "").strip().lower() or "auto"
    try:
        check_spec(device, dtype)
    except ValueError as exc:
        raise ValueError(f"TEXTFT_INFERENCE_DEVICE / TEXTFT_INFERENCE_DTYPE: {exc}") from None
    return device


def _path(env: dict[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _tls(env: dict[str, str]) -> TlsSettings:
    cert, key = _path(env, "TEXTFT_TLS_CERT"), _path(env, "TEXTFT_TLS_KEY")
    client_ca = _path(env, "TEXTFT_TLS_CLIENT_CA")
    if (cert is None) != (key is None):
        raise ValueError("TEXTFT_TLS_CERT and TEXTFT_TLS_KEY go together: set both (TLS) or neither (plaintext)")
    if client_ca is not None and cert is None:
        raise ValueError("TEXTFT_TLS_CLIENT_CA (mutual TLS) needs TEXTFT_TLS_CERT and TEXTFT_TLS_KEY")
    return TlsSettings(cert=cert, key=key, client_ca=client_ca)


def derive_service_key(key: str) -> str:
    """The services' identity key, derived from the first configured key: every
    service of one deployment computes the same one, and it differs from every
    user's key (HMAC: it reveals nothing about the key it comes from)."""
    import hashlib
    import hmac

    return "tft_svc_" + hmac.new(key.encode(), b"textft service identity v1", hashlib.sha256).hexdigest()


# What a training or evaluation job may see of the trainer's environment: an
# allow-list, so a new secret in the trainer's environment stays out of jobs
# by default. Jobs run code paths of third-party libraries on user-chosen
# models; they get the store credentials meant for jobs and nothing else
# secret (no API keys, no database URL, no MinIO root user).
JOB_ENV_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV",
        "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_TOKEN",
        "MINIO_ENDPOINT", "MINIO_SECURE", "MINIO_REGION",
        "TEXTFT_HOME", "TEXTFT_STORE", "TEXTFT_STORE_DIR", "TEXTFT_BUCKET", "TEXTFT_STORE_RETRY_SECONDS",
        "TEXTFT_LOG_FORMAT", "TEXTFT_LOG_LEVEL", "TEXTFT_BASE_MODEL_CACHE", "TEXTFT_ROWS_CACHE",
        "TEXTFT_SWITCH_INTERVAL", "TEXTFT_TRAINER_WORKDIR",
    }
)  # fmt: skip
JOB_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "MKL_", "KMP_", "GLOO_", "CUBLAS_")


def _job_passthrough(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in JOB_ENV_NAMES or k.startswith(JOB_ENV_PREFIXES)}


@dataclass(frozen=True)
class StoreSettings:
    """Where datasets, adapters and run records live."""

    # "local" (a directory) or "s3" (MinIO or any S3-compatible endpoint).
    kind: str = "local"
    local_dir: Path = Path(".textft/store")
    endpoint: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    secure: bool = False
    region: str = ""
    bucket: str = "textft"


@dataclass(frozen=True)
class TlsSettings:
    """TLS of the gRPC servers (cert + key) and, optionally, mutual TLS (client_ca:
    callers must present a certificate it signed). Empty paths mean plaintext.
    The clients a service uses to call the others read TEXTFT_TLS_CA (and
    TEXTFT_TLS_CLIENT_CERT/KEY for mTLS) themselves: see textft.client."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".textft")
    store: StoreSettings = field(default_factory=StoreSettings)
    # The metadata database (services/common/db.py): "" is the embedded default,
    # a SQLite file under home; deployments use postgresql+psycopg://...
    database_url: str = field(default="", repr=False)
    # Services upgrade the schema when they start; off leaves it to `textft-db upgrade`.
    database_migrate: bool = True
    # Keys servers accept (authorization: Bearer <key>); auth is on unless
    # auth_enabled is explicitly turned off.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    auth_enabled: bool = True
    # TEXTFT_API_KEY, a client's key: accepted when TEXTFT_API_KEYS is unset, and scrubbed from logs.
    api_key: str = field(default="", repr=False)
    # The services' own identity when they call each other (a read-only
    # principal, "service"): TEXTFT_SERVICE_KEY, else derived from the first
    # configured key, so every service of one deployment agrees without config.
    service_key: str = field(default="", repr=False)
    # Plaintext gRPC on an address other than loopback only when set: a
    # deployment behind a TLS-terminating mesh says so explicitly.
    allow_plaintext: bool = False
    # Store credentials a training or evaluation job gets, instead of the
    # service's own (a user scoped to the bucket; see deploy/). Unset: the service's.
    job_store_access_key: str = field(default="", repr=False)
    job_store_secret_key: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    dataset_addr: str = "127.0.0.1:50051"
    trainer_addr: str = "127.0.0.1:50052"
    inference_addr: str = "127.0.0.1:50053"
    max_message_bytes: int = 16 * 1024 * 1024
    # Handler threads of each gRPC server. A unary RPC holds one for its whole
    # run (an inference Predict while it waits for its batch), and so does a
    # long-lived stream (WatchModelVersion, PredictStream) for as long as it is
    # open: enough that a few watchers cannot starve the server, and more than
    # the inference queue plus one batch (64 + 32 by default), so under load
    # that queue's bound (RESOURCE_EXHAUSTED, INFERENCE_QUEUE_FULL) answers first.
    grpc_workers: int = DEFAULT_GRPC_WORKERS
    # RPCs in progress at once (running or waiting for a handler thread); beyond
    # it gRPC answers RESOURCE_EXHAUSTED at once instead of queueing without
    # bound. 0 means 2 x grpc_workers (see max_rpcs).
    max_concurrent_rpcs: int = 0
    # Streams one HTTP/2 connection may have open at once.
    max_concurrent_streams: int = 100
    log_format: str = "text"
    log_level: str = "INFO"
    # dataset service
    max_upload_bytes: int = 2 * 1024**3
    max_text_chars: int = 100_000
    # trainer service
    trainer_workdir: Path = Path(".textft/trainer")
    trainer_concurrency: int = 1
    # Limits: versions waiting to start (RESOURCE_EXHAUSTED beyond), a job's
    # wall-clock time (FAILED MODEL_TRAINING_TIME_LIMIT; 0: none), evaluations at once.
    trainer_max_queued: int = 100
    trainer_job_max_seconds: float = 72 * 3600.0
    trainer_max_evaluations: int = 2
    # A trainer replica's hold on a running job, renewed every third of it; a
    # replica that stops renewing loses its jobs to the others after this long.
    trainer_lease_seconds: float = 30.0
    # Quotas per app (0: none): queued + running training jobs; uploads in progress on one replica;
    # bytes in the store (dataset versions, adapters and checkpoints; usage.py).
    quota_jobs: int = 0
    quota_uploads: int = 0
    quota_stored_bytes: int = 0
    # Processes per training job: above 1 the job runs under torchrun (DDP;
    # gloo on CPU, NCCL on GPUs), one process per device.
    trainer_nproc: int = 1
    # Where training and evaluation jobs run: "local" (child processes of the
    # trainer) or "ray" (tasks on a Ray cluster; services/trainer/ray_launcher.py).
    trainer_launcher: str = "local"
    # The Ray cluster: "auto" (the one this machine belongs to), host:port of a
    # head's GCS, or ray://host:10001 (Ray Client).
    ray_address: str = "auto"
    # Resources each job reserves on the cluster (fractions allowed, as in Ray).
    ray_num_gpus: float = 0.0
    ray_num_cpus: float = 1.0
    # How often Ray reruns a job whose node or worker process was lost; each
    # rerun resumes from the job's last checkpoint in the store.
    ray_max_retries: int = 2
    base_model_cache: Path = Path(".textft/base-models")
    # Prefixes a training request's base model must start with ("*": any hub id).
    base_models_allowed: tuple[str, ...] = DEFAULT_BASE_MODELS_ALLOWED
    # Hub tokens of this process's environment (HF_TOKEN, ...): never logged.
    hub_tokens: tuple[str, ...] = field(default=(), repr=False)
    # This process's place in a distributed training job: torchrun's RANK and
    # WORLD_SIZE (0 and 1 when a job runs alone).
    rank: int = 0
    world_size: int = 1
    # The dataset service's GIL switch interval in seconds (see dataset/server.py).
    switch_interval: float = 0.0005
    # Dataset versions' rows as training jobs read them (Parquet parts and their
    # Arrow conversions, named by sha256; shared by jobs, safe to delete).
    rows_cache: Path = Path(".textft/rows-cache")
    # How long a training job keeps retrying a store that is unavailable (per
    # operation, capped exponential backoff) before it FAILS with
    # MODEL_TRAINING_STORE_UNAVAILABLE.
    store_retry_seconds: float = 300.0
    # inference service
    inference_max_adapters: int = 8
    inference_max_adapter_bytes: int = 2 * 1024**3
    inference_max_batch_texts: int = 256
    inference_max_input_chars: int = 20_000
    # Micro-batching: concurrent Predict calls for one base model are gathered
    # for up to batch_wait_ms into one forward pass of at most max_batch_size
    # texts; at most queue_size requests wait (beyond: RESOURCE_EXHAUSTED).
    inference_batch_wait_ms: int = 5
    inference_max_batch_size: int = 32
    inference_queue_size: int = 64
    # Base models held at once (each with its adapters); least recently used go first.
    inference_max_base_models: int = 2
    # A second port of the inference server for Open Inference Protocol clients
    # that expect one (Triton's default is 8001): the same server, so the same
    # auth and TLS, and textft's API answers there too. 0: the main port only.
    inference_oip_port: int = 0
    # Generation: "continuous" (iteration-level: requests join a running batch
    # between decoding steps and leave it when done) or "static" (the
    # micro-batching lane above, one generate() per batch; kept for comparison).
    inference_generation_batching: str = "continuous"
    # Tokens in flight (prompt + max_new_tokens of every running row) bound the
    # running batch, as do max_batch_size rows; a row that fits no budget runs alone.
    inference_max_batch_tokens: int = 16384
    # While a batch decodes, new requests wait at most this many steps to be
    # prefilled together (sooner once those that could join are a third as many as the running rows).
    inference_max_waiting_steps: int = 4
    # Stop sequences per request, and characters per stop sequence.
    inference_max_stop_sequences: int = 4
    inference_max_stop_chars: int = 64
    # Where models run (services/common/devices.py): auto (CUDA, MPS, CPU),
    # cpu, mps, cuda, cuda:N, or sharded (device_map="auto" over the GPUs);
    # dtype auto (bf16 where supported, else fp16 on GPU, fp32 on CPU) or explicit.
    inference_device: str = "auto"
    inference_dtype: str = "auto"
    # Prometheus text format over HTTP at /metrics; 0 turns it off.
    metrics_port: int = 0
    # TLS of this service's server (TEXTFT_TLS_CERT/KEY, TEXTFT_TLS_CLIENT_CA).
    tls: TlsSettings = field(default_factory=TlsSettings)
    # The part of this process's environment a job may inherit (JOB_ENV_NAMES,
    # JOB_ENV_PREFIXES), taken here so no other module reads the environment.
    job_passthrough: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("TEXTFT_HOME", ".textft")).expanduser()
        endpoint = env.get("MINIO_ENDPOINT", "")
        kind = env.get("TEXTFT_STORE", "s3" if endpoint else "local")
        if kind not in {"local", "s3"}:
            raise ValueError(f"TEXTFT_STORE must be 'local' or 's3', got {kind!r}")
        store = StoreSettings(
            kind=kind,
            local_dir=Path(env.get("TEXTFT_STORE_DIR", str(home / "store"))).expanduser(),
            endpoint=endpoint,
            access_key=env.get("MINIO_ACCESS_KEY", env.get("MINIO_ROOT_USER", "")),
            secret_key=env.get("MINIO_SECRET_KEY", env.get("MINIO_ROOT_PASSWORD", "")),
            secure=_bool(env, "MINIO_SECURE", False),
            region=env.get("MINIO_REGION", ""),
            bucket=env.get("TEXTFT_BUCKET", "textft"),
        )
        keys = tuple(k.strip() for k in env.get("TEXTFT_API_KEYS", "").split(",") if k.strip())
        api_key = env.get("TEXTFT_API_KEY", "")
        if not api_key and keys:
            api_key = keys[0]
        if api_key and not keys:
            keys = (api_key,)
        return cls(
            tls=_tls(env),
            home=home,
            store=store,
            database_url=env.get("TEXTFT_DATABASE_URL", "").strip(),
            database_migrate=_bool(env, "TEXTFT_DATABASE_MIGRATE", True),
            api_keys=keys,
            auth_enabled=_bool(env, "TEXTFT_AUTH", True),
            api_key=api_key,
            service_key=env.get("TEXTFT_SERVICE_KEY", "").strip() or (derive_service_key(keys[0]) if keys else ""),
            allow_plaintext=_bool(env, "TEXTFT_ALLOW_PLAINTEXT", False),
            job_store_access_key=env.get("TEXTFT_JOB_STORE_ACCESS_KEY", ""),
            job_store_secret_key=env.get("TEXTFT_JOB_STORE_SECRET_KEY", ""),
            host=env.get("TEXTFT_HOST", "127.0.0.1"),
            dataset_addr=env.get("TEXTFT_DATASET_ADDR", "127.0.0.1:50051"),
            trainer_addr=env.get("TEXTFT_TRAINER_ADDR", "127.0.0.1:50052"),
            inference_addr=env.get("TEXTFT_INFERENCE_ADDR", "127.0.0.1:50053"),
            max_message_bytes=_int(env, "TEXTFT_MAX_MESSAGE_BYTES", 16 * 1024 * 1024),
            grpc_workers=_int(env, "TEXTFT_GRPC_WORKERS", DEFAULT_GRPC_WORKERS),
            max_concurrent_rpcs=_int(env, "TEXTFT_MAX_CONCURRENT_RPCS", 0),
            max_concurrent_streams=_int(env, "TEXTFT_MAX_CONCURRENT_STREAMS", 100),
            log_format=env.get("TEXTFT_LOG_FORMAT", "text"),
            log_level=env.get("TEXTFT_LOG_LEVEL", "INFO"),
            max_upload_bytes=_int(env, "TEXTFT_MAX_UPLOAD_BYTES", 2 * 1024**3),
            max_text_chars=_int(env, "TEXTFT_MAX_TEXT_CHARS", 100_000),
            trainer_workdir=Path(env.get("TEXTFT_TRAINER_WORKDIR", str(home / "trainer"))).expanduser(),
            trainer_concurrency=_int(env, "TEXTFT_TRAINER_CONCURRENCY", 1),
            trainer_max_queued=_int(env, "TEXTFT_TRAINER_MAX_QUEUED", 100),
            trainer_job_max_seconds=_float(env, "TEXTFT_TRAINER_JOB_MAX_SECONDS", 72 * 3600.0),
            trainer_max_evaluations=_int(env, "TEXTFT_TRAINER_MAX_EVALUATIONS", 2),
            trainer_lease_seconds=_float(env, "TEXTFT_TRAINER_LEASE_SECONDS", 30.0),
            quota_jobs=_int(env, "TEXTFT_QUOTA_JOBS", 0),
            quota_uploads=_int(env, "TEXTFT_QUOTA_UPLOADS", 0),
            quota_stored_bytes=_int(env, "TEXTFT_QUOTA_STORED_BYTES", 0),
            trainer_nproc=_int(env, "TEXTFT_TRAINER_NPROC", 1),
            trainer_launcher=_choice(env, "TEXTFT_LAUNCHER", "local", ("local", "ray")),
            ray_address=env.get("TEXTFT_RAY_ADDRESS", "").strip() or "auto",
            ray_num_gpus=_at_least(env, "TEXTFT_RAY_NUM_GPUS", 0.0, _float),
            ray_num_cpus=_at_least(env, "TEXTFT_RAY_NUM_CPUS", 1.0, _float),
            ray_max_retries=_at_least(env, "TEXTFT_RAY_MAX_RETRIES", 2, _int),
            base_model_cache=Path(env.get("TEXTFT_BASE_MODEL_CACHE", str(home / "base-models"))).expanduser(),
            base_models_allowed=_prefixes(env, "TEXTFT_BASE_MODELS_ALLOWED", DEFAULT_BASE_MODELS_ALLOWED),
            hub_tokens=tuple(env[v].strip() for v in HF_TOKEN_VARS if env.get(v, "").strip()),
            rows_cache=Path(env.get("TEXTFT_ROWS_CACHE", str(home / "rows-cache"))).expanduser(),
            rank=_int(env, "RANK", 0),
            world_size=_int(env, "WORLD_SIZE", 1),
            switch_interval=_float(env, "TEXTFT_SWITCH_INTERVAL", 0.0005),
            store_retry_seconds=_float(env, "TEXTFT_STORE_RETRY_SECONDS", 300.0),
            inference_max_adapters=_int(env, "TEXTFT_INFERENCE_MAX_ADAPTERS", 8),
            inference_max_adapter_bytes=_int(env, "TEXTFT_INFERENCE_MAX_ADAPTER_BYTES", 2 * 1024**3),
            inference_max_batch_texts=_int(env, "TEXTFT_INFERENCE_MAX_BATCH_TEXTS", 256),
            inference_max_input_chars=_int(env, "TEXTFT_INFERENCE_MAX_INPUT_CHARS", 20_000),
            inference_batch_wait_ms=_int(env, "TEXTFT_INFERENCE_BATCH_WAIT_MS", 5),
            inference_max_batch_size=_int(env, "TEXTFT_INFERENCE_MAX_BATCH_SIZE", 32),
            inference_queue_size=_int(env, "TEXTFT_INFERENCE_QUEUE_SIZE", 64),
            inference_max_base_models=_int(env, "TEXTFT_INFERENCE_MAX_BASE_MODELS", 2),
            inference_oip_port=_int(env, "TEXTFT_INFERENCE_OIP_PORT", 0),
            inference_generation_batching=_choice(
                env, "TEXTFT_INFERENCE_GENERATION_BATCHING", "continuous", ("continuous", "static")
            ),
            inference_max_batch_tokens=_int(env, "TEXTFT_INFERENCE_MAX_BATCH_TOKENS", 16384),
            inference_max_waiting_steps=_int(env, "TEXTFT_INFERENCE_MAX_WAITING_STEPS", 4),
            inference_max_stop_sequences=_int(env, "TEXTFT_INFERENCE_MAX_STOP_SEQUENCES", 4),
            inference_max_stop_chars=_int(env, "TEXTFT_INFERENCE_MAX_STOP_CHARS", 64),
            inference_device=_device(env),
            inference_dtype=env.get("TEXTFT_INFERENCE_DTYPE", "auto").strip().lower() or "auto",
            metrics_port=_int(env, "TEXTFT_METRICS_PORT", 0),
            job_passthrough=_job_passthrough(env),
        )

    @property
    def max_rpcs(self) -> int:
        """The bound on RPCs in progress that the gRPC server enforces."""
        workers = max(1, self.grpc_workers)
        return self.max_concurrent_rpcs if self.max_concurrent_rpcs > 0 else 2 * workers

    @property
    def database(self) -> str:
        """The metadata database's URL (the embedded SQLite file unless configured)."""
        from .db import default_url

        return self.database_url or default_url(self.home)

    def job_environment(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a training or evaluation job starts with: the allowed
        part (JOB_ENV_NAMES, JOB_ENV_PREFIXES) of `environ`, by default of the
        environment these settings were read from, and the job's store
        credentials."""
        env = self.job_passthrough.copy() if environ is None else _job_passthrough(environ)
        store = self.store
        env.update(TEXTFT_STORE=store.kind, TEXTFT_BUCKET=store.bucket)
        if store.kind == "s3":
            env.update(
                MINIO_ENDPOINT=store.endpoint,
                MINIO_SECURE="true" if store.secure else "false",
                MINIO_REGION=store.region,
                MINIO_ACCESS_KEY=self.job_store_access_key or store.access_key,
                MINIO_SECRET_KEY=self.job_store_secret_key or store.secret_key,
            )
        else:
            env["TEXTFT_STORE_DIR"] = str(store.local_dir)
        return env

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def secrets(self) -> list[str]:
        """Values that must never reach a log line or a client."""
        values = [
            *self.api_keys,
            self.api_key,
            self.service_key,
            self.store.secret_key,
            self.store.access_key,
            self.job_store_secret_key,
            self.job_store_access_key,
            *self.hub_tokens,
        ]
        if self.database_url:
            from sqlalchemy.engine import make_url

            values.append(make_url(self.database_url).password or "")
        return [v for v in values if v and len(v) >= 4]

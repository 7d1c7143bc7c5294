"""Settings.from_env: one typed object from the environment, secrets kept out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from textft_services.common.config import Settings, StoreSettings, derive_service_key

pytestmark = pytest.mark.unit

SECRET_ENV = {
    "MINIO_ENDPOINT": "minio.internal:9000",
    "MINIO_ACCESS_KEY": "AKIA-ACCESS-5f2c9e",
    "MINIO_SECRET_KEY": "s3cr3t-key-8d1b7a4e",
    "TEXTFT_API_KEYS": "tft_key_one_7c3f, tft_key_two_91ab",
    "TEXTFT_API_KEY": "tft_client_key_44e0",
}


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.home == Path(".textft")
    assert s.store.kind == "local"
    assert s.store.local_dir == Path(".textft/store")
    assert s.store.bucket == "textft"
    assert s.store.endpoint == ""
    assert s.auth_enabled is True
    assert s.api_keys == ()
    assert s.api_key == ""
    assert s.host == "127.0.0.1"
    assert (s.dataset_addr, s.trainer_addr, s.inference_addr) == (
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50053",
    )
    assert s.max_message_bytes == 16 * 1024 * 1024
    assert s.trainer_workdir == Path(".textft/trainer")
    assert s.secrets() == []


def test_home_moves_derived_paths(tmp_path: Path) -> None:
    s = Settings.from_env({"TEXTFT_HOME": str(tmp_path)})
    assert s.store.local_dir == tmp_path / "store"
    assert s.trainer_workdir == tmp_path / "trainer"
    assert s.base_model_cache == tmp_path / "base-models"
    s = Settings.from_env({"TEXTFT_HOME": str(tmp_path), "TEXTFT_STORE_DIR": str(tmp_path / "elsewhere")})
    assert s.store.local_dir == tmp_path / "elsewhere"


def test_s3_chosen_when_minio_endpoint_set() -> None:
    s = Settings.from_env({**SECRET_ENV, "MINIO_SECURE": "true", "MINIO_REGION": "eu-west-1", "TEXTFT_BUCKET": "b1"})
    assert s.store.kind == "s3"
    assert s.store.endpoint == "minio.internal:9000"
    assert s.store.access_key == "AKIA-ACCESS-5f2c9e"
    assert s.store.secret_key == "s3cr3t-key-8d1b7a4e"
    assert s.store.secure is True
    assert s.store.region == "eu-west-1"
    assert s.store.bucket == "b1"
    # An explicit choice wins over the endpoint's presence.
    assert Settings.from_env({**SECRET_ENV, "TEXTFT_STORE": "local"}).store.kind == "local"


def test_minio_root_credentials_are_accepted() -> None:
    s = Settings.from_env({"MINIO_ENDPOINT": "h:9000", "MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "rootpw"})
    assert (s.store.access_key, s.store.secret_key) == ("root", "rootpw")


def test_unknown_store_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="TEXTFT_STORE"):
        Settings.from_env({"TEXTFT_STORE": "ftp"})


@pytest.mark.parametrize(
    "name",
    ["TEXTFT_MAX_MESSAGE_BYTES", "TEXTFT_GRPC_WORKERS", "TEXTFT_TRAINER_CONCURRENCY", "TEXTFT_INFERENCE_MAX_ADAPTERS"],
)
def test_bad_integer_names_the_variable(name: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: "12MB"})
    assert name in str(info.value)
    assert "'12MB'" in str(info.value)


def test_integer_env_vars_are_read() -> None:
    s = Settings.from_env({"TEXTFT_MAX_MESSAGE_BYTES": "1024", "TEXTFT_GRPC_WORKERS": " 4 "})
    assert s.max_message_bytes == 1024
    assert s.grpc_workers == 4


@pytest.mark.parametrize("value", ["0", "false", "off", "no", "OFF", " False "])
def test_auth_turned_off_explicitly(value: str) -> None:
    assert Settings.from_env({"TEXTFT_AUTH": value}).auth_enabled is False


@pytest.mark.parametrize("value", ["1", "true", "on", "yes", "ON", ""])
def test_auth_on(value: str) -> None:
    assert Settings.from_env({"TEXTFT_AUTH": value}).auth_enabled is True


@pytest.mark.parametrize("value", ["ture", "enabled?", "2", "of"])
def test_unrecognised_boolean_is_an_error_not_auth_off(value: str) -> None:
    """A typo must not silently turn auth off (auth is off only when explicitly configured)."""
    with pytest.raises(ValueError, match="TEXTFT_AUTH"):
        Settings.from_env({"TEXTFT_AUTH": value})


def test_api_key_defaults() -> None:
    # Only the accepted keys: this process presents the first one.
    s = Settings.from_env({"TEXTFT_API_KEYS": " k-one , ,k-two,"})
    assert s.api_keys == ("k-one", "k-two")
    assert s.api_key == "k-one"
    # Only the presented key: it is also the one accepted.
    s = Settings.from_env({"TEXTFT_API_KEY": "k-solo"})
    assert s.api_keys == ("k-solo",)
    assert s.api_key == "k-solo"
    # Both: kept as given.
    s = Settings.from_env({"TEXTFT_API_KEYS": "k-a,k-b", "TEXTFT_API_KEY": "k-b"})
    assert s.api_keys == ("k-a", "k-b")
    assert s.api_key == "k-b"


def test_secrets_lists_every_credential() -> None:
    s = Settings.from_env(SECRET_ENV)
    assert set(s.secrets()) == {
        "tft_key_one_7c3f",
        "tft_key_two_91ab",
        "tft_client_key_44e0",
        derive_service_key("tft_key_one_7c3f"),
        "s3cr3t-key-8d1b7a4e",
        "AKIA-ACCESS-5f2c9e",
    }


def test_service_key_is_the_services_own_identity() -> None:
    a = Settings.from_env({"TEXTFT_API_KEYS": "k" * 40})
    b = Settings.from_env({"TEXTFT_API_KEYS": "k" * 40, "TEXTFT_API_KEY": "u" * 40})
    assert a.service_key == b.service_key  # every service of a deployment agrees
    assert a.service_key.startswith("tft_svc_") and a.service_key not in ("k" * 40, "u" * 40)
    assert Settings.from_env({"TEXTFT_API_KEYS": "j" * 40}).service_key != a.service_key
    explicit = Settings.from_env({"TEXTFT_API_KEYS": "k" * 40, "TEXTFT_SERVICE_KEY": "s" * 40})
    assert explicit.service_key == "s" * 40
    assert Settings.from_env({}).service_key == ""


def test_job_environment_is_an_allow_list() -> None:
    trainer = {
        **SECRET_ENV,
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "1",
        "NCCL_DEBUG": "INFO",
        "HF_HOME": "/hf",
        "TEXTFT_HOME": "/state",
        "MINIO_ROOT_USER": "root-user-1b2c",
        "MINIO_ROOT_PASSWORD": "root-password-3d4e",
        "TEXTFT_DATABASE_URL": "postgresql+psycopg://textft:db-pass-5f6a@db/textft",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-7b8c",
        "SOMETHING_NEW_TOKEN": "new-token-9d0e",
        "TEXTFT_JOB_STORE_ACCESS_KEY": "job-access-1a2b",
        "TEXTFT_JOB_STORE_SECRET_KEY": "job-secret-3c4d",
    }
    settings = Settings.from_env(trainer)
    env = settings.job_environment(trainer)
    assert settings.job_environment() == env  # by default, of the environment the settings were read from
    assert env["PATH"] == "/usr/bin" and env["CUDA_VISIBLE_DEVICES"] == "1" and env["NCCL_DEBUG"] == "INFO"
    assert env["HF_HOME"] == "/hf" and env["TEXTFT_HOME"] == "/state"
    assert env["MINIO_ENDPOINT"] == "minio.internal:9000" and env["TEXTFT_STORE"] == "s3"
    assert (env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"]) == ("job-access-1a2b", "job-secret-3c4d")
    assert not {k for k in env if "ROOT" in k or "API_KEY" in k or "DATABASE" in k or k.startswith("AWS_")}
    assert "new-token-9d0e" not in env.values() and "db-pass-5f6a" not in " ".join(env.values())
    assert not any(s in " ".join(env.values()) for s in settings.secrets() if not s.startswith("job-"))
    # Without job credentials, the job gets the service's (deploy/ makes a scoped user for jobs).
    plain = Settings.from_env(SECRET_ENV)
    assert plain.job_environment(SECRET_ENV)["MINIO_ACCESS_KEY"] == "AKIA-ACCESS-5f2c9e"


def test_repr_hides_secrets_including_nested_store_settings() -> None:
    s = Settings.from_env(SECRET_ENV)
    for text in (repr(s), str(s), repr(s.store), str(s.store), repr(s.with_overrides(host="0.0.0.0"))):
        for secret in s.secrets():
            assert secret not in text
    assert "minio.internal:9000" in repr(s)  # the rest is still there to debug with
    assert "StoreSettings(" in repr(s)


def test_store_settings_repr_hides_credentials() -> None:
    """StoreSettings on its own (as logged by the store) hides its credentials too."""
    store = StoreSettings(kind="s3", endpoint="h:9000", access_key="ak-123456", secret_key="sk-abcdef")
    assert "ak-123456" not in repr(store)
    assert "sk-abcdef" not in repr(store)


def test_with_overrides_ignores_none() -> None:
    s = Settings.from_env({})
    t = s.with_overrides(host=None, grpc_workers=2)
    assert t.host == s.host
    assert t.grpc_workers == 2
    assert s.grpc_workers == Settings().grpc_workers  # frozen: the original is unchanged


def test_inference_batching_and_device_settings() -> None:
    s = Settings.from_env({})
    assert (s.inference_generation_batching, s.inference_device, s.inference_dtype) == ("continuous", "auto", "auto")
    s = Settings.from_env(
        {
            "TEXTFT_INFERENCE_GENERATION_BATCHING": "static",
            "TEXTFT_INFERENCE_DEVICE": "cuda:1",
            "TEXTFT_INFERENCE_DTYPE": "bfloat16",
            "TEXTFT_INFERENCE_MAX_BATCH_TOKENS": "4096",
        }
    )
    assert (s.inference_generation_batching, s.inference_device, s.inference_dtype) == ("static", "cuda:1", "bfloat16")
    assert s.inference_max_batch_tokens == 4096


@pytest.mark.parametrize(
    "env",
    [
        {"TEXTFT_INFERENCE_GENERATION_BATCHING": "dynamic"},
        {"TEXTFT_INFERENCE_DEVICE": "gpu"},
        {"TEXTFT_INFERENCE_DEVICE": "cuda:x"},
        {"TEXTFT_INFERENCE_DTYPE": "fp8"},
    ],
)
def test_bad_inference_choices_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        Settings.from_env(env)


def test_device_choice_on_this_machine() -> None:
    import torch

    from textft_services.common import devices

    cpu = devices.place("cpu", "auto")
    assert (cpu.device.type, cpu.dtype, cpu.sharded) == ("cpu", torch.float32, False)
    assert devices.place("cpu", "bfloat16").dtype == torch.bfloat16
    assert cpu.load_kwargs() == {"dtype": torch.float32}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            devices.place("cuda:0", "auto")
        with pytest.raises(ValueError, match="CUDA"):
            devices.place("sharded", "auto")


def test_launcher_settings() -> None:
    s = Settings.from_env({})
    assert (s.trainer_launcher, s.ray_address, s.ray_num_gpus, s.ray_num_cpus, s.ray_max_retries) == (
        "local",
        "auto",
        0.0,
        1.0,
        2,
    )
    s = Settings.from_env(
        {
            "TEXTFT_LAUNCHER": "Ray",
            "TEXTFT_RAY_ADDRESS": "ray://head:10001",
            "TEXTFT_RAY_NUM_GPUS": "0.5",
            "TEXTFT_RAY_NUM_CPUS": "4",
            "TEXTFT_RAY_MAX_RETRIES": "0",
        }
    )
    assert (s.trainer_launcher, s.ray_address, s.ray_num_gpus, s.ray_num_cpus, s.ray_max_retries) == (
        "ray",
        "ray://head:10001",
        0.5,
        4.0,
        0,
    )


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"TEXTFT_LAUNCHER": "k8s"}, "TEXTFT_LAUNCHER"),
        ({"TEXTFT_RAY_NUM_GPUS": "-1"}, "TEXTFT_RAY_NUM_GPUS"),
        ({"TEXTFT_RAY_NUM_CPUS": "one"}, "TEXTFT_RAY_NUM_CPUS"),
        ({"TEXTFT_RAY_MAX_RETRIES": "-1"}, "TEXTFT_RAY_MAX_RETRIES"),
    ],
)
def test_bad_launcher_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env)

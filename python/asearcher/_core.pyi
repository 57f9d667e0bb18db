"""Type stubs of the native module ``asearcher._core`` (implemented in Rust)."""

from collections.abc import Awaitable, Callable
from os import PathLike
from typing import Any

__version__: str

def refresh_log_level() -> int: ...
def emit_test_event(level: str, message: str) -> None: ...

class Document:
    id: str
    title: str
    text: str
    url: str | None
    score: float | None
    def __init__(
        self,
        id: str,
        text: str,
        title: str = "",
        url: str | None = None,
        score: float | None = None,
    ) -> None: ...
    @property
    def contents(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

class Page:
    url: str
    title: str
    contents: str
    def chunks(
        self, chunk_chars: int = 25000, max_chunks: int = 10, max_chars: int = 250000
    ) -> list[str]: ...

class LocalSearch:
    def __init__(self, path: str | PathLike[str]) -> None: ...
    @staticmethod
    def build_index(
        corpus: str | PathLike[str],
        out: str | PathLike[str],
        threads: int | None = None,
        heap_mb: int | None = None,
        on_bad_line: str = "error",
        overwrite: bool = False,
        merge: bool = True,
        progress: Callable[[int, int, int], object] | None = None,
    ) -> dict[str, Any]: ...
    @property
    def path(self) -> str: ...
    def __len__(self) -> int: ...
    def search(self, query: str, k: int = 5) -> list[Document]: ...
    def search_batch(self, queries: list[str], k: int = 5) -> list[list[Document]]: ...
    def asearch(self, query: str, k: int = 5) -> Awaitable[list[Document]]: ...
    def asearch_batch(self, queries: list[str], k: int = 5) -> Awaitable[list[list[Document]]]: ...
    def access(self, url: str) -> Page | None: ...
    def get(self, id: str) -> Document | None: ...

class RetrievalClient:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_concurrency: int = 16,
    ) -> None: ...
    @property
    def endpoints(self) -> list[str]: ...
    def search(self, query: str, k: int = 5) -> list[Document]: ...
    def search_batch(self, queries: list[str], k: int = 5) -> list[list[Document]]: ...
    def asearch(self, query: str, k: int = 5) -> Awaitable[list[Document]]: ...
    def asearch_batch(self, queries: list[str], k: int = 5) -> Awaitable[list[list[Document]]]: ...
    def access(self, url: str) -> Page | None: ...

class WebSearch:
    def __init__(
        self,
        base_url: str | None = None,
        api_key_env: str = "SERPER_API_KEY",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_concurrency: int = 10,
    ) -> None: ...
    def search(self, query: str, k: int = 5) -> list[Document]: ...
    def asearch(self, query: str, k: int = 5) -> Awaitable[list[Document]]: ...

class PageReader:
    def __init__(
        self,
        mode: str = "direct",
        reader_url: str | None = None,
        api_key_env: str = "JINA_API_KEY",
        timeout: float = 30.0,
        max_bytes: int = 5242880,
        max_redirects: int = 5,
        allow_private: bool = False,
        allow_loopback: bool = False,
        allowed_networks: list[str] = ...,
        retries: int = 2,
    ) -> None: ...
    def read(self, url: str) -> Page: ...
    def aread(self, url: str) -> Awaitable[Page]: ...

class ResultCache:
    def __init__(self, path: str | PathLike[str], mode: str = "readwrite") -> None: ...
    @property
    def path(self) -> str: ...
    def stats(self) -> dict[str, int]: ...

class ToolOutput:
    tool: str
    input: str
    text: str
    docs: list[Document]
    chunks: list[str]
    cached: bool
    elapsed_ms: float

class Toolbox:
    def __init__(
        self,
        search: LocalSearch | RetrievalClient | WebSearch,
        pages: LocalSearch | RetrievalClient | PageReader | None = None,
        cache: ResultCache | None = None,
        top_k: int = 5,
        doc_chars: int = 5000,
        chunk_chars: int = 25000,
        max_chunks: int = 10,
        max_page_chars: int = 250000,
    ) -> None: ...
    def search(self, query: str) -> ToolOutput: ...
    def search_batch(self, queries: list[str]) -> list[ToolOutput]: ...
    def access(self, url: str) -> ToolOutput: ...
    def asearch(self, query: str) -> Awaitable[ToolOutput]: ...
    def aaccess(self, url: str) -> Awaitable[ToolOutput]: ...

class RetrievalServerHandle:
    url: str
    port: int
    def stop(self) -> None: ...
    def __enter__(self) -> RetrievalServerHandle: ...
    def __exit__(self, *exc: object) -> None: ...

def serve_retrieval(
    index: LocalSearch,
    host: str = "127.0.0.1",
    port: int = 8000,
    default_topk: int = 3,
    on_ready: Callable[[str], object] | None = None,
) -> None: ...
def start_retrieval_server(
    index: LocalSearch, host: str = "127.0.0.1", port: int = 0, default_topk: int = 3
) -> RetrievalServerHandle: ...
def group_advantages_into(
    rewards: tuple, out: tuple, group_size: int, normalize_std: bool = False, eps: float = 1e-6
) -> None: ...

# --- Generator (embedded, KV-cached, continuous batching) -------------------------------------

class GenerationOutput:
    rid: str
    output_ids: list[int]
    output_logprobs: list[float]
    output_versions: list[int]
    finish_reason: str  # "stop", "length" or "abort"
    matched_stop: int | str | None
    abort_message: str | None
    prompt_tokens: int
    queue_seconds: float
    total_seconds: float
    def __len__(self) -> int: ...

class Generator:
    def __init__(
        self,
        model_dir: str | PathLike[str],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_running: int = 32,
        max_context: int | None = None,
        version: int = 0,
    ) -> None: ...
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        stop_token_ids: list[int] | tuple[int, ...] = (),
        ignore_eos: bool = False,
        seed: int | list[int] | None = None,
        rids: list[str] | None = None,
    ) -> list[GenerationOutput]: ...
    def agenerate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        stop_token_ids: list[int] | tuple[int, ...] = (),
        ignore_eos: bool = False,
        seed: int | list[int] | None = None,
        rids: list[str] | None = None,
    ) -> Awaitable[list[GenerationOutput]]: ...
    def abort(self, rid: str) -> None: ...
    def abort_all(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def update_weights(
        self,
        model_dir: str | PathLike[str],
        version: int | None = None,
        abort_in_flight: bool = False,
        recompute_cache: bool = False,
    ) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def model_dir(self) -> str: ...
    @property
    def is_alive(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...

def write_random_checkpoint(path: str, config_json: str, seed: int = 0) -> None: ...

class QwenModel:
    @staticmethod
    def load(
        path: str | PathLike[str], device: str = "cpu", dtype: str = "float32"
    ) -> QwenModel: ...
    def config_json(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    def eos_token_ids(self) -> list[int]: ...
    def parameter_shapes(self) -> list[tuple[str, list[int]]]: ...
    def num_parameters(self) -> int: ...
    def logits_into(
        self, input_ids: tuple, out: tuple, attention_mask: tuple | None = None
    ) -> None: ...
    def hidden_states_into(
        self, input_ids: tuple, out: tuple, attention_mask: tuple | None = None
    ) -> None: ...
    def nll_loss_and_grads_into(
        self, input_ids: tuple, labels: tuple, grads: list[tuple]
    ) -> float: ...
    def save(self, path: str | PathLike[str]) -> None: ...

# --- model server (asearcher.serving) ---

class Tokenizer:
    def __init__(self, model_dir: str | PathLike[str]) -> None: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]: ...
    def token_to_id(self, token: str) -> int | None: ...
    @property
    def eos_token_ids(self) -> list[int]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def chat_template_names(self) -> list[str]: ...
    def __len__(self) -> int: ...

class ModelServerHandle:
    url: str
    port: int
    def stop(self) -> None: ...
    def __enter__(self) -> ModelServerHandle: ...
    def __exit__(self, *exc: object) -> None: ...

def serve_model(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 30000,
    device: str = "cpu",
    dtype: str = "float32",
    max_running: int = 32,
    max_context: int | None = None,
    served_model_name: str | None = None,
    on_ready: Callable[[str], object] | None = None,
) -> None: ...
def start_model_server(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    max_running: int = 32,
    max_context: int | None = None,
    served_model_name: str | None = None,
) -> ModelServerHandle: ...

# --- scripted policy server (asearcher.serving) ---

class ScriptedPolicyHandle:
    address: str
    url: str
    port: int
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def __enter__(self) -> ScriptedPolicyHandle: ...
    def __exit__(self, *exc: object) -> None: ...

def serve_scripted_policy(
    tokenizer: str,
    config_json: str,
    on_ready: Callable[[str], object] | None = None,
) -> None: ...
def start_scripted_policy_server(tokenizer: str, config_json: str) -> ScriptedPolicyHandle: ...
def shaped_group_advantages_into(
    rewards: tuple,
    valid: tuple | None,
    out: tuple,
    group_size: int,
    normalize_std: bool,
    eps: float,
    reward_scale: float,
    reward_bias: float,
    reward_clip: float | None,
) -> None: ...
def token_advantages_into(
    seq_adv: tuple,
    loss_mask: tuple,
    seq_ids: tuple | None,
    out: tuple,
    normalize: bool,
    eps: float,
) -> None: ...

# --- RL loss kernels (views are `asearcher.ops._view` tuples; outputs are written in place) ---

DIAGNOSTIC_NAMES: list[str]
DEFAULT_CHUNK_BUDGET_BYTES: int
DEFAULT_CUDA_CHUNK_BUDGET_BYTES: int

# (eps_clip, eps_clip_high, dual_clip, behav_weight_cap, behav_weight_mode, is_level,
#  aggregation, normalizer, kl_coef, kl_estimator, entropy_coef)
_Spec = tuple[
    float, float | None, float | None, float | None, str, str, str, float | None, float, str, float
]
# (advantages, loss_mask, behav_logp, prox_logp, ref_logp, seq_ids)
_Tokens = tuple[tuple, tuple, tuple, tuple | None, tuple | None, tuple | None]

def token_logprobs_into(
    hidden: tuple,
    weight: tuple,
    targets: tuple,
    logp_out: tuple,
    entropy_out: tuple | None,
    temperature: float,
    chunk_tokens: int | None,
) -> None: ...
def token_logprobs_backward_into(
    hidden: tuple,
    weight: tuple,
    targets: tuple,
    grad_logp: tuple,
    grad_entropy: tuple | None,
    grad_hidden_out: tuple,
    grad_weight_out: tuple,
    temperature: float,
    chunk_tokens: int | None,
) -> None: ...
def fused_ppo_loss_into(
    hidden: tuple,
    weight: tuple,
    targets: tuple,
    tokens: _Tokens,
    outs: tuple[tuple, tuple, tuple, tuple, tuple, tuple],
    spec_args: _Spec,
    temperature: float,
    chunk_tokens: int | None,
) -> None: ...
def ppo_loss_into(
    logp: tuple,
    entropy: tuple | None,
    tokens: _Tokens,
    outs: tuple[tuple, tuple, tuple, tuple | None],
    spec_args: _Spec,
) -> None: ...
def chunk_tokens_for_budget(vocab: int, dtype: str, budget_bytes: int) -> int: ...

# --- rollout engine (rust/asearcher-py/src/rollout) ---

def default_prompts(kind: str = "asearcher") -> dict[str, str]: ...

class InferencePool:
    def __init__(
        self,
        addresses: list[str],
        *,
        protocol: str = "sglang",
        model: str | None = None,
        api_key_env: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def set_version(self, version: int) -> None: ...
    @property
    def version(self) -> int: ...
    @property
    def addresses(self) -> list[str]: ...
    def check_health(self) -> None: ...

class Trajectory:
    @staticmethod
    def from_json(line: str) -> Trajectory: ...
    @property
    def id(self) -> str: ...
    @property
    def question_id(self) -> str: ...
    @property
    def sample(self) -> int: ...
    @property
    def question(self) -> str: ...
    @property
    def answers(self) -> list[str]: ...
    @property
    def agent(self) -> str: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def reward(self) -> float | None: ...
    @property
    def rewards(self) -> dict[str, float]: ...
    @property
    def stop_reason(self) -> str: ...
    @property
    def errors(self) -> list[dict[str, Any]]: ...
    @property
    def turns(self) -> list[dict[str, Any]]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def num_turns(self) -> int: ...
    @property
    def tool_calls(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def started_at(self) -> float: ...
    def prompt_ids(self, turn: int) -> list[int]: ...
    def to_dict(self) -> dict[str, Any]: ...
    def to_json(self) -> str: ...
    def sequences(self) -> list[dict[str, Any]]: ...
    def _repr_html_(self) -> str: ...

class Group:
    @property
    def index(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def admitted_version(self) -> int: ...
    @property
    def question(self) -> dict[str, Any]: ...
    @property
    def trajectories(self) -> list[Trajectory]: ...
    @property
    def rewards(self) -> list[float | None]: ...
    @property
    def attempts(self) -> list[int]: ...
    def __len__(self) -> int: ...
    def _repr_html_(self) -> str: ...

def load_trajectories(path: str | PathLike[str]) -> list[Trajectory]: ...
def save_trajectories(
    path: str | PathLike[str], trajectories: list[Trajectory], append: bool = True
) -> None: ...

class RolloutEngine:
    def __init__(
        self,
        questions: str | PathLike[str] | list[dict[str, Any]],
        backend: InferencePool | Generator | list[str],
        tokenizer: str | PathLike[str] | Tokenizer,
        *,
        toolbox: Toolbox | None = None,
        agent: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        reward: dict[str, Any] | None = None,
        plugins: list[Callable[..., Any]] = ...,
        epochs: int | None = 1,
        shuffle_seed: int | None = None,
    ) -> None: ...
    def next_batch(self, n_groups: int) -> list[Group] | None: ...
    def anext_batch(self, n_groups: int) -> Awaitable[list[Group] | None]: ...
    def drain(self) -> list[Group]: ...
    def adrain(self) -> Awaitable[list[Group]]: ...
    def set_version(self, version: int) -> None: ...
    @property
    def version(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def is_done(self) -> bool: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def shutdown(self) -> None: ...
    def ashutdown(self) -> Awaitable[None]: ...
    def __enter__(self) -> RolloutEngine: ...
    def __exit__(self, *args: object) -> bool: ...

# Reward plugins (test hook: scores records through the engine's plugin path).
def _test_score_with_plugins(
    plugins: list[Callable[..., Any]],
    trajectories: list[str],
    probe_ms: int | None = None,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]: ...

class Trainer:
    def __init__(
        self,
        config: Any,
        *,
        overrides: list[str] = ...,
        toolbox: Any = None,
        plugins: list[Any] = ...,
        primary: str | None = None,
    ) -> None: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def resumed_step(self) -> int: ...
    def start(self) -> None: ...
    def poll(self, timeout_s: float) -> tuple[str, str | None]: ...
    def stop(self) -> None: ...

def warm_start(
    config: dict[str, Any], callback: Callable[[int, int, str], bool | None] | None = None
) -> str: ...

# The config schema (asearcher.config is generated from it; validation stays in Rust).
def config_schema() -> str:
    """``{"roots": [...], "schemas": {name: JSON schema}}`` of every root config, as JSON."""

def config_defaults(name: str) -> dict[str, Any]:
    """Rust's ``Default`` of a root config."""

def load_config(name: str, path: str | PathLike[str], overrides: list[str] = ...) -> dict[str, Any]:
    """A config file read, its paths resolved, overrides applied, validated."""

def check_config(name: str, value: Any, overrides: list[str] = ...) -> dict[str, Any]:
    """A dict or typed config validated (after overrides), every default filled in."""

def apply_overrides(value: Any, overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=v`` overrides applied to a dict, without validation."""

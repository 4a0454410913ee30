"""The real loading code, with stand-in torch/transformers modules (no GPU or weights here),
and the clear errors a user gets when something is missing."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from omni.api import EngineUnavailable
from omni.minicpmo import loader
from omni.minicpmo.config import MiniCPMOConfig
from tests.support.fake_minicpmo import FakeDuplex, FakeMiniCPMO


class _AutoModel:
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    error: ClassVar[Exception | None] = None

    @classmethod
    def from_pretrained(cls, source: str, **kwargs: Any) -> FakeMiniCPMO:
        cls.calls.append((source, kwargs))
        if cls.error is not None:
            raise cls.error
        return _CountingModel()


class _CountingModel(FakeMiniCPMO):
    def __init__(self) -> None:
        super().__init__()
        self.duplex_kwargs: dict[str, Any] = {}
        self.cuda_called = False

    def cuda(self) -> _CountingModel:
        self.cuda_called = True
        return self

    def as_duplex(self, device: str | None = None, **kwargs: Any) -> FakeDuplex:
        self.duplex_kwargs = kwargs
        return super().as_duplex(device, **kwargs)


@pytest.fixture
def fake_stack(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """torch, transformers, PIL and accelerate stand-ins that say CUDA has two GPUs."""
    _AutoModel.calls = []
    _AutoModel.error = None
    cuda = types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2, empty_cache=lambda: None
    )
    torch = types.ModuleType("torch")
    torch.cuda = cuda  # type: ignore[attr-defined]
    torch.bfloat16 = "bf16"  # type: ignore[attr-defined]
    torch.float16 = "f16"  # type: ignore[attr-defined]
    torch.compile = lambda module: ("compiled", module)  # type: ignore[attr-defined]
    transformers = types.ModuleType("transformers")
    transformers.__version__ = "4.51.3"  # type: ignore[attr-defined]
    transformers.AutoModel = _AutoModel  # type: ignore[attr-defined]
    modules = {"torch": torch, "transformers": transformers}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name in ("torch", "transformers", "PIL", "accelerate"):
            return types.SimpleNamespace(name=name)
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return types.SimpleNamespace(torch=torch, transformers=transformers, cuda=cuda)


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "MiniCPM-o-4_5"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_load_uses_from_pretrained_and_the_device_never_cuda(
    tmp_path: Path, fake_stack: Any
) -> None:
    config = MiniCPMOConfig(
        model=str(_model_folder(tmp_path)), devices=("cuda:1",), dtype="float16"
    )
    loaded = loader.load(config, "cuda:1")
    source, kwargs = _AutoModel.calls[0]
    assert source == config.model
    assert kwargs["trust_remote_code"] is True
    assert kwargs["torch_dtype"] == "f16"
    assert kwargs["attn_implementation"] == "sdpa"
    assert kwargs["local_files_only"] is True
    assert kwargs["init_tts"] is True
    model = loaded.model
    assert isinstance(model, _CountingModel)
    assert model.device == "cuda:1"
    assert not model.cuda_called
    assert model.duplex_kwargs["force_listen_count"] == 3
    assert model.duplex_kwargs["sliding_window_mode"] == "basic"
    assert isinstance(loaded.duplex, FakeDuplex)


def test_a_model_id_downloads_only_when_allowed(fake_stack: Any) -> None:
    loader.load(MiniCPMOConfig(devices=("cuda:0",)), "cuda:0")
    assert _AutoModel.calls[-1][1]["local_files_only"] is True
    loader.load(MiniCPMOConfig(devices=("cuda:0",), allow_download=True), "cuda:0")
    assert _AutoModel.calls[-1][1]["local_files_only"] is False


def test_missing_weights_name_the_setting_to_change(fake_stack: Any) -> None:
    _AutoModel.error = OSError("openbmb/MiniCPM-o-4_5 is not in the cache")
    with pytest.raises(EngineUnavailable, match=r"allow_download"):
        loader.load(MiniCPMOConfig(), "cuda:0")


def test_compile_wraps_the_language_model(tmp_path: Path, fake_stack: Any) -> None:
    class WithLlm(_CountingModel):
        llm = "the llm"

    _AutoModel.from_pretrained = classmethod(lambda cls, source, **kw: WithLlm())  # type: ignore[method-assign,assignment]
    try:
        loaded = loader.load(
            MiniCPMOConfig(model=str(_model_folder(tmp_path)), compile=True), "cuda:0"
        )
    finally:
        del _AutoModel.from_pretrained
    assert loaded.model.llm == ("compiled", "the llm")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cuda": False}, "CUDA is not available"),
        ({"device": "cuda:5"}, "does not exist: this machine has 2 GPU"),
        ({"transformers": "4.52.4"}, "transformers >=4.51,<4.52"),
        ({"model": "/nowhere/at/all"}, "model folder /nowhere/at/all does not exist"),
    ],
)
def test_clear_errors(fake_stack: Any, change: dict[str, Any], message: str) -> None:
    config = MiniCPMOConfig()
    device = change.get("device", "cuda:0")
    if change.get("cuda") is False:
        fake_stack.cuda.is_available = lambda: False
    if "transformers" in change:
        fake_stack.transformers.__version__ = change["transformers"]
    if "model" in change:
        config = replace(config, model=change["model"])
    with pytest.raises(EngineUnavailable, match=message):
        loader.load(config, device)


def test_a_folder_without_config_is_not_a_model(tmp_path: Path, fake_stack: Any) -> None:
    with pytest.raises(EngineUnavailable, match=r"no config\.json"):
        loader.load(MiniCPMOConfig(model=str(tmp_path)), "cuda:0")


def test_without_torch_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(EngineUnavailable, match=r"pip install -e '\.\[minicpmo\]'"):
        loader.check_dependencies()
    ready, why = loader.available(MiniCPMOConfig())
    assert not ready
    assert "torch" in why


def test_auto_picks_minicpmo_only_when_it_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from omni import engines

    monkeypatch.setattr(loader, "available", lambda config: (False, "no GPU"))
    picked = engines.resolve("auto", engines.EngineSettings())
    assert picked == ("lite" if not engines.missing_lite_packages() else "echo")
    monkeypatch.setattr(loader, "available", lambda config: (True, ""))
    assert engines.resolve("auto", engines.EngineSettings()) == "minicpmo"
    assert engines.resolve("echo", engines.EngineSettings()) == "echo"


def test_variants_are_told_apart_and_an_unknown_one_is_a_clear_error() -> None:
    from omni.minicpmo.variants import Variant, detect

    assert detect(FakeMiniCPMO()) is Variant.AS_DUPLEX

    class Unified:
        def init_unified(self) -> None: ...

    assert detect(Unified()) is Variant.UNIFIED
    module = types.ModuleType("omnirtc_test_duplex_class")
    module.MiniCPMODuplex = object  # type: ignore[attr-defined]
    Plain = type("MiniCPMO", (), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        assert detect(Plain()) is Variant.DUPLEX_CLASS
        del module.MiniCPMODuplex  # type: ignore[attr-defined]
        with pytest.raises(EngineUnavailable, match=r"as_duplex\(\), init_unified\(\) or"):
            detect(Plain())
    finally:
        del sys.modules[module.__name__]


def test_the_flag_gems_placeholder_lives_only_while_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("flag_gems") is not None:
        pytest.skip("flag_gems is installed here")
    monkeypatch.delenv("USE_FLAGOS", raising=False)
    with loader.remote_code_imports():
        placeholder = importlib.import_module("flag_gems")  # what transformers' check does
        with pytest.raises(ImportError, match="not installed"):
            placeholder.experimental_ops  # noqa: B018
    assert "flag_gems" not in sys.modules
    monkeypatch.setenv("USE_FLAGOS", "1")
    with pytest.raises(EngineUnavailable, match="USE_FLAGOS"), loader.remote_code_imports():
        pass


def test_listen_prob_scale_is_moved_onto_the_listen_token() -> None:
    from omni.minicpmo.variants import retarget_listen_bias

    decoder = types.SimpleNamespace(listen_id=151645)  # upstream: the tokenizer's eos
    duplex = types.SimpleNamespace(decoder=decoder, listen_token_id=151705)
    assert retarget_listen_bias(duplex)
    assert decoder.listen_id == 151705
    assert not retarget_listen_bias(types.SimpleNamespace())

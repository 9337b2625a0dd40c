"""Pretrained weights end to end against a local HTTP server (127.0.0.1, started here; no internet):
download, layout conversion, logits equal to ``load_checkpoint`` of the same file, the cache, bad files
rejected with a clean cache, the offline recipe and its error, and ``timm.create_model(pretrained=True)``."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import leanvit
import leanvit.models
from leanvit.models.checkpoint import save_checkpoint
from leanvit.cli import main as cli_main
from leanvit.models.sepvit import sepvit_lite
from leanvit.models.shvit import shvit_s1
from leanvit.models.weights import WeightsError, cached_file, fetch

EVIT_OFFICIAL = "xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/efficientvit_m0.pth"
SHVIT_TIMM = "timm/shvit_s1.in1k/resolve/main/model.safetensors"


class _Server:
    """Serves ``files`` (URL path -> bytes, or (bytes, declared Content-Length)) and records every request."""

    def __init__(self, files: dict[str, bytes | tuple[bytes, int]]) -> None:
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                data, length = body if isinstance(body, tuple) else (body, len(body))
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers = []

    def start(files):
        servers.append(_Server(files))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own torch hub cache and none of the user's weight settings."""
    for var in ("LEANVIT_WEIGHTS_DIR", "LEANVIT_WEIGHTS_URL", "HF_HUB_OFFLINE", "LEANVIT_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def _cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random-weight checkpoints: EfficientViT-M0 in the official layout, SHViT-S1 in timm's (safetensors)."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    evit = save_checkpoint(leanvit.create_model("efficientvit_m0"), out / "evit_official.pth", layout="official")
    shvit = leanvit.create_model("shvit_s1")
    timm_sd = leanvit.convert_state_dict(shvit.state_dict(), "shvit", src="leanvit", dst="timm")
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(out / "shvit_timm.safetensors"))
    return dict(evit=evit, shvit=out / "shvit_timm.safetensors")


def _reference_logits(name: str, path: Path, **kwargs) -> tuple[torch.Tensor, str]:
    model = leanvit.create_model(name, **kwargs).eval()
    report = leanvit.load_checkpoint(model, path)
    with torch.no_grad():
        return model(torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))), report["layout"]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)))


def test_official_release_downloads_converts_and_caches(serve, checkpoints, tmp_path):
    server = serve({EVIT_OFFICIAL: checkpoints["evit"].read_bytes()})
    model = leanvit.create_model("efficientvit_m0", pretrained=True, weights_url=server.url)
    expected, layout = _reference_logits("efficientvit_m0", checkpoints["evit"])
    assert layout == "official"
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    assert server.requests == [f"/{EVIT_OFFICIAL}"]
    assert _cache_files(tmp_path) == ["efficientvit_m0.pth"]  # no temporary file left behind
    assert model.pretrained_cfg["tag"] == "r224_in1k" and model.pretrained_cfg["file"].endswith("efficientvit_m0.pth")
    # Second call: from the cache, no request.
    again = leanvit.create_model("efficientvit_m0", pretrained="r224_in1k", weights_url=server.url)
    torch.testing.assert_close(_logits(again), expected, rtol=0, atol=0)
    assert len(server.requests) == 1
    assert cached_file("efficientvit_m0") == tmp_path / "torch_home" / "hub" / "checkpoints" / "efficientvit_m0.pth"


def test_timm_hub_copy_is_the_fallback_and_is_converted(serve, checkpoints, tmp_path, monkeypatch):
    server = serve({SHVIT_TIMM: checkpoints["shvit"].read_bytes()})
    monkeypatch.setenv("LEANVIT_WEIGHTS_URL", server.url)
    model = leanvit.create_model("shvit_s1", pretrained=True, num_classes=1000)
    expected, layout = _reference_logits("shvit_s1", checkpoints["shvit"])
    assert layout == "timm"
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    assert server.requests == ["/ysj9909/SHViT/releases/download/v1.0/shvit_s1.pth", f"/{SHVIT_TIMM}"]
    assert _cache_files(tmp_path) == ["shvit_s1.in1k.safetensors"]


def test_pretrained_with_new_classes_keeps_the_body_and_a_fresh_head(serve, checkpoints):
    server = serve({EVIT_OFFICIAL: checkpoints["evit"].read_bytes()})
    model = leanvit.create_model("efficientvit_m0", pretrained=True, num_classes=7, weights_url=server.url)
    ref = leanvit.create_model("efficientvit_m0")
    leanvit.load_checkpoint(ref, checkpoints["evit"])
    assert model.head.linear.out_features == 7
    torch.testing.assert_close(model.stages[2].blocks[0].state_dict(), ref.stages[2].blocks[0].state_dict())


@pytest.mark.parametrize("kind", ["truncated_file", "short_body", "wrong_hash"])
def test_bad_download_is_rejected_and_the_cache_stays_clean(kind, serve, checkpoints, tmp_path, monkeypatch):
    data = checkpoints["evit"].read_bytes()
    body = {"truncated_file": data[: len(data) // 2], "short_body": (data[: len(data) // 2], len(data)),
            "wrong_hash": data}[kind]
    if kind == "wrong_hash":
        _set_sha256(monkeypatch, "efficientvit_m0", "0" * 64)
    server = serve({EVIT_OFFICIAL: body})
    reason = {"truncated_file": "not a readable checkpoint", "short_body": "(truncated|IncompleteRead)",
              "wrong_hash": "SHA-256 mismatch.*deleted"}[kind]
    with pytest.raises(WeightsError, match=reason) as err:
        leanvit.create_model("efficientvit_m0", pretrained=True, weights_url=server.url)
    assert "efficientvit_m0" in str(err.value) and server.url in str(err.value)
    assert _cache_files(tmp_path) == []


def test_known_sha256_is_verified(serve, checkpoints, monkeypatch):
    data = checkpoints["evit"].read_bytes()
    _set_sha256(monkeypatch, "efficientvit_m0", hashlib.sha256(data).hexdigest())
    server = serve({EVIT_OFFICIAL: data})
    assert fetch("efficientvit_m0", base_url=server.url).read_bytes() == data


def _set_sha256(monkeypatch, name: str, sha256: str) -> None:
    cfg = leanvit.get_config(name)
    weights = cfg.weights[0]
    files = tuple(dataclasses.replace(f, sha256=sha256) for f in weights.files)
    patched = dataclasses.replace(cfg, weights=(dataclasses.replace(weights, files=files),))
    real = leanvit.models.get_config
    monkeypatch.setattr(leanvit.models.weights, "get_config", lambda n: patched if n == name else real(n))


def test_offline_error_names_model_urls_and_where_to_put_the_file(serve, tmp_path, monkeypatch):
    server = serve({})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        leanvit.create_model("shvit_s2", pretrained=True, weights_url=server.url)
    msg = str(err.value)
    assert "shvit_s2.in1k" in msg and "downloads are off" in msg
    assert f"{server.url}/ysj9909/SHViT/releases/download/v1.0/shvit_s2.pth" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "shvit_s2.pth") in msg and "LEANVIT_WEIGHTS_DIR" in msg
    assert server.requests == []


def test_weights_dir_and_pretrained_file_work_offline(checkpoints, tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    (local / "efficientvit_m0.pth").write_bytes(checkpoints["evit"].read_bytes())
    monkeypatch.setenv("LEANVIT_WEIGHTS_DIR", str(local))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected, _ = _reference_logits("efficientvit_m0", checkpoints["evit"])
    torch.testing.assert_close(_logits(leanvit.create_model("efficientvit_m0", pretrained=True)), expected)
    shvit = leanvit.create_model("shvit_s1", pretrained_file=checkpoints["shvit"])
    torch.testing.assert_close(_logits(shvit), _reference_logits("shvit_s1", checkpoints["shvit"])[0])
    assert _cache_files(tmp_path) == []


def test_unknown_tag_and_models_without_weights_say_so():
    with pytest.raises(ValueError, match="no published weights"):
        leanvit.create_model("sepvit_lite", pretrained=True)
    with pytest.raises(ValueError, match="known tags: in1k"):
        leanvit.create_model("shvit_s1", pretrained="in22k")


def test_timm_create_model_pretrained_goes_through_leanvit_weights(serve, checkpoints, monkeypatch):
    leanvit.register_with_timm()
    server = serve({EVIT_OFFICIAL: checkpoints["evit"].read_bytes()})
    monkeypatch.setenv("LEANVIT_WEIGHTS_URL", server.url)
    expected, _ = _reference_logits("efficientvit_m0", checkpoints["evit"])
    model = timm.create_model("leanvit_efficientvit_m0.r224_in1k", pretrained=True)
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    # timm's own file override goes through the same conversion (official layout here).
    overlay = timm.create_model("leanvit_efficientvit_m0", pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(checkpoints["evit"])))
    torch.testing.assert_close(_logits(overlay), expected, rtol=0, atol=0)
    feats = timm.create_model("leanvit_efficientvit_m0", pretrained=True, features_only=True)
    assert [f.shape[1] for f in feats(torch.randn(1, 3, 64, 64))] == [64, 128, 192]
    assert len(server.requests) == 1


def test_weights_command_lists_sources_and_cache(serve, checkpoints, capsys):
    server = serve({EVIT_OFFICIAL: checkpoints["evit"].read_bytes()})
    fetch("efficientvit_m0", base_url=server.url)
    assert cli_main(["weights", "efficientvit_m*"]) == 0
    out = capsys.readouterr().out
    assert "r224_in1k" in out and "63.2" in out and "mit" in out
    row_m0 = next(line for line in out.splitlines() if line.startswith("efficientvit_m0 "))
    row_m1 = next(line for line in out.splitlines() if line.startswith("efficientvit_m1 "))
    assert "efficientvit_m0.pth" in row_m0 and row_m1.rstrip().endswith("no")
    assert cli_main(["weights", "sepvit_t"]) == 0
    assert "no published weights" in capsys.readouterr().out


def test_importable_builders_take_pretrained_like_timm(checkpoints, tmp_path, monkeypatch):
    """#24 defect 6: ``shvit_s1(pretrained=True)`` is ``create_model("shvit_s1", pretrained=True)`` (a TypeError
    before); with another class count the body is loaded and the head stays fresh."""
    local = tmp_path / "local"
    local.mkdir()
    (local / "shvit_s1.in1k.safetensors").write_bytes(checkpoints["shvit"].read_bytes())  # timm's hub copy
    monkeypatch.setenv("LEANVIT_WEIGHTS_DIR", str(local))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = shvit_s1(pretrained=True)
    assert torch.equal(_logits(model), _reference_logits("shvit_s1", checkpoints["shvit"])[0])
    assert model.pretrained_cfg["file"] == str(local / "shvit_s1.in1k.safetensors")
    ten = shvit_s1(pretrained="in1k", num_classes=10)
    assert ten.num_classes == 10
    assert torch.equal(ten.stages[2].blocks[0].state_dict()["mixer.m.qkv.conv.weight"],
                       model.stages[2].blocks[0].state_dict()["mixer.m.qkv.conv.weight"])
    with pytest.raises(ValueError, match="no published weights"):
        sepvit_lite(pretrained=True)

"""Hugging Face Hub-layout checkpoints (model.safetensors + config.json, as the official Intellindust/DEIMv2_*
repos): read from a folder or file, and downloaded through huggingface_hub from a loopback stand-in."""
import hashlib
import http.server
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from deim_edge import get_variant  # noqa: E402
from deim_edge.errors import CheckpointError, DownloadError  # noqa: E402
from deim_edge.models import build_model, load_checkpoint  # noqa: E402
from deim_edge.models.checkpoint import save_checkpoint  # noqa: E402
from deim_edge.models.hub import download_hub  # noqa: E402

PICO_CONFIG = {  # the official repo's config, as its notebook writes it (abridged to the fields read)
    "HGNetv2": {"name": "Pico", "return_idx": [2], "freeze_at": -1, "freeze_norm": False, "use_lab": True},
    "LiteEncoder": {"in_channels": [512], "feat_strides": [16], "hidden_dim": 112},
    "DEIMTransformer": {"feat_channels": [112, 112], "feat_strides": [16, 32], "hidden_dim": 112,
                        "num_queries": 200, "eval_spatial_size": [640, 640]},
    "PostProcessor": {"num_top_queries": 300},
}


def _hub_folder(folder, variant="deimv2-pico", config=PICO_CONFIG, seed=0):
    """A seeded model saved as PyTorchModelHubMixin does (shared tensors once) and the same weights as .pth."""
    torch.manual_seed(seed)
    model = build_model(get_variant(variant)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_model(model, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    save_checkpoint(folder.parent / f"{folder.name}.pth", model)
    return model


@pytest.fixture(scope="module")
def pico_hub(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "DEIMv2_HGNetv2_PICO_COCO"
    _hub_folder(folder)
    return folder


def test_the_file_stores_shared_tensors_once(pico_hub):
    from safetensors import safe_open

    with safe_open(pico_hub / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert ("decoder.up" in keys) != ("decoder.decoder.up" in keys)  # one of the two names


def test_hub_folder_loads_strictly_and_equals_the_pth(pico_hub):
    x = torch.rand(1, 3, 640, 640)
    from_hub = load_checkpoint(pico_hub, "deimv2-pico")
    from_pth = load_checkpoint(pico_hub.parent / f"{pico_hub.name}.pth", "deimv2-pico")
    with torch.no_grad():
        a, b = from_hub(x), from_pth(x)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(a[key], b[key])
    # the safetensors file itself, and the variant taken from config.json when none is given
    from_file = load_checkpoint(pico_hub / "model.safetensors")
    assert from_file.variant.name == "deimv2-pico"
    with torch.no_grad():
        assert torch.equal(from_file(x)["pred_boxes"], b["pred_boxes"])


def test_hub_folder_of_another_variant_is_refused(pico_hub):
    with pytest.raises(CheckpointError, match="deimv2-pico"):
        load_checkpoint(pico_hub, "deimv2-atto")


def test_broken_hub_files_give_checkpoint_errors(tmp_path, pico_hub):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((pico_hub / "model.safetensors").read_bytes()[:5000])
    (bad / "config.json").write_text(json.dumps(PICO_CONFIG))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(bad)
    (bad / "model.safetensors").write_bytes((pico_hub / "model.safetensors").read_bytes())
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(bad)


class _StandIn(http.server.BaseHTTPRequestHandler):
    """The Hub's /<repo>/resolve/<revision>/<file> with the headers huggingface_hub reads."""
    files: dict = {}
    requests: list = []

    def _serve(self, body: bool) -> None:
        self.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        data = self.files.get(("/".join(parts[:2]), parts[-1])) if len(parts) == 5 and parts[2] == "resolve" else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound" if len(parts) < 5 else "EntryNotFound")
            self.send_header("X-Error-Message", "not found on the stand-in")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self._serve(False)

    def do_GET(self):  # noqa: N802
        self._serve(True)

    def log_message(self, *args):
        pass


@pytest.fixture()
def stand_in(pico_hub, monkeypatch):
    pytest.importorskip("huggingface_hub")
    _StandIn.files = {("Intellindust/DEIMv2_HGNetv2_PICO_COCO", name): (pico_hub / name).read_bytes()
                      for name in ("model.safetensors", "config.json")}
    _StandIn.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    import huggingface_hub.constants as constants

    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield _StandIn
    server.shutdown()


def test_download_hub_fetches_both_files_through_huggingface_hub(stand_in, tmp_path, pico_hub):
    folder = download_hub("Intellindust/DEIMv2_HGNetv2_PICO_COCO", cache_dir=tmp_path / "cache")
    assert (folder / "model.safetensors").read_bytes() == (pico_hub / "model.safetensors").read_bytes()
    assert json.loads((folder / "config.json").read_text()) == PICO_CONFIG
    assert {"model.safetensors", "config.json"} <= {p.split("/")[-1] for _, p in stand_in.requests}
    model = load_checkpoint(folder)
    assert model.variant.name == "deimv2-pico"
    assert np.isfinite(sum(float(p.detach().sum()) for p in model.parameters()))


def test_download_hub_of_a_missing_repo_is_a_download_error(stand_in, tmp_path):
    with pytest.raises(DownloadError, match="Intellindust/DEIMv2_NOPE"):
        download_hub("Intellindust/DEIMv2_NOPE", cache_dir=tmp_path / "cache")


def test_detector_runs_a_hub_folder(pico_hub):
    from deim_edge import Detector

    detector = Detector(pico_hub, conf=0.0)
    assert detector.metadata.variant == "deimv2-pico" and detector.metadata.input_size == (640, 640)
    assert len(detector(np.zeros((100, 120, 3), np.uint8))) > 0


ATTO_CONFIG = {"HGNetv2": {"name": "Atto"}, "LiteEncoder": {"hidden_dim": 64},
               "DEIMTransformer": {"hidden_dim": 64, "num_classes": 4, "eval_spatial_size": [320, 320]}}
BUNDLED = Path(__file__).parent.parent / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"


def test_export_hub_downloads_and_writes_onnx_named_like_the_repo(stand_in, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from deim_edge import Detector
    from deim_edge.export.__main__ import main

    folder = tmp_path / "DEIMv2_HGNetv2_ATTO_SHAPES"  # trained weights (the bundled 4-class model) in Hub layout
    folder.mkdir()
    safetensors_torch.save_model(load_checkpoint(BUNDLED), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(ATTO_CONFIG))
    stand_in.files.update({("Intellindust/DEIMv2_HGNetv2_ATTO_SHAPES", name): (folder / name).read_bytes()
                           for name in ("model.safetensors", "config.json")})
    (tmp_path / "names.txt").write_text("circle\nsquare\ntriangle\nring\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["--hub", "Intellindust/DEIMv2_HGNetv2_ATTO_SHAPES", "--target", "onnx",
                 "--class-names", "names.txt"]) == 0
    exported = Detector(tmp_path / "DEIMv2_HGNetv2_ATTO_SHAPES.onnx", conf=0.0)
    reference = Detector(BUNDLED, conf=0.0)
    image = cv2.imread(str(next((Path(__file__).parent / "data" / "images").glob("*.jpg"))))
    a, b = exported(image), reference(image)
    assert exported.metadata.variant == "deimv2-atto" and exported.names == reference.names
    np.testing.assert_allclose(a.scores[:10], b.scores[:10], atol=1e-4)

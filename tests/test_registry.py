"""MLflow registry and raw-photo scoring: register, aliases, load in a fresh process, score.

A real (tiny) model: dlib's ResNet with a quality head whose last layer is rescaled so
the scores of LFW faces spread inside the label range (a random head would clamp them all
to one end of the rank normalisation, and equality checks would be vacuous).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import landmarks_of
from mlflow.tracking import MlflowClient

from aikd.align import align_to_template
from aikd.config import add_params_options
from aikd.data.images import read_rgb
from aikd.distill.data import LabelNorm
from aikd.distill.model import (
    AIKDStudent,
    load_quality_model,
    predict_quality,
    save_quality_model,
)
from aikd.errors import UsageError
from aikd.faces import to_float_input
from aikd.landmarks.base import POINT_COLUMNS
from aikd.models.registry import load_backbone
from aikd.registry.command import add_score_arguments, run_score
from aikd.registry.settings import register_settings
from aikd.registry.stage import register_stage
from aikd.scoring import SCORE_COLUMNS, QualityScorer, backends, list_images
from aikd.tracking import setup_mlflow

N_FACES = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core box two threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def restore_mlflow_uri():
    """setup_mlflow sets the process-wide tracking URI; give the next module the old one."""
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def faces(lfw_root: Path, lfw_sample: pd.DataFrame) -> pd.DataFrame:
    return lfw_sample.head(N_FACES).assign(root=str(lfw_root)).reset_index(drop=True)


def save_student(path: Path, faces: pd.DataFrame, *, scale: float, shift: float) -> Path:
    """dlib ResNet student whose normalised scores of ``faces`` have mean ``shift`` and
    spread ``scale``, saved like the distill stage saves it."""
    torch.manual_seed(0)
    student = AIKDStudent(load_backbone("dlib_resnet"), "head").eval()
    crops = [align_to_template(read_rgb(Path(r.root) / r.path), landmarks_of(r), "dlib150")[0]
             for _, r in faces.iterrows()]
    with torch.inference_mode():
        _, raw = student(to_float_input(torch.from_numpy(np.stack(crops)), False))
        last = student.head[2]
        last.weight.mul_(scale / float(raw.std()))
        last.bias.add_(shift - float(raw.mean()) * scale / float(raw.std()))
    return save_quality_model(
        path, student, backbone_name="dlib_resnet",
        label_norm=LabelNorm.fit(np.linspace(0.0, 1.0, 50), "rank"), config={"seed": 0},
    )


def _run_dir(root: Path, run: str, model_pt: Path, pauc: float | None) -> Path:
    d = root / "models" / run
    d.mkdir(parents=True, exist_ok=True)
    if model_pt != d / "model.pt":
        shutil.copy(model_pt, d / "model.pt")
    metrics = {} if pauc is None else {"val_pauc_fmr1e-3": pauc, "val_cosine": 0.9}
    (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "steps": 4}))
    return d


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, faces: pd.DataFrame) -> Path:
    root = tmp_path_factory.mktemp("registry")
    save_student(root / "base.pt", faces, scale=0.1, shift=0.5)
    _run_dir(root, "serfiq-T", root / "base.pt", 0.20)
    return root


def _params(root: Path, uri: str, **register: Any) -> dict[str, Any]:
    return {
        "mlflow": {"tracking_uri": uri, "experiment": "aikd-test",
                   "artifact_root": str(root / "artifacts")},
        "register": {"model_name": "aikd-{method}", "runs": [], "detector": "retinaface",
                     "champion_metric": "val_pauc_fmr1e-3", "example_image": None,
                     "models_dir": str(root / "models"), "metrics_dir": str(root / "metrics"),
                     "evaluation": str(root / "evaluation.json"), **register},
    }


def score_args(argv: list[str]) -> argparse.Namespace:
    """``aikd score`` arguments as the CLI parses them."""
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    add_params_options(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def store(workdir: Path, lfw_root: Path) -> Iterator[dict[str, Any]]:
    """A fresh sqlite registry with serfiq-T registered (champion, with an input example)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    example = lfw_root / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    params = _params(workdir, uri, example_image=str(example))
    (workdir / "evaluation.json").write_text(json.dumps(
        {"mean_pauc": {"serfiq": {"T": {"retinaface": 0.31, "mtcnn": None},
                                  "B": {"retinaface": 0.35}}}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        record = register_stage(params, "serfiq-T")
        yield {"uri": uri, "params": params, "first": record}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, faces: pd.DataFrame) -> Path:
    """10 LFW photos, one file that is not an image and one flat grey picture (no face)."""
    d = tmp_path_factory.mktemp("photos")
    for r in faces.itertuples():
        shutil.copy(Path(r.root) / r.path, d / Path(r.path).name)
    (d / "corrupt.jpg").write_bytes(b"definitely not a JPEG file\x00\x01")
    cv2.imwrite(str(d / "grey.jpg"), np.full((160, 160, 3), 128, np.uint8))
    return d


# --------------------------------------------------------------------------- unit level


def test_register_params(tmp_path: Path) -> None:
    """Typed settings: typos named, keys params.yaml sets have no default, and a champion
    metric must be spelled as training writes it."""
    params = _params(tmp_path, "sqlite://")
    assert register_settings(params).champion_metric == "val_pauc_fmr1e-3"
    with pytest.raises(ValueError, match="unknown key.*champion_metrc"):
        register_settings({"register": {**params["register"], "champion_metrc": "x"}})
    without = {k: v for k, v in params["register"].items() if k != "detector"}
    with pytest.raises(ValueError, match="missing key.*detector"):
        register_settings({"register": without})
    with pytest.raises(ValueError, match="val_pauc_fmr1e-3"):
        register_settings({"register": {**params["register"],
                                        "champion_metric": "val_pauc_fmr0.001"}})


def test_list_images_folder_and_manifest(photos: Path, tmp_path: Path) -> None:
    rows = list_images(photos)
    assert len(rows) == N_FACES + 2 and set(rows["root"]) == {str(photos)}
    (tmp_path / "notes.txt").write_text("not an image")
    shutil.copy(photos / "grey.jpg", tmp_path / "grey.jpg")
    pd.DataFrame({"path": ["grey.jpg"]}).to_csv(tmp_path / "m.csv", index=False)
    rows = list_images(tmp_path / "m.csv")  # no root column: relative to the manifest
    assert (Path(rows["root"][0]) / rows["path"][0]).is_file()
    pd.DataFrame({"file": ["a.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UsageError, match="'path' column"):
        list_images(tmp_path / "bad.csv")


def test_score_local_checkpoint_cli(workdir: Path, photos: Path, tmp_path: Path,
                                    faces: pd.DataFrame) -> None:
    """`aikd score` on a model.pt and a manifest: missing files become rows, not crashes;
    rows with landmarks would skip detection (exercised through the pyfunc below)."""
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"root": str(photos), "path": ["grey.jpg", "nope.jpg",
                                                Path(faces["path"][0]).name]}).to_csv(
        manifest, index=False)
    out = tmp_path / "scores.csv"
    (tmp_path / "params.yaml").write_text("{}\n")
    rc = run_score(score_args([
        "--model", str(workdir / "models" / "serfiq-T" / "model.pt"), "--images", str(manifest),
        "--out", str(out), "--no-progress", "--params", str(tmp_path / "params.yaml")]))
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == SCORE_COLUMNS
    assert table["status"].tolist() == ["no_face", "unreadable", "ok"]
    assert "file not found" in table["message"][1]
    assert np.isfinite(table["quality"][2]) and table[POINT_COLUMNS].iloc[2].notna().all()


def test_student_backend_choice(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` stays on torch for small jobs; `onnx` without the onnx package: clear error."""
    model = load_quality_model(workdir / "base.pt")
    with monkeypatch.context() as mp:
        mp.setattr(backends, "onnx_export_available", lambda: False)
        with pytest.raises(ImportError, match="pip install onnx"):
            QualityScorer(model, backend="onnx")
        sc = QualityScorer(model, backend="auto")
        sc.plan(10**6)
        assert sc.backend == "torch"
        mp.setattr(backends, "onnx_export_available", lambda: True)
        sc.plan(10)
        assert sc.backend == "torch"
        sc.plan(backends.AUTO_ONNX_MIN_IMAGES)
        assert sc.backend == "onnx"
    with pytest.raises(ValueError, match="reference"):
        QualityScorer(model, "reference")


def test_onnx_backend_matches_torch(workdir: Path, faces: pd.DataFrame) -> None:
    """The ONNX export (when the onnx package is installed) equals torch, also on a batch
    size other than the one it was traced with."""
    pytest.importorskip("onnx")
    model = load_quality_model(workdir / "base.pt")
    crops = [align_to_template(read_rgb(Path(r.root) / r.path), landmarks_of(r), "dlib150")[0]
             for _, r in faces.head(5).iterrows()]
    want = QualityScorer(model, backend="torch").forward(crops)
    onnx_scorer = QualityScorer(load_quality_model(workdir / "base.pt"), backend="onnx")
    got = onnx_scorer.forward(crops)
    assert onnx_scorer.backend == "onnx"
    np.testing.assert_allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------- registry


def test_register_writes_record_and_tags(store: dict[str, Any], workdir: Path) -> None:
    rec = store["first"]
    assert (rec["name"], rec["run"]) == ("aikd-serfiq", "serfiq-T")
    assert rec["aliases"] == ["challenger", "champion"] and rec["champion"]["promoted"]
    on_disk = json.loads((workdir / "metrics" / "register_serfiq-T.json").read_text())
    assert on_disk == rec
    mlflow.set_tracking_uri(store["uri"])
    mv = MlflowClient().get_model_version("aikd-serfiq", rec["version"])
    assert mv.tags["aikd.method"] == "serfiq" and mv.tags["aikd.variant"] == "T"
    assert mv.tags["aikd.detector"] == "retinaface" and mv.tags["aikd.template"] == "dlib150"
    assert mv.tags["metric.val_pauc_fmr1e-3"] == "0.2"
    assert mv.tags["eval.mean_pauc.T.retinaface"] == "0.31"
    assert mv.tags["eval.mean_pauc.T.mtcnn"] == "nan"
    assert mv.tags["param.seed"] == "0" and "git.commit" in mv.tags
    assert len(mv.tags["aikd.commit"]) in (7, 40) or mv.tags["aikd.commit"] == "unknown"


def test_load_by_alias_in_fresh_process_and_score(
    store: dict[str, Any], workdir: Path, photos: Path, faces: pd.DataFrame, tmp_path: Path
) -> None:
    """models:/aikd-serfiq@champion in a new interpreter: pyfunc.predict and `aikd score`
    give the same table, and ok qualities equal predict_quality on the same landmarks."""
    files = sorted(str(p) for p in photos.iterdir())
    script = (
        "import json, sys, torch, mlflow, pandas as pd\n"
        "torch.set_num_threads(1)\n"
        "import argparse\n"
        "from aikd.config import add_params_options\n"
        "from aikd.registry.command import add_score_arguments, run_score\n"
        "cli = argparse.ArgumentParser()\n"
        "add_score_arguments(cli)\n"
        "add_params_options(cli)\n"
        "m = mlflow.pyfunc.load_model('models:/aikd-serfiq@champion')\n"
        "m.predict(pd.DataFrame({'path': json.loads(sys.argv[1])})).to_csv('predict.csv',"
        " index=False, float_format='%.10g')\n"
        "sys.exit(run_score(cli.parse_args(['--model', 'models:/aikd-serfiq@champion', '--images',"
        " sys.argv[2], '--out', 'cli.csv', '--batch-size', '4', '--threads', '1',"
        " '--no-progress'])))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(files), str(photos)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 12 images (ok=10, unreadable=1, no_face=1" in proc.stdout

    pred = pd.read_csv(tmp_path / "predict.csv")
    assert list(pred.columns) == SCORE_COLUMNS and pred["path"].tolist() == files
    status = dict(zip([Path(p).name for p in pred["path"]], pred["status"], strict=True))
    assert status.pop("corrupt.jpg") == "unreadable" and status.pop("grey.jpg") == "no_face"
    assert set(status.values()) == {"ok"} and len(status) == N_FACES
    ok = pred[pred["status"] == "ok"].reset_index(drop=True)
    assert np.isfinite(ok["quality"]).all() and ok["quality"].std() > 1e-3
    assert pred.loc[pred["status"] != "ok", "quality"].isna().all()

    model = load_quality_model(workdir / "models" / "serfiq-T" / "model.pt")
    rows = pd.DataFrame({"root": [str(Path(p).parent) for p in ok["path"]],
                         "path": [Path(p).name for p in ok["path"]]})
    lms = ok[POINT_COLUMNS].assign(path=rows["path"])
    expected = predict_quality(model, rows, lms, batch_size=4, workers=0)
    np.testing.assert_allclose(ok["quality"], expected, atol=1e-4)

    cli = pd.read_csv(tmp_path / "cli.csv")
    assert cli["path"].tolist() == [Path(p).name for p in files]
    assert cli["status"].tolist() == pred["status"].tolist()
    np.testing.assert_allclose(cli["quality"], pred["quality"], atol=1e-6)
    np.testing.assert_allclose(cli[POINT_COLUMNS], pred[POINT_COLUMNS], atol=1e-3)


def test_score_unknown_registered_model_is_a_usage_error(
    store: dict[str, Any], photos: Path, tmp_path: Path
) -> None:
    """A wrong registered name, alias or version: one line listing what exists."""
    out = str(tmp_path / "s.csv")
    cases = {"models:/aikd-serfq@champion": "registered: aikd-serfiq",
             "models:/aikd-serfiq@champ": "aliases: challenger, champion",
             "models:/aikd-serfiq/99": "no version 99"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
        mp.chdir(tmp_path)  # outside a project: no params.yaml
        for ref, listed in cases.items():
            with pytest.raises(UsageError, match=listed) as err:
                run_score(score_args(["--model", ref, "--images", str(photos), "--out", out]))
            assert "\n" not in str(err.value) and str(err.value).startswith(ref)


def test_registered_model_has_an_input_example(store: dict[str, Any]) -> None:
    """The example photo was found (path made absolute) and logged with the model."""
    from mlflow.models import Model

    mlflow.set_tracking_uri(store["uri"])
    uri = f"models:/aikd-serfiq/{store['first']['version']}"
    example = Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    assert example is not None and len(example) == 2


@pytest.mark.filterwarnings("ignore:.*input example was not provided")
def test_champion_moves_only_when_validation_pauc_improves(
    store: dict[str, Any], workdir: Path, faces: pd.DataFrame
) -> None:
    params = {**store["params"], "register": {**store["params"]["register"],
                                              "example_image": None}}
    first = store["first"]["version"]
    worse = save_student(workdir / "worse.pt", faces, scale=0.1, shift=0.45)
    _run_dir(workdir, "serfiq-B", worse, 0.30)
    better = save_student(workdir / "better.pt", faces, scale=0.1, shift=0.55)
    _run_dir(workdir, "serfiq-C", better, 0.10)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        rec_b = register_stage(params, "serfiq-B")
        assert rec_b["aliases"] == ["challenger"] and not rec_b["champion"]["promoted"]
        assert rec_b["champion"]["previous_champion"] == first
        client = MlflowClient()
        assert str(client.get_model_version_by_alias("aikd-serfiq", "champion").version) == first
        assert "0.3 >= 0.2" in client.get_model_version(
            "aikd-serfiq", rec_b["version"]).tags["aikd.champion_decision"]

        rec_t2 = register_stage(params, "serfiq-C")
        assert rec_t2["aliases"] == ["challenger", "champion"]
        assert rec_t2["champion"]["promoted"] and rec_t2["champion"]["previous_value"] == 0.2
        assert client.get_model_version("aikd-serfiq", first).aliases == []

        again = register_stage(params, "serfiq-B")  # same model.pt: no new version
        assert again["reused"] and again["version"] == rec_b["version"]
        assert again["aliases"] == [] and not again["champion"]["promoted"]
        assert str(client.get_model_version_by_alias("aikd-serfiq", "champion").version) == (
            rec_t2["version"])


@pytest.mark.filterwarnings("ignore:.*input example was not provided")
def test_register_from_mlflow_run_id(store: dict[str, Any], workdir: Path) -> None:
    """A distill run known only to MLflow: its distill/ artifacts and run name are used."""
    params = {**store["params"], "register": {**store["params"]["register"],
                                              "example_image": None}}
    run_dir = workdir / "models" / "serfiq-T"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        setup_mlflow(params)
        with mlflow.start_run(run_name="distill-sddfiqa-T") as run:
            mlflow.log_artifact(str(run_dir / "model.pt"), "distill")
            mlflow.log_artifact(str(run_dir / "metrics.json"), "distill")
        rec = register_stage(params, run.info.run_id)
    assert (rec["name"], rec["run"]) == ("aikd-sddfiqa", "sddfiqa-T")
    assert rec["source"] == f"runs:/{run.info.run_id}" and rec["champion"]["promoted"]
    assert json.loads((workdir / "metrics" / "register_sddfiqa-T.json").read_text()) == rec


# --------------------------------------------------------------------------- remote server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free local port with its own sqlite store; killed (whole
    process group: the CLI starts uvicorn as a child) at the end of the session."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log_file = (root / "server.log").open("w")
    exe = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}): "
                            f"{(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after 180 s: "
                            f"{(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log_file.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*input example was not provided")
def test_register_and_load_over_http(
    mlflow_server: str, workdir: Path, photos: Path, faces: pd.DataFrame
) -> None:
    """Register through a tracking server and load the model back by alias over HTTP."""
    _run_dir(workdir, "crfiqa-T", workdir / "base.pt", 0.25)
    params = _params(workdir, "ignored-env-wins", example_image=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        rec = register_stage(params, "crfiqa-T")
        assert rec["name"] == "aikd-crfiqa" and "champion" in rec["aliases"]
        model = mlflow.pyfunc.load_model("models:/aikd-crfiqa@champion")
        r = faces.iloc[0]
        lm = landmarks_of(r).reshape(-1)
        out = model.predict(pd.DataFrame(
            {"path": [str(photos / Path(r.path).name), str(photos / "corrupt.jpg")],
             **{c: [v, np.nan] for c, v in zip(POINT_COLUMNS, lm, strict=True)}}))
        assert out["status"].tolist() == ["ok", "unreadable"]
        np.testing.assert_allclose(out[POINT_COLUMNS].iloc[0], lm)  # given: not detected
        expected = predict_quality(load_quality_model(workdir / "base.pt"),
                                   faces.head(1)[["root", "path", *POINT_COLUMNS]])
        np.testing.assert_allclose(out["quality"][0], expected[0], atol=1e-4)


def test_a_run_name_registers_one_seeds_model_folder(tmp_path: Path) -> None:
    """With training seeds, ``register@<run>`` registers the run's first seed
    (``models/<run>/seed<first>``) under the run's name; ``<run>@s<k>`` picks seed k (a
    missing one names the stage that makes it); a run laid out before seeds
    (``models/<run>/model.pt``) and anything not a run name pass through unchanged."""
    from aikd.registry.settings import register_settings
    from aikd.registry.sources import resolve_source
    from aikd.registry.stage import seeded_model_folder

    params = {"train_seeds": [1, 0], **_params(tmp_path, "sqlite:///unused.db")}
    cfg = register_settings(params)
    models = tmp_path / "models"
    for seed in (0, 1):
        d = models / "sddfiqa-T" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"x")
        (d / "metrics.json").write_text(json.dumps({"metrics": {"val_pauc_fmr1e-3": 0.1}}))
    ref, name = seeded_model_folder(params, "sddfiqa-T", cfg, None)
    assert (Path(ref), name) == (models / "sddfiqa-T" / "seed1", "sddfiqa-T")
    source = resolve_source(ref, cfg, run_name=name)
    assert (source.run, source.method, source.variant) == ("sddfiqa-T", "sddfiqa", "T")
    assert source.model_path == models / "sddfiqa-T" / "seed1" / "model.pt"
    ref, _ = seeded_model_folder(params, "sddfiqa-T@s0", cfg, None)
    assert Path(ref) == models / "sddfiqa-T" / "seed0"
    with pytest.raises(UsageError, match=r"dvc repro distill@sddfiqa-T-5"):
        seeded_model_folder(params, "sddfiqa-T@s5", cfg, None)
    (models / "old-T").mkdir()
    assert seeded_model_folder(params, "old-T", cfg, "x") == ("old-T", "x")
    run_id = "0123456789abcdef0123456789abcdef"
    assert seeded_model_folder(params, run_id, cfg, None) == (run_id, None)

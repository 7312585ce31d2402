"""Reading the model registry: which version an alias names, and a version's pickle-free
files downloaded within their size caps. What the model server uses (with
``orchestrator.core.modelfile``); it never imports the tracking writer."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from orchestrator.core import modelfile
from orchestrator.tracking import schema


class Refused(RuntimeError):
    """A model version the server will not load (no pickle-free form, a bad spec, too big):
    at start-up the server exits with this message; on reload it keeps serving what it has."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(reason)
        self.version, self.reason = version, reason


def find_version(client: MlflowClient, name: str, marker: str) -> str | None:
    """The version of model ``name`` registered with ``marker``, if any."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{schema.OUTBOX_ID}` = '{marker}'"
    )
    return str(found[0].version) if found else None


def champion_version(client: MlflowClient, name: str, alias: str = "champion") -> str | None:
    """The version ``alias`` names, or None (no such model or alias yet)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None  # no such model or alias yet


def download(fixed: str, version: str, folder: Path, max_weights: int) -> None:
    """``extra_files/model.json`` and ``weights.pt`` of ``fixed`` into ``folder``, each
    within its cap: checked on the sizes the artifact store lists before anything is
    downloaded, and again on disk (a store may list no size)."""

    caps = {modelfile.MODEL_FILE: modelfile.MAX_SPEC_BYTES, modelfile.WEIGHTS_FILE: max_weights}
    # beside a pt2 program they are the model's extra_files; a model logged without one
    # (``champions.pt2_refusal``) holds them as its pyfunc artifacts
    for where in ("extra_files", "artifacts"):
        listed = {
            Path(a.path).name: a.file_size
            for a in mlflow.artifacts.list_artifacts(artifact_uri=f"{fixed}/{where}")
            if not a.is_dir
        }
        if all(name in listed for name in caps):
            break
    else:
        where = "extra_files"
    missing = [name for name in caps if name not in listed]
    if missing:
        files = " and ".join(f"extra_files/{name}" for name in missing)
        raise Refused(
            version,
            (
                f"{fixed} has no pickle-free form (missing {files}): "
                "the server loads only plain tensors and a JSON spec, never a pickled model. "
                "Register the model again with this orchestrator (a sweep, or `orchestrator "
                "tracking replay` of a kept champion), which logs both files beside it"
            ),
        )
    for name, cap in caps.items():
        if (listed[name] or 0) > cap:
            raise Refused(
                version,
                f"{fixed}: {where}/{name} is {listed[name]:,} bytes, "
                f"over the cap of {cap:,}" + raise_cap(name),
            )
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{fixed}/{where}/{name}", dst_path=str(folder)
            )
        )
        if path.stat().st_size > cap:
            raise Refused(
                version,
                f"{fixed}: {where}/{name} is {path.stat().st_size:,} "
                f"bytes, over the cap of {cap:,}" + raise_cap(name),
            )
        if path.parent != folder:
            path.replace(folder / name)


def raise_cap(name: str) -> str:
    """The hint a cap error ends with: only the weights' cap is a setting."""
    return " (raise serve.max_model_mb)" if name == modelfile.WEIGHTS_FILE else ""


def resolve(model_uri: str) -> tuple[str, str]:
    """(version, run id) that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now;
    ("", "") for other URIs."""

    if not model_uri.startswith("models:/"):
        return "", ""
    ref = model_uri[len("models:/") :]
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, number = ref.rsplit("/", 1)
        mv = client.get_model_version(name, number)
    return str(mv.version), str(mv.run_id or "")


def fixed(model_uri: str, version: str) -> str:
    """``model_uri`` pinned to ``version`` when it names an alias (an alias may move on)."""
    if version and "@" in model_uri:
        return f"{model_uri.split('@', 1)[0]}/{version}"
    return model_uri


def load(
    model_uri: str, max_weights: int, factories: tuple[str, ...] | list[str] = ()
) -> tuple[torch.nn.Module, modelfile.Spec, str, str]:
    """The model behind ``model_uri`` rebuilt from its pickle-free form only (the plain
    tensors of ``extra_files/weights.pt``, loaded with ``weights_only=True``, and the checked
    spec of ``extra_files/model.json``): the network, its spec, the version and its run.
    Nothing else of the version is downloaded, and MLflow's model loaders (which unpickle)
    are never called; a model factory is imported only if ``factories`` (the trusted
    ``serve.factories``) names it. A version without that form, with a bad spec, an
    untrusted factory or over the size cap is ``Refused``; a disk error is raised as it is
    (not the version's fault)."""
    version, run_id = resolve(model_uri)
    # a fixed version, so the weights and the version reported are the same model even if
    # the alias moves meanwhile
    pinned = fixed(model_uri, version)
    with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as d:
        download(pinned, version, Path(d), max_weights)
        try:
            net, spec = modelfile.load_weights(d, factories)
        except OSError:
            raise  # the disk, not the version: tried again at the next reload
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is not served
            raise Refused(version, f"{pinned}: {e}") from None
    return net, spec, version, run_id

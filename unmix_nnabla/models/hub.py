"""Published models by name (`--model umxhq`), downloaded once, cached, verified.

    umxhq, umx  open-unmix-nnabla's UMX, trained on MUSDB18-HQ / MUSDB18 (nnabla.org's zips)
    x-umx       Sony's X-UMX, trained on MUSDB18 (nnabla.org's x-umx.h5)
    umxl        open-unmix-pytorch's UMX-L (Zenodo .pth files, non-commercial use only),
                converted by conversion.py on first use
    umxse       open-unmix-pytorch's speech enhancement model (16 kHz, mono; Zenodo .pth),
                converted on first use

The cache: $UMX_CACHE, else $XDG_CACHE_HOME/open-unmix-nnabla, else ~/.cache/open-unmix-nnabla;
one folder per model, published whole (`files.replaced_folder`: a staging folder, its
MANIFEST.json of sizes and SHA-256 written last, then renamed), the manifest verified on
every later load. A download goes to a temporary file and is used only when complete (its
size as the server announced it) and verified: the SHA-256 where it is known (the first 8 hex
digits in open-unmix-pytorch's file names, as torch.hub checks), and its layout (every
weight's name and shape, `weights.load_models(..., load=False)`); the SHA-256 of what was
downloaded is recorded in the model's SOURCE.json. An interrupted, truncated or wrong download
is never used, and the next run fetches it again. Offline, one line names the URL and the path
where to put the file by hand.

A model is named one way in every CLI and the Python API (`resolve_model`, `load_models`): a
published name means the published model, always; a folder or file of the same name is used
when written as a path (`./umxhq`), and a line says so when both exist.

UMX_MODELS_URL replaces https://nnabla.org/pretrained-models, UMX_ZENODO_URL replaces
https://zenodo.org/records (same relative paths, the addresses open-unmix-pytorch 1.3 uses):
for mirrors, and the tests' local server.
"""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from unmix_nnabla.base.console import progress_bar, progress_enabled, say, warn
from unmix_nnabla.base.files import (current_or_old, replaced_folder, sha256_of, verify_manifest,
                                     write_failure, write_json_atomic, writing_into)
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.models.conversion import convert_checkpoints, write_converted
from unmix_nnabla.models.weights import extract_model, load_weights

BASES = {"nnabla": ("UMX_MODELS_URL", "https://nnabla.org/pretrained-models"),
         "zenodo": ("UMX_ZENODO_URL", "https://zenodo.org/records")}


@dataclass(frozen=True)
class Published:
    """A published model: its files as (base, path under the base, SHA-256 prefix or None), the
    kind ('zip': an official UMX zip; 'h5': an X-UMX file; 'pth': open-unmix-pytorch
    checkpoints to convert, with `description`, the json its training would write), and a
    notice to print on first download (a licence)."""
    files: tuple
    kind: str
    description: dict = field(default_factory=dict)
    notice: str = ""


_UMXL = "5069601/files/"  # Zenodo records of open-unmix-pytorch's umxl and umxse
_UMXSE = "3786908/files/"
MODELS = {
    "umxhq": Published((("nnabla", "open-unmix-nnabla/umxhq.zip", None),), "zip"),
    "umx": Published((("nnabla", "open-unmix-nnabla/umx.zip", None),), "zip"),
    "x-umx": Published((("nnabla", "ai-research-code/x-umx/x-umx.h5", None),), "h5"),
    "umxl": Published(tuple(("zenodo", _UMXL + "%s-%s.pth" % (t, h), h) for t, h in (
        ("vocals", "bccbd9aa"), ("drums", "69e0ebd4"), ("bass", "2ca1ce51"),
        ("other", "c8c5b3e6"))), "pth",
        notice="umxl's weights are licensed for non-commercial use only (CC BY-NC-SA 4.0, "
               "doi:10.5281/zenodo.5069601)"),
    "umxse": Published((("zenodo", _UMXSE + "speech_f5e0d9f9.pth", "f5e0d9f9"),
                        ("zenodo", _UMXSE + "noise_04a6fc2d.pth", "04a6fc2d")), "pth",
                       description={"args": {"nhop": 512}, "sample_rate": 16000}),
}


def cache_dir():
    """Where models are cached (UMX_CACHE, XDG_CACHE_HOME, or ~/.cache)."""
    if os.environ.get("UMX_CACHE"):
        return os.environ["UMX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "open-unmix-nnabla")


def url_of(base, path):
    variable, default = BASES[base]
    return (os.environ.get(variable) or default).rstrip("/") + "/" + path


def resolve_model(model, progress=None, log=None):
    """--model (a published name, or a path) → the path of its weights: a published name is
    fetched once into the cache (`model_path`); a local folder or file of that name is taken
    only when written as a path (`./umxhq`), and a warning says which was taken when both
    exist. Anything else must exist."""
    model = os.fspath(model)
    if model in MODELS:
        if os.path.exists(model):
            warn("--model %s is the published model; the local %s is used when written as a "
                 "path: ./%s" % (model, model, model))
        return model_path(model, progress, log)
    if not os.path.exists(model):
        if os.sep not in model and not os.path.splitext(model)[1]:
            raise UmxError("model not found: %s is neither a path nor a published model (%s)"
                           % (model, ", ".join(MODELS)))
        raise UmxError("model not found: %s" % model)
    return model


def model_label(model):
    """A model's name in output paths: the published name, or the name of its weights' file
    (without .h5 or .zip) or folder."""
    if model in MODELS:
        return model
    name = os.path.basename(os.path.normpath(os.fspath(model)))
    return os.path.splitext(name)[0] if name.endswith((".h5", ".zip")) else name


def load_models(model, targets=None, load=True):
    """Load --model's weights → {target: UmxConfig}, the parameters in
    nn.parameter_scope(target) (UMX's names): a published name (`resolve_model`), a folder
    of `<target>.h5` (or an official zip), or an X-UMX file (`weights.load_weights`)."""
    return load_weights(resolve_model(model), targets, load)


def model_path(name, progress=None, log=None):
    """The cached model `name` (a folder of `<target>.h5`, or an x-umx.h5), fetched and
    verified first if it is not cached, or if the cached copy does not verify."""
    progress = progress_enabled() if progress is None else progress
    log = log or say
    published = MODELS[name]
    folder = os.path.join(cache_dir(), name)
    found = current_or_old(folder)
    if found is not None:
        try:
            verify_manifest(found, "it will be fetched again")
            return _entry(found, published)
        except UmxError as exc:
            log("the cached %s is damaged (%s): fetching it again" % (name, str(exc).split(":")[0]))
    with _cache_locked():
        found = current_or_old(folder)  # another process may have fetched it meanwhile
        if found is not None and _verifies(found):
            return _entry(found, published)
        _fetch(name, published, folder, progress, log)
    return _entry(folder, published)


def _entry(folder, published):
    return os.path.join(folder, "x-umx.h5") if published.kind == "h5" else folder


def _verifies(folder):
    try:
        verify_manifest(folder, "")
        return True
    except UmxError:
        return False


class _cache_locked:
    """The cache held by one fetching process at a time; others wait (flock on the folder)."""

    def __enter__(self):
        folder = cache_dir()
        with writing_into(folder):
            os.makedirs(folder, exist_ok=True)
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _fetch(name, published, folder, progress, log):
    """Download, verify and publish the model `name` into `folder` (replacing a damaged one)."""
    log("fetching the published model %s into %s (once)" % (name, folder))
    if published.notice:
        log(published.notice)
    sources = {}
    with replaced_folder(folder) as staging:
        downloads = os.path.join(staging, ".downloads")
        os.makedirs(downloads)
        paths = []
        for base, path, prefix in published.files:
            url = url_of(base, path)
            target = os.path.join(downloads, os.path.basename(path))
            digest = download(url, target, os.path.join(cache_dir(), os.path.basename(path)),
                              progress)
            if prefix and not digest.startswith(prefix):
                raise UmxError("%s does not match its published checksum (SHA-256 %s..., "
                               "expected %s...): not used" % (url, digest[:8], prefix))
            sources[url] = digest
            paths.append(target)
        try:  # what was downloaded must be the model: its files and every weight's shape
            _unpack(name, published, paths, staging)
            load_weights(_entry(staging, published), load=False)
        except UmxError as exc:
            # named without the staging folder, which is about to go
            why = str(exc).replace(downloads + os.sep, "").replace(staging + os.sep, "")
            raise UmxError("the download of %s (%s) is not the published model: not used (%s)"
                           % (name, ", ".join(sources), why)) from None
        shutil.rmtree(downloads)
        write_json_atomic(os.path.join(staging, "SOURCE.json"), {"model": name, "files": sources})
    for path in paths:  # a copy the user placed by hand has been used
        hand_placed = os.path.join(cache_dir(), os.path.basename(path))
        if os.path.isfile(hand_placed):
            os.remove(hand_placed)


def _unpack(name, published, paths, staging):
    """The downloaded files → the model's files in `staging`."""
    if published.kind == "zip":
        with tempfile.TemporaryDirectory(dir=staging) as tmp:
            folder = extract_model(paths[0], tmp)
            for entry in os.listdir(folder):
                if entry.endswith((".h5", ".json")):
                    shutil.move(os.path.join(folder, entry), os.path.join(staging, entry))
    elif published.kind == "h5":
        shutil.move(paths[0], os.path.join(staging, "x-umx.h5"))
    else:  # open-unmix-pytorch checkpoints: named <target>-<hash>.pth or <target>_<hash>.pth
        pth = os.path.dirname(paths[0])
        for path in paths:
            target = os.path.basename(path).replace("_", "-").split("-")[0]
            os.rename(path, os.path.join(pth, target + ".pth"))
            if published.description:
                with open(os.path.join(pth, target + ".json"), "w") as f:
                    json.dump(published.description, f)
        write_converted(convert_checkpoints(pth), staging)


def download(url, path, hand_placed=None, progress=True):
    """Download `url` to `path` (a temporary file first, renamed when complete) → its SHA-256.
    A file the user put at `hand_placed` (offline) is used instead. Any failure is one
    UmxError naming the URL (and where a file can be put by hand); nothing incomplete stays."""
    if hand_placed and os.path.isfile(hand_placed):
        shutil.copyfile(hand_placed, path)
        return sha256_of(path)
    tmp = path + ".part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc=os.path.basename(path),
                      enabled=progress, leave=False) as bar:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    digest.update(block)
                    bar.update(len(block))
            size = f.tell()
        if total is not None and size != total:
            raise UmxError("the download of %s was cut short (%d of %d bytes): run again to "
                           "fetch it anew" % (url, size, total))
    except UmxError:
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                               errno.EACCES):
            raise _unreachable(url, exc, hand_placed or path) from None
        advice = ("free space there, or set UMX_CACHE to another folder"
                  if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
                  "set UMX_CACHE to a folder you can write")
        raise UmxError("cannot download %s: %s: %s"
                       % (url, write_failure(cache_dir(), exc), advice)) from None
    except ValueError as exc:
        _remove(tmp)
        raise _unreachable(url, exc, hand_placed or path) from None
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, path)
    return digest.hexdigest()


def _unreachable(url, exc, hand_placed):
    """The error for a download that the network or the server refused."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(exc, urllib.error.HTTPError):
        reason = "HTTP %d %s" % (exc.code, exc.reason)
    return UmxError("cannot download %s (%s): download it yourself and put it at %s"
                    % (url, str(reason).strip() or type(exc).__name__, hand_placed))


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass

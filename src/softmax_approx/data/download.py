"""Fetch each dataset into the layout its reader reads, safely.

Why: a half-downloaded or wrong file must never look like data. ``pooch`` (a maintained
downloader) writes every file to a temporary name in the target folder, checks it against its
pinned sha256 and only then moves it into place; a failed connection or a mismatch is retried
(3 tries in all) and a failure leaves no file behind. A file already in place whose hash matches
is not downloaded again.

Sources:
* multi30k: the dataset repository's raw files (``multi30k/dataset``,
  ``data/task1/raw/*.gz``), sha256-verified.
* imdb: the original ``aclImdb_v1.tar.gz`` from Stanford, sha256-verified (read in place; its
  ``unsup/`` part is ignored). If that fails, HF ``stanfordnlp/imdb`` is written out as an ``aclImdb/`` tree;
  that copy carries no star ratings, so its files are named ``<id>_0.txt`` (0 = unknown).
* sst2: HF ``stanfordnlp/sst2`` (train + validation) written as GLUE TSVs
  (``train.tsv``, ``dev.tsv``); GLUE's test split has no labels and is not written.
* iwslt14: not redistributable; the user supplies ``de-en.tgz`` and runs
  ``python -m softmax_approx.data prepare-iwslt14 --tgz PATH --data-dir DIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pooch

from softmax_approx.data.datasets import shipped, shipped_names
from softmax_approx.data.files import IWSLT_SUBDIR, MANUAL_RECIPES, fetch_command
from softmax_approx.utils.atomic import write_text
from softmax_approx.utils.errors import DataError

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# The Stanford archive's published sha256 (the same value other public loaders of it pin, e.g.
# Julia's MLDatasets.jl); checked on every fetch, and a matching file is never downloaded again.
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IWSLT_HELP = (
    "IWSLT'14 de-en cannot be downloaded automatically (TED talks, CC BY-NC-ND; the WIT3 archive is not "
    "redistributed): get de-en.tgz (WIT3 2014-01 release, texts/de/en/de-en.tgz) and run "
    "`python -m softmax_approx.data prepare-iwslt14 --tgz PATH/TO/de-en.tgz --data-dir DIR`"
)

Downloader = Callable[[str, str, object], None]  # pooch's downloader protocol: (url, output_file, pooch)


def fetch(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    tries: int = 3,
    downloader: Downloader | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` with ``pooch`` and verify ``sha256`` when given.

    A file already at ``dest`` whose hash matches is kept (no download); one that does not match
    is fetched again. pooch downloads to a temporary file in the same folder and moves it into
    place only after the hash matched, retrying a failed connection or a mismatch ``tries`` times
    in all; on any failure no file is left at ``dest`` and one line says why.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        store = pooch.create(
            path=dest.parent, base_url="", registry={dest.name: f"sha256:{sha256}" if sha256 else None},
            urls={dest.name: url}, retry_if_failed=max(0, tries - 1),
        )
        path = store.fetch(dest.name, downloader=downloader or pooch.HTTPDownloader(progressbar=False, timeout=timeout))
    except ValueError as e:  # pooch: the hash of the downloaded file does not match
        got = str(e).split(" but got ")[-1].split(".")[0] if " but got " in str(e) else "?"
        raise DataError(
            f"{url}: sha256 {got[:12]}... does not match the expected {sha256[:12] if sha256 else '?'}... after {tries} tries; "
            f"nothing was written to {dest}; the source changed or is corrupt"
        ) from None
    except (requests.exceptions.RequestException, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"could not download {url} after {tries} tries ({reason}); check the network (this machine may be "
            f"offline) or place the file at {dest} yourself"
        ) from None
    return Path(path)


# --------------------------------------------------------------------------- per dataset
def download_multi30k(data_dir: Path, **kw) -> list[Path]:
    return [
        fetch(MULTI30K_URL.format(name=name), data_dir / "multi30k" / name, sha, **kw)
        for name, sha in MULTI30K_SHA256.items()
    ]


def _load_hf(name: str, load_dataset: Callable | None):
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError as e:  # pragma: no cover - datasets comes with the harness extra
            raise DataError(f"the `datasets` package is needed to fetch {name}: pip install 'softmax-approx[harness]' ({e})") from None
    try:
        return load_dataset(name)
    except Exception as e:  # offline, hub down, renamed dataset ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"could not fetch {name} from the Hugging Face hub ({msg}); check the network") from None


def download_sst2(data_dir: Path, load_dataset: Callable | None = None) -> list[Path]:
    """HF ``stanfordnlp/sst2`` -> GLUE TSVs (``sentence<TAB>label``)."""
    ds = _load_hf("stanfordnlp/sst2", load_dataset)
    out = []
    for split, fname in (("train", "train.tsv"), ("validation", "dev.tsv")):
        rows = ["sentence\tlabel"]
        for ex in ds[split]:
            sentence = " ".join(str(ex["sentence"]).replace("\t", " ").split())
            rows.append(f"{sentence} \t{int(ex['label'])}")
        path = data_dir / "sst2" / fname
        write_text(path, "\n".join(rows) + "\n")
        out.append(path)
    return out


def write_imdb_tree_from_hf(data_dir: Path, load_dataset: Callable | None = None) -> Path:
    """HF ``stanfordnlp/imdb`` -> ``imdb/aclImdb/{train,test}/{pos,neg}/<id>_0.txt``.

    Written into a temporary folder renamed at the end, so a failure leaves no partial tree.
    """
    ds = _load_hf("stanfordnlp/imdb", load_dataset)
    root = data_dir / "imdb"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".aclImdb."))
    try:
        for split in ("train", "test"):
            counters = {"pos": 0, "neg": 0}
            for ex in ds[split]:
                pol = "pos" if int(ex["label"]) == 1 else "neg"
                folder = tmp / split / pol
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{counters[pol]}_0.txt").write_text(ex["text"], encoding="utf-8")
                counters[pol] += 1
        final = root / "aclImdb"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def download_imdb(data_dir: Path, load_dataset: Callable | None = None, **kw) -> Path:
    try:
        return fetch(IMDB_URL, data_dir / "imdb" / "aclImdb.tar.gz", IMDB_SHA256, **kw)
    except DataError as first:
        try:
            return write_imdb_tree_from_hf(data_dir, load_dataset)
        except DataError as second:
            raise DataError(f"{first} ; fallback failed too: {second}") from None


def download_iwslt14(data_dir: Path, **kw) -> list[Path]:
    """Nothing to fetch (not redistributable): say where the prepared folder is, else how to make it."""
    if (data_dir / IWSLT_SUBDIR / "valid.de").exists():
        return [data_dir / IWSLT_SUBDIR]
    raise DataError(IWSLT_HELP.replace("DIR", str(data_dir)))


#: the download recipes a task yaml may name (``task.data.download``)
RECIPES: dict[str, Callable[..., list[Path]]] = {
    "sst2": lambda data_dir, **kw: download_sst2(data_dir, kw.get("load_dataset")),
    "imdb": lambda data_dir, **kw: [download_imdb(data_dir, **kw)],
    "multi30k": lambda data_dir, **kw: download_multi30k(data_dir, **{k: v for k, v in kw.items() if k != "load_dataset"}),
    "iwslt14": download_iwslt14,
}


def download(task: str, data_dir: str | Path, **kw) -> None:
    """Fetch one task's dataset (its yaml's ``task.data.download`` recipe), or ``all`` of those
    that can be fetched; IWSLT only prints how to prepare it."""
    data_dir = Path(data_dir)
    if task == "all":
        for recipe, fetch_recipe in RECIPES.items():
            if recipe not in MANUAL_RECIPES:
                for p in fetch_recipe(data_dir, **kw):
                    print(f"{recipe}: {p}")
        print(IWSLT_HELP)
        return
    if task not in shipped_names():
        raise DataError(f"download {task!r}: unknown dataset; choose one of {', '.join(shipped_names())} or all "
                        f"(e.g. {fetch_command('sst2', data_dir)})")
    recipe = shipped(task, data_dir).download
    if recipe not in RECIPES:
        raise DataError(f"task {task}: task.data.download={recipe!r} is no download recipe; known: {', '.join(RECIPES)}")
    for p in RECIPES[recipe](data_dir, **kw):
        print(f"{task}: {'found ' if recipe in MANUAL_RECIPES else ''}{p}")

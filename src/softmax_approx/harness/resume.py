"""What to do with a run directory that may already hold a run (docs/reliability.md).

Rerunning the same command with the same ``hydra.run.dir`` after a crash must continue the run,
not start it over, and must never train a finished run again:

==========================================  ==============================================
run dir holds                               decision
==========================================  ==============================================
results.json ``completed``                  ``skip``: print one line, return its metrics
``checkpoints/last.ckpt`` (not completed)   ``resume`` from it (or from ``ckpt_path=``)
nothing of the above                        ``fresh``
another config's run, data or tokenizer     refused (ConfigError, one line)
==========================================  ==============================================

A previous run with a different configuration in the same directory is refused (ConfigError
naming the differing keys): continuing it would silently mix two experiments. Keys that do not
change what is trained are ignored (``IGNORED_KEYS``), and file locations are compared relative
to their ``paths.*`` folder (:func:`location_free`). What the data *are* is the sha256 of each
file's content (``data_sha256``, checked by :func:`check_data` once the data are set up): a moved
copy resumes, a changed file at the same place is refused naming it. The config is checked three ways, so a
torn or deleted results.json cannot hide it: the record's config, the directory's
``config_fingerprint`` file and the fingerprint inside ``last.ckpt`` (harness/rundir.py). A
checkpoint to resume from is opened here, so a truncated one is one line, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmax_approx.harness.callbacks import LAST_NAME
from softmax_approx.harness.rundir import CKPT_KEY, FINGERPRINT_FILE, config_sha256, load_checkpoint, read_fingerprint
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.run_record import FILENAME, RunStatus, read_results

#: Top-level config keys that may differ between attempts of one run: where files live, how it
#: is logged, and the fault-injection debugging aid (a run failed on purpose is resumed without).
IGNORED_KEYS = frozenset({"paths", "ckpt_path", "logger", "callbacks", "tags", "experiment_name", "fault", "hydra"})
WANDB_ID_FILE = "wandb_run_id"


@dataclass(frozen=True)
class ResumeDecision:
    action: str  # "skip" | "resume" | "fresh"
    ckpt_path: str | None = None
    record: dict | None = None
    fingerprint: dict | None = None  # this config's (config_sha256); the data's are added later
    previous_tokenizer: str | None = None  # the tokenizer sha256 the interrupted run trained with
    previous_data: dict | None = None  # logical file -> content sha256 it trained on (None: older run)

    @property
    def metrics(self) -> dict:
        return dict((self.record or {}).get("metrics") or {})


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / LAST_NAME


def read_record(path: Path) -> dict | None:
    """The results.json at ``path``, or None when missing or unreadable (a torn write from
    before atomic writes, or a file from another tool: treated as not completed)."""
    try:
        return read_results(path).to_dict()
    except (OSError, ValueError):  # ResultsError is a ValueError
        return None


def location_free(config: dict) -> dict:
    """``config`` with every absolute path under a ``paths.*`` folder written relative to it
    (``/data/sst2`` -> ``${paths.data_dir}/sst2``): where the data and the run dir lie does not
    decide the result, so moving either must not make a resume look like another config. What
    the data *are* is checked through their content hashes (:func:`check_data`)."""
    paths = config.get("paths") if isinstance(config, dict) else None
    roots = sorted(((k, str(v).rstrip("/")) for k, v in (paths or {}).items()
                    if isinstance(v, str) and v.startswith("/") and len(v.rstrip("/")) > 1),
                   key=lambda kv: -len(kv[1]))

    def sub(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        if isinstance(x, list):
            return [sub(v) for v in x]
        if isinstance(x, str):
            for key, root in roots:
                if x == root or x.startswith(root + "/"):
                    return f"${{paths.{key}}}{x[len(root):]}"
        return x

    return sub(config)


def _sha_matches(stored: Any, config: dict, fingerprint: dict) -> bool:
    """A stored ``config_sha256`` matches this config's (or, for a run started before paths were
    left out, the hash of the config with its paths)."""
    return stored in (None, fingerprint["config_sha256"], config_sha256(config, IGNORED_KEYS))


def config_differences(old: dict | None, new: dict) -> list[str]:
    """Dotted keys whose values differ (IGNORED_KEYS and file locations left out); [] when
    ``old`` has no config."""
    if not isinstance(old, dict):
        return []
    out: list[str] = []
    old, new = location_free(old), location_free(json.loads(json.dumps(new, default=str)))

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if not prefix and k in IGNORED_KEYS:
                    continue
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        elif a != b:
            out.append(prefix.rstrip("."))

    walk(old, json.loads(json.dumps(new, default=str)), "")
    return out


def _refuse(run_dir: Path, status: Any, detail: str) -> ConfigError:
    return ConfigError(f"{run_dir} holds a {status} run with a different config ({detail}); "
                       "use another hydra.run.dir, or delete that directory to start over")


def checkpoint_fingerprint(path: str | Path, key: str = "ckpt_path") -> dict:
    """Open the checkpoint at ``path``: its fingerprint ({} for one written before
    fingerprints), or one ConfigError line when it is not a readable Lightning checkpoint."""
    ckpt = load_checkpoint(
        path, key, mmap=True, missing="give an existing .ckpt or ckpt_path=null",
        unreadable="not a readable PyTorch checkpoint ({error}; truncated?); give a .ckpt written by "
                   "softmax-approx-train, or delete it to start the run over")
    return dict((ckpt.get("callbacks") or {}).get(CKPT_KEY) or {})


def decide(run_dir: str | Path, config: dict, explicit_ckpt: str | None = None) -> ResumeDecision:
    """Skip, resume or start fresh (table in the module docstring); refuse another config's
    directory before anything is written into it."""
    run_dir = Path(run_dir)
    config = json.loads(json.dumps(config, default=str))
    fingerprint = {"config_sha256": config_sha256(location_free(config), IGNORED_KEYS)}
    record = read_record(run_dir / FILENAME)
    last = last_checkpoint(run_dir)
    stored = read_fingerprint(run_dir) or {}
    status = (record or {}).get("status", "previous")
    # a directory holds something to protect once it has a completed record or a checkpoint;
    # a run that failed before its first checkpoint may be rerun there with a fixed config
    if status == RunStatus.COMPLETED or last.exists():
        diff = config_differences((record or {}).get("config"), config)
        if diff:
            raise _refuse(run_dir, status, ", ".join(diff[:5]) + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else ""))
        if not _sha_matches(stored.get("config_sha256"), config, fingerprint):
            raise _refuse(run_dir, status, f"{FINGERPRINT_FILE} differs")
    previous_tok = stored.get("tokenizer_sha256")
    previous_data = stored.get("data_sha256")
    if record is not None and record.get("status") == RunStatus.COMPLETED:
        return ResumeDecision("skip", record=record, fingerprint=fingerprint)
    ckpt = str(explicit_ckpt) if explicit_ckpt else (str(last) if last.exists() else None)
    if ckpt is None:
        return ResumeDecision("fresh", record=record, fingerprint=fingerprint, previous_tokenizer=previous_tok,
                              previous_data=previous_data)
    in_ckpt = checkpoint_fingerprint(ckpt, "ckpt_path" if explicit_ckpt else str(last))
    if not explicit_ckpt and not _sha_matches(in_ckpt.get("config_sha256"), config, fingerprint):
        raise _refuse(run_dir, status, f"the fingerprint in {last.name} differs")
    if not explicit_ckpt:
        previous_tok = previous_tok or in_ckpt.get("tokenizer_sha256")
        previous_data = previous_data or in_ckpt.get("data_sha256")
    return ResumeDecision("resume", ckpt_path=ckpt, record=record, fingerprint=fingerprint,
                          previous_tokenizer=previous_tok, previous_data=previous_data)


def belongs_to(run_dir: str | Path, config: dict | None) -> bool:
    """Whether a failed job with ``config`` may write its ``failed`` record into ``run_dir``:
    never over a completed run, nor over another config's record or fingerprint; ``config``
    None (it could not be resolved) owns only an empty directory."""
    run_dir = Path(run_dir)
    record = read_record(run_dir / FILENAME)
    stored = read_fingerprint(run_dir)
    if record is None and stored is None:
        return True
    if config is None or (record is not None and record.get("status") == RunStatus.COMPLETED):
        return False
    config = json.loads(json.dumps(config, default=str))
    fingerprint = {"config_sha256": config_sha256(location_free(config), IGNORED_KEYS)}
    if stored is not None:
        sha = stored.get("config_sha256")
        if sha is None or not _sha_matches(sha, config, fingerprint):
            return False
    return record is None or not config_differences(record.get("config"), config)


def check_data(run_dir: str | Path, decision: ResumeDecision, files: dict[str, Path],
               data_sha256: dict[str, str]) -> None:
    """Refuse to resume on data whose content differs from what the run trained on (one line
    naming the first changed file). A run from before data hashes (``previous_data`` None) is
    resumed as before; its tokenizer is still checked (:func:`check_tokenizer`)."""
    before = decision.previous_data
    if decision.action != "resume" or not isinstance(before, dict):
        return
    changed = [k for k in sorted(before) if k in data_sha256 and before[k] != data_sha256[k]]
    if changed:
        key = changed[0]
        more = f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(
            f"{files.get(key, key)}: its content changed since {run_dir} started training on it "
            f"({key}: sha256 {before[key][:12]} then, {data_sha256[key][:12]} now){more}; restore that file to "
            "resume, or start over in another hydra.run.dir (or delete that directory)"
        )


def check_tokenizer(run_dir: str | Path, decision: ResumeDecision, tokenizer_sha256: str | None) -> None:
    """Refuse to resume with a tokenizer other than the one the run trained with (a retrained or
    changed tokenizer permutes the ids the checkpoint's embeddings were trained on)."""
    before = decision.previous_tokenizer
    if decision.action == "resume" and before and tokenizer_sha256 and before != tokenizer_sha256:
        raise ConfigError(
            f"{run_dir} was trained with tokenizer sha256 {before[:12]}, this data gives {tokenizer_sha256[:12]} "
            "(data or tokenizer cache changed); restore the data, or use another hydra.run.dir to start over"
        )


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run dir, persisted in it, so a resumed run logs into the same W&B
    run (``resume='allow'``). Derived from the run dir's absolute path (which holds a random
    run id by default), so every DDP rank computes the same id without a race."""
    path = Path(run_dir) / WANDB_ID_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{WANDB_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value
